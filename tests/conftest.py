"""Lab tests need a real libvirtd + QEMU. They skip where the machine truly cannot run
them, except when SNAPGROUP_REQUIRE_LAB=1 (set by .ci/run): then a missing stack fails."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from snapgroup.store.db import Database
from tests.pgtools import PG_ENV, configured_url, private_database


def _lab_missing() -> str | None:
    for tool in ("qemu-img", "qemu-io", "virsh", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    probe = subprocess.run(
        ["virsh", "-c", "qemu:///system", "version"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"libvirtd not reachable: {probe.stderr.strip()}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any("lab" in item.keywords for item in items):
        return
    missing = _lab_missing()
    if missing is None:
        return
    if os.environ.get("SNAPGROUP_REQUIRE_LAB") == "1":
        raise pytest.UsageError(f"lab tests are required here but cannot run: {missing}")
    skip = pytest.mark.skip(reason=f"lab stack unavailable: {missing}")
    for item in items:
        if "lab" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A private PostgreSQL database for this session. Skips when no server is
    configured (SNAPGROUP_TEST_PG_URL), except under SNAPGROUP_REQUIRE_LAB=1: a failure."""
    base = configured_url()
    required = os.environ.get("SNAPGROUP_REQUIRE_LAB") == "1"
    if base is None:
        if required:
            pytest.fail(f"PostgreSQL is required here but {PG_ENV} is not set (make postgres)")
        pytest.skip(f"no PostgreSQL server: {PG_ENV} is not set (make postgres)")
    try:
        databases = private_database(base)
        url = next(databases)
    except Exception as exc:
        if required:
            pytest.fail(f"PostgreSQL is required here but unusable: {exc}")
        pytest.skip(f"PostgreSQL at {PG_ENV} is unusable: {exc}")
    yield url
    databases.close()  # drops the private database


@pytest.fixture(scope="session")
def pg_store(pg_url: str) -> Iterator[Database]:
    """One store on the session's PostgreSQL database (tests empty it after use)."""
    db = Database(pg_url)
    yield db
    db.dispose()
