"""snapgroup backups --at DIR [--vm VM] [--tree]. Without a daemon, quick_backups.py
answers most command lines before argparse is imported, with the same listing and
printer (backup_text.py)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from snapgroup.cli import backup_text
from snapgroup.cli.context import Context
from snapgroup.cli.output import print_json


def register(sub: Any) -> None:
    parser = sub.add_parser("backups")
    parser.add_argument("--at", required=True, metavar="DIR", help="the repository")
    parser.add_argument("--vm", help="only this VM's (name or UUID)")
    parser.add_argument("--tree", action="store_true", help="each backup under its base")
    # Recovered here, only when the journal is not clean (run): else no engine at all.
    parser.set_defaults(run=run, paths=("at",), skip_auto_recover=True)


def run(args: argparse.Namespace, ctx: Context) -> int:
    # Manifests only: no engine (libvirt, the store and their imports, ~20 times the
    # listing's own time), as Engine.scan_backups would list them with its default
    # repositories (BackupRepo reads with RepositoryReader); the engine only to finish
    # an interrupted operation first.
    from snapgroup.adapters.backup_scan import RepositoryReader
    from snapgroup.cli.quick import journal_clean
    from snapgroup.ops.backup_listing import scan

    if not journal_clean(args.db, os.environ):
        ctx.engine.recover()
    found, damaged = scan(RepositoryReader, args.at, args.vm)
    if ctx.as_json:
        print_json(backup_text.document(found, damaged), ctx.out)
    else:
        backup_text.write(found, damaged, tree=args.tree, out=ctx.out, err=ctx.err)
    return 0
