"""`make bench`: snapgroup next to the native way of doing the same thing.

    python -m bench.run [--only NAME[,NAME]] [--runs N] [--quick] [--out PATH]
    (or python bench/run.py ...; `make bench BENCH_ARGS=...`)

Prints a table and writes it as JSON (bench/results.json). Every figure is the median
of --runs rounds (default 5) with min and max; every comparison is a ratio taken round
by round in the same run (bench/timing.py), since the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (python bench/run.py): find `bench`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (
    autosnap,
    chain,
    create_live,
    create_offline,
    data_size,
    export,
    export_nbd,
    files,
    freeze,
    lab,
    machine,
    memory,
    merge,
    metadata,
    rest_query,
    startup,
)
from bench.timing import Row, Stats

Bench = Callable[[int, bool], list[Row]]
# In the order, except the freeze window, which runs last.
BENCHES: dict[str, Bench] = {
    create_live.NAME: create_live.run,
    data_size.NAME: data_size.run,
    create_offline.NAME: create_offline.run,
    merge.NAME: merge.run,
    metadata.NAME: metadata.run,
    rest_query.NAME: rest_query.run,
    chain.NAME: chain.run,
    autosnap.NAME: autosnap.run,
    export.NAME: export.run,
    export_nbd.NAME: export_nbd.run,
    files.NAME: files.run,
    files.INSTANT: files.run_instant,
    startup.NAME: startup.run,
    memory.NAME: memory.run,
    freeze.NAME: freeze.run,
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _stats(stats: Stats | None, unit: str = "") -> str:
    if stats is None:
        return "-"
    return f"{_fmt(stats.median)}{unit} [{_fmt(stats.min)}-{_fmt(stats.max)}]"


def table(rows: Sequence[Row]) -> str:
    header = ("benchmark", "case", "snapgroup", "baseline", "ratio", "target", "met", "note")
    lines = [header]
    for row in rows:
        met = {None: "", True: "yes", False: "NO"}[row.met]
        lines.append(
            (
                row.bench,
                row.case,
                f"{_stats(row.ours)} {row.unit}",
                "-"
                if row.baseline is None
                else f"{_stats(row.baseline)} {row.unit} ({row.baseline_label})",
                _stats(row.ratio, "x"),
                "" if row.target is None else str(row.target),
                met,
                row.note,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated: " + ",".join(BENCHES))
    parser.add_argument("--runs", type=int, default=5, help="rounds per figure (default 5)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON file")
    args = parser.parse_args(argv)
    names = list(BENCHES) if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHES)}")
    runs = 2 if args.quick and args.runs == 5 else args.runs
    removed = lab.cleanup()
    if removed:
        print(f"removed stale lab VMs: {', '.join(removed)}", file=sys.stderr)
    started = time.time()
    result: dict[str, Any] = {
        "machine": machine.describe(),
        "runs": runs,
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "rows": [],
        "errors": {},
    }
    rows: list[Row] = []
    for name in names:
        print(f"== {name} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        got = []
        for attempt in (1, 2):
            try:
                got = BENCHES[name](runs, args.quick)
                break
            except Exception as exc:  # one failing benchmark must not lose the others
                traceback.print_exc()
                if attempt == 1 and lab.transient(exc):
                    # Other people's tests restart libvirtd on this shared host.
                    print(f"   {name}: libvirtd went away; once more", file=sys.stderr)
                    lab.wait_for_libvirtd()
                    lab.cleanup()
                    continue
                result["errors"][name] = f"{type(exc).__name__}: {exc}"
                break
        rows += got
        result["rows"] = [r.to_json() for r in rows]
        result["seconds"] = round(time.time() - started)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"   {name}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    result["machine"]["load_average_end"] = machine.describe()["load_average"]
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    print(
        f"\nmachine: {m['nproc']} cores {m['cpu']}, {m['memory_gib']} GiB, kernel {m['kernel']}, "
        f"{m['qemu']}, libvirt {m['libvirt']}, load {m['load_average']}; "
        f"median [min-max] of {runs} rounds\n"
    )
    print(table(rows))
    print(f"\nwritten: {args.out}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
