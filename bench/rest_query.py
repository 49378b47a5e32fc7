"""7. Queries at scale through the REST API, on SQLite (the metadata bench's store: 100k
groups / 1.6M refs, bench/metadata.py) and on PostgreSQL (30k groups / 480k refs, which
generate in a few minutes; skipped when no server is configured: `make postgres`). A
real `snapgroup serve` on each, and an HTTP client (the standard library's http.client
on one kept-alive connection: httpx cost ~1 ms a request of its own) asking as a UI
does: the first page of 20 groups, a `q=name=` match, a
`q=volumeSnapshotRefs.volumeUuid=` match (first 20 of its 100), `count=true`; and
`snapgroup list`'s default page (the command run in-process on an open engine, as
`snapgroup daemon` runs it).

Each REST figure is paired round by round with the floor: the rows the reply is made of
(the page's groups with every column the reply shows, their refs with their snapshots'
columns), read by SQL typed by hand through the bare driver (sqlite3 with the store's
page cache size, psycopg).

The same parsed queries are also run in this process through the engine's query path
(Engine.query_groups and the reply's inventories, as the route runs them, without HTTP),
paired with the same floor: how much of a REST figure is the query path, how much HTTP.

Targets: <= 20 ms median each REST query, <= 50 ms the list, <= 2x the floor.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
from sqlalchemy import text

from bench import lab
from bench.metadata import _generate, _Store
from bench.timing import Row, Stats, Target, clock, ms
from snapgroup.api import Engine
from snapgroup.cli.commands import build_parser, execute
from snapgroup.cli.context import Context
from snapgroup.domain.zquery import Query, parse_query
from snapgroup.store.db import SQLITE_CACHE_KIB, Database
from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool
from snapgroup.testing.labvm import LAB_ROOT
from tests.pgtools import PG_ENV, private_database

NAME = "rest-query"
REST_TARGET = Target("<=", 20.0, on="ours")
LIST_TARGET = Target("<=", 50.0, on="ours")
FLOOR_TARGET = Target("<=", 2.0)
ROOT = Path(__file__).resolve().parents[1]
PAGE = 20
PREFIX = "/zstack/v1"
# What a reply shows of a group: the columns of Repo.group_views, typed out.
_GROUP_COLUMNS = (
    "g.uuid, g.name, g.description, g.vm_uuid, g.create_date, g.last_op_date,"
    " g.consistency_type, g.frozen_filesystems, g.freeze_millis, g.consistency_note,"
    " g.policy, g.policy_label, g.protected"
)
_REFS_OF = (
    "SELECT r.volume_snapshot_uuid, r.group_uuid, r.device_id, r.volume_uuid, r.volume_name,"
    " r.volume_type, r.volume_last_attach_date, r.create_date, r.last_op_date, s.deleted,"
    " s.install_path, s.name, s.last_op_date, s.changed FROM volume_snapshot_group_ref r"
    " JOIN volume_snapshot s ON s.uuid = r.volume_snapshot_uuid"
    " WHERE r.group_uuid IN ({}) ORDER BY r.group_uuid, r.device_id"
)
_ORDER = f" ORDER BY g.create_date, g.uuid LIMIT {PAGE}"


@dataclass
class _Backend:
    label: str  # "" for SQLite (the rows' names as before), else ", PostgreSQL"
    url: str
    vms: int
    connect: Callable[[], Any]  # a bare DB-API connection: the floor's
    mark: str  # the driver's parameter marker


def _floor(conn: Any, mark: str, where: str, args: tuple[Any, ...]) -> None:
    """The page's groups and their refs, by hand."""
    cursor = conn.cursor()
    cursor.execute(f"SELECT {_GROUP_COLUMNS} FROM volume_snapshot_group g {where}{_ORDER}", args)
    uuids = [g[0] for g in cursor.fetchall()]
    if uuids:
        cursor.execute(_REFS_OF.format(",".join([mark] * len(uuids))), uuids)
        cursor.fetchall()
    cursor.close()


def _floor_note(ratio: list[float]) -> str:
    met = FLOOR_TARGET.met(Stats.of(ratio).median)
    return f"<= {FLOOR_TARGET.value:g}x floor: {'met' if met else 'not met'}"


def _engine(db_url: str) -> Engine:
    """An engine on the store in this process, as `snapgroup serve` holds one (fakes at
    the hypervisor and image ports: a query touches neither)."""
    images = FakeImageTool()
    return Engine(hypervisor=FakeHypervisor(images), images=images, db=Database(db_url))


def _parsed(params: dict[str, Any]) -> Query:
    """The query the REST route parses from those parameters."""
    q = params.get("q")
    return parse_query(q=[q] if q else (), limit=params.get("limit"), count=params.get("count"))


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


