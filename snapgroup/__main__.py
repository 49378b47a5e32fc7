from snapgroup.cli.main import main

raise SystemExit(main())
