"""Which host this process is. Many hosts may share one store (PostgreSQL); each row
that belongs to a VM's files says which host owns them, and a host only operates on
its own VMs."""

from __future__ import annotations

import os
import socket

HOST_ENV = "SNAPGROUP_HOST"


def local_host() -> str:
    """SNAPGROUP_HOST (tests play several hosts on one machine), else the hostname."""
    return os.environ.get(HOST_ENV) or socket.gethostname()
