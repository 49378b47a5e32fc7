"""snapgroup daemon [--socket PATH]: keep an engine open for the `snapgroup` command.

With it running, a command costs a bare interpreter's start-up plus the work itself
instead of ~0.9 s of imports (snapgroup.cli.launch); without it, or for what it
declines, every command runs as before. Foreground: run it under systemd or similar.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from snapgroup.cli.context import Context
from snapgroup.cli.wire import DEFAULT_SOCKET, SOCKET_ENV, socket_path

if TYPE_CHECKING:
    from snapgroup.api import Engine


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "daemon",
        description="Serve this host's `snapgroup` commands on a Unix socket (0600, "
        "root's): each then runs here, on an open libvirt connection and store, unless "
        "it asks for another store, libvirt URI or environment. Stops on SIGTERM or "
        "Ctrl-C once running commands finish.",
    )
    parser.add_argument(
        "--socket", metavar="PATH", help=f"default: ${SOCKET_ENV} or {DEFAULT_SOCKET}"
    )
    parser.set_defaults(run=run)


MAX_ENGINES = 16  # distinct --wait values kept; past them, an engine for the command alone


def shared_engines(base: Engine) -> Callable[[float], Engine]:
    """The engine for a command given --wait: one per value, shared by every command that
    gives it (an Engine serves threads, as `serve`'s one does), all on `base`'s libvirt
    connection, image tool and store. What an engine remembers is then not redone by
    each command: its lease, renewed lately by this process, is not read again."""
    from snapgroup.api import Engine

    engines = {base.lock_wait: base}
    lock = threading.Lock()

    def engine_for(wait: float) -> Engine:
        with lock:
            engine = engines.get(wait)
            if engine is None:
                engine = Engine(
                    hypervisor=base.hv,
                    images=base.images,
                    db=base.db,
                    lock_wait=wait,
                    freeze_timeout=base.freeze_timeout,
                    host=base.host,
                )
                if len(engines) < MAX_ENGINES:
                    engines[wait] = engine
            return engine

    return engine_for


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def run(args: argparse.Namespace, ctx: Context) -> int:
    # The server and the engine's whole stack, loaded when the daemon starts (not for
    # `snapgroup --help`, which lists this command).
    from snapgroup.api import default_uri
    from snapgroup.cli.command_server import CommandServer, listen
    from snapgroup.store.db import default_url

    path = Path(args.socket or socket_path())
    server = CommandServer(
        listen(path),
        connect=args.connect or default_uri(),
        db=args.db or default_url(),
        engine_for=shared_engines(ctx.engine),  # opened and recovered before the first client
    )
    handler = logging.StreamHandler(ctx.err)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    daemon_log = logging.getLogger("snapgroup.daemon")
    daemon_log.addHandler(handler)
    daemon_log.setLevel(logging.INFO)
    daemon_log.propagate = False
    signal.signal(signal.SIGTERM, _stop)
    ctx.err.write(f"snapgroup daemon listening on {path}\n")
    ctx.err.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        path.unlink(missing_ok=True)
    sys.stderr.flush()
    return 0
