"""snapgroup install-units [--dry-run] [--root DIR]: the systemd units of contrib/systemd
installed with ExecStart on this snapgroup, then daemon-reload and the timer (and the
daemon) enabled and started; and libvirt's qemu hook (contrib/libvirt: no migration
while an operation holds the VM), which libvirtd reads when it (re)starts."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from snapgroup.adapters.runner import run as run_tool
from snapgroup.cli.context import Context
from snapgroup.cli.output import print_json
from snapgroup.domain.errors import InvalidArgument, OperationError

UNIT_DIR = "etc/systemd/system"
PLACEHOLDER = "/usr/local/bin/snapgroup"  # what contrib's ExecStart lines name
ENABLE = ("snapgroup-daemon.service", "snapgroup-autosnap.timer")
HOOK = "etc/libvirt/hooks/qemu.d/snapgroup"  # beside any other qemu hook (libvirt >= 6.5)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "install-units",
    )
    parser.add_argument("--dry-run", action="store_true", help="print what it would do")
    parser.add_argument(
        "--root",
        default="/",
        metavar="DIR",
        help="install under DIR (tests, images); systemctl only runs for /",
    )
    parser.add_argument(
        "--source", metavar="DIR", help="the unit files (default: contrib/systemd of this tree)"
    )
    parser.add_argument(
        "--exec", dest="executable", metavar="PATH", help="snapgroup's path in ExecStart"
    )
    # Files and systemd only: no VM operation to recover first.
    parser.set_defaults(run=run, skip_auto_recover=True)


def default_source() -> Path:
    return Path(__file__).resolve().parents[2] / "contrib" / "systemd"


def default_hook() -> Path:
    return Path(__file__).resolve().parents[2] / "contrib" / "libvirt" / "snapgroup-qemu-hook"


def hook_text(text: str, executable: str) -> str:
    """The hook's text running `executable`."""
    lines = []
    for line in text.splitlines(keepends=True):
        if " exec " in f" {line}" and PLACEHOLDER in line:
            line = line.replace(PLACEHOLDER, executable, 1)
        lines.append(line)
    return "".join(lines)


def default_executable() -> str:
    found = shutil.which("snapgroup")
    if found:
        return os.path.abspath(found)
    return str(Path(sys.executable).with_name("snapgroup"))


def rewrite(text: str, executable: str) -> str:
    """The unit's text with every ExecStart on `executable`."""
    lines = []
    for line in text.splitlines(keepends=True):
        if line.startswith("ExecStart=") and PLACEHOLDER in line:
            line = line.replace(PLACEHOLDER, executable, 1)
        lines.append(line)
    return "".join(lines)


def plan(source: Path, root: Path, executable: str) -> list[tuple[Path, str]]:
    """(where each unit goes, its text)."""
    if not source.is_dir():
        raise InvalidArgument(f"no unit files in {source} (give --source DIR)")
    units = sorted(p for p in source.iterdir() if p.suffix in (".service", ".timer"))
    if not units:
        raise InvalidArgument(f"no unit files in {source}")
    if not os.path.isabs(executable):
        raise InvalidArgument(f"--exec {executable!r}: an absolute path")
    target = root / UNIT_DIR
    return [(target / u.name, rewrite(u.read_text(), executable)) for u in units]


def run(args: argparse.Namespace, ctx: Context) -> int:
    source = Path(args.source) if args.source else default_source()
    root = Path(args.root)
    executable = args.executable or default_executable()
    files = plan(source, root, executable)
    hook = (root / HOOK, hook_text(default_hook().read_text(), executable))
    commands: list[list[str]] = []
    if root.resolve() == Path("/"):
        commands = [
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", *ENABLE],
            # libvirtd finds its hooks when it starts (its VMs run on meanwhile).
            ["systemctl", "try-restart", "libvirtd.service"],
        ]
    if not args.dry_run:
        try:
            for path, text in [*files, hook]:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                path.chmod(0o755 if path == hook[0] else 0o644)
        except OSError as exc:
            raise OperationError(f"cannot write {exc.filename}: {exc.strerror}") from exc
        for argv in commands:
            run_tool(argv, error=OperationError, timeout=120)
    if ctx.as_json:
        print_json(
            {
                "dryRun": args.dry_run,
                "units": [str(p) for p, _ in files],
                "hooks": [str(hook[0])],
                "commands": commands,
            },
            ctx.out,
        )
        return 0
    verb = "would write" if args.dry_run else "wrote"
    for path, text in files:
        execs = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
        ctx.out.write(f"{verb} {path}" + (f": {'; '.join(execs)}" if execs else "") + "\n")
    ctx.out.write(f"{verb} {hook[0]}: libvirt's qemu hook\n")
    for argv in commands:
        ctx.out.write(f"{'would run' if args.dry_run else 'ran'}: {' '.join(argv)}\n")
    return 0
