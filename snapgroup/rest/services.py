"""What the routes share: the one Engine (built on first use, never at import), the
accounts, the job registry, and the URL layout."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from snapgroup.api import Engine
from snapgroup.domain.errors import NotFound
from snapgroup.domain.ownership import OwnedElsewhere
from snapgroup.ops.notices import collecting
from snapgroup.rest import prechecks
from snapgroup.rest.auth import Accounts
from snapgroup.rest.forward import FORWARDED, OwnerUnreachable, forward, forwardable
from snapgroup.rest.jobs import JobRegistry, Work, job_uuid_from_header

log = logging.getLogger(__name__)


class Services:
    def __init__(
        self,
        engine_factory: Callable[[], Engine],
        *,
        context_path: str,
        jobs: JobRegistry,
        session_timeout: float,
        clock: Callable[[], datetime],
        new_uuid: Callable[[], str],
        repositories: Mapping[str, str] | None = None,
    ) -> None:
        self._engine_factory = engine_factory
        # name -> directory: the backup repositories a client may name. A client never
        # gives a path: what the server (root) writes is the operator's choice.
        self.repositories = dict(repositories or {})
        self.context_path = context_path
        self.jobs = jobs
        self._session_timeout = session_timeout
        self._clock = clock
        self.new_uuid = new_uuid
        self._engine: Engine | None = None
        self._accounts: Accounts | None = None
        self._lock = threading.Lock()

    @property
    def prefix(self) -> str:
        return f"{self.context_path}/v1"

    def repository(self, ref: str) -> str:
        """The directory of the served repository `ref` names (its name, or its path as
        a policy records it); NotFound for any other."""
        if ref in self.repositories:
            return self.repositories[ref]
        if os.path.isabs(ref) and os.path.normpath(ref) in self.repositories.values():
            return os.path.normpath(ref)
        served = ", ".join(sorted(self.repositories)) or "none"
        raise NotFound(
            f"no backup repository {ref[:100]!r} on this server (served: {served}; "
            "`snapgroup serve --backup-repo NAME=DIR` serves one)"
        )

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = self._engine_factory()
                self.jobs.locks = self._engine.ctx.locks  # a job waits on the engine's
            return self._engine

    @property
    def accounts(self) -> Accounts:
        engine = self.engine
        with self._lock:
            if self._accounts is None:
                self._accounts = Accounts(
                    engine.db, session_timeout=self._session_timeout, clock=self._clock
                )
            return self._accounts

    def start_job(
        self,
        request: Request,
        kind: str,
        job_header: str,
        precheck: Callable[[], Work],
    ) -> JSONResponse:
        """202 + location. `precheck` refuses a request at once (400/404/409, nothing
        started) or returns the work. A job uuid sent again gets its job's location:
        the client retried, the work is not done twice."""
        job_uuid = job_uuid_from_header(job_header or None, self.new_uuid)
        job = self.jobs.find(job_uuid, kind)
        if job is None:
            prechecks.take_named_vm()  # nothing left from an earlier request
            try:
                with collecting() as warnings:  # a take-over in the checks, said too
                    work = precheck()
            except OwnedElsewhere as elsewhere:  # the VM's owner answers, or will
                return self._elsewhere(request, elsewhere, kind, job_uuid)
            work = saying(warnings, work)
            job = self.jobs.submit(job_uuid, kind, work, vm_uuid=prechecks.take_named_vm())
        location = f"{str(request.base_url).rstrip('/')}{self.prefix}/api-jobs/{job.uuid}"
        return JSONResponse({"location": location}, status_code=202)

    def _elsewhere(
        self, request: Request, elsewhere: OwnedElsewhere, kind: str, job_uuid: str
    ) -> JSONResponse:
        """Forwarded to the owner's server, else queued for the owner (rest/queue.py);
        refused only when neither applies (a forwarded request, a VM settling, an
        owner that is not a registered host)."""
        if FORWARDED in request.headers:
            raise elsewhere
        if forwardable(request, elsewhere):
            try:
                return forward(
                    request, elsewhere, prefix=self.prefix, host=self.engine.host, job_uuid=job_uuid
                )
            except OwnerUnreachable as exc:
                if elsewhere.queue_for is None:
                    raise
                log.warning("%s: queued instead", exc.details)
        if elsewhere.queue_for is None:
            raise elsewhere
        from snapgroup.rest.queue import enqueue

        return enqueue(self, request, elsewhere, kind=kind, job_uuid=job_uuid)


def saying(before: list[str], work: Work) -> Work:
    """`work`, whose result document also carries "warnings" (beside ZStack's keys)
    when the request's checks or the job's operations gave any: a VM taken over."""

    def run() -> dict[str, Any]:
        with collecting() as warnings:
            document = work()
        said = [*before, *warnings]
        return {**document, "warnings": said} if said and "warnings" not in document else document

    return run


async def services(request: Request) -> Services:
    """async: FastAPI runs a plain def dependency in a worker thread (a thread hop on
    every request, ~0.3 ms) for what is one attribute read."""
    found: Services = request.app.state.services
    return found
