from __future__ import annotations

import pytest
from pytest_mock import MockerFixture

from snapgroup.domain.errors import (
    HypervisorError,
    ImageToolError,
    InvalidArgument,
    NotFound,
    OperationError,
    StoreError,
)
from snapgroup.domain.models import DomainDisk, VmState
from snapgroup.ops import creating
from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Lab

VM = "a" * 32


def test_live_create_snapshots_every_disk_in_one_atomic_call(lab: Lab) -> None:
    paths = lab_domain(lab.hv)
    group = lab.engine.create(vm="vm1", name="g1")

    assert len(lab.hv.called("snapshot_disks")) == 1
    assert lab.hv.called("set_disk_sources") == []
    assert [r.device_id for r in group.refs] == [0, 1, 2]
    assert [r.volume_type for r in group.refs] == ["Root", "Data", "Data"]
    assert [r.install_path for r in group.refs] == paths
    assert group.refs[0].snapshot_name == f"g1-{group.refs[0].volume_name}"
    for disk, old in zip(lab.hv.domains[VM].disks, paths, strict=True):
        assert disk.path != old and disk.path is not None
        assert disk.path.startswith("/lab/") and disk.path.endswith(".qcow2")
        assert lab.images.images[disk.path].backing == old


def test_stopped_create_redefines_the_domain_instead(lab: Lab) -> None:
    lab_domain(lab.hv, state=VmState.STOPPED)
    lab.engine.create(vm=VM, name="g1")
    assert lab.hv.called("snapshot_disks") == []
    (call,) = lab.hv.called("set_disk_sources")
    assert sorted(call[1]) == ["vda", "vdb", "vdc"]  # type: ignore[call-overload]


def test_snapshot_keeps_its_data_after_later_writes(lab: Lab) -> None:
    lab_domain(lab.hv)
    lab.images.write("/lab/disk1.qcow2", 5, "before")
    group = lab.engine.create(vm="vm1", name="g1")
    top = lab.hv.disk_path(VM, "vdb")
    assert top is not None
    lab.images.write(top, 5, "after")
    assert lab.images.read(group.refs[1].install_path)[5] == "before"
    assert lab.images.read(top)[5] == "after"


def test_create_by_root_volume_uuid(lab: Lab) -> None:
    lab_domain(lab.hv)
    root = lab.engine.volumes("vm1")[0]
    assert root.volume_type == "Root" and root.volume_uuid
    group = lab.engine.create(root_volume_uuid=root.volume_uuid, name="g")
    assert group.vm_uuid == VM
    data = lab.engine.volumes("vm1")[1].volume_uuid
    assert data
    with pytest.raises(InvalidArgument):
        lab.engine.create(root_volume_uuid=data, name="g")
    with pytest.raises(NotFound):
        lab.engine.create(root_volume_uuid="f" * 32, name="g")


def test_volume_uuids_survive_their_top_file_moving(lab: Lab) -> None:
    lab_domain(lab.hv)
    before = [v.volume_uuid for v in lab.engine.volumes("vm1")]
    lab.engine.create(vm="vm1", name="g1")
    after = [v.volume_uuid for v in lab.engine.volumes("vm1")]
    assert before == after and None not in before


@pytest.mark.parametrize("step", ["create_overlay", "snapshot_disks"])
def test_failure_midway_leaves_everything_as_before(lab: Lab, step: str) -> None:
    paths = lab_domain(lab.hv)
    files_before = set(lab.images.images)
    if step == "create_overlay":
        lab.images.fail[step] = ImageToolError("disk full")
        lab.images.fail_after[step] = 1  # the second overlay fails
    else:
        lab.hv.fail[step] = HypervisorError("libvirt said no")
    with pytest.raises((ImageToolError, HypervisorError)):
        lab.engine.create(vm="vm1", name="g1")
    assert set(lab.images.images) == files_before
    assert [d.path for d in lab.hv.domains[VM].disks] == paths
    assert lab.engine.list_groups() == []


def test_failure_recording_the_group_undoes_the_snapshot(lab: Lab, mocker: MockerFixture) -> None:
    paths = lab_domain(lab.hv)
    lab.images.write("/lab/disk0.qcow2", 1, "x")
    files_before = set(lab.images.images)
    mocker.patch.object(creating, "_record_group", autospec=True, side_effect=StoreError("db gone"))
    with pytest.raises(StoreError):
        lab.engine.create(vm="vm1", name="g1")
    assert [d.path for d in lab.hv.domains[VM].disks] == paths
    assert set(lab.images.images) == files_before
    assert lab.images.read("/lab/disk0.qcow2")[1] == "x"


