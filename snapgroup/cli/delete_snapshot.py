"""snapgroup delete-snapshot SNAPSHOT_UUID [--mode]: delete one volume snapshot alone."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import ProgressPrinter, print_json, table


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "delete-snapshot",
    )
    parser.add_argument("uuid", metavar="SNAPSHOT_UUID")
    parser.add_argument(
        "--mode",
        default="Permissive",
        choices=["Permissive", "Enforcing"],
        help="Permissive (default) refuses when a check fails; Enforcing reports the "
        "failure as a result. Neither ever breaks a chain",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    result = ctx.engine.delete_snapshot(
        args.uuid, mode=args.mode, progress=ProgressPrinter("merging", ctx.err)
    )
    response: dict[str, Any] = {"results": [result.to_dict()]}
    if result.error is not None:
        response["error"] = result.error.to_dict()
    if ctx.as_json:
        print_json(response, ctx.out)
    else:
        row = (
            result.snapshot_uuid,
            result.volume_uuid,
            "ok" if result.success else "FAILED",
            result.error.details if result.error else "",
        )
        table([row], ["SNAPSHOT", "VOLUME", "RESULT", "ERROR"], ctx.out)
    return 0 if result.success else 1
