"""7. Queries at scale through the REST API: the 100k-group / 1.6M-ref store of the
metadata bench (bench/metadata.py), a real `snapgroup serve` on it, and an HTTP client
(httpx, one kept-alive connection), as a UI asks: the first page of 20 groups, a
`q=name=` match, a `q=volumeSnapshotRefs.volumeUuid=` match (first 20 of its 100),
`count=true`; and `snapgroup list`'s default page (the command run in-process on an
open engine, as `snapgroup daemon` runs it). Each REST figure is paired round by round
with the same rows read by hand-written SQL through the bare sqlite3 module (the floor).

Targets: <= 20 ms median each REST query, <= 50 ms the list, <= 2x the floor.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from bench import lab
from bench.metadata import _generate, _Store
from bench.timing import Row, Stats, Target, clock, ms
from snapgroup.api import Engine
from snapgroup.cli.context import Context
from snapgroup.cli.main import main as cli_main
from snapgroup.store.db import Database
from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool
from snapgroup.testing.labvm import LAB_ROOT

NAME = "rest-query"
REST_TARGET = Target("<=", 20.0, on="ours")
LIST_TARGET = Target("<=", 50.0, on="ours")
FLOOR_TARGET = Target("<=", 2.0)
ROOT = Path(__file__).resolve().parents[1]
PAGE = 20
_GROUP_COLUMNS = (
    "g.uuid, g.name, g.description, g.vm_uuid, g.create_date, g.last_op_date,"
    " g.consistency_type, g.frozen_filesystems, g.freeze_millis, g.consistency_note"
)
_REFS_OF = (
    "SELECT r.volume_snapshot_uuid, r.group_uuid, r.device_id, r.volume_uuid, r.volume_name,"
    " r.volume_type, r.volume_last_attach_date, r.create_date, r.last_op_date, s.deleted,"
    " s.install_path, s.name, s.last_op_date, s.changed FROM volume_snapshot_group_ref r"
    " JOIN volume_snapshot s ON s.uuid = r.volume_snapshot_uuid"
    " WHERE r.group_uuid IN ({}) ORDER BY r.group_uuid, r.device_id"
)
_ORDER = f" ORDER BY g.create_date, g.uuid LIMIT {PAGE}"


def _floor(conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> None:
    """The page's groups and their refs, by hand."""
    groups = conn.execute(
        f"SELECT {_GROUP_COLUMNS} FROM volume_snapshot_group g {where}{_ORDER}", args
    ).fetchall()
    uuids = [g[0] for g in groups]
    if uuids:
        conn.execute(_REFS_OF.format(",".join("?" * len(uuids))), uuids).fetchall()


def _serve(db_url: str, port: int) -> subprocess.Popen[str]:
    """A real server on the store (its output discarded: a full pipe would stall it)."""
    base = [sys.executable, "-m", "snapgroup", "--db", db_url]
    account = [*base, "account", "set-password", "admin", "--password-stdin"]
    subprocess.run(account, input="bench", text=True, check=True, cwd=ROOT, capture_output=True)  # noqa: S603
    serve = [*base, "serve", "--listen", f"127.0.0.1:{port}"]
    quiet = subprocess.DEVNULL
    return subprocess.Popen(serve, cwd=ROOT, stdout=quiet, stderr=quiet, text=True)  # noqa: S603


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _client(port: int, proc: subprocess.Popen[str]) -> httpx.Client:
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}/zstack/v1", timeout=120)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}")
        try:
            if http.get("/openapi.json").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("serve did not start")
        time.sleep(0.2)
    digest = hashlib.sha512(b"bench").hexdigest()
    login = http.put(
        "/accounts/login", json={"logInByAccount": {"accountName": "admin", "password": digest}}
    )
    http.headers["Authorization"] = f"OAuth {login.json()['inventory']['uuid']}"
    return http


def _paired(
    n: int, ours: Callable[[], object], floor: Callable[[], object]
) -> tuple[list[float], list[float], list[float]]:
    a: list[float] = []
    b: list[float] = []
    ratios: list[float] = []
    for i in range(n + 2):
        pair: list[float] = [0.0, 0.0]
        for side in (0, 1) if i % 2 else (1, 0):  # order rotated every round
            with clock() as sw:
                (ours if side == 0 else floor)()
            pair[side] = sw.seconds
        if i >= 2:  # two warm-up rounds
            a.append(pair[0])
            b.append(pair[1])
            ratios.append(pair[0] / pair[1])
    return a, b, ratios


