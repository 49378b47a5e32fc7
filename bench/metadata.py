"""6. Metadata at scale: a store of 100k groups and 1.6M refs (1,000 VMs x 16 volumes x
100 groups, so every volume's chain is 100 snapshots deep), generated directly through
the store layer (SQLAlchemy core executemany on the SQLModel tables) into a temporary
SQLite file. Then, on one VM, with fakes at the hypervisor and image-tool ports (no I/O
but the store's):

* get one group (Engine.get);
* list one VM's groups (Engine.list_groups(vm=...): 100 groups, 1,600 refs);
* create one more group's metadata (Engine.create on the fakes: discovery, sync, chain
  checks, journal, the group's rows), undone untimed by Engine.delete (also timed).

Target: <= 5 ms median each. Also the database's size.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import sqlite3
import time
import uuid as uuidlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, text

from bench import lab
from bench.timing import Row, Stats, Target, clock, ms
from snapgroup.api import Engine
from snapgroup.domain.models import DomainDisk, VmState
from snapgroup.infra.host import local_host
from snapgroup.ops import creating
from snapgroup.ops.consistency import ConsistencyRecord, ConsistencyType
from snapgroup.store.db import Database
from snapgroup.store.repo import Repo
from snapgroup.store.tables import GroupRow, RefRow, SnapshotRow, VolumeRow
from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool
from snapgroup.testing.labvm import LAB_ROOT

NAME = "metadata"
TARGET = Target("<=", 5.0, on="ours")
BATCH = 20_000


def _targets(n: int) -> list[str]:
    return [f"vd{chr(ord('a') + i)}" for i in range(n)]


class _Store:
    """What was generated: enough to find one VM's rows again."""

    def __init__(self, vms: int, disks: int, groups: int) -> None:
        self.vms, self.disks, self.groups = vms, disks, groups
        self.vm_uuids = [uuidlib.uuid4().hex for _ in range(vms)]
        self.group_uuids: list[str] = []
        self.paths: dict[str, list[str]] = {}  # one chosen VM: target -> chain, top first


def _path(vm: int, target: str, k: int | None) -> str:
    return f"/var/lib/bench/vm{vm}/{target}-{'top' if k is None else k}.qcow2"


def _generate(db: Database, spec: _Store, chosen: int) -> None:
    host = local_host()
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    targets = _targets(spec.disks)
    snapshots: list[dict[str, Any]] = []
    refs: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []

    def flush(force: bool = False) -> None:
        with db.transaction() as session:
            # Generation only: this connection is disposed of before anything is timed.
            if session.get_bind().dialect.name == "postgresql":
                session.execute(text("SET LOCAL synchronous_commit = off"))
            else:
                session.execute(text("PRAGMA synchronous=OFF"))
            for table, rows in (
                (VolumeRow, volumes),
                (GroupRow, groups),
                (SnapshotRow, snapshots),
                (RefRow, refs),
            ):
                if rows and (force or len(rows) >= BATCH):
                    session.execute(insert(table.__table__), rows)  # type: ignore[union-attr]
                    rows.clear()

    for i, vm_uuid in enumerate(spec.vm_uuids):
        vol_uuids = [uuidlib.uuid4().hex for _ in targets]
        parents: list[str | None] = [None] * spec.disks
        vm_groups = [uuidlib.uuid4().hex for _ in range(spec.groups)]
        for k, group_uuid in enumerate(vm_groups):
            when = t0 + timedelta(minutes=k)
            groups.append(
                {
                    "uuid": group_uuid,
                    "name": f"group-{k}",
                    "description": None,
                    "vm_uuid": vm_uuid,
                    "create_date": when,
                    "last_op_date": when,
                    "consistency_type": "Crash",
                    "frozen_filesystems": "[]",
                    "host": host,
                }
            )
            for d, target in enumerate(targets):
                snap = uuidlib.uuid4().hex
                snapshots.append(
                    {
                        "uuid": snap,
                        "volume_uuid": vol_uuids[d],
                        "name": f"group-{k}-vm{i}-{target}",
                        "install_path": _path(i, target, k),
                        "parent_uuid": parents[d],
                        "deleted": False,
                        "create_date": when,
                        "last_op_date": when,
                    }
                )
                refs.append(
                    {
                        "volume_snapshot_uuid": snap,
                        "group_uuid": group_uuid,
                        "device_id": d,
                        "volume_uuid": vol_uuids[d],
                        "volume_name": f"vm{i}-{target}",
                        "volume_type": "Root" if d == 0 else "Data",
                        "volume_last_attach_date": t0,
                        "create_date": when,
                        "last_op_date": when,
                    }
                )
                parents[d] = snap
        for d, target in enumerate(targets):
            volumes.append(
                {
                    "uuid": vol_uuids[d],
                    "vm_uuid": vm_uuid,
                    "vm_name": f"bench-vm{i}",
                    "target": target,
                    "device_id": d,
                    "volume_type": "Root" if d == 0 else "Data",
                    "name": f"vm{i}-{target}",
                    "install_path": _path(i, target, None),
                    "format": "qcow2",
                    "parent_snapshot_uuid": parents[d],
                    "attached": True,
                    "last_attach_date": t0,
                    "create_date": t0,
                    "last_op_date": t0,
                    "host": host,
                }
            )
        if i == chosen:
            spec.paths = {
                t: [_path(i, t, None), *(_path(i, t, k) for k in reversed(range(spec.groups)))]
                for t in targets
            }
        spec.group_uuids += vm_groups
        # Volumes first: snapshots reference them (foreign keys are on).
        flush(force=len(snapshots) >= BATCH)
    flush(force=True)


