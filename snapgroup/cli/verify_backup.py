"""snapgroup verify-backup --at DIR [BACKUP]: exit 1 when anything is bad."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import print_json


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "verify-backup",
        description="Check every file the backup (default: every backup) reads: its "
        "SHA-256 against the manifest and `qemu-img check`. Exit status 1 when any file "
        "is missing or damaged; each is named with the backups it breaks.",
    )
    parser.add_argument("backup", nargs="?", metavar="BACKUP")
    parser.add_argument("--at", required=True, metavar="DIR", help="the repository")
    parser.set_defaults(run=run, paths=("at",))  # the daemon runs it when absolute


def run(args: argparse.Namespace, ctx: Context) -> int:
    report = ctx.engine.verify_backup(at=args.at, backup_id=args.backup)
    if ctx.as_json:
        print_json(report.to_dict(), ctx.out)
        return 0 if report.clean else 1
    for f in report.findings:
        breaks = sorted(b for b, files in report.broken.items() if f.name in files)
        ctx.out.write(f"BAD {f.name}: {f.problem}; breaks {', '.join(breaks)}\n")
    ctx.out.write(
        f"{len(report.checked)} backups checked, "
        f"{'clean' if report.clean else f'{len(report.findings)} bad files'}\n"
    )
    return 0 if report.clean else 1