def test_unsupported_writable_disk_refuses_unless_skipped(lab: Lab) -> None:
    lab_domain(lab.hv, data_disks=1)
    lab.images.add("/lab/raw.img", fmt="raw")
    lab.hv.domains[VM].disks += [
        DomainDisk("vdc", "disk", "file", "/lab/raw.img", "raw"),
        DomainDisk("sda", "cdrom", "file", "/lab/x.iso", "raw", readonly=True),
        DomainDisk("vdd", "disk", "file", "/lab/shared.qcow2", "qcow2", shareable=True),
    ]
    views = {v.target: v for v in lab.engine.volumes("vm1")}
    assert views["vdc"].skipped_reason == "format raw: only qcow2 takes external overlays"
    assert views["sda"].skipped_reason == "cdrom: not a volume" and views["sda"].device_id is None
    assert views["vdd"].skipped_reason is not None and "shareable" in views["vdd"].skipped_reason
    with pytest.raises(OperationError, match="vdc"):
        lab.engine.create(vm="vm1", name="g")
    group = lab.engine.create(vm="vm1", name="g", skip_unsupported=True)
    assert [r.device_id for r in group.refs] == [0, 1]


def test_bad_input_is_refused_with_stable_codes(lab: Lab) -> None:
    lab_domain(lab.hv)
    cases = [
        dict(vm="vm1", name="x" * 256),
        dict(vm="vm1", name=""),
        dict(vm="vm1", name="a\x00b"),
        dict(vm="vm1", name="ok", description="d" * 2049),
        dict(vm="vm1", name="ok", resource_uuid="not-a-uuid"),
    ]
    for kwargs in cases:
        with pytest.raises(InvalidArgument) as err:
            lab.engine.create(**kwargs)  # type: ignore[arg-type]
        assert err.value.code == "SYS.1007"
    with pytest.raises(NotFound) as missing:
        lab.engine.create(vm="nope", name="g")
    assert missing.value.code == "SYS.1003"
    assert lab.engine.list_groups() == []


def test_name_with_path_separators_is_text_never_a_path(lab: Lab) -> None:
    lab_domain(lab.hv)
    group = lab.engine.create(vm="vm1", name="../../etc/passwd")
    assert group.name == "../../etc/passwd"
    assert all(p.startswith("/lab/") and ".." not in p for p in lab.images.images)


def test_resource_uuid_is_used_once(lab: Lab) -> None:
    lab_domain(lab.hv)
    wanted = "0123456789abcdef0123456789abcdef"
    group = lab.engine.create(vm="vm1", name="g", resource_uuid=wanted.upper())
    assert group.uuid == wanted
    with pytest.raises(InvalidArgument, match="already used"):
        lab.engine.create(vm="vm1", name="g", resource_uuid=wanted)


def test_update_show_list(lab: Lab) -> None:
    lab_domain(lab.hv)
    group = lab.engine.create(vm="vm1", name="g1", description="first")
    updated = lab.engine.update(group.uuid, name="renamed")
    assert (updated.name, updated.description) == ("renamed", "first")
    assert updated.last_op_date > group.last_op_date
    assert lab.engine.get(group.uuid).name == "renamed"
    assert [g.uuid for g in lab.engine.list_groups(vm="vm1")] == [group.uuid]
    with pytest.raises(NotFound):
        lab.engine.update("f" * 32, name="x")


def test_an_error_after_the_switch_happened_keeps_the_snapshot(lab: Lab) -> None:
    """libvirt may fail to answer after doing the snapshot: the overlays are then in use
    and must not be removed; the group is recorded."""
    paths = lab_domain(lab.hv)
    real = lab.hv.snapshot_disks

    def switch_then_fail(vm_uuid: str, overlays: object, *, quiesce: bool = False) -> None:
        real(vm_uuid, overlays, quiesce=quiesce)  # type: ignore[arg-type]
        raise HypervisorError("end of file while reading data")

    lab.hv.snapshot_disks = switch_then_fail  # type: ignore[method-assign]
    group = lab.engine.create(vm="vm1", name="g1")
    assert [r.install_path for r in group.refs] == paths
    for disk in lab.hv.domains[VM].disks:
        assert disk.path in lab.images.images and disk.path not in paths


def test_a_lost_connection_before_the_switch_is_retried_once(lab: Lab) -> None:
    from snapgroup.domain.errors import HypervisorUnavailable

    lab_domain(lab.hv)
    lab.hv.fail["snapshot_disks"] = HypervisorUnavailable("Cannot write data: Broken pipe")
    lab.hv.fail_after["snapshot_disks"] = 0
    real = lab.hv._call

    def once(method: str, *args: object) -> None:
        try:
            real(method, *args)
        finally:
            if method == "snapshot_disks":
                lab.hv.fail.pop("snapshot_disks", None)

    lab.hv._call = once  # type: ignore[method-assign]
    assert lab.engine.create(vm="vm1", name="g1").snapshot_count == 3
    assert len(lab.hv.called("snapshot_disks")) == 2
