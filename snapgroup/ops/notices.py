"""Warnings an operation gives its caller beside its result (a take-over of the VM:
ops/ownership.py). An entry point collects them around a command or a REST job
(`collecting`) and shows them with the result; a Python caller does the same
(snapgroup.api.collect_warnings); outside one they are only logged (WARNING, logger
snapgroup.ops.notices). A collector inside another hands its warnings on to the outer
one too: every caller up the stack sees them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

log = logging.getLogger(__name__)

_collected: ContextVar[list[str] | None] = ContextVar("snapgroup_warnings", default=None)


@contextmanager
def collecting() -> Iterator[list[str]]:
    """The warnings given in this thread while the block runs, in order."""
    found: list[str] = []
    token = _collected.set(found)
    try:
        yield found
    finally:
        _collected.reset(token)
        outer = _collected.get()
        if outer is not None:
            outer.extend(found)


def warn(message: str) -> None:
    """Said to the caller when one collects (logged at INFO), else logged as a warning."""
    found = _collected.get()
    if found is None:
        log.warning("%s", message)
    else:
        log.info("%s", message)
        found.append(message)


def given() -> list[str]:
    """The warnings collected so far (none when nothing collects)."""
    return list(_collected.get() or ())
