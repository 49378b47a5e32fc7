"""The public Python API: `open_engine` (the real adapters: libvirt, qemu-img, the
SQLModel store) and `Engine`, whose methods hand each call to its use case in ops/.
Only the entry points (cli/, rest/) and callers outside the package import this.

Engine's methods, by what they act on: engine.py (groups, a VM's volumes and snapshots,
the journal), backups.py (a backup repository), files.py (the files of a group or a
backup), policies.py (protection and snapshot policies). Each method imports its use
case when first called: a command loads only the use cases it runs (`snapgroup list`:
no backups, no policies, no file browser)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from snapgroup.adapters.libvirt_hv import LibvirtHypervisor
from snapgroup.adapters.qemu_img import QemuImg
from snapgroup.api.engine import Engine
from snapgroup.domain.errors import InvalidArgument
from snapgroup.domain.models import DeleteMode
from snapgroup.ops.context import utcnow
from snapgroup.ops.notices import collecting as collect_warnings
from snapgroup.store.db import Database

if TYPE_CHECKING:
    from snapgroup.ports import Clock

# `with collect_warnings() as warnings: engine.create(...)`: the warnings the calls in
# the block gave (a VM taken over from another host: "VM ... taken over from host ...")
# as strings, in order; the CLI prints them, REST job results carry them ("warnings").
__all__ = ["DeleteMode", "Engine", "collect_warnings", "open_engine"]

DEFAULT_URI = "qemu:///system"
# For tests only: a fixed "now" (ISO 8601) for the engine's clock and the policy pass,
# read here and nowhere else. Never set it on a real host: groups would all carry it.
TEST_NOW_ENV = "SNAPGROUP_TEST_NOW"


def test_clock() -> Clock | None:
    """The fixed clock SNAPGROUP_TEST_NOW asks for (a naive time is UTC), else None."""
    value = os.environ.get(TEST_NOW_ENV)
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"{TEST_NOW_ENV}={value!r}: not an ISO 8601 time") from None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return lambda: moment


def default_uri() -> str:
    return os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI


def open_engine(
    *, connect: str | None = None, db: str | None = None, lock_wait: float = 0.0
) -> Engine:
    """`connect`: a libvirt URI (default LIBVIRT_DEFAULT_URI or qemu:///system);
    `db`: any SQLAlchemy URL (default SNAPGROUP_DB or /var/lib/snapgroup/snapgroup.db)."""
    return Engine(
        hypervisor=LibvirtHypervisor(connect or default_uri()),
        images=QemuImg(),
        db=Database(db),
        lock_wait=lock_wait,
        clock=test_clock() or utcnow,
    )
