"""The job registry behind ZStack's 202 + polling protocol."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from snapgroup.domain.errors import Busy, InvalidArgument, NotFound, OperationError
from snapgroup.rest.jobs import Job, JobRegistry, job_uuid_from_header
from tests.rest.conftest import PREFIX, Api

JOB = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def registry() -> Iterator[JobRegistry]:
    jobs = JobRegistry(workers=2)
    yield jobs
    jobs.shutdown()


def _finished(job: Job) -> Job:
    deadline = time.monotonic() + 5
    while job.status is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return job


def test_a_job_runs_in_the_background_until_done(registry: JobRegistry) -> None:
    release = threading.Event()

    def work() -> dict[str, Any]:
        release.wait(5)
        return {"inventory": {"uuid": "x"}}

    job = registry.submit(JOB, "create", work)
    assert registry.get(JOB).status is None  # running: the poll answers 202
    release.set()
    assert _finished(job).status == 200
    assert job.document == {"inventory": {"uuid": "x"}}


def test_failures_are_503_with_the_error_document(registry: JobRegistry) -> None:
    def refused() -> dict[str, Any]:
        raise Busy("someone else")

    def partial() -> dict[str, Any]:
        return {"results": [], "error": {"code": "VOLUME_SNAPSHOT.1002"}}

    def bug() -> dict[str, Any]:
        raise KeyError("oops")

    jobs = [registry.submit(f"{i:032x}", "x", w) for i, w in enumerate((refused, partial, bug))]
    first, second, third = (_finished(j) for j in jobs)
    assert (first.status, first.document["error"]["code"]) == (503, "SYS.1011")
    assert (second.status, second.document["results"]) == (503, [])
    assert (third.status, third.document["error"]["code"]) == (503, "SYS.1001")


def test_the_same_job_uuid_is_one_job(registry: JobRegistry) -> None:
    runs: list[int] = []

    def run(n: int) -> dict[str, Any]:
        runs.append(n)
        return {}

    first = registry.submit(JOB, "create", lambda: run(1))
    assert registry.submit(JOB, "create", lambda: run(2)) is first
    assert registry.find(JOB, "create") is first
    with pytest.raises(OperationError):  # 409: the uuid names another request
        registry.find(JOB, "delete")
    _finished(first)
    assert runs == [1]


def test_finished_jobs_are_forgotten_after_their_retention() -> None:
    now = [0.0]
    registry = JobRegistry(workers=1, retention=60, clock=lambda: now[0])
    try:
        _finished(registry.submit(JOB, "create", dict))
        now[0] = 61
        registry.submit("f" * 32, "create", dict)  # submitting sweeps the old ones
        with pytest.raises(NotFound):
            registry.get(JOB)
    finally:
        registry.shutdown()


@pytest.mark.parametrize("value", ["x", "0123", "g" * 32, JOB + "0"])
def test_a_malformed_job_header_is_refused(value: str) -> None:
    with pytest.raises(InvalidArgument):
        job_uuid_from_header(value, lambda: JOB)


def test_job_header_accepts_dashes_and_case() -> None:
    dashed = "01234567-89AB-CDEF-0123-456789ABCDEF"
    assert job_uuid_from_header(dashed, lambda: "") == JOB
    assert job_uuid_from_header(None, lambda: "new") == "new"


def test_polling_over_http(api: Api) -> None:
    assert api.call("GET", f"/api-jobs/{JOB}").status_code == 404
    response = api.call(
        "POST", "/volume-snapshots/group", json={"params": {}}, headers={"X-Job-UUID": "nope"}
    )
    assert response.status_code == 400
    release = threading.Event()
    registry = api.client.app.state.services.jobs  # type: ignore[attr-defined]
    registry.submit(JOB, "create", lambda: (release.wait(5), {"ok": True})[1])
    running = api.call("GET", f"/api-jobs/{JOB}")
    assert (running.status_code, running.content) == (202, b"")  # as ZStack: no body
    release.set()
    accepted = httpx.Response(202, json={"location": f"http://testserver{PREFIX}/api-jobs/{JOB}"})
    done = api.wait(accepted)
    assert (done.status_code, done.json()) == (200, {"ok": True})
