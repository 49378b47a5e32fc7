"""ZStack's protocol for long operations. The request answers 202 with
`{"location": <url of the job>}`; the client GETs that URL, which answers 202 (empty
body; `X-Job-State: Waiting` or `Running`) until the job is done, then 200 with the
result document, or 503 with the error document when the operation failed.
`X-Job-UUID: <32 hex>` names the job (ZStack's SDKs send one with every call); sending
a known one again gets that job back instead of doing the work twice.

Queue, don't refuse (as ZStack queues a VM's operations): a job on a VM another
operation holds is Waiting until the VM is free, at most `queue_timeout` seconds
(then it fails with Busy, SYS.1011), then Running.

Jobs run in a pool of worker threads, on the one Engine the app shares. Their state and
results are in the store (store/jobs.py) once the app has one: every `serve` process on
the store answers any job's poll, also after a restart. A stopped server finishes its
running jobs first (SIGTERM); a job whose process died (kill -9) answers 503 with an
InternalError that says so (its operation was journaled and `recover` finished or rolled
it back). Finished jobs expire after `retention` (a day).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from snapgroup.domain.errors import (
    Busy,
    InternalError,
    InvalidArgument,
    NotFound,
    OperationError,
    SnapgroupError,
)
from snapgroup.infra.locks import POLL_SECONDS, FileLocks
from snapgroup.ports import VmLocks
from snapgroup.rest.status import FAILED_JOB
from snapgroup.store.jobs import JobRecord, JobStore

log = logging.getLogger(__name__)

JOB_HEADER = "X-Job-UUID"
STATE_HEADER = "X-Job-State"
DEFAULT_WORKERS = 4
DEFAULT_RETENTION = 24 * 3600.0  # seconds a finished job's result stays to be fetched
DEFAULT_QUEUE_TIMEOUT = 600.0  # seconds a job waits for its VM before failing Busy
MAX_FINISHED = 10_000  # and at most this many of them in memory
WAITING, RUNNING, DONE = "Waiting", "Running", "Done"
_JOB_UUID = re.compile(r"^[0-9a-f]{32}$")

Work = Callable[[], dict[str, Any]]


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot): with the pid, names it uniquely."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def process_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def owner_is_dead(owner: str) -> bool:
    """True only when the owner was a process of this host that no longer runs."""
    host, _, rest = owner.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return _start_time(int(pid)) != started


@dataclass
class Job:
    uuid: str
    kind: str
    created: float
    status: int | None = None  # None until done; then 200 or 503
    document: dict[str, Any] = field(default_factory=dict)
    finished: float | None = None
    state: str = WAITING


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
        queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None  # made at the first job
        self._jobs: dict[str, Job] = {}  # this process's jobs
        self._claimed: set[str] = set()  # queued for this host, claimed, to be submitted
        self._lock = threading.Lock()
        self.retention = retention
        self.queue_timeout = queue_timeout
        self.clock = clock
        self.now = now
        self.owner = process_owner()
        self._store_factory: Callable[[], JobStore] | None = None
        self._store: JobStore | None = None
        # What a job waits on for its VM's turn: the engine's (Services sets them).
        self.locks: VmLocks = FileLocks()

    def attach(self, store_factory: Callable[[], JobStore]) -> None:
        """Keep jobs in the store `store_factory` opens (at first use)."""
        self._store_factory = store_factory

    def _shared(self) -> JobStore | None:
        if self._store is None and self._store_factory is not None:
            self._store = self._store_factory()
        return self._store

    def submit(self, job_uuid: str, kind: str, work: Work, *, vm_uuid: str | None = None) -> Job:
        """Start `work` (it returns the result document, or raises a SnapgroupError),
        after its turn on `vm_uuid` when one is named."""
        store = self._shared()
        with self._lock:
            self._forget_old()
            self._claimed.discard(job_uuid)
            existing = self._jobs.get(job_uuid)
            if existing is not None:
                self._same_kind(job_uuid, existing.kind, kind)
                return existing
            job = Job(job_uuid, kind, self.clock(), state=WAITING if vm_uuid else RUNNING)
            if store is not None:
                store.expire(self.now() - timedelta(seconds=self.retention))
                record = store.create(
                    job_uuid, kind, state=job.state, owner=self.owner, now=self.now()
                )
                if record.owner != self.owner:  # another process's (or a past server's)
                    self._same_kind(job_uuid, record.kind, kind)
                    return self._from_record(record)
            self._jobs[job_uuid] = job
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="snapgroup-job")
            self._pool.submit(self._run, job, work, vm_uuid)
        return job

    @staticmethod
    def _same_kind(job_uuid: str, known: str, kind: str) -> None:
        if known != kind:
            raise OperationError(f"job {job_uuid} already exists for another API ({known})")

    def claim(self, job_uuid: str) -> None:
        """A job queued for this host (rest/queue.py), now this process's: its request,
        replayed, runs it (`find` does not answer it until `submit` has)."""
        with self._lock:
            self._claimed.add(job_uuid)

    def unclaim(self, job_uuid: str) -> None:
        with self._lock:
            self._claimed.discard(job_uuid)

    def find(self, job_uuid: str, kind: str) -> Job | None:
        """The job of that uuid if there is one (OperationError, a 409, when it was for
        another API: a uuid names one request)."""
        with self._lock:
            if job_uuid in self._claimed:
                return None
        job = self._lookup(job_uuid)
        if job is not None:
            self._same_kind(job_uuid, job.kind, kind)
        return job

    def get(self, job_uuid: str) -> Job:
        job = self._lookup(job_uuid.strip().lower().replace("-", ""))
        if job is None:
            raise NotFound(f"no job {job_uuid} (unknown, or its result has expired)")
        return job

    def _lookup(self, job_uuid: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_uuid)
        if job is not None:
            return job
        store = self._shared()
        record = store.get(job_uuid) if store is not None else None
        if record is None:
            return None
        if record.state != DONE and owner_is_dead(record.owner):
            assert store is not None
            error = InternalError(
                f"the server running job {job_uuid} ({record.kind}) stopped before it "
                "finished; its operation was journaled and `recover` finished or rolled "
                "it back (`snapgroup operations` shows which)"
            )
            store.finish(job_uuid, FAILED_JOB, {"error": error.to_dict()}, self.now())
            record = store.get(job_uuid) or record
        return self._from_record(record)

    def _from_record(self, record: JobRecord) -> Job:
        done = record.state == DONE
        return Job(
            record.uuid,
            record.kind,
            self.clock(),
            status=record.status if done else None,
            document=record.document,
            finished=self.clock() if done else None,
            state=record.state,
        )

    def _set_state(self, job: Job, state: str) -> None:
        job.state = state
        store = self._shared()
        if store is not None:
            store.set_state(job.uuid, state)

    def _wait_turn(self, job: Job, vm_uuid: str, deadline: float) -> None:
        """Until no operation holds the VM (Busy past the deadline)."""
        while True:
            with self.locks.try_vm(vm_uuid) as free:
                if free:
                    return
            if job.state != WAITING:
                self._set_state(job, WAITING)
            if time.monotonic() >= deadline:
                raise Busy(
                    f"VM {vm_uuid} stayed busy with other operations for the job's "
                    f"{self.queue_timeout:g} s queue timeout"
                )
            time.sleep(POLL_SECONDS)

    def _attempt(self, job: Job, work: Work, vm_uuid: str | None) -> dict[str, Any]:
        deadline = time.monotonic() + self.queue_timeout
        while True:
            if vm_uuid is not None:
                self._wait_turn(job, vm_uuid, deadline)
            self._set_state(job, RUNNING)
            try:
                return work()
            except Busy:
                # Another operation took the VM between our look and the engine's lock
                # (the engine raises Busy before it changes anything): wait again.
                if vm_uuid is None or time.monotonic() >= deadline:
                    raise

    def _run(self, job: Job, work: Work, vm_uuid: str | None) -> None:
        try:
            document = self._attempt(job, work, vm_uuid)
            status = FAILED_JOB if document.get("error") else 200
        except SnapgroupError as exc:
            document, status = {"error": exc.to_dict()}, FAILED_JOB
        except Exception as exc:  # a bug: still an answer in the seed's shape
            log.exception("job %s (%s) failed unexpectedly", job.uuid, job.kind)
            document = {"error": InternalError(f"{type(exc).__name__}: {exc}").to_dict()}
            status = FAILED_JOB
        store = self._shared()
        if store is not None:
            try:
                store.finish(job.uuid, status, document, self.now())
            except SnapgroupError:  # this process still answers from memory
                log.exception("job %s: its result could not be stored", job.uuid)
        with self._lock:
            job.document, job.status, job.finished = document, status, self.clock()
            job.state = DONE

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
        """Waits for running and queued jobs: an operation is never abandoned half-way
        on purpose. A later job starts a new pool (an app may be started again)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
