"""A second host's libvirt on this machine, for the two-host lab: another libvirtd, in a
mount namespace of its own, where /etc/libvirt, /run/libvirt, /var/lib/libvirt,
/var/cache/libvirt and /var/log/libvirt are its own directories (its configuration, with
a host UUID of its own so that libvirt migrates between the two; its sockets, domains
and QEMU state). Everything else is shared with the system libvirtd: the files under
/var/tmp (the shared storage), the network (a migration's stream goes over loopback),
PostgreSQL. Its QEMU log goes to files (no virtlogd in its namespace)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from snapgroup.cli.install_units import default_hook, hook_text
from snapgroup.store.db import Database
from snapgroup.store.hosts import HostRepo

ROOT = Path(__file__).resolve().parents[2]

HOST_UUID = "5a9b0000-0000-4000-8000-00000000b0b0"
BOUND = (  # its own directory under the root -> where the daemon sees it
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("log", "/var/log/libvirt"),
)


@contextmanager
def second_libvirtd(root: Path, *, hook: str | None = None) -> Iterator[str]:
    """Runs the daemon under `root` (made empty first); its URI. `hook`: the text of its
    /etc/libvirt/hooks/qemu.d/snapgroup (libvirtd reads its hooks when it starts)."""
    shutil.rmtree(root, ignore_errors=True)
    for name, _ in BOUND:
        (root / name).mkdir(parents=True)
    etc = root / "etc"
    for found in Path("/etc/libvirt").glob("*.conf"):  # no domains, networks or hooks
        shutil.copy(found, etc / found.name)
    with (etc / "libvirtd.conf").open("a") as conf:
        conf.write(f'\nhost_uuid = "{HOST_UUID}"\n')
    with (etc / "qemu.conf").open("a") as conf:
        conf.write('\nstdio_handler = "file"\n')
    if hook is not None:
        hooks = etc / "hooks" / "qemu.d"
        hooks.mkdir(parents=True)
        (hooks / "snapgroup").write_text(hook)
        (hooks / "snapgroup").chmod(0o755)
    pid_file = root / "libvirtd.pid"
    script = root / "start.sh"
    mounts = "".join(f"mount --bind {root / name} {target}\n" for name, target in BOUND)
    script.write_text(
        f"#!/bin/sh\nset -e\n{mounts}exec libvirtd --pid-file {pid_file} "
        f"--config {etc / 'libvirtd.conf'}\n"
    )
    script.chmod(0o755)
    log = (root / "daemon.log").open("w")
    starter = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", str(script)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"qemu:///system?socket={root / 'run' / 'libvirt-sock'}"
    try:
        deadline = time.monotonic() + 60
        while not _answers(uri):
            assert starter.poll() is None, (root / "daemon.log").read_text()
            assert time.monotonic() < deadline, "the second libvirtd did not start"
            time.sleep(0.2)
        yield uri
    finally:
        for name in _virsh(uri, "list", "--all", "--name").split():
            _virsh(uri, "destroy", name)
            _virsh(uri, "undefine", name)
        starter.send_signal(signal.SIGTERM)  # the daemon itself (unshare exec'd it)
        try:
            starter.wait(timeout=30)
        except subprocess.TimeoutExpired:
            starter.kill()
            starter.wait()
        log.close()
        if os.environ.get("SNAPGROUP_KEEP_SECOND_HOST") != "1":
            shutil.rmtree(root, ignore_errors=True)


@contextmanager
def host_b(pg_url: str) -> Iterator[str]:
    """Host b's libvirt (second_libvirtd), its qemu hook running this snapgroup on the
    store at `pg_url`; its URI."""
    root = Path(f"/var/tmp/sg-lab-hostb-{uuid.uuid4().hex[:8]}")
    wrapper = root.with_name(root.name + "-snapgroup")
    wrapper.write_text(
        f"#!/bin/sh\nexport SNAPGROUP_DB='{pg_url}' PYTHONPATH='{ROOT}'\n"
        f'exec {sys.executable} -m snapgroup "$@"\n'
    )
    wrapper.chmod(0o700)
    try:
        hook = hook_text(default_hook().read_text(), str(wrapper))
        with second_libvirtd(root, hook=hook) as uri:
            yield uri
    finally:
        wrapper.unlink()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def snapgroup_env(host: str, uri: str) -> dict[str, str]:
    """A snapgroup process of host `host` (SNAPGROUP_HOST) on the libvirt at `uri`."""
    return {
        **os.environ,
        "SNAPGROUP_HOST": host,
        "LIBVIRT_DEFAULT_URI": uri,
        "SNAPGROUP_NO_DAEMON": "1",
        "PYTHONPATH": str(ROOT),
    }


@contextmanager
def serving(
    store: Database, pg_url: str, host: str, uri: str, *, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`snapgroup serve` of host `host` as a process of its own on a loopback port
    (its output in `log`), once its address is in the host registry; killed afterwards.
    Its URL: the lease's address (`address`)."""
    with log.open("ab") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "snapgroup", "--db", pg_url, "serve", "--listen",
             f"127.0.0.1:{free_port()}"],
            cwd=ROOT, env=snapgroup_env(host, uri), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            with store.transaction() as session:
                lease = HostRepo(session).lease(host)
            if lease is not None and lease.address is not None:
                break
            assert serve.poll() is None, f"serve of {host} stopped: {log.read_text()}"
            assert time.monotonic() < deadline, f"serve of {host} did not start"
            time.sleep(0.1)
        yield serve
    finally:
        serve.kill()
        serve.wait()


def address(store: Database, host: str) -> str:
    """Where host `host` serves (its registry row)."""
    with store.transaction() as session:
        lease = HostRepo(session).lease(host)
    assert lease is not None and lease.address is not None
    return lease.address


def _virsh(uri: str, *args: str) -> str:
    done = subprocess.run(
        ["virsh", "-q", "-c", uri, *args], capture_output=True, text=True, check=False
    )
    return done.stdout


def _answers(uri: str) -> bool:
    done = subprocess.run(["virsh", "-c", uri, "uri"], capture_output=True, check=False)
    return done.returncode == 0
