"""ZStack's protocol for long operations. The request answers 202 with
`{"location": <url of the job>}`; the client GETs that URL, which answers 202 (empty
body) while the job runs, then 200 with the result document, or 503 with the error
document when the operation failed. `X-Job-UUID: <32 hex>` names the job (ZStack's
SDKs send one with every call); sending a known one again gets that job back instead of
doing the work twice.

Jobs run in a pool of worker threads, on the one Engine the app shares (its store and
hypervisor connection are safe across threads; the per-VM flock serialises operations
on a VM, in this process as between processes). Job results live in memory: after a
restart a job is unknown (404), while the operation itself was journaled and the
server's start-up `recover` finished or rolled it back.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from snapgroup.errors import (
    InternalError,
    InvalidArgument,
    NotFound,
    OperationError,
    SnapgroupError,
)
from snapgroup.rest.status import FAILED_JOB

log = logging.getLogger(__name__)

JOB_HEADER = "X-Job-UUID"
DEFAULT_WORKERS = 4
DEFAULT_RETENTION = 24 * 3600.0  # seconds a finished job's result stays to be fetched
MAX_FINISHED = 10_000  # and at most this many of them
_JOB_UUID = re.compile(r"^[0-9a-f]{32}$")

Work = Callable[[], dict[str, Any]]


@dataclass
class Job:
    uuid: str
    kind: str
    created: float
    status: int | None = None  # None while running; then 200 or 503
    document: dict[str, Any] = field(default_factory=dict)
    finished: float | None = None


def job_uuid_from_header(value: str | None, new_uuid: Callable[[], str]) -> str:
    if value is None:
        return new_uuid()
    text = value.strip().lower().replace("-", "")
    if not _JOB_UUID.match(text):
        raise InvalidArgument(f"Invalid header[{JOB_HEADER}], it must be a UUID with '-' stripped")
    return text


class JobRegistry:
    def __init__(
        self,
        *,
        workers: int = DEFAULT_WORKERS,
        retention: float = DEFAULT_RETENTION,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None  # made at the first job
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self.retention = retention
        self.clock = clock

    def submit(self, job_uuid: str, kind: str, work: Work) -> Job:
        """Start `work` (it returns the result document, or raises a SnapgroupError)."""
        with self._lock:
            self._forget_old()
            existing = self._jobs.get(job_uuid)
            if existing is not None:
                if existing.kind != kind:
                    raise OperationError(
                        f"job {job_uuid} already exists for another API ({existing.kind})"
                    )
                return existing
            job = Job(job_uuid, kind, self.clock())
            self._jobs[job_uuid] = job
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="snapgroup-job")
            self._pool.submit(self._run, job, work)
        return job

    def find(self, job_uuid: str, kind: str) -> Job | None:
        """The job of that uuid if there is one (OperationError, a 409, when it was for
        another API: a uuid names one request)."""
        with self._lock:
            job = self._jobs.get(job_uuid)
        if job is not None and job.kind != kind:
            raise OperationError(f"job {job_uuid} already exists for another API ({job.kind})")
        return job

    def get(self, job_uuid: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_uuid.strip().lower().replace("-", ""))
        if job is None:
            raise NotFound(f"no job {job_uuid} (unknown, or its result has expired)")
        return job

    def _run(self, job: Job, work: Work) -> None:
        try:
            document = work()
            status = FAILED_JOB if document.get("error") else 200
        except SnapgroupError as exc:
            document, status = {"error": exc.to_dict()}, FAILED_JOB
        except Exception as exc:  # a bug: still an answer in the seed's shape
            log.exception("job %s (%s) failed unexpectedly", job.uuid, job.kind)
            document = {"error": InternalError(f"{type(exc).__name__}: {exc}").to_dict()}
            status = FAILED_JOB
        with self._lock:
            job.document, job.status, job.finished = document, status, self.clock()

    def _forget_old(self) -> None:
        now = self.clock()
        finished = sorted(
            (j for j in self._jobs.values() if j.finished is not None), key=lambda j: j.created
        )
        excess = len(finished) - MAX_FINISHED
        for i, job in enumerate(finished):
            assert job.finished is not None
            if i < excess or now - job.finished > self.retention:
                del self._jobs[job.uuid]

    def shutdown(self) -> None:
        """Waits for running jobs: an operation is never abandoned half-way on purpose.
        A later job starts a new pool (an app may be started and stopped again)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
