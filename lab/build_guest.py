#!/usr/bin/env python3
"""Build the snapgroup lab guest: a kernel and a busybox initramfs, from Debian packages only.

    python3 lab/build_guest.py --out build/guest

produces OUT/vmlinuz and OUT/initrd.gz (see lab/guest/init for what the guest does).

* Kernel: the linux-image-6.1.0-NN-cloud-amd64 package that linux-image-cloud-amd64 depends on
  (resolved with apt-cache), fetched with `apt-get download` and unpacked with `dpkg-deb -x`.
  It is never installed on the host. The vmlinuz and the few modules the guest needs are kept
  in OUT/work/kernel/PKG_VERSION/; the .deb and the unpacked tree are deleted afterwards.
* Initramfs: busybox-static, the host's qemu-ga, mke2fs and blkid with their shared libraries
  (found with ldd), /etc/mke2fs.conf, the modules, lab/guest/init; archived with busybox
  `cpio -o -H newc` (Debian hosts have no cpio by default) and gzipped.

Idempotent: a manifest of every input (kernel package version, init script, this script, host
binaries and libraries) is stored in OUT/manifest.json; when it matches and the outputs are
intact nothing is done. Needs root (apt-get download into OUT, mknod /dev/console).
Host Debian packages used: apt, dpkg, libc-bin (ldd), util-linux (blkid): all essential or
required; busybox-static, qemu-guest-agent, e2fsprogs: in the Makefile's DEB_PACKAGES.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
INIT_SCRIPT = HERE / "guest" / "init"
META_PACKAGE = "linux-image-cloud-amd64"

# Load order without depmod; each entry may be built in (then skipped) or a module.
MODULES = [
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    # ext4 and its dependencies: built in on the bookworm cloud kernel, modules elsewhere.
    "crc16",
    "crc32c_generic",
    "mbcache",
    "jbd2",
    "ext4",
]
# Must end up available (as a module or built in); the others are optional.
REQUIRED_MODULES = {"virtio_pci", "virtio_blk", "virtio_console", "ext4"}

# Host binaries copied into the initramfs, at the same path.
BUSYBOX = "/bin/busybox"
BINARIES = ["/usr/sbin/qemu-ga", "/sbin/mke2fs", "/sbin/blkid"]
DATA_FILES = ["/etc/mke2fs.conf"]
STAGING_DIRS = [
    "bin",
    "sbin",
    "usr/bin",
    "usr/sbin",
    "lib/modules",
    "lib64",
    "etc",
    "dev",
    "proc",
    "sys",
    "run",
    "tmp",
    "var",
    "mnt",
]


class BuildError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"build_guest: {msg}", file=sys.stderr, flush=True)


def call(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Runs argv (a list, never a shell), capturing text output; does not check the status."""
    return subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd)


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = call(argv, cwd)
    if proc.returncode != 0:
        raise BuildError(
            f"{' '.join(argv)} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}"
        )
    return proc


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# kernel


@dataclass(frozen=True)
class KernelPackage:
    name: str
    version: str

    @property
    def key(self) -> str:
        return f"{self.name}_{self.version.replace(':', '%3a')}"


def _resolve_kernel_once() -> KernelPackage | None:
    # One apt-cache call (each one re-reads all package lists: ~1 s where pkgcache is off).
    show = call(["apt-cache", "show", "--no-all-versions", META_PACKAGE])
    match = re.search(
        r"^Depends:.*?\b(linux-image-\S+-cloud-amd64)(?:\s*\(=\s*([^)\s]+)\))?",
        show.stdout,
        re.MULTILINE,
    )
    if show.returncode != 0 or match is None:
        return None
    name, version = match.group(1), match.group(2)
    if version is None:  # not pinned by the meta package: take the candidate
        cand = re.search(r"Candidate:\s*(\S+)", run(["apt-cache", "policy", name]).stdout)
        if cand is None or cand.group(1) == "(none)":
            return None
        version = cand.group(1)
    return KernelPackage(name, version)


