"""The least an HTTP API in Python answers with: uvicorn (as `snapgroup serve` runs it)
and an ASGI app replying `{}` to anything, no routing, no session, no query. The REST
rows of bench/rest_query.py are read against it: what HTTP alone costs here."""

from __future__ import annotations

from typing import Any

_BODY = b"{}"
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"2")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})
