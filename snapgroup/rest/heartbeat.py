"""A serving host's lease (domain/ownership.py): renewed while `serve` runs, every
third of the lease, with the address other hosts reach this server at; erased when the
server stops. A server killed with -9 stops renewing: its lease runs out and another
host may take over the VMs it ran (once they run there)."""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from snapgroup.api import Engine
from snapgroup.domain.errors import SnapgroupError

log = logging.getLogger(__name__)


class Heartbeat:
    """`with Heartbeat(engine, address):` for the server's life."""

    def __init__(self, engine: Engine, address: str) -> None:
        self.engine, self.address = engine, address
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
        while not self._stop.wait(every):
            try:
                self.engine.heartbeat(address=self.address)
            except SnapgroupError as exc:  # the store or libvirt away: try again later
                log.warning("cannot renew this host's lease: %s", exc)

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
