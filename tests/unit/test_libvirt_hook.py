"""libvirt's qemu hook (contrib/libvirt/snapgroup-qemu-hook, `snapgroup libvirt-hook`):
an incoming migration of a VM that an operation holds is refused; install-units
installs it."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Lab
from tests.unit.test_cli import cli

VM = "a" * 32
DASHED = "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa"  # as libvirt writes it
XML = f"<domain type='kvm'><name>vm1</name><uuid>{DASHED}</uuid></domain>"


def _hook(lab: Lab, monkeypatch: pytest.MonkeyPatch, *argv: str) -> tuple[int, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(XML))
    code, _, err = cli(lab, "libvirt-hook", *argv)
    return code, err


def test_a_migration_is_refused_while_an_operation_holds_the_vm(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab_domain(lab.hv)
    assert _hook(lab, monkeypatch, "vm1", "migrate", "begin", "-") == (0, "")
    with lab.engine.ctx.locks.vm(VM):
        code, err = _hook(lab, monkeypatch, "vm1", "migrate", "begin", "-")
        assert code == 1 and err.startswith("error SYS.1011: snapgroup: an operation holds")
        assert f"VM vm1 ({VM})" in err
        assert _hook(lab, monkeypatch, "vm1", "started", "begin", "-") == (0, "")
    assert lab.hv.calls == []  # a hook never calls libvirt


def test_a_hook_without_a_domain_on_stdin_refuses(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("not xml"))
    code, _, err = cli(lab, "libvirt-hook", "vm1", "migrate")
    assert code == 1 and "SYS.1007" in err and "not a domain's XML" in err


def test_install_units_installs_the_hook_and_it_runs_snapgroup(lab: Lab, tmp_path: Path) -> None:
    record = tmp_path / "called"
    exe = tmp_path / "snapgroup"  # stands in for snapgroup: says how it was called
    exe.write_text(f'#!/bin/sh\necho "$SNAPGROUP_NO_DAEMON $*" > {record}\ncat >> {record}\n')
    exe.chmod(0o755)
    code, out, _ = cli(lab, "--json", "install-units", "--root", str(tmp_path), "--exec", str(exe))
    assert code == 0
    hook = tmp_path / "etc/libvirt/hooks/qemu.d/snapgroup"
    assert json.loads(out)["hooks"] == [str(hook)]
    assert os.stat(hook).st_mode & 0o777 == 0o755
    env = {"PATH": "/usr/bin:/bin"}  # libvirt's is as bare
    for operation in ("prepare", "start", "release"):
        subprocess.run(
            [hook, "vm1", operation, "begin", "-"], input=XML, text=True, env=env, check=True
        )
    assert not record.exists()  # only a migration asks snapgroup
    subprocess.run(
        [hook, "vm1", "migrate", "begin", "-"], input=XML, text=True, env=env, check=True
    )
    assert record.read_text() == f"1 libvirt-hook vm1 migrate\n{XML}"
