"""snapgroup delete GROUP_UUID [--mode Permissive|Enforcing]."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import ProgressPrinter, print_json, results_table
from snapgroup.ops.delete import DeleteRefused


def register(sub: Any) -> None:
    parser = sub.add_parser("delete", help="delete a group, merging its snapshots away")
    parser.add_argument("uuid", metavar="GROUP_UUID")
    parser.add_argument(
        "--mode",
        default="Permissive",
        choices=["Permissive", "Enforcing"],
        help="Permissive (default) refuses when a check fails; Enforcing "
        "attempts every snapshot and always drops the group",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    try:
        report = ctx.engine.delete(
            args.uuid, mode=args.mode, progress=ProgressPrinter("merging", ctx.err)
        )
    except DeleteRefused as refused:
        report = refused.report  # nothing was done; each ref's result says why
    if ctx.as_json:
        print_json(report.to_response(), ctx.out)
        return 1 if report.error else 0
    return results_table(report.results, report.error, ctx.out, ctx.err)
