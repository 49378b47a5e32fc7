"""Queued, never refused because the client picked the wrong host: a request for a VM
another registered host owns, whose `serve` does not answer (it serves nowhere, its
lease ran out, or its server is down), is queued in the store for that host
(store/queue.py) and answered as a job, Waiting until that host's `serve` picks it up
(Pickup, from its heartbeat: the request replayed to itself, acting for the account
that sent it, under the same job uuid) and runs it; any server answers its poll.
A queued job that no server of its host picks up within the job retention (a day)
fails; so do a retired host's (`snapgroup hosts --retire`)."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
import uuid as uuidlib
from datetime import timedelta
from typing import Any, Protocol

import anyio.from_thread
from fastapi import Request
from fastapi.responses import JSONResponse

from snapgroup.api import Engine
from snapgroup.domain.errors import Busy, InternalError, OperationError
from snapgroup.domain.ownership import OwnedElsewhere
from snapgroup.rest.auth import Accounts, session_from_header
from snapgroup.rest.forward import FORWARDED
from snapgroup.rest.jobs import WAITING, JobRegistry, owner_is_dead
from snapgroup.rest.status import FAILED_JOB
from snapgroup.store.jobs import JobStore
from snapgroup.store.queue import QueuedRequest, RequestQueue

log = logging.getLogger(__name__)
# The replay goes to our own loopback address, never through http_proxy/https_proxy
# (a proxy would be handed the replay's session token, and answer for another server).
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

REPLAY_SESSION_SECONDS = 120.0  # the session a replay acts under, ended once answered
TIMEOUT = 30.0


class Services(Protocol):
    """What this module uses of rest.services.Services (which calls it)."""

    @property
    def engine(self) -> Engine: ...
    @property
    def accounts(self) -> Accounts: ...
    @property
    def prefix(self) -> str: ...

    jobs: JobRegistry


def enqueue(
    services: Services, request: Request, elsewhere: OwnedElsewhere, *, kind: str, job_uuid: str
) -> JSONResponse:
    """The request queued for the VM's owner; 202 with the job's location here."""
    assert elsewhere.queue_for is not None
    account = services.accounts.validate(session_from_header(request.headers.get("authorization")))
    body = anyio.from_thread.run(request.body)
    queue = RequestQueue(services.engine.db)
    now = services.jobs.now()
    _give_up_old(services, queue)
    queued = QueuedRequest(
        job_uuid=job_uuid,
        kind=kind,
        host=elsewhere.queue_for,
        method=request.method,
        path=request.url.path.removeprefix(services.prefix),
        query=request.url.query,
        body=body.decode(),
        account_uuid=account.account_uuid,
    )
    if queue.put(queued, state=WAITING, now=now):
        log.info("queued %s %s for host %s: %s", kind, job_uuid, queued.host, elsewhere.details)
    location = f"{str(request.base_url).rstrip('/')}{services.prefix}/api-jobs/{job_uuid}"
    return JSONResponse({"location": location}, status_code=202)


def _give_up_old(services: Services, queue: RequestQueue) -> None:
    now = services.jobs.now()
    error = Busy(
        "the host that owns the VM did not pick this queued request up within "
        f"{services.jobs.retention:g} s (its `snapgroup serve` did not run)"
    )
    before = now - timedelta(seconds=services.jobs.retention)
    queue.fail(now=now, status=FAILED_JOB, document={"error": error.to_dict()}, before=before)


class Pickup:
    """`pickup()`: runs the requests queued for this host, by this host's `serve` at
    `base_url` (its own loopback address: http://127.0.0.1:8080/zstack)."""

    def __init__(self, services: Services, base_url: str) -> None:
        self.services, self.base_url = services, base_url.rstrip("/")

    def __call__(self) -> int:
        """How many it replayed."""
        services = self.services
        queue = RequestQueue(services.engine.db)
        _give_up_old(services, queue)
        claimed = queue.claim(services.engine.host, services.jobs.owner, stale=owner_is_dead)
        return sum(self._replay(queue, request) for request in claimed)

    def _replay(self, queue: RequestQueue, request: QueuedRequest) -> bool:
        """Sent to this server, and out of the queue once answered. A failure before
        the answer leaves it claimed in the queue: the next pickup tries it again."""
        services = self.services
        now = services.jobs.now()
        if not queue.account_exists(request.account_uuid):
            error = OperationError(
                "the account that sent this queued request was deleted before the host "
                "that owns the VM ran it"
            )
            self._failed(queue, request, {"error": error.to_dict()})
            return True
        services.jobs.claim(request.job_uuid)
        token = uuidlib.uuid4().hex
        accounts = services.accounts.store
        accounts.add_session(
            token,
            account_uuid=request.account_uuid,
            create_date=now,
            expired_date=now + timedelta(seconds=REPLAY_SESSION_SECONDS),
        )
        url = f"{self.base_url}/v1{request.path}" + (f"?{request.query}" if request.query else "")
        headers = {
            "Authorization": f"OAuth {token}",
            "Content-Type": "application/json",
            "X-Job-UUID": request.job_uuid,
            FORWARDED: "queue",  # never forwarded nor queued again
        }
        outgoing = urllib.request.Request(
            url, data=request.body.encode() or None, headers=headers, method=request.method
        )
        log.info("running queued job %s (%s %s)", request.job_uuid, request.method, url)
        try:
            with _DIRECT.open(outgoing, timeout=TIMEOUT) as answer:
                status, content = answer.status, answer.read()
        except urllib.error.HTTPError as refused:
            status, content = refused.code, refused.read()
        except (urllib.error.URLError, OSError) as exc:  # not serving yet: later
            log.warning("queued job %s: this server did not answer: %s", request.job_uuid, exc)
            services.jobs.unclaim(request.job_uuid)
            queue.release(request, services.jobs.owner)
            return False
        finally:
            accounts.delete_session(token)
        if status != 202:  # refused at once: the job's result says why
            services.jobs.unclaim(request.job_uuid)
            self._failed(queue, request, _error_document(status, content))
        else:
            queue.done(request.job_uuid)
        return True

    def _failed(
        self, queue: RequestQueue, request: QueuedRequest, document: dict[str, Any]
    ) -> None:
        JobStore(self.services.engine.db).finish(
            request.job_uuid, FAILED_JOB, document, self.services.jobs.now()
        )
        queue.done(request.job_uuid)


def _error_document(status: int, content: bytes) -> dict[str, Any]:
    try:
        document = json.loads(content)
    except ValueError:
        document = None
    if isinstance(document, dict) and "error" in document:
        return document
    error = InternalError(f"the queued request was answered HTTP {status} with no error document")
    return {"error": error.to_dict()}
