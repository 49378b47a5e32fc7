"""A serving host's lease (domain/ownership.py): renewed while `serve` runs, every
third of the lease, with the address other hosts reach this server at; erased when the
server stops. A server killed with -9 stops renewing: its lease runs out and another
host may take over the VMs it ran (once they run there). Between renewals, every
PICKUP_SECONDS, it runs the requests other hosts queued for this one (rest/queue.py)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

from snapgroup.api import Engine
from snapgroup.domain.errors import SnapgroupError

log = logging.getLogger(__name__)

PICKUP_SECONDS = 2.0


class Heartbeat:
    """`with Heartbeat(engine, address, pickup=...):` for the server's life. `pickup`:
    runs the requests queued for this host (rest.queue.Pickup)."""

    def __init__(
        self, engine: Engine, address: str, *, pickup: Callable[[], object] | None = None
    ) -> None:
        self.engine, self.address, self.pickup = engine, address, pickup
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        every = self.engine.heartbeat(address=self.address) / 3  # registered before serving
        self._thread = threading.Thread(
            target=self._run, args=(every,), name="snapgroup-heartbeat", daemon=True
        )
        self._thread.start()
        return self

    def _run(self, every: float) -> None:
        renewed = time.monotonic()
        tick = every if self.pickup is None else min(every, PICKUP_SECONDS)
        while not self._stop.wait(tick):
            if time.monotonic() - renewed >= every:
                try:
                    self.engine.heartbeat(address=self.address)
                    renewed = time.monotonic()
                except SnapgroupError as exc:  # the store or libvirt away: try again later
                    log.warning("cannot renew this host's lease: %s", exc)
            if self.pickup is not None:
                try:
                    self.pickup()
                except Exception:  # a bug or the store away: the server goes on serving
                    log.exception("cannot run the requests queued for this host")

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.engine.heartbeat(serving=False)
        except SnapgroupError as exc:
            log.warning("cannot erase this server's address from the registry: %s", exc)
