"""Printing: the seed's JSON documents with --json, plain tables otherwise.
Every failure leaves through `abort`."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TextIO

from snapgroup.cli import group_text
from snapgroup.cli.group_text import table as table  # every command's tables
from snapgroup.domain.errors import SnapgroupError
from snapgroup.ops.notices import given

if TYPE_CHECKING:  # the dataclasses' modules: ~13 ms of a command that prints none
    from snapgroup.domain.inventory import Group
    from snapgroup.domain.models import BlockJobProgress


class Abort(SystemExit):
    pass


def print_json(document: dict[str, Any], out: TextIO) -> None:
    """The document, and beside its keys "warnings" when the command's operations gave
    any (commands.execute collects them: a VM taken over from another host)."""
    warnings = given()
    if warnings and "warnings" not in document:
        document = {**document, "warnings": warnings}
    # One write: json.dump writes each of its ~1,000 pieces (a 16-disk group) on its own,
    # which a daemon's client stream pays a Python call each for.
    out.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def abort(error: SnapgroupError, *, as_json: bool, out: TextIO, err: TextIO) -> NoReturn:
    if as_json:
        print_json({"error": error.to_dict()}, out)
    else:
        err.write(f"error {error.code}: {error.details}\n")
        cause = error.cause
        while cause is not None:
            err.write(f"  caused by {cause.code}: {cause.details}\n")
            cause = cause.cause
    raise Abort(1)


def group_summary(groups: Sequence[Group], out: TextIO) -> None:
    from snapgroup.domain.inventory import date_memo

    date = date_memo()  # not the whole inventory (every ref's) for one date
    rows = [(g.uuid, g.name, g.vm_uuid, g.snapshot_count, date(g.create_date)) for g in groups]
    table(rows, group_text.SUMMARY_HEADERS, out)


def group_detail(group: Group, out: TextIO) -> None:
    group_text.group_detail(group.to_inventory(), out)


class _Result(Protocol):  # DeleteResult, RevertResult (read-only: frozen dataclasses)
    @property
    def snapshot_uuid(self) -> str: ...
    @property
    def volume_uuid(self) -> str: ...
    @property
    def success(self) -> bool: ...
    @property
    def error(self) -> SnapgroupError | None: ...


def results_table(
    results: Sequence[_Result],
    error: SnapgroupError | None,
    out: TextIO,
    err: TextIO,
    *,
    volume_first: bool = False,
) -> int:
    """Per-snapshot (or per-volume) results of a delete or revert; the exit status."""
    rows = []
    for r in results:
        ids = (r.volume_uuid, r.snapshot_uuid) if volume_first else (r.snapshot_uuid, r.volume_uuid)
        rows.append((*ids, "ok" if r.success else "FAILED", r.error.details if r.error else ""))
    names = ["VOLUME", "SNAPSHOT"] if volume_first else ["SNAPSHOT", "VOLUME"]
    table(rows, [*names, "RESULT", "ERROR"], out)
    if error:
        err.write(f"error {error.code}: {error.details}\n")
    return 1 if error else 0


class ProgressPrinter:
    """Shows a merge's progress on a terminal; silent when stderr is not one."""

    def __init__(self, label: str, err: TextIO = sys.stderr) -> None:
        self.label = label
        self.err = err
        self.enabled = err.isatty()

    def __call__(self, progress: BlockJobProgress) -> None:
        if self.enabled and progress.end > 0:
            pct = 100.0 * progress.cur / progress.end
            self.err.write(f"\r{self.label}: {pct:5.1f}%")
            self.err.flush()
            if progress.cur >= progress.end:
                self.err.write("\n")


def print_plan(plan: dict[str, Any], out: TextIO, *, as_json: bool) -> int:
    """A delete's plan (ops/delete_plan.py DeletePlan.to_json): `{"plan": …}` under
    --json, else a table per disk and the space per filesystem. Exit status 1 when the
    delete would be refused."""
    if as_json:
        print_json({"plan": plan}, out)
    else:
        write_plan(plan, out)
    return 1 if plan["wouldRefuse"] else 0


def write_plan(plan: dict[str, Any], out: TextIO) -> None:
    how = "live (libvirt block commit)" if plan["live"] else "offline (qemu-img)"
    out.write(f"delete {plan['groupUuid']} ({plan['groupName']}), {plan['mode']}, {how}\n")
    rows = [
        (
            d["target"],
            d["snapshotUuid"],
            d["kind"] or "-",
            f"{d['mergeFrom']} -> {d['mergeInto']}" if d["mergeFrom"] else "-",
            d["bytes"],
            d["refused"] or ("already deleted" if d["alreadyDeleted"] else "ok"),
        )
        for d in plan["disks"]
    ]
    table(rows, ["DISK", "SNAPSHOT", "KIND", "MERGE", "BYTES", "CHECK"], out)
    for s in plan["space"]:
        verdict = "fits" if s["fits"] else "DOES NOT FIT"
        out.write(f"space on {s['directory']}: {s['needed']} needed, {s['free']} free: {verdict}\n")
    if plan["wouldRefuse"]:
        out.write("would be refused: " + "; ".join(plan["problems"]) + "\n")
    else:
        out.write("nothing changed (dry run)\n")