def _fake_engine(db: Database, spec: _Store, chosen: int) -> Engine:
    images = FakeImageTool()
    for chain in spec.paths.values():
        for upper, lower in zip(chain, [*chain[1:], None], strict=True):
            images.add(upper, backing=lower)
    hv = FakeHypervisor(images)
    disks = [
        DomainDisk(t, "disk", "file", chain[0], "qcow2", boot_order=1 if i == 0 else None)
        for i, (t, chain) in enumerate(spec.paths.items())
    ]
    hv.define(spec.vm_uuids[chosen], f"bench-vm{chosen}", VmState.RUNNING, disks)
    return Engine(hypervisor=hv, images=images, db=db, host=local_host())


def _repeat(n: int, fn: Callable[[], object]) -> tuple[list[float], list[float]]:
    """Wall and CPU (this thread's) seconds of n calls: the CPU time shows what the
    figure is on a quiet core of this machine, the wall time what it was in the noise."""
    wall, cpu = [], []
    for _ in range(n):
        c0 = time.thread_time()
        with clock() as sw:
            fn()
        cpu.append(time.thread_time() - c0)
        wall.append(sw.seconds)
    return wall, cpu


_RAW_REFS = (
    "SELECT r.volume_snapshot_uuid, r.group_uuid, r.device_id, r.volume_uuid, r.volume_name,"
    " r.volume_type, r.volume_last_attach_date, r.create_date, r.last_op_date, s.deleted,"
    " s.install_path, s.name, s.last_op_date FROM volume_snapshot_group g"
    " JOIN volume_snapshot_group_ref r ON r.group_uuid = g.uuid"
    " JOIN volume_snapshot s ON s.uuid = r.volume_snapshot_uuid"
    " WHERE g.vm_uuid = ? ORDER BY g.create_date, r.device_id"
)


def _raw_floor(path: Path, vm_uuid: str, n: int) -> tuple[list[float], list[float]]:
    """The same refs a listing shows, read with the bare sqlite3 module and their four
    timestamps parsed: what SQLite and CPython alone cost, with no SQLAlchemy at all."""
    conn = sqlite3.connect(path)
    try:

        def read() -> None:
            for row in conn.execute(_RAW_REFS, (vm_uuid,)):
                for i in (6, 7, 8, 12):
                    datetime.fromisoformat(row[i])

        return _repeat(n, read)
    finally:
        conn.close()


# A create commits at least this many times (journal begin, overlays, switched, and the
# group's record with the journal's close): each a durable commit, by design.
CREATE_COMMITS = 4


