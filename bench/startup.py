"""Start-up (issue 20): what a `snapgroup` command costs as a whole process, before and
around its work, next to `virsh list`, on a store of a lab VM's groups.

Per round, back to back in rotated order, each a new process:

* `snapgroup --help` (target <= 100 ms), beside a bare `python -c pass`;
* the reads `list`, `show GROUP` and `backups --at DIR` without the daemon, and `list`
  served by a running `snapgroup daemon`; each against twice `virsh list` plus the
  read's own time, the same call on the Python API in a warm process, taken in the same
  round (target: ratio <= 1);
* floors: `python -c 'import sqlalchemy'` and `python -c 'import snapgroup.api'` (what
  a read without the daemon imports before it can ask the store anything).

Creates, exports: bench/create_live.py and bench/export.py (their CLI process rows).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import lab
from bench.timing import Row, Stats, Target, ms, ratios, rounds, timed
from snapgroup.api import Engine
from snapgroup.domain.zquery import Query

NAME = "startup"
GROUPS = 10
HELP_TARGET = Target("<=", 100.0, on="ours")
READ_TARGET = Target("<=", 1.0)


def _process(argv: Sequence[str], env: dict[str, str]) -> Callable[[], float]:
    def run() -> float:
        def go() -> None:
            done = subprocess.run(  # noqa: S603
                list(argv), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
            )
            if done.returncode != 0:
                raise lab.BenchError(f"{' '.join(argv)}: {done.stderr.decode()}")

        return timed(go)

    return run


def _list(eng: Engine) -> None:
    """`snapgroup list`'s read: a page and its count, made into the table's groups."""
    page = eng.query_groups(Query(limit=100, start=0, reply_with_count=True))
    assert len(page.groups) == GROUPS


def _read_row(
    case: str, samples: dict[str, list[float]], ours: str, query: str, note: str = ""
) -> Row:
    """ours against 2 x `virsh list` + the read's own time, round by round."""
    floor = [2 * v + q for v, q in zip(samples["virsh list"], samples[query], strict=True)]
    return Row(
        NAME,
        case,
        "ms",
        ms(samples[ours]),
        ours,
        ms(floor),
        "2 x virsh list + the read in-process",
        Stats.of(ratios(samples[ours], floor)),
        READ_TARGET,
        note=note,
        extra={
            "virsh list": ms(samples["virsh list"]).to_json(),
            "read": ms(samples[query]).to_json(),
        },
    )


def run(runs: int, quick: bool) -> list[Row]:
    with lab.engine(NAME) as eng, lab.lab_vm("startup", disks=4) as vm:
        groups = [eng.create(vm=vm.name, name=f"g{i}", consistency="crash") for i in range(GROUPS)]
        repo = Path(vm.directory) / "repo"
        eng.export(groups[0].uuid, to=str(repo))
        cli = [lab.SNAPGROUP_CLI, "--db", lab.db_url(eng)]
        with lab.daemon(eng) as d:
            alone = d.standalone
            samples = rounds(
                runs,
                {
                    "help": _process([lab.SNAPGROUP_CLI, "--help"], alone),
                    "python": _process([sys.executable, "-c", "pass"], alone),
                    "virsh list": _process(["virsh", "-c", lab.URI, "list"], alone),
                    "list": _process([*cli, "list"], alone),
                    "list via daemon": _process([*cli, "list"], d.via),
                    "show": _process([*cli, "show", groups[-1].uuid], alone),
                    "backups": _process([*cli, "backups", "--at", str(repo)], alone),
                    "list read": lambda: timed(lambda: _list(eng)),
                    "show read": lambda: timed(lambda: eng.get(groups[-1].uuid)),
                    "backups read": lambda: timed(lambda: eng.scan_backups(at=str(repo))),
                    "import sqlalchemy": _process(
                        [sys.executable, "-c", "import sqlalchemy"], alone
                    ),
                    "import snapgroup.api": _process(
                        [sys.executable, "-c", "import snapgroup.api"], alone
                    ),
                },
            )
    rows = [
        Row(
            NAME,
            "snapgroup --help",
            "ms",
            ms(samples["help"]),
            "snapgroup --help",
            ms(samples["python"]),
            "python -c pass",
            Stats.of(ratios(samples["help"], samples["python"])),
            HELP_TARGET,
        ),
        _read_row(f"list ({GROUPS} groups), no daemon", samples, "list", "list read"),
        _read_row("show GROUP, no daemon", samples, "show", "show read"),
        _read_row("backups --at DIR (1 backup), no daemon", samples, "backups", "backups read"),
        _read_row(
            f"list ({GROUPS} groups), daemon running",
            samples,
            "list via daemon",
            "list read",
            note="served by `snapgroup daemon`",
        ),
    ]
    for floor in ("import sqlalchemy", "import snapgroup.api"):
        row = _read_row(f"  floor: python -c '{floor}'", samples, floor, "list read")
        row.target = None
        rows.append(row)
    return rows
