"""Backups (issue 15): a 4 GiB disk with 1 GiB written, then 1% of the disk changed.

* full export MiB/s (1 GiB of data) vs `qemu-img convert -O qcow2` of the same
  snapshot file, pair by pair (ratio = our MiB/s / its MiB/s; target >= 0.9): on the
  Python API, and as a whole `snapgroup export --full` process, served by a running
  `snapgroup daemon` (target >= 0.9) and without one (issue 20);
* incremental export (the 1% change over the full one's base) vs a full export of the
  same group: bytes written (target <= 2% of the disk) and time (target <= 0.1x);
* restore MiB/s (a flattened copy of the incremental backup's chain, to a directory) vs
  `qemu-img convert -O qcow2` of the same chain.

Each side's output is removed untimed after it; the files are written and fsynced by
both sides alike (ours fsyncs before publishing; the baseline's time includes a sync).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bench import lab
from bench.timing import Row, Stats, Target, ratios, rounds, timed

NAME = "export"
GIB = 1024


def _drop(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _native_convert(*source: str, out: Path) -> float:
    """The baseline: seconds of `qemu-img convert -O qcow2 [-U] SOURCE OUT` and a sync
    (ours fsyncs before publishing); its output removed untimed."""

    def go() -> None:
        lab.sh("qemu-img", "convert", "-O", "qcow2", *source, str(out))
        os.sync()

    seconds = timed(go)
    out.unlink()
    return seconds


def _against_convert(
    seconds: dict[str, list[float]],
    data_mib: int,
    case: str,
    ours_label: str,
    *,
    target: Target | None = None,
    note: str = "",
) -> Row:
    """The MiB/s row of `data_mib` written by us ("snapgroup") and by the
    `qemu-img convert` baseline ("native"), round by round."""
    mibs = [data_mib / x for x in seconds["snapgroup"]]
    native_mibs = [data_mib / x for x in seconds["native"]]
    return Row(
        NAME,
        case,
        "MiB/s",
        Stats.of(mibs),
        ours_label,
        Stats.of(native_mibs),
        "qemu-img convert -O qcow2",
        Stats.of(ratios(mibs, native_mibs)),
        target,
        note=note,
    )


def run(runs: int, quick: bool) -> list[Row]:
    disk_mib = 1024 if quick else 4 * GIB
    data_mib = disk_mib // 4
    change_mib = max(1, disk_mib // 100)
    rows: list[Row] = []
    with (
        lab.engine(NAME) as eng,
        lab.lab_vm("export", disks=1, disk_mib=disk_mib, start=False) as vm,
    ):
        top = lab.domblklist(vm.name)["vda"]
        lab.fill(top, data_mib, pattern=0x5A)
        g0 = eng.create(vm=vm.name, name="full", consistency="crash")
        snap0 = g0.refs[0].install_path
        # 1% of the disk changed, in 1 MiB pieces spread over the written GiB
        top = lab.domblklist(vm.name)["vda"]
        step = max(1, data_mib // change_mib)
        cmds = []
        for i in range(change_mib):
            cmds += ["-c", f"write -q -P 0x77 {i * step}M 1M"]
        lab.sh("qemu-io", "-f", "qcow2", *cmds, top, timeout=None)
        g1 = eng.create(vm=vm.name, name="incr", consistency="crash")
        work = vm.directory / "bench"
        work.mkdir()
        repo = work / "repo"
        native_out = work / "native.qcow2"

        def ours_full() -> float:
            seconds = timed(lambda: eng.export(g0.uuid, to=str(repo), full=True))
            _drop(repo)
            return seconds

        def native_full() -> float:
            return _native_convert("-U", snap0, out=native_out)

        def process_full(env: dict[str, str]) -> float:
            argv = [lab.SNAPGROUP_CLI, "--db", lab.db_url(eng), "export", g0.uuid]
            argv += ["--to", str(repo), "--full"]

            def go() -> None:
                done = subprocess.run(argv, env=env, capture_output=True, check=False)  # noqa: S603
                if done.returncode != 0:
                    raise lab.BenchError(f"snapgroup export: {done.stderr.decode()}")

            seconds = timed(go)
            _drop(repo)
            return seconds

        size = f"{disk_mib // GIB or disk_mib} {'GiB' if disk_mib >= GIB else 'MiB'}"
        with lab.daemon(eng) as d:
            full = rounds(
                runs,
                {
                    "snapgroup": ours_full,
                    "native": native_full,
                    "process": lambda: process_full(d.via),
                    "process standalone": lambda: process_full(d.standalone),
                },
            )
        rows.append(
            _against_convert(
                full,
                data_mib,
                f"full export, {size} disk, {data_mib} MiB written",
                "snapgroup export --full",
                target=Target(">=", 0.9),
            )
        )
        rows.append(
            _against_convert(
                {**full, "snapgroup": full["process"]},
                data_mib,
                f"full export, {size} disk, {data_mib} MiB written, whole process",
                "snapgroup export --full (daemon running)",
                target=Target(">=", 0.9),
                note="the CLI as a new process, served by `snapgroup daemon`",
            )
        )
        rows.append(
            _against_convert(
                {**full, "snapgroup": full["process standalone"]},
                data_mib,
                f"full export, {size} disk, {data_mib} MiB written, whole process, no daemon",
                "snapgroup export --full (no daemon)",
                note="the CLI as a new process, the engine's stack imported",
            )
        )

        # incremental vs full of g1, over a kept full export of g0
        base = eng.export(g0.uuid, to=str(repo), full=True).manifest
        sizes: dict[str, list[float]] = {"incr": [], "full": []}

        def one(full: bool) -> float:
            result: list[int] = []

            def go() -> None:
                m = eng.export(g1.uuid, to=str(repo), full=full).manifest
                assert full or m.disks[0].base_backup_id == base.backup_id
                result.append(m.disks[0].bytes_written)
                os.sync()

            seconds = timed(go)
            sizes["full" if full else "incr"].append(result[0] / 2**20)
            (latest,) = [m for m in eng.backups(at=str(repo)) if m.group_uuid == g1.uuid]
            _drop(repo / latest.vm_uuid / latest.backup_id)
            return seconds

        s = rounds(runs, {"incr": lambda: one(False), "full": lambda: one(True)})
        rows.append(
            Row(
                NAME,
                f"incremental export ({change_mib} MiB = 1% changed) vs full, time",
                "ms",
                Stats.of(s["incr"]).scaled(1000),
                "incremental",
                Stats.of(s["full"]).scaled(1000),
                "full export of the same group",
                Stats.of(ratios(s["incr"], s["full"])),
                Target("<=", 0.1),
            )
        )
        rows.append(
            Row(
                NAME,
                "incremental export bytes vs the disk's virtual size",
                "MiB",
                Stats.of(sizes["incr"][-runs:]),
                "incremental file",
                Stats.of(sizes["full"][-runs:]),
                "full export's file",
                Stats.of([x / disk_mib for x in sizes["incr"][-runs:]]),
                Target("<=", 0.02),
                note="ratio: bytes / virtual size",
            )
        )

        # restore of the incremental backup (chain of 2) vs qemu-img convert of that chain
        inc = eng.export(g1.uuid, to=str(repo)).manifest
        chain_top = repo / inc.vm_uuid / inc.backup_id / f"{inc.disks[0].volume_uuid}.qcow2"
        out_dir = work / "restored"

        def ours_restore() -> float:
            out_dir.mkdir()

            def go() -> None:
                eng.restore(inc.backup_id, source=str(repo), to_dir=str(out_dir))
                os.sync()

            seconds = timed(go)
            _drop(out_dir)
            return seconds

        def native_restore() -> float:
            return _native_convert(str(chain_top), out=native_out)

        rows.append(
            _against_convert(
                rounds(runs, {"snapgroup": ours_restore, "native": native_restore}),
                data_mib,
                "restore --to-dir (flattened, verified first) of the incremental backup",
                "snapgroup restore",
                note="ours includes verify (sha256 + qemu-img check of the chain)",
            )
        )
    return rows
