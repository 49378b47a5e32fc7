"""Lab VMs, engines and the native tools for the benchmarks.

Every VM is a lab VM (snapgroup.testing.labvm) named sg-bench-..., under lab_directory(),
and is destroyed with its files when its `with` block ends, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from snapgroup.adapters.runner import run
from snapgroup.api import Engine, open_engine
from snapgroup.domain.errors import HypervisorUnavailable, SnapgroupError
from snapgroup.testing.labvm import LAB_ROOT, LabVm, cleanup_stale, create_lab_vm, lab_directory

URI = "qemu:///system"
PREFIX = "sg-bench-"
REPO = Path(__file__).resolve().parent.parent
GUEST = REPO / "build" / "guest"
# The lab guest: busybox initramfs + qemu-guest-agent (lab/build_guest.py, `make guest`).
GUEST_CMDLINE = "console=ttyS0 quiet panic=-1 acpi=noirq pci=nomsi sg.root=sg-root"
SNAPGROUP_CLI = str(Path(sys.executable).with_name("snapgroup"))
# Processes started by the benchmarks find the bytecode of every module compiled, as an
# installed package has it (pip and Debian's packaging compile it on install): in a
# cache of the benchmarks' own, filled by each figure's warm-up round, since a
# development tree may run with PYTHONDONTWRITEBYTECODE=1 (an editable install then
# compiles each of snapgroup's modules at every start: 0.2-0.3 s more here).
PYCACHE = Path(tempfile.gettempdir()) / "snapgroup-bench-pycache"


def process_env(**extra: str) -> dict[str, str]:
    """The environment of a process under measurement: ours plus `extra`, bytecode cached."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": str(PYCACHE), **extra}


class BenchError(SnapgroupError):
    code = "SYS.1001"
    description = "benchmark step failed"


def sh(*argv: str, timeout: float | None = 600.0) -> str:
    """Run a tool (argv list, no shell); its stdout. Raises BenchError on failure."""
    return run(list(argv), timeout=timeout, error=BenchError)


def virsh(*args: str, timeout: float | None = 600.0) -> str:
    return sh("virsh", "-q", "-c", URI, *args, timeout=timeout)


def unique(label: str) -> str:
    return f"{PREFIX}{label}-{uuid.uuid4().hex[:8]}"


_GONE = ("failed to connect to the hypervisor", "Broken pipe", "End of file while reading")


def transient(exc: BaseException) -> bool:
    """Did libvirtd go away under us (restarted by someone else on a shared host)?"""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, HypervisorUnavailable) or any(g in str(seen) for g in _GONE):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def wait_for_libvirtd(timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            virsh("version", timeout=10)
            return
        except BenchError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def cleanup() -> list[str]:
    """Remove sg-bench- VMs an interrupted earlier run left behind (never a live run's)."""
    return cleanup_stale(PREFIX, uri=URI)


@contextlib.contextmanager
def lab_vm(
    label: str,
    *,
    disks: int,
    disk_mib: int = 64,
    start: bool = True,
    guest: bool = False,
    memory_mib: int = 256,
) -> Iterator[LabVm]:
    """A lab VM with `disks` qcow2 disks (root + data1..), destroyed on exit."""
    name = unique(label)
    extra: dict[str, object] = {}
    if guest:
        extra = {
            "kernel": GUEST / "vmlinuz",
            "initrd": GUEST / "initrd.gz",
            "cmdline": GUEST_CMDLINE,
            "guest_agent": True,
        }
    vm = create_lab_vm(
        lab_directory(name),
        name=name,
        data_disks=disks - 1,
        disk_mib=disk_mib,
        start=start,
        uri=URI,
        memory_mib=memory_mib,
        **extra,  # type: ignore[arg-type]
    )
    try:
        yield vm
    finally:
        vm.destroy()


@contextlib.contextmanager
def engine(label: str) -> Iterator[Engine]:
    """An engine on a store of its own (SQLite in a fresh directory), removed on exit."""
    directory = LAB_ROOT / unique(f"db-{label}")
    directory.mkdir(parents=True)
    eng = open_engine(connect=URI, db=f"sqlite:///{directory / 'snapgroup.db'}")
    try:
        yield eng
    finally:
        eng.db.dispose()
        shutil.rmtree(directory, ignore_errors=True)


def db_url(eng: Engine) -> str:
    return eng.db.url


class Daemon:
    """A `snapgroup daemon` on an engine's store, and the environments that make the
    `snapgroup` command use it (`via`) or run standalone in its own process (`standalone`)."""

    def __init__(self, directory: Path) -> None:
        self.socket = directory / "cli.sock"
        self.via = process_env(SNAPGROUP_SOCKET=str(self.socket))
        self.standalone = process_env(SNAPGROUP_NO_DAEMON="1")


@contextlib.contextmanager
def daemon(eng: Engine) -> Iterator[Daemon]:
    directory = Path(tempfile.mkdtemp(prefix="sgd-", dir="/tmp"))  # a socket path is short
    d = Daemon(directory)
    argv = [SNAPGROUP_CLI, "--db", eng.db.url, "daemon", "--socket", str(d.socket)]
    log = (directory / "daemon.log").open("w")
    proc = subprocess.Popen(argv, env=d.standalone, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        deadline = time.monotonic() + 120
        while not d.socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(
                    f"snapgroup daemon did not start: {(directory / 'daemon.log').read_text()}"
                )
            time.sleep(0.05)
        yield d
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


def domblklist(vm: str) -> dict[str, str]:
    rows = [line.split(None, 1) for line in virsh("domblklist", vm).splitlines() if line.strip()]
    return {target: source.strip() for target, source in rows}


# -- the native way ----------------------------------------------------------------------


def virsh_snapshot(vm: LabVm, tag: str, *, quiesce: bool = False) -> dict[str, str]:
    """`virsh snapshot-create-as --disk-only --atomic --no-metadata` with a diskspec per
    disk (libvirt creates the overlays). Returns {target: overlay}."""
    current = domblklist(vm.name)
    overlays = {
        t: os.path.join(os.path.dirname(p), f"virsh-{tag}-{t}.qcow2") for t, p in current.items()
    }
    argv = ["snapshot-create-as", vm.name, "--disk-only", "--atomic", "--no-metadata"]
    if quiesce:
        argv.append("--quiesce")
    for target, overlay in overlays.items():
        argv += ["--diskspec", f"{target},snapshot=external,file={overlay}"]
    virsh(*argv)
    return overlays


def virsh_commit_back(vm: LabVm, overlays: dict[str, str]) -> None:
    """Undo a virsh snapshot: active commit with pivot per disk, then drop the overlays."""
    for target in overlays:
        virsh("blockcommit", vm.name, target, "--active", "--pivot", "--wait")
    for overlay in overlays.values():
        with contextlib.suppress(FileNotFoundError):
            os.remove(overlay)


def qemu_img_chain(path: str) -> list[str]:
    out = sh("qemu-img", "info", "-U", "--backing-chain", "--output=json", path)
    return [layer["filename"] for layer in json.loads(out)]


def fill(path: str, mib: int, *, pattern: int = 0x5A, chunk_mib: int = 256) -> None:
    """Write `mib` MiB of data at the start of an image (offline, through qemu-io)."""
    commands: list[str] = []
    for offset in range(0, mib, chunk_mib):
        size = min(chunk_mib, mib - offset)
        commands += ["-c", f"write -q -P {pattern} {offset}M {size}M"]
    sh("qemu-io", "-f", "qcow2", *commands, path, timeout=None)


def remove(paths: Sequence[str | Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
