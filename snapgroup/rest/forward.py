"""An operation on a VM another host owns, forwarded to that host's `serve` (its address
in the host registry, domain/ownership.py): the client that talks to any host of the
store is answered by the VM's owner, as if it had asked it. The same request goes on:
method, path below the context path, query, body, the session (sessions are in the
shared store) and the job's uuid; the owner's answer comes back (its status and JSON
document), a job's location pointing back at this server: the job's state is in the
store, which every server answers polls from, so the client talks to this host alone.
A forwarded request is never forwarded again."""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request

import anyio.from_thread
from fastapi import Request
from fastapi.responses import JSONResponse

from snapgroup.domain.errors import InternalError
from snapgroup.domain.ownership import OwnedElsewhere

log = logging.getLogger(__name__)

FORWARDED = "X-Snapgroup-Forwarded"  # the header a forwarded request carries
PASSED = ("authorization", "content-type", "accept")  # and the job's uuid, always
TIMEOUT = 30.0  # seconds: the owner answers 202 at once (the work runs as its job)
_JOB_LOCATION = re.compile(r"/api-jobs/([0-9a-f]{32})$")


def forwardable(request: Request, elsewhere: OwnedElsewhere) -> bool:
    address = elsewhere.address or ""
    return address.startswith(("http://", "https://")) and FORWARDED not in request.headers


class OwnerUnreachable(InternalError):
    """The owner's server did not answer: the request is queued for it instead."""


def forward(
    request: Request, elsewhere: OwnedElsewhere, *, prefix: str, host: str, job_uuid: str
) -> JSONResponse:
    """`request` (of this server, whose API is at `prefix`) sent to the owner's server,
    as job `job_uuid` (sent again, or queued after a timeout, it is never done twice).
    Called from the route's worker thread; the body is read on the event loop."""
    assert elsewhere.address is not None
    body = anyio.from_thread.run(request.body)
    path = request.url.path.removeprefix(prefix)
    url = elsewhere.address.rstrip("/") + "/v1" + path
    if request.url.query:
        url += "?" + request.url.query
    headers = {k: v for k, v in request.headers.items() if k.lower() in PASSED}
    headers[FORWARDED] = host
    headers["X-Job-UUID"] = job_uuid
    outgoing = urllib.request.Request(
        url, data=body or None, headers=headers, method=request.method
    )
    log.info("forwarding %s %s to host %s", request.method, path, elsewhere.owner)
    try:
        with urllib.request.urlopen(outgoing, timeout=TIMEOUT) as answer:
            status, content = answer.status, answer.read()
    except urllib.error.HTTPError as refused:  # its 4xx / 5xx: the client's answer
        status, content = refused.code, refused.read()
    except (urllib.error.URLError, OSError) as exc:
        raise OwnerUnreachable(
            f"{elsewhere.details}; its server at {elsewhere.address} did not answer "
            f"the forwarded request: {getattr(exc, 'reason', exc)}"
        ) from exc
    try:
        document = json.loads(content) if content else None
    except ValueError:
        raise InternalError(
            f"{elsewhere.details}; its server at {elsewhere.address} answered the "
            f"forwarded request with HTTP {status} and no JSON document"
        ) from None
    if status == 202 and isinstance(document, dict):
        document = _located_here(document, request, prefix)
    return JSONResponse(document, status_code=status)


def _located_here(document: dict[str, object], request: Request, prefix: str) -> dict[str, object]:
    """The owner's job, polled at this server (its location rewritten)."""
    location = document.get("location")
    found = _JOB_LOCATION.search(location) if isinstance(location, str) else None
    if found is None:
        return document
    here = f"{str(request.base_url).rstrip('/')}{prefix}/api-jobs/{found.group(1)}"
    return {**document, "location": here}
