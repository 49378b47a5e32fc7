"""The store's queue of REST requests for another host (store/queue.py): claimed by one
process of that host at a time, claimed again when its claimer broke off or died,
dropped once its job started, failed when too old. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from snapgroup.store.db import Database
from snapgroup.store.jobs import JobStore
from snapgroup.store.queue import QueuedRequest, RequestQueue

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def _queued(queue: RequestQueue, n: int, host: str = "host-b") -> str:
    uuid = f"{n:032x}"
    request = QueuedRequest(uuid, "create", host, "POST", "/x", "", "{}", "0" * 32)
    assert queue.put(request, state="Waiting", now=NOW + timedelta(seconds=n))
    return uuid


def test_one_claimer_each_and_again_when_it_broke_off_or_died(store: Database) -> None:
    queue = RequestQueue(store)
    first, second = _queued(queue, 1), _queued(queue, 2)
    _queued(queue, 3, host="host-c")
    assert not queue.put(
        QueuedRequest(first, "create", "host-b", "POST", "/x", "", "", "0"),
        state="Waiting",
        now=NOW,
    )
    assert [r.job_uuid for r in queue.claim("host-b", "p1")] == [first, second]
    assert queue.claim("host-b", "p2") == []  # p1's, alive
    # p1 broke off before the answers: it claims them again; p1 dead: p2 does.
    assert [r.job_uuid for r in queue.claim("host-b", "p1")] == [first, second]
    dead = {"p1"}
    assert len(queue.claim("host-b", "p2", stale=dead.__contains__)) == 2
    queue.release(queue.claim("host-b", "p2")[0], "p2")
    assert [r.job_uuid for r in queue.claim("host-b", "p3")] == [first]
    assert queue.waiting() == {"host-b": 2, "host-c": 1}


def test_a_request_whose_job_started_leaves_the_queue(store: Database) -> None:
    queue = RequestQueue(store)
    uuid = _queued(queue, 1)
    JobStore(store).set_state(uuid, "Running")
    assert queue.claim("host-b", "p1") == [] and queue.waiting() == {}


def test_old_requests_fail_claimed_or_not(store: Database) -> None:
    queue = RequestQueue(store)
    old, claimed, new = _queued(queue, 1), _queued(queue, 2), _queued(queue, 10)
    queue.claim("host-b", "p1")
    queue.release(next(r for r in queue.claim("host-b", "p1") if r.job_uuid == old), "p1")
    failed = queue.fail(
        now=NOW,
        status=503,
        document={"error": {"code": "SYS.1011"}},
        before=NOW + timedelta(seconds=5),
    )
    assert sorted(failed) == [old, claimed]
    record = JobStore(store).get(claimed)
    assert record is not None and (record.state, record.status) == ("Done", 503)
    assert queue.waiting() == {"host-b": 1} and JobStore(store).get(new) is not None
