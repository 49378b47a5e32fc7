"""Jobs queue on a busy VM instead of being refused (Waiting, then Running, bounded by
the queue timeout), and live in the store: another app on the same store (another
`serve` process, or the next one after a restart) answers their polls."""

from __future__ import annotations

import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from snapgroup.infra.locks import vm_lock
from snapgroup.rest.jobs import JobRegistry
from snapgroup.store.db import Database
from snapgroup.store.jobs import JobStore
from snapgroup.store.tables import JobRow
from tests.rest.conftest import PREFIX, VM, Api, Clock, build

GROUPS = "/volume-snapshots/group"


def _post_create(api: Api, name: str) -> httpx.Response:
    body = {"params": {"rootVolumeUuid": api.root_volume(), "name": name}}
    return api.call("POST", GROUPS, json=body)


def _poll(api: Api, response: httpx.Response) -> httpx.Response:
    polled: httpx.Response = api.client.get(response.json()["location"], headers=api.auth)
    return polled


def _until_state(api: Api, response: httpx.Response, state: str) -> None:
    deadline = time.monotonic() + 5
    while (polled := _poll(api, response)).headers.get("X-Job-State") != state:
        assert polled.status_code == 202 and time.monotonic() < deadline, polled.headers
        time.sleep(0.01)


def test_a_job_on_a_busy_vm_waits_its_turn(api: Api) -> None:
    api.root_volume()  # recorded before the lock is taken
    with vm_lock(VM):  # another operation holds the VM
        started = _post_create(api, "queued")
        assert started.status_code == 202
        _until_state(api, started, "Waiting")
        polled = _poll(api, started)
        assert (polled.status_code, polled.content) == (202, b"")  # the body stays ZStack's
        assert api.engine.list_groups() == []
    done = api.wait(started)
    assert done.status_code == 200, done.text
    assert [g.name for g in api.engine.list_groups()] == ["queued"]


def test_the_queue_timeout_fails_the_job_busy(fast_dir: Path) -> None:
    db = Database(f"sqlite:///{fast_dir / 'store.db'}")
    api = build(db, Clock(), queue_timeout=0.3)
    with api.client:
        api.session = api.login().json()["inventory"]["uuid"]
        api.root_volume()
        with vm_lock(VM):
            started = _post_create(api, "late")
            failed = api.wait(started)
        assert failed.status_code == 503
        assert failed.json()["error"]["code"] == "SYS.1011"
        assert "0.3 s queue timeout" in failed.json()["error"]["details"]
        assert api.engine.list_groups() == []
    db.dispose()


def test_eight_concurrent_creates_on_one_vm_all_succeed_in_turn(api: Api) -> None:
    api.root_volume()
    with vm_lock(VM):  # all 8 are queued before any may run: they contend at once
        started = [_post_create(api, f"g{n}") for n in range(8)]
    results = [api.wait(s, timeout=30) for s in started]
    assert [r.status_code for r in results] == [200] * 8, [r.text for r in results]
    groups = api.engine.list_groups()
    assert sorted(g.name for g in groups) == [f"g{n}" for n in range(8)]
    # In turn: each group's snapshots are the previous group's overlays (one chain).
    installs = {r.install_path for g in groups for r in g.refs}
    assert len(installs) == 8 * 3


def test_a_second_app_on_the_store_answers_the_first_ones_jobs(api: Api, fast_dir: Path) -> None:
    api.root_volume()
    other_db = Database(f"sqlite:///{fast_dir / 'store.db'}")  # another process's view
    other = build(other_db, Clock())
    with other.client:
        # build() set the password again, which ends sessions: log in anew (in the
        # store: one session serves both apps)
        api.session = other.session = api.login().json()["inventory"]["uuid"]
        with vm_lock(VM):
            started = _post_create(api, "shared")
            location = started.json()["location"]
            deadline = time.monotonic() + 5
            while True:  # the other app sees it Waiting
                polled = other.client.get(location, headers=api.auth)
                if polled.headers.get("X-Job-State") == "Waiting":
                    break
                assert time.monotonic() < deadline, polled.headers
                time.sleep(0.01)
        api.wait(started)
        finished = other.client.get(location, headers=api.auth)
        assert finished.status_code == 200
        assert finished.json()["inventory"]["name"] == "shared"
    other_db.dispose()


def test_a_dead_servers_job_answers_an_internal_error(api: Api) -> None:
    now = datetime.now(UTC)
    dead = f"{socket.gethostname()}:999999999:1"
    with api.engine.db.transaction() as session:
        session.add(JobRow(uuid="d" * 32, kind="create", state="Running", owner=dead, created=now))
    polled = api.client.get(f"{PREFIX}/api-jobs/{'d' * 32}", headers=api.auth)
    assert polled.status_code == 503
    assert polled.json()["error"]["code"] == "SYS.1001"
    assert "stopped before it finished" in polled.json()["error"]["details"]


def test_finished_jobs_expire_from_the_store(fast_dir: Path) -> None:
    db = Database(f"sqlite:///{fast_dir / 'jobs.db'}")
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    registry = JobRegistry(workers=1, retention=60, now=lambda: now[0])
    registry.attach(lambda: JobStore(db))
    try:
        done = threading.Event()

        def work() -> dict[str, Any]:
            done.set()
            return {"inventory": {}}

        registry.submit("1" * 32, "create", work)
        assert done.wait(5)
        registry.shutdown()
        store = JobStore(db)
        deadline = time.monotonic() + 5
        while (record := store.get("1" * 32)) is None or record.state != "Done":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        now[0] += timedelta(seconds=61)
        registry.submit("2" * 32, "create", dict)  # submitting sweeps the expired
        assert store.get("1" * 32) is None
    finally:
        registry.shutdown()
        db.dispose()
