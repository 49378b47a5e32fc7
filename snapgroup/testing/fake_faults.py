"""What every fake shares (FakeHypervisor, FakeImageTool): the failures a test injects by
method (fakes.py says how), the log of calls (`called`), and the lock each method runs
under (`serialised`)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

from snapgroup.domain.errors import SnapgroupError


class Faults:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.fail: dict[str, SnapgroupError] = {}
        self.fail_after: dict[str, int] = {}
        self.fail_times: dict[str, int] = {}
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def _call(self, method: str, *args: object) -> None:
        self.calls.append((method, args))
        if method in self.fail:
            remaining = self.fail_after.get(method, 0)
            if remaining > 0:
                self.fail_after[method] = remaining - 1
                return
            error = self.fail[method]
            if method in self.fail_times:
                self.fail_times[method] -= 1
                if self.fail_times[method] <= 0:
                    del self.fail[method], self.fail_times[method]
            raise error

    def called(self, method: str) -> list[tuple[object, ...]]:
        return [args for name, args in self.calls if name == method]


_F = TypeVar("_F", bound=Faults)
_P = ParamSpec("_P")
_R = TypeVar("_R")


def serialised(method: Callable[Concatenate[_F, _P], _R]) -> Callable[Concatenate[_F, _P], _R]:
    """The method under the fake's lock: one thread at a time changes or reads its state
    (a read-modify-write of a domain's disks from two threads lost a pivot)."""

    @functools.wraps(method)
    def locked(self: _F, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self.lock:
            return method(self, *args, **kwargs)

    return locked