def apt_state() -> str:
    """Digest of apt's package lists and sources: while it is unchanged, so is the kernel."""
    h = hashlib.sha256()
    for top in ("/var/lib/apt/lists", "/etc/apt"):
        for dirpath, _dirs, names in sorted(os.walk(top)):
            for name in sorted(names):
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except OSError:
                    continue
                h.update(f"{dirpath}/{name} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def resolve_kernel() -> KernelPackage:
    pkg = _resolve_kernel_once()
    if pkg is None:
        log(f"apt-cache does not know {META_PACKAGE}: running apt-get update")
        run(["apt-get", "update", "-q"])
        pkg = _resolve_kernel_once()
    if pkg is None:
        raise BuildError(f"cannot resolve the kernel package {META_PACKAGE} depends on")
    return pkg


def kernel_package(old: dict[str, Any]) -> tuple[str, KernelPackage]:
    """apt's state and the kernel package to build from: the one the previous manifest
    OLD names while apt's lists are unchanged (no apt-cache call), else resolved again."""
    state = apt_state()
    known = old.get("inputs", {}).get("kernel")
    if old.get("apt_state") == state and isinstance(known, list) and len(known) == 2:
        return state, KernelPackage(str(known[0]), str(known[1]))
    return state, resolve_kernel()


def unpack_kernel_package(pkg: KernelPackage, download: Path, tree: Path) -> Path:
    """PKG's .deb downloaded into DOWNLOAD (made afresh) and unpacked whole into TREE;
    the .deb's path."""
    shutil.rmtree(download, ignore_errors=True)
    download.mkdir(parents=True)
    # _apt cannot write into a root-only directory: download unsandboxed (we are root anyway).
    log(f"downloading {pkg.name} {pkg.version}")
    run(
        ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{pkg.name}={pkg.version}"],
        cwd=download,
    )
    debs = sorted(download.glob(f"{pkg.name}_*.deb"))
    if len(debs) != 1:
        raise BuildError(f"apt-get download left {debs} in {download}")
    log(f"unpacking {debs[0].name}")
    run(["dpkg-deb", "-x", str(debs[0]), str(tree)])
    return debs[0]


def _modinfo_depends(ko: bytes) -> list[str]:
    match = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", ko)
    if match is None or not match.group(1):
        return []
    return match.group(1).decode().split(",")


def fetch_kernel(pkg: KernelPackage, work: Path) -> Path:
    """Returns a directory holding vmlinuz, modules/NAME.ko and load.list (in load order)."""
    cache = work / "kernel" / pkg.key
    stamp = json.dumps([pkg.name, pkg.version, MODULES, sorted(REQUIRED_MODULES)]) + "\n"
    if (cache / "complete").exists() and (cache / "complete").read_text() == stamp:
        return cache
    # Only the current kernel is kept: drop caches of older package versions.
    shutil.rmtree(work / "kernel", ignore_errors=True)
    dl = work / "download"
    tree = dl / "tree"
    unpack_kernel_package(pkg, dl, tree)

    vmlinuz = sorted((tree / "boot").glob("vmlinuz-*"))
    moddirs = sorted(p for p in (tree / "lib" / "modules").iterdir() if p.is_dir())
    if len(vmlinuz) != 1 or len(moddirs) != 1:
        raise BuildError(f"unexpected package layout: {vmlinuz} {moddirs}")
    moddir = moddirs[0]
    builtin = set()
    builtin_file = moddir / "modules.builtin"
    if builtin_file.exists():
        for line in builtin_file.read_text().split():
            builtin.add(Path(line).name.split(".ko")[0].replace("-", "_"))
    found: dict[str, Path] = {}
    for path in (moddir / "kernel").rglob("*.ko*"):
        found[path.name.split(".ko")[0].replace("-", "_")] = path

    tmp = cache.with_name(cache.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "modules").mkdir(parents=True)
    shutil.copyfile(vmlinuz[0], tmp / "vmlinuz")
    loaded: list[str] = []
    for mod in MODULES:
        if mod in builtin:
            continue
        src = found.get(mod)
        if src is None:
            if mod in REQUIRED_MODULES:
                raise BuildError(f"module {mod} is neither built in nor in {pkg.name}")
            continue
        if src.name.endswith(".ko"):
            data = src.read_bytes()
        elif src.name.endswith(".ko.xz"):
            data = lzma.decompress(src.read_bytes())
        else:
            raise BuildError(f"cannot decompress {src} (only .ko and .ko.xz are handled)")
        for dep in _modinfo_depends(data):
            dep = dep.replace("-", "_")
            if dep not in loaded and dep not in builtin:
                raise BuildError(f"module {mod} needs {dep}, which is not loaded before it")
        (tmp / "modules" / f"{mod}.ko").write_bytes(data)
        loaded.append(mod)
    (tmp / "load.list").write_text("".join(f"{m}\n" for m in loaded))
    (tmp / "release").write_text(moddir.name + "\n")
    (tmp / "complete").write_text(stamp)
    tmp.rename(cache)
    shutil.rmtree(dl)
    return cache


# ---------------------------------------------------------------------------------------------
# initramfs


def shared_libraries(binary: str) -> list[str]:
    """Absolute paths of the libraries (and the ELF interpreter) `binary` needs, per ldd."""
    proc = call(["ldd", binary])
    if proc.returncode != 0:
        if "not a dynamic executable" in proc.stdout + proc.stderr:
            return []
        raise BuildError(f"ldd {binary}: {proc.stderr.strip()}")
    libs: list[str] = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" (", 1)[0].strip()
            if target == "not found":
                raise BuildError(f"ldd {binary}: {line}")
            if target.startswith("/"):
                libs.append(target)
        elif line.startswith("/"):
            libs.append(line.split(" (", 1)[0].strip())
    return libs


