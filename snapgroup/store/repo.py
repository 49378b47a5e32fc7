"""Queries over the schema, one class for the callers: Repo(session). Its parts live
by what they read: groups.py, snapshots.py, volumes.py (base.py: what they share);
operations.py holds the journal's. Never commits: the caller's transaction does."""

from __future__ import annotations

from snapgroup.store.groups import GroupQueries
from snapgroup.store.snapshots import SnapshotQueries
from snapgroup.store.volumes import VolumeQueries


class Repo(GroupQueries, SnapshotQueries, VolumeQueries):
    pass
