#!/usr/bin/env python3
"""Build the file browser's appliance: a fixed libguestfs appliance, from Debian packages.

    python3 lab/build_appliance.py --out /var/lib/snapgroup/appliance

`snapgroup files|extract|mount` read a guest's filesystems inside this small VM (its own
kernel parses them, never the host's: see README, "Files and instant recovery"). The
adapter (snapgroup/adapters/guest_files.py) finds it through SNAPGROUP_APPLIANCE
(default /var/lib/snapgroup/appliance) and runs it with LIBGUESTFS_PATH pointing there.

* Kernel: supermin needs one and a Debian host may have none in /boot (a container, a
  cloud image). The Debian cloud kernel that lab/build_guest.py resolves is fetched with
  `apt-get download`, unpacked whole with `dpkg-deb -x` (supermin picks the modules the
  appliance needs) and indexed with `depmod -b`. It is never installed on the host.
* Appliance: `libguestfs-make-fixed-appliance` (libguestfs-tools) with SUPERMIN_KERNEL,
  SUPERMIN_KERNEL_VERSION and SUPERMIN_MODULES pointing at that tree writes kernel,
  initrd and root into OUT; supermin runs only here, never when a command runs.
* Acceleration: the build tries KVM first. Where KVM cannot run the appliance (a nested
  hypervisor that aborts it) it builds under TCG and records `"tcg": true` in
  OUT/appliance.json, which the adapter turns into LIBGUESTFS_BACKEND_SETTINGS=force_tcg.

Idempotent: a fingerprint of the inputs (kernel package, libguestfs version, the
supermin package lists of libguestfs, this script) is kept in OUT/appliance.json; when it
matches and the outputs are there, nothing is done. Needs root.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_guest import (  # a sibling script, not a package
    BuildError,
    KernelPackage,
    call,
    kernel_package,
    log,
    run,
    sha256_file,
    unpack_kernel_package,
)

SUPERMIN_D = Path("/usr/lib/x86_64-linux-gnu/guestfs/supermin.d")
OUTPUTS = ("kernel", "initrd", "root", "README.fixed")
MANIFEST = "appliance.json"
# A KVM that cannot run the appliance usually aborts QEMU at once; a hang is cut here.
PROBE_TIMEOUT_S = 600


def libguestfs_version() -> str:
    proc = call(["dpkg-query", "-W", "-f=${Version}", "libguestfs0"])
    if proc.returncode != 0 or not proc.stdout.strip():
        raise BuildError("libguestfs0 is not installed (make installs it: DEB_PACKAGES)")
    return proc.stdout.strip()


def fingerprint(pkg: KernelPackage) -> dict[str, object]:
    lists = {}
    for path in sorted(SUPERMIN_D.iterdir()) if SUPERMIN_D.is_dir() else ():
        st = path.stat()
        lists[path.name] = [st.st_size, st.st_mtime_ns]
    return {
        "kernel": [pkg.name, pkg.version],
        "libguestfs": libguestfs_version(),
        "supermin.d": lists,
        "builder": sha256_file(Path(__file__).resolve()),
    }


def fetch_kernel_tree(pkg: KernelPackage, work: Path) -> tuple[Path, str]:
    """The package unpacked whole in work/kernel (its root) and its release."""
    tree = work / "kernel"
    shutil.rmtree(work, ignore_errors=True)
    deb = unpack_kernel_package(pkg, work / "download", tree)
    releases = sorted(p.name for p in (tree / "lib" / "modules").iterdir() if p.is_dir())
    if len(releases) != 1 or not (tree / "boot" / f"vmlinuz-{releases[0]}").is_file():
        raise BuildError(f"unexpected package layout in {deb.name}")
    run(["depmod", "-b", str(tree), releases[0]])
    return tree, releases[0]


def make_fixed(
    tree: Path, release: str, out: Path, *, tcg: bool
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        SUPERMIN_KERNEL=str(tree / "boot" / f"vmlinuz-{release}"),
        SUPERMIN_KERNEL_VERSION=release,
        SUPERMIN_MODULES=str(tree / "lib" / "modules" / release),
        LIBGUESTFS_BACKEND="direct",
        LIBGUESTFS_CACHEDIR=str(tree.parent / "cache"),
        TMPDIR=str(tree.parent),
    )
    env.pop("LIBGUESTFS_PATH", None)
    if tcg:
        env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
    else:
        env.pop("LIBGUESTFS_BACKEND_SETTINGS", None)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (tree.parent / "cache").mkdir(exist_ok=True)
    return subprocess.run(
        ["libguestfs-make-fixed-appliance", str(out)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=PROBE_TIMEOUT_S,
    )


def outputs_intact(out: Path, manifest: dict[str, Any]) -> bool:
    sizes = manifest.get("outputs")
    if not isinstance(sizes, dict) or set(sizes) != set(OUTPUTS):
        return False
    for name, size in sizes.items():
        path = out / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def build(out: Path, force: bool = False) -> bool:
    """False when OUT was already up to date. Concurrent builds take turns on a lock."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(out, force)


def _build_locked(out: Path, force: bool) -> bool:
    old: dict[str, Any] = {}
    try:
        old = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        old = {}
    state, pkg = kernel_package(old)
    inputs = fingerprint(pkg)
    if not force and old.get("inputs") == inputs and outputs_intact(out, old):
        return False
    # supermin lstat()s the host's module directory even when given another tree.
    Path("/lib/modules").mkdir(parents=True, exist_ok=True)
    work = out / "work"
    tree, release = fetch_kernel_tree(pkg, work)
    staging = out / "staging"
    tcg = False
    proc = make_fixed(tree, release, staging, tcg=False)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "error:" in line]
        why = errors[-1].strip() if errors else "no message"
        log(f"the appliance does not run under KVM here ({why}): building it under TCG")
        tcg = True
        proc = make_fixed(tree, release, staging, tcg=True)
    if proc.returncode != 0:
        raise BuildError(f"libguestfs-make-fixed-appliance failed: {proc.stderr.strip()[-2000:]}")
    for name in OUTPUTS:
        (staging / name).replace(out / name)  # new inodes: a running appliance keeps its own
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    manifest = {
        "apt_state": state,
        "inputs": inputs,
        "kernel_release": release,
        "tcg": tcg,
        "outputs": {name: (out / name).stat().st_size for name in OUTPUTS},
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    tmp.replace(out / MANIFEST)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("SNAPGROUP_APPLIANCE") or "/var/lib/snapgroup/appliance"),
        help="output directory (default: SNAPGROUP_APPLIANCE or /var/lib/snapgroup/appliance)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        built = build(args.out.absolute(), force=args.force)
    except (BuildError, subprocess.TimeoutExpired, OSError) as exc:
        log(f"error: {exc}")
        return 1
    took = time.monotonic() - started
    digest = hashlib.sha256((args.out / MANIFEST).read_bytes()).hexdigest()[:12]
    if not built:
        log(f"{args.out} is up to date ({took:.2f} s, {digest})")
    else:
        log(f"{args.out}: appliance built in {took:.1f} s ({digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