def run(runs: int, quick: bool) -> list[Row]:
    vms = 50 if quick else 1000
    spec = _Store(vms=vms, disks=16, groups=100)
    directory = LAB_ROOT / lab.unique("db-rest-query")
    directory.mkdir(parents=True)
    path = directory / "snapgroup.db"
    db_url = f"sqlite:///{path}"
    reps = max(runs, 5) * 6
    rows: list[Row] = []
    proc: subprocess.Popen[str] | None = None
    try:
        db = Database(db_url)
        with clock() as gen:
            _generate(db, spec, vms // 2)
        needle = spec.group_uuids[len(spec.group_uuids) // 3]
        with db.transaction() as session:
            session.execute(
                text("UPDATE volume_snapshot_group SET name = 'needle' WHERE uuid = :u"),
                {"u": needle},
            )
            volume = session.execute(
                text("SELECT volume_uuid FROM volume_snapshot_group_ref WHERE group_uuid = :u"),
                {"u": needle},
            ).first()
        assert volume is not None
        volume_uuid = str(volume[0])
        db.dispose()
        db = Database(db_url)  # indexes made, WAL folded in: the store as a server opens it
        with db.transaction() as session:
            session.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        db.dispose()
        port = _free_port()
        proc = _serve(db_url, port)
        http = _client(port, proc)
        conn = sqlite3.connect(path)
        cases: list[tuple[str, dict[str, Any], str, tuple[Any, ...]]] = [
            (f"first page of {PAGE} groups", {"limit": PAGE}, "", ()),
            ("q=name= match (1 group)", {"q": "name=needle", "limit": PAGE}, "WHERE g.name = ?",
             ("needle",)),
            (f"q=volumeSnapshotRefs.volumeUuid= match (first {PAGE} of 100)",
             {"q": f"volumeSnapshotRefs.volumeUuid={volume_uuid}", "limit": PAGE},
             "WHERE g.uuid IN (SELECT group_uuid FROM volume_snapshot_group_ref"
             " WHERE volume_uuid = ?)", (volume_uuid,)),
        ]  # fmt: skip
        for case, params, where, args in cases:

            def ours(p: dict[str, Any] = params) -> None:
                response = http.get("/volume-snapshots/group", params=p)
                assert response.status_code == 200 and response.json()["inventories"]

            def floor(w: str = where, a: tuple[Any, ...] = args) -> None:
                _floor(conn, w, a)

            got, base, ratio = _paired(reps, ours, floor)
            rows.append(
                Row(NAME, f"REST {case}", "ms", ms(got), "GET via serve", ms(base),
                    "bare sqlite3, same rows", Stats.of(ratio), target=REST_TARGET,
                    note=f"<= {FLOOR_TARGET.value:g}x floor: "
                    f"{'met' if FLOOR_TARGET.met(Stats.of(ratio).median) else 'not met'}")
            )  # fmt: skip

        def count() -> None:
            response = http.get("/volume-snapshots/group", params={"count": "true"})
            assert response.json()["total"] == vms * 100

        def count_floor() -> None:
            conn.execute("SELECT count(*) FROM volume_snapshot_group").fetchone()

        got, base, ratio = _paired(reps, count, count_floor)
        rows.append(
            Row(NAME, "REST count=true", "ms", ms(got), "GET via serve", ms(base),
                "bare sqlite3 count(*)", Stats.of(ratio), target=REST_TARGET)
        )  # fmt: skip
        http.close()
        conn.close()
        rows.append(_list_row(db_url, reps))
    finally:
        if proc is not None:
            proc.terminate()
            proc.communicate(timeout=60)
        shutil.rmtree(directory, ignore_errors=True)
    scale = f"{vms * 100:,} groups / {vms * 1600:,} refs, generated in {gen.seconds:.0f} s"
    return [Row(r.bench, r.case, r.unit, r.ours, r.ours_label, r.baseline, r.baseline_label,
                r.ratio, r.target, f"{r.note} ({scale})".strip()) for r in rows]  # fmt: skip


def _list_row(db_url: str, reps: int) -> Row:
    """`snapgroup list` (its default page) in-process on an open engine."""
    db = Database(db_url)
    images = FakeImageTool()
    engine = Engine(hypervisor=FakeHypervisor(images), images=images, db=db)

    def listing() -> None:
        out, err = io.StringIO(), io.StringIO()
        code = cli_main(
            ["list"],
            out=out,
            err=err,
            context_factory=lambda args: Context(make_engine=lambda: engine, as_json=args.json),
        )
        assert code == 0, err.getvalue()

    times = []
    for i in range(reps + 2):
        with clock() as sw:
            listing()
        if i >= 2:
            times.append(sw.seconds)
    db.dispose()
    return Row(NAME, "snapgroup list, default page", "ms", ms(times), "CLI in-process",
               target=LIST_TARGET)  # fmt: skip
