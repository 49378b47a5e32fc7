"""SessionGuard: every call but login/logout/the session check and the OpenAPI
document needs `Authorization: OAuth <live session>`. An ASGI middleware, so a caller
without one is answered 401 before anything else happens: no body read, no argument
checked, nothing done."""

from __future__ import annotations

import json
import re

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from snapgroup.domain.errors import InvalidSession, SnapgroupError
from snapgroup.rest.auth import session_from_header
from snapgroup.rest.services import Services
from snapgroup.rest.status import http_status


class SessionGuard:
    def __init__(self, app: ASGIApp, *, services: Services) -> None:
        self.app = app
        self.services = services
        prefix = re.escape(services.prefix)
        self._public = re.compile(
            rf"^(?:PUT {prefix}/accounts/login"
            rf"|DELETE {prefix}/accounts/sessions/[^/]+"
            rf"|GET {prefix}/accounts/sessions/[^/]+/valid"
            rf"|GET {prefix}/openapi\.json"
            rf"|PUT {prefix}/management-nodes/actions)/?$"  # GetVersion needs no session
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._public.match(f"{scope['method']} {scope['path']}"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            token = session_from_header(headers.get("authorization"))
            accounts = self.services.accounts
            if accounts.db.local_reads:  # a SQLite file: ~30 us, less than a thread hop
                accounts.validate(token)
            else:  # a database server: its round trip must not block the event loop
                await anyio.to_thread.run_sync(accounts.validate, token)
        except SnapgroupError as error:
            await _refuse(send, error)
            return
        await self.app(scope, receive, send)


async def _refuse(send: Send, error: SnapgroupError) -> None:
    """The seed's error document, from the middleware (no handlers out here)."""
    body = json.dumps({"error": error.to_dict()}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if isinstance(error, InvalidSession):
        headers.append((b"www-authenticate", b"OAuth"))
    await send({"type": "http.response.start", "status": http_status(error), "headers": headers})
    await send({"type": "http.response.body", "body": body})