def host_inputs() -> list[str]:
    """Every host file that goes into the initramfs (binaries, libraries, data files)."""
    files = [BUSYBOX, *BINARIES, *DATA_FILES]
    for binary in [BUSYBOX, *BINARIES]:
        if not os.access(binary, os.X_OK):
            raise BuildError(
                f"{binary} is missing (Debian packages: busybox-static qemu-guest-agent"
                " e2fsprogs util-linux)"
            )
        files.extend(shared_libraries(binary))
    return sorted(set(files))


def _copy_host_file(src: str, staging: Path) -> None:
    dst = staging / src.lstrip("/")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)  # follows symlinks: the staging tree holds real files
    shutil.copymode(src, dst)


def build_initramfs(kernel: Path, staging: Path, out: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    for d in STAGING_DIRS:
        (staging / d).mkdir(parents=True, exist_ok=True)
    for src in host_inputs():
        _copy_host_file(src, staging)

    # busybox applets as symlinks, except where a real program (or our script) lives.
    applets = run([BUSYBOX, "--list-full"]).stdout.split()
    for rel in applets:
        link = staging / rel
        if link.exists() or link.is_symlink() or rel.endswith("/shutdown"):
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(BUSYBOX)
    if not (staging / "bin" / "sh").is_symlink():
        raise BuildError("busybox has no sh applet")

    shutil.copyfile(INIT_SCRIPT, staging / "init")
    (staging / "init").chmod(0o755)
    for ko in sorted((kernel / "modules").iterdir()):
        shutil.copyfile(ko, staging / "lib" / "modules" / ko.name)
    shutil.copyfile(kernel / "load.list", staging / "lib" / "modules" / "load.list")
    (staging / "etc" / "mtab").symlink_to("/proc/self/mounts")
    (staging / "etc" / "hostname").write_text("sg-lab\n")
    try:
        os.mknod(staging / "dev" / "console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
    except PermissionError:
        log("not root: no /dev/console in the initramfs (init still reopens it)")

    entries = sorted(str(p.relative_to(staging)) for p in staging.rglob("*"))
    for entry in [".", *entries]:  # fixed mtimes: the same inputs give the same archive
        os.utime(staging / entry, ns=(0, 0), follow_symlinks=False)
    cpio_path = out.with_name(out.name + ".cpio.tmp")
    # No --ignore-devno: busybox then zeroes the device numbers of /dev/console too.
    with cpio_path.open("wb") as archive:
        proc = subprocess.run(
            [
                BUSYBOX,
                "cpio",
                "-o",
                "-H",
                "newc",
                "-0",
                "-R",
                "0:0",
                "--renumber-inodes",
            ],
            input="".join(f"{e}\0" for e in [".", *entries]).encode(),
            stdout=archive,
            stderr=subprocess.PIPE,
            cwd=staging,
            check=False,
        )
    if proc.returncode != 0:
        raise BuildError(f"busybox cpio failed: {proc.stderr.decode().strip()}")
    tmp = out.with_name(out.name + ".tmp")
    with cpio_path.open("rb") as raw, gzip.GzipFile(tmp, "wb", compresslevel=9, mtime=0) as gz:
        shutil.copyfileobj(raw, gz, 1 << 20)
    cpio_path.unlink()
    tmp.replace(out)


# ---------------------------------------------------------------------------------------------


def fingerprint(pkg: KernelPackage) -> dict[str, object]:
    files = {}
    for path in host_inputs():
        st = os.stat(path)
        files[path] = [st.st_size, st.st_mtime_ns]
    return {
        "kernel": [pkg.name, pkg.version],
        "modules": MODULES,
        "init": sha256_file(INIT_SCRIPT),
        "builder": sha256_file(Path(__file__).resolve()),
        "host_files": files,
    }


def outputs_intact(out: Path, manifest: dict[str, Any]) -> bool:
    outputs = manifest.get("outputs")
    if not isinstance(outputs, dict):
        return False
    for name, digest in outputs.items():
        path = out / name
        if not path.is_file() or sha256_file(path) != digest:
            return False
    return set(outputs) == {"vmlinuz", "initrd.gz"}


def build(out: Path, force: bool = False) -> bool:
    """Builds OUT/vmlinuz and OUT/initrd.gz; returns False when they were already up to date.

    Concurrent builds into the same OUT (parallel test runs) take turns on OUT/.lock."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(out, force)


def _build_locked(out: Path, force: bool) -> bool:
    manifest_path = out / "manifest.json"
    old: dict[str, Any] = {}
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except ValueError:
            old = {}
    state, pkg = kernel_package(old)
    inputs = fingerprint(pkg)
    if not force and old.get("inputs") == inputs and outputs_intact(out, old):
        return False
    work = out / "work"
    work.mkdir(exist_ok=True)
    kernel = fetch_kernel(pkg, work)
    # Outputs are replaced atomically (a new inode): a VM booting from them meanwhile is safe.
    if not (out / "vmlinuz").is_file() or sha256_file(out / "vmlinuz") != sha256_file(
        kernel / "vmlinuz"
    ):
        tmp_vmlinuz = out / "vmlinuz.tmp"
        shutil.copyfile(kernel / "vmlinuz", tmp_vmlinuz)
        tmp_vmlinuz.chmod(0o644)
        tmp_vmlinuz.replace(out / "vmlinuz")
    with tempfile.TemporaryDirectory(dir=work, prefix="initramfs-") as staging:
        build_initramfs(kernel, Path(staging) / "root", out / "initrd.gz")
    (out / "initrd.gz").chmod(0o644)
    manifest = {
        "apt_state": state,
        "inputs": inputs,
        "kernel_release": (kernel / "release").read_text().strip(),
        "outputs": {name: sha256_file(out / name) for name in ("vmlinuz", "initrd.gz")},
    }
    tmp_manifest = out / "manifest.json.tmp"
    tmp_manifest.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    tmp_manifest.replace(manifest_path)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("build/guest"), help="output directory")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        built = build(args.out, force=args.force)
    except BuildError as exc:
        log(f"error: {exc}")
        return 1
    took = time.monotonic() - started
    if not built:
        log(f"{args.out}/vmlinuz and initrd.gz are up to date ({took:.2f} s)")
        return 0
    for name in ("vmlinuz", "initrd.gz"):
        log(f"{args.out / name}: {(args.out / name).stat().st_size} bytes")
    log(f"built in {took:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
