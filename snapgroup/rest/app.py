"""create_app: the seed's REST API, wire-compatible with ZStack clients, on an Engine.

Nothing is opened when the app is made: the engine (and so the store and libvirt) is
built by `engine_factory` at the first request that needs it.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import FastAPI

from snapgroup.api import Engine
from snapgroup.rest import status
from snapgroup.rest.auth import DEFAULT_SESSION_TIMEOUT
from snapgroup.rest.guard import SessionGuard
from snapgroup.rest.jobs import (
    DEFAULT_QUEUE_TIMEOUT,
    DEFAULT_RETENTION,
    DEFAULT_WORKERS,
    JobRegistry,
)
from snapgroup.rest.routes import (
    accounts,
    backups,
    files,
    groups,
    jobs,
    management,
    policies,
    resources,
    schedulers,
    snapshots,
)
from snapgroup.rest.services import Services
from snapgroup.store.jobs import JobStore

DEFAULT_CONTEXT_PATH = "/zstack"


def normalize_context_path(path: str) -> str:
    """ "/zstack", "zstack/" -> "/zstack"; "" and "/" -> "" (the API at /v1)."""
    stripped = path.strip().strip("/")
    return f"/{stripped}" if stripped else ""


def create_app(
    engine_factory: Callable[[], Engine],
    *,
    context_path: str = DEFAULT_CONTEXT_PATH,
    session_timeout: float = DEFAULT_SESSION_TIMEOUT,
    workers: int = DEFAULT_WORKERS,
    job_retention: float = DEFAULT_RETENTION,
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    new_uuid: Callable[[], str] = lambda: uuidlib.uuid4().hex,
    backup_repositories: Mapping[str, str] | None = None,
) -> FastAPI:
    """`engine_factory` is called once, at first use, from a worker thread; the engine
    it returns is shared by every request and job (see snapgroup.rest.jobs).
    `backup_repositories`: name -> absolute directory, the repositories clients may use."""
    ctx = normalize_context_path(context_path)
    registry = JobRegistry(workers=workers, retention=job_retention, queue_timeout=queue_timeout)
    services = Services(
        engine_factory,
        context_path=ctx,
        jobs=registry,
        session_timeout=session_timeout,
        clock=clock,
        new_uuid=new_uuid,
        repositories=backup_repositories,
    )
    registry.attach(lambda: JobStore(services.engine.db))  # jobs outlive the process

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        registry.shutdown()  # let running operations finish

    app = FastAPI(
        title="snapgroup",
        summary="ZStack's VolumeSnapshotGroup API on a KVM host",
        version="1",
        openapi_url=f"{ctx}/v1/openapi.json",
        docs_url=None,  # the docs pages load scripts from a CDN: not on a host like this
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.services = services
    status.install(app)
    for module in (
        accounts,
        backups,
        files,
        groups,
        jobs,
        management,
        policies,
        schedulers,
        resources,
        snapshots,
    ):
        app.include_router(module.router, prefix=f"{ctx}/v1")
    app.add_middleware(SessionGuard, services=services)
    return app
