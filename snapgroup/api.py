"""Wiring: an Engine on the real adapters (libvirt, qemu-img, SQLModel store)."""

from __future__ import annotations

import os

from snapgroup.adapters.libvirt_hv import LibvirtHypervisor
from snapgroup.adapters.qemu_img import QemuImg
from snapgroup.engine import Engine
from snapgroup.store.db import Database

DEFAULT_URI = "qemu:///system"


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
    )
