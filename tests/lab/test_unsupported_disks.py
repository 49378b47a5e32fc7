"""A real domain with disks a group cannot or must not cover, and broken chains: clear
errors with stable codes, and nothing changed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from snapgroup.api import Engine
from snapgroup.domain.errors import OperationError
from snapgroup.testing.labvm import LabVm
from tests.lab.tools import domblklist, sh, virsh

pytestmark = pytest.mark.lab


def _attach(vm: LabVm, path: Path, target: str, *extra: str) -> None:
    virsh("attach-disk", vm.name, str(path), target, "--config", *extra)


def test_raw_cdrom_readonly_and_shareable_disks(engine: Engine, stopped_vm: LabVm) -> None:
    directory = stopped_vm.directory
    sh("qemu-img", "create", "-q", "-f", "raw", str(directory / "raw.img"), "16M")
    sh("qemu-img", "create", "-q", "-f", "raw", str(directory / "disc.iso"), "1M")
    sh("qemu-img", "create", "-q", "-f", "qcow2", str(directory / "ro.qcow2"), "16M")
    sh("qemu-img", "create", "-q", "-f", "raw", str(directory / "shared.img"), "16M")
    _attach(stopped_vm, directory / "raw.img", "vdd", "--subdriver", "raw")
    _attach(stopped_vm, directory / "disc.iso", "sda", "--type", "cdrom", "--mode", "readonly")
    _attach(stopped_vm, directory / "ro.qcow2", "vde", "--subdriver", "qcow2", "--mode", "readonly")
    _attach(
        stopped_vm, directory / "shared.img", "vdf", "--subdriver", "raw", "--mode", "shareable"
    )
    before = domblklist(stopped_vm.name, inactive=True)

    views = {v.target: v for v in engine.volumes(stopped_vm.name)}
    assert views["vdd"].skipped_reason == "format raw: only qcow2 takes external overlays"
    assert views["sda"].skipped_reason == "cdrom: not a volume"
    assert views["vde"].skipped_reason == "read-only disk: holds no changing state"
    assert "shareable" in (views["vdf"].skipped_reason or "")
    assert [views[t].skipped_reason for t in ("vda", "vdb", "vdc")] == [None] * 3

    with pytest.raises(OperationError) as err:
        engine.create(vm=stopped_vm.name, name="g")
    assert err.value.code == "SYS.1006" and "vdd" in err.value.details
    assert domblklist(stopped_vm.name, inactive=True) == before

    group = engine.create(vm=stopped_vm.name, name="g", skip_unsupported=True)
    assert [r.device_id for r in group.refs] == [0, 1, 2]
    after = domblklist(stopped_vm.name, inactive=True)
    assert {t: after[t] for t in ("vdd", "sda", "vde", "vdf")} == {
        t: before[t] for t in ("vdd", "sda", "vde", "vdf")
    }


def test_missing_disk_file_is_refused_with_nothing_changed(
    engine: Engine, stopped_vm: LabVm
) -> None:
    before = domblklist(stopped_vm.name, inactive=True)
    Path(before["vdc"]).rename(stopped_vm.directory / "moved-away")
    files = sorted(p.name for p in stopped_vm.directory.iterdir())
    with pytest.raises(OperationError) as err:
        engine.create(vm=stopped_vm.name, name="g")
    assert err.value.code == "SYS.1006" and "vdc" in err.value.details
    assert sorted(p.name for p in stopped_vm.directory.iterdir()) == files
    assert domblklist(stopped_vm.name, inactive=True) == before
    assert engine.list_groups() == []


def test_broken_backing_chain_is_refused(engine: Engine, stopped_vm: LabVm) -> None:
    engine.create(vm=stopped_vm.name, name="g1")
    base = engine.list_groups()[0].refs[1].install_path
    Path(base).rename(stopped_vm.directory / "lost-base")
    before = domblklist(stopped_vm.name, inactive=True)
    with pytest.raises(OperationError) as err:
        engine.create(vm=stopped_vm.name, name="g2")
    assert err.value.cause is not None and err.value.cause.code == "HOST.1003"
    assert domblklist(stopped_vm.name, inactive=True) == before
    assert len(engine.list_groups()) == 1


def test_libvirtd_unreachable_is_host_1001(labdir: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snapgroup",
            "--json",
            "--db",
            f"sqlite:///{labdir / 'x.db'}",
            "--connect",
            "qemu+unix:///system?socket=/nonexistent/libvirt-sock",
            "volumes",
            "--vm",
            "anything",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"]["code"] == "HOST.1001"
