"""The use cases, one module each, over an OpContext (context.py); the machinery several
share sits in modules of its own (creating, syncing, merging, merge_checks, discovery,
consistency, journal, recovery, resolve, lineage, group_views, availability_rules,
backing_up).

A use case never imports another. Importing this package imports every module that
registers a journal kind's recovery (recovery.recovers), so the registry is full
whichever use case runs first."""

from snapgroup.ops import (
    clone,
    creating,
    delete,
    delete_snapshot,
    export,
    prune_backups,
    restore,
    revert,
)

__all__ = [
    "clone",
    "creating",
    "delete",
    "delete_snapshot",
    "export",
    "prune_backups",
    "restore",
    "revert",
]
