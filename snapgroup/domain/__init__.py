"""Pure logic: no I/O, no store, no hypervisor."""
