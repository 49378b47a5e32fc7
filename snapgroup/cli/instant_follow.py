"""snapgroup instant-follow OPERATION: the background follower `restore --instant` and
`clone --instant` leave running (not for people: its help is hidden). It pulls an
instant VM's disks local one after another and finishes the copy; killed, the copy is
finished by `recover`, which every command runs first."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

from snapgroup.cli.context import Context


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "instant-follow",
        description="Drive an instant recovery's copy to its end (started by "
        "restore/clone --instant).",
    )
    parser.add_argument("operation", metavar="OPERATION")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    ctx.engine.instant_follow(args.operation)
    return 0


def spawn(args: argparse.Namespace, operation: str) -> int:
    """Start the follower of `operation` on its own (a new session, no terminal), with
    the command's store and libvirt URI; its pid."""
    argv = [sys.executable, "-m", "snapgroup"]
    if args.connect:
        argv += ["--connect", args.connect]
    if args.db:
        argv += ["--db", args.db]
    argv += ["instant-follow", operation]
    proc = subprocess.Popen(  # noqa: S603 (our own interpreter and module, an argv list)
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "SNAPGROUP_NO_DAEMON": "1"},
    )
    return proc.pid
