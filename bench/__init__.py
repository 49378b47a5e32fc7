"""`make bench`: snapgroup side by side with the native way (virsh, qemu-img), each
comparison a ratio measured pair by pair in one run. Entry: `python -m bench.run`."""