class _Client:
    """One kept-alive connection, opened again when the server closed an idle one."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers: dict[str, str] = {}

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {**self.headers, **({"Content-Type": "application/json"} if data else {})}
        for attempt in (1, 2):
            try:
                self.conn.request(method, PREFIX + path, body=data, headers=headers)
                response = self.conn.getresponse()
                return response.status, json.loads(response.read())
            except (http.client.RemoteDisconnected, ConnectionResetError):
                self.conn.close()  # the next request connects again
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str, params: dict[str, Any]) -> Any:
        status, document = self.call("GET", f"{path}?{urlencode(params)}")
        assert status == 200, document
        return document

    def close(self) -> None:
        self.conn.close()


def _client(port: int, proc: subprocess.Popen[str]) -> _Client:
    client = _Client(port)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}")
        try:
            if client.call("GET", "/openapi.json")[0] == 200:
                break
        except OSError:
            client.close()
        if time.monotonic() > deadline:
            raise RuntimeError("serve did not start")
        time.sleep(0.2)
    digest = hashlib.sha512(b"bench").hexdigest()
    login = {"logInByAccount": {"accountName": "admin", "password": digest}}
    status, document = client.call("PUT", "/accounts/login", login)
    assert status == 200, document
    client.headers["Authorization"] = f"OAuth {document['inventory']['uuid']}"
    return client


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


@contextlib.contextmanager
def _sqlite(quick: bool) -> Iterator[_Backend]:
    directory = LAB_ROOT / lab.unique("db-rest-query")
    directory.mkdir(parents=True)
    path = directory / "snapgroup.db"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")  # as the store's connections
        return conn

    try:
        yield _Backend("", f"sqlite:///{path}", 50 if quick else 1000, connect, "?")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _pg_url() -> str | None:
    url = os.environ.get(PG_ENV)
    saved = ROOT / "build" / "postgres.url"
    if not url and saved.exists():
        url = saved.read_text().strip()
    return url or None


@contextlib.contextmanager
def _postgres(quick: bool, base_url: str) -> Iterator[_Backend]:
    """A private database next to the configured one, dropped at the end."""
    with contextlib.contextmanager(private_database)(base_url) as url:
        yield _Backend(
            ", PostgreSQL", url, 20 if quick else 300, lambda: psycopg.connect(url), "%s"
        )


def _prepare(backend: _Backend) -> tuple[str, float]:
    """The store generated, one group named "needle"; a volume of it; seconds taken."""
    db = Database(backend.url)
    spec = _Store(vms=backend.vms, disks=16, groups=100)
    with clock() as gen:
        _generate(db, spec, backend.vms // 2)
    needle = spec.group_uuids[len(spec.group_uuids) // 3]
    with db.transaction() as session:
        session.execute(
            text("UPDATE volume_snapshot_group SET name = 'needle' WHERE uuid = :u"), {"u": needle}
        )
        volume = session.execute(
            text("SELECT volume_uuid FROM volume_snapshot_group_ref WHERE group_uuid = :u"),
            {"u": needle},
        ).first()
    assert volume is not None
    db.dispose()
    db = Database(backend.url)  # indexes made, WAL folded in: the store as a server opens it
    with db.transaction() as session:
        if backend.url.startswith("sqlite"):
            session.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    if not backend.url.startswith("sqlite"):
        with db._engine.connect() as conn:  # statistics, as autovacuum would gather
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
    db.dispose()
    return str(volume[0]), gen.seconds


def _rows(backend: _Backend, reps: int) -> list[Row]:
    volume_uuid, generated = _prepare(backend)
    mark, suffix = backend.mark, backend.label
    rows: list[Row] = []
    proc: subprocess.Popen[str] | None = None
    conn = backend.connect()
    try:
        port = _free_port()
        proc = _serve(backend.url, port)
        http = _client(port, proc)
        cases: list[tuple[str, dict[str, Any], str, tuple[Any, ...]]] = [
            (f"first page of {PAGE} groups", {"limit": PAGE}, "", ()),
            ("q=name= match (1 group)", {"q": "name=needle", "limit": PAGE},
             f"WHERE g.name = {mark}", ("needle",)),
            (f"q=volumeSnapshotRefs.volumeUuid= match (first {PAGE} of 100)",
             {"q": f"volumeSnapshotRefs.volumeUuid={volume_uuid}", "limit": PAGE},
             "WHERE g.uuid IN (SELECT group_uuid FROM volume_snapshot_group_ref"
             f" WHERE volume_uuid = {mark})", (volume_uuid,)),
        ]  # fmt: skip
        engine = _engine(backend.url)
        in_process: list[Row] = []
        for case, params, where, args in cases:

            def ours(p: dict[str, Any] = params) -> None:
                assert http.get("/volume-snapshots/group", p)["inventories"]

            def floor(w: str = where, a: tuple[Any, ...] = args) -> None:
                _floor(conn, mark, w, a)

            got, base, ratio = _paired(reps, ours, floor)
            rows.append(
                Row(NAME, f"REST {case}{suffix}", "ms", ms(got), "GET via serve", ms(base),
                    "bare driver, same rows", Stats.of(ratio), target=REST_TARGET,
                    note=_floor_note(ratio))
            )  # fmt: skip
            query = _parsed(params)

            def path(q: Query = query) -> None:
                assert engine.query_groups(q).reply(q)["inventories"]

            got, base, ratio = _paired(reps, path, floor)
            in_process.append(
                Row(NAME, f"query path {case}{suffix}", "ms", ms(got), "Engine.query_groups",
                    ms(base), "bare driver, same rows", Stats.of(ratio), note=_floor_note(ratio))
            )  # fmt: skip

        def count() -> None:
            assert (
                http.get("/volume-snapshots/group", {"count": "true"})["total"] == backend.vms * 100
            )

        def count_floor() -> None:
            cursor = conn.cursor()
            cursor.execute("SELECT count(*) FROM volume_snapshot_group")
            cursor.fetchone()
            cursor.close()

        got, base, ratio = _paired(reps, count, count_floor)
        rows.append(
            Row(NAME, f"REST count=true{suffix}", "ms", ms(got), "GET via serve", ms(base),
                "bare driver count(*)", Stats.of(ratio), target=REST_TARGET)
        )  # fmt: skip
        counted = _parsed({"count": "true"})

        def count_path() -> None:
            assert engine.query_groups(counted).reply(counted)["total"] == backend.vms * 100

        got, base, ratio = _paired(reps, count_path, count_floor)
        in_process.append(
            Row(NAME, f"query path count=true{suffix}", "ms", ms(got), "Engine.query_groups",
                ms(base), "bare driver count(*)", Stats.of(ratio), note=_floor_note(ratio))
        )  # fmt: skip
        engine.ctx.db.dispose()
        rows += in_process
        http.close()
        rows.append(_list_row(backend, reps))
    finally:
        conn.close()
        if proc is not None:
            proc.terminate()
            proc.communicate(timeout=60)
    vms = backend.vms
    scale = f"{vms * 100:,} groups / {vms * 1600:,} refs, generated in {generated:.0f} s"
    return [Row(r.bench, r.case, r.unit, r.ours, r.ours_label, r.baseline, r.baseline_label,
                r.ratio, r.target, f"{r.note} ({scale})".strip()) for r in rows]  # fmt: skip


def _bare_http_row(reps: int) -> Row:
    """A GET answered by bench/bare_asgi.py under uvicorn, by the same client: the part
    of every REST row that no query path can remove."""
    port = _free_port()
    argv = [sys.executable, "-m", "uvicorn", "bench.bare_asgi:app", "--port", str(port)]
    quiet = subprocess.DEVNULL
    proc = subprocess.Popen([*argv, "--log-level", "warning"], cwd=ROOT, stdout=quiet, stderr=quiet)  # noqa: S603
    try:
        client = _Client(port)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.call("GET", "/")
                break
            except OSError:
                client.close()
                if time.monotonic() > deadline:
                    raise RuntimeError("uvicorn did not start") from None
                time.sleep(0.1)
        times = []
        for i in range(reps * 4 + 2):
            with clock() as sw:
                status, document = client.call("GET", "/")
            assert status == 200 and document == {}
            if i >= 2:
                times.append(sw.seconds)
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    note = "no route, session or query: HTTP's own part of a REST row"
    return Row(NAME, "HTTP alone: uvicorn and an ASGI app answering {}", "ms", ms(times),
               "bench/bare_asgi.py", note=note)  # fmt: skip


def run(runs: int, quick: bool) -> list[Row]:
    reps = max(runs, 5) * 6
    rows = [_bare_http_row(reps)]
    with _sqlite(quick) as backend:
        rows += _rows(backend, reps)
    pg_url = _pg_url()
    if pg_url is None:
        print(f"   {NAME}: no PostgreSQL ({PG_ENV} unset, no build/postgres.url)", file=sys.stderr)
        return rows
    with _postgres(quick, pg_url) as backend:
        rows += _rows(backend, reps)
    return rows


def _list_row(backend: _Backend, reps: int) -> Row:
    """`snapgroup list` (its default page) in-process on an open engine, as the daemon
    runs a command (snapgroup.cli.command_server: its parser built once)."""
    db = Database(backend.url)
    images = FakeImageTool()
    engine = Engine(hypervisor=FakeHypervisor(images), images=images, db=db)

    parser = build_parser()  # once, as the daemon does (~1/3 of a listing otherwise)

    def listing() -> None:
        out, err = io.StringIO(), io.StringIO()
        code = execute(
            parser.parse_args(["list"]),
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
    return Row(NAME, f"snapgroup list, default page{backend.label}", "ms", ms(times),
               "CLI in-process", target=LIST_TARGET)  # fmt: skip
