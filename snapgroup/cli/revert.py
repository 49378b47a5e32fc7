"""snapgroup revert GROUP_UUID [--volumes UUID,...] [--no-safety-group] [--stop]."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import print_json, results_table
from snapgroup.domain.models import DEFAULT_STOP_TIMEOUT


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "revert",
        description="Restore every volume of the VM (or only --volumes) to the group's "
        "point in time. The VM must be stopped. By default a safety group of the current "
        "state is taken first, so nothing is lost; any group can be reverted to and the "
        "later ones stay usable. A memory group (create --with-memory) brings the VM back "
        "running at that moment (--paused: paused).",
    )
    parser.add_argument("uuid", metavar="GROUP_UUID")
    parser.add_argument(
        "--volumes",
        metavar="UUID[,UUID...]",
        help="restore only these volumes and leave the others as they are (also the way "
        "to revert to a group `check` reports unavailable)",
    )
    parser.add_argument(
        "--no-safety-group",
        action="store_true",
        help="skip the safety group: the current data of every restored volume is "
        "DISCARDED (its top file is deleted)",
    )
    parser.add_argument(
        "--stop",
        action="store_true",
        help="shut a running VM down first (ACPI; powered off after --stop-timeout)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=DEFAULT_STOP_TIMEOUT,
        metavar="SECONDS",
        help=f"with --stop: wait this long for the guest, then power off "
        f"(default {DEFAULT_STOP_TIMEOUT:g}; 0 powers off at once)",
    )
    parser.add_argument(
        "--paused",
        action="store_true",
        help="a memory group's VM is resumed paused (`virsh resume` lets it run)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    volumes = [v for v in args.volumes.split(",") if v.strip()] if args.volumes else None
    report = ctx.engine.revert(
        args.uuid,
        volumes=volumes,
        safety_group=not args.no_safety_group,
        stop=args.stop,
        stop_timeout=args.stop_timeout,
        paused=args.paused,
    )
    if ctx.as_json:
        print_json(report.to_response(), ctx.out)
    else:
        if report.safety_group is not None:
            ctx.out.write(f"safety group: {report.safety_group.uuid}\n")
        if report.resumed is not None:
            ctx.out.write(f"VM resumed from the group's memory state: {report.resumed}\n")
        if report.note:
            ctx.err.write(f"note: {report.note}\n")
        return results_table(report.results, report.error, ctx.out, ctx.err, volume_first=True)
    return 1 if report.error else 0
