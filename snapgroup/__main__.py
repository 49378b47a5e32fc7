from snapgroup.cli.launch import main

raise SystemExit(main())
