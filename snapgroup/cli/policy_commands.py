"""The snapshot-policy commands, registered together (one entry in commands.COMMANDS):
policy, autosnap, protect/unprotect, install-units; each has its own module."""

from __future__ import annotations

from typing import Any

from snapgroup.cli import autosnap, install_units, policy, protect


def register(sub: Any) -> None:
    for command in (policy, autosnap, protect, install_units):
        command.register(sub)