def _commit_floor(directory: Path, n: int) -> tuple[list[float], list[float]]:
    """CREATE_COMMITS durable commits (WAL, synchronous=FULL, as the store) of one
    small row each, with the bare sqlite3 module, on the same filesystem."""
    conn = sqlite3.connect(directory / "floor.db", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (a TEXT)")

        def commits() -> None:
            for _ in range(CREATE_COMMITS):
                conn.execute("BEGIN")
                conn.execute("INSERT INTO t VALUES (?)", ("x" * 200,))
                conn.execute("COMMIT")

        return _repeat(n, commits)
    finally:
        conn.close()


def _record(eng: Engine, vm_uuid: str, n: int) -> tuple[list[float], list[float]]:
    """The recording part of a create alone (ops.creating._record_group: the group, its
    snapshots and refs, the volumes' new tops and the journal's close, in one
    transaction), each time on a journal entry begun untimed. Run last: it moves the
    volumes' tops to files the fakes do not have."""
    wall: list[float] = []
    cpu: list[float] = []
    crash = ConsistencyRecord(ConsistencyType.CRASH).to_plan()
    for i in range(n + 1):
        with eng.db.transaction() as session:
            volumes = {v.target: v for v in Repo(session).volumes_of_vm(vm_uuid)}
        group_uuid = uuidlib.uuid4().hex
        plan = {
            "group_uuid": group_uuid,
            "name": f"recorded-{i}",
            "description": None,
            "live": True,
            "overlays": [
                {"target": t, "current": v.install_path, "overlay": f"{v.install_path}.{i}"}
                for t, v in volumes.items()
            ],
            "volumes": {t: v.uuid for t, v in volumes.items()},
            "consistency": crash,
        }
        op = eng.journal.begin("create", vm_uuid, plan, group_uuid=group_uuid)
        w, c = _repeat(1, functools.partial(creating._record_group, eng.ctx, op, plan, vm_uuid))
        if i:  # the first is a warm-up
            wall += w
            cpu += c
    return wall, cpu


def run(runs: int, quick: bool) -> list[Row]:
    vms = 50 if quick else 1000
    spec = _Store(vms=vms, disks=16, groups=100)
    directory = LAB_ROOT / lab.unique("db-metadata")
    directory.mkdir(parents=True)
    path = directory / "snapgroup.db"
    reps = max(runs, 5) * 10
    try:
        db = Database(f"sqlite:///{path}")
        chosen = vms // 2
        with clock() as gen:
            _generate(db, spec, chosen)
        db.dispose()  # measured on fresh connections, with the store's own settings
        db = Database(f"sqlite:///{path}")
        with db.transaction() as session:
            session.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        size_mib = os.path.getsize(path) / 2**20
        eng = _fake_engine(db, spec, chosen)
        rng = random.Random(6)
        vm_name = f"bench-vm{chosen}"
        for _ in range(3):  # warm the caches (SQLAlchemy's compiled statements, pages)
            eng.get(rng.choice(spec.group_uuids))
            eng.list_groups(vm=vm_name)
        get = _repeat(reps, lambda: eng.get(rng.choice(spec.group_uuids)))
        listed = _repeat(reps, lambda: eng.list_groups(vm=vm_name))
        floor = _raw_floor(path, spec.vm_uuids[chosen], reps)
        fsyncs = _commit_floor(directory, reps)
        creates: tuple[list[float], list[float]] = ([], [])
        deletes: tuple[list[float], list[float]] = ([], [])
        made: list[str] = []
        for i in range(runs + 1):
            created = _repeat(
                1,
                lambda: made.append(eng.create(vm=vm_name, name="more", consistency="crash").uuid),
            )
            deleted = _repeat(1, lambda: eng.delete(made[-1]))
            if i:  # the first is a warm-up
                for into, got in ((creates, created), (deletes, deleted)):
                    into[0].extend(got[0])
                    into[1].extend(got[1])
        recorded = _record(eng, spec.vm_uuids[chosen], max(runs, 5) * 2)
        db.dispose()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    scale = f"{vms * 100:,} groups, {vms * 1600:,} refs"

    def row(case: str, got: tuple[list[float], list[float]], label: str, **kw: Any) -> Row:
        cpu = ms(got[1])
        return Row(
            NAME,
            case,
            "ms",
            ms(got[0]),
            label,
            note=f"CPU {cpu.median:.2f} ms [{cpu.min:.2f}-{cpu.max:.2f}]",
            extra={"cpu_ms": cpu.to_json()},
            **kw,
        )

    return [
        row(f"get one group ({scale})", get, "Engine.get", target=TARGET),
        row(
            "list one VM's groups (100 groups, 1,600 refs)",
            listed,
            "Engine.list_groups(vm=)",
            target=TARGET,
        ),
        row("  floor: the same 1,600 refs via bare sqlite3", floor, "sqlite3 + fromisoformat"),
        row(
            "create one more group's metadata (16 disks, chains of 100)",
            creates,
            "Engine.create on fakes",
            target=TARGET,
        ),
        row(
            "  of which recording it (ops.creating._record_group, one transaction)",
            recorded,
            "ops.creating._record_group",
            target=TARGET,
        ),
        row(
            f"  floor: {CREATE_COMMITS} durable commits, nothing else",
            fsyncs,
            "sqlite3, WAL, synchronous=FULL",
        ),
        row("delete that group's metadata", deletes, "Engine.delete on fakes"),
        Row(
            NAME,
            "database size",
            "MiB",
            Stats.of([size_mib]),
            "SQLite file",
            note=f"generated in {gen.seconds:.0f} s",
        ),
    ]
