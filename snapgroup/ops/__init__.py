"""The use cases, one module each, over an OpContext (context.py); the machinery several
share sits in modules of its own (creating, syncing, merging, merge_checks, discovery,
consistency, journal, recovery, resolve, lineage, group_views, availability_rules,
backing_up).

A use case never imports another. This package imports none of its modules: a command
loads the use cases it runs (the facade imports each on first call), and recovery loads
the module of an unfinished operation's kind when it finds one (recovery.HOMES)."""
