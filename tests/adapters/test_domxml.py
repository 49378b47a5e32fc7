"""domxml against libvirt 9.0's own XML (fixtures/domxml; the mixed-chain one is
hand-written in the same format)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from snapgroup.adapters.domxml import (
    active_commit_base,
    normalize_uuid,
    parse_domain,
    snapshot_xml,
    with_disk_sources,
)
from snapgroup.domain.errors import InvalidArgument, NotFound
from snapgroup.domain.models import DiskOverlay, DomainDisk, VmState

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "domxml"
VM1 = "/var/lib/snapgroup/vm1"
FX = "/var/lib/libvirt/images/sg-fixture"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def disk_map(xml: str) -> dict[str, DomainDisk]:
    return {d.target: d for d in parse_domain(xml, VmState.STOPPED).disks}


def child(element: ET.Element, path: str) -> ET.Element:
    found = element.find(path)
    assert found is not None, path
    return found


def find_disk(root: ET.Element, target: str) -> ET.Element:
    for disk in root.iterfind("devices/disk"):
        if disk.find(f"target[@dev='{target}']") is not None:
            return disk
    raise AssertionError(f"no disk {target}")


# -- parse_domain --------------------------------------------------------------------


def test_variants_every_disk_kind() -> None:
    info = parse_domain(fixture("inactive_variants.xml"), VmState.STOPPED)
    assert info.uuid == "5b8e7c1a2f3d4e5a9b6c7d8e9f0a1b2c"
    assert info.name == "sg-fixture-variants"
    assert info.state is VmState.STOPPED
    assert info.persistent is True
    assert info.disks == (
        DomainDisk("vda", "disk", "file", f"{VM1}/root.qcow2", "qcow2", boot_order=1,
                   serial="root-0001"),
        DomainDisk("vdb", "disk", "file", f"{VM1}/data-raw.img", "raw", serial="data-raw"),
        DomainDisk("vdc", "disk", "block", "/dev/sg-vg/data-lv", "raw"),
        DomainDisk("vdd", "disk", "network", None, "raw"),  # rbd
        DomainDisk("vde", "disk", "network", None, "raw"),  # nbd
        DomainDisk("vdf", "disk", "file", "/var/lib/snapgroup/shared/quorum.img", "raw",
                   shareable=True),
        DomainDisk("vdg", "disk", "file", f"{VM1}/golden.qcow2", "qcow2", readonly=True),
        DomainDisk("vdh", "disk", "volume", None, "qcow2"),  # pool/volume: no local path
        DomainDisk("vdz", "disk", "file", f"{VM1}/data-z.qcow2", "qcow2"),
        DomainDisk("vdaa", "disk", "file", f"{VM1}/data-aa.qcow2", "qcow2"),
        DomainDisk("sda", "cdrom", "file", "/var/lib/snapgroup/iso/install.iso", "raw",
                   readonly=True, boot_order=2),
        DomainDisk("sdc", "cdrom", "file", None, "raw", readonly=True),  # no media
        DomainDisk("sdb", "disk", "file", f"{VM1}/scsi-data.qcow2", "qcow2",
                   serial="scsi-0002"),
        DomainDisk("fda", "floppy", "file", f"{VM1}/floppy.img", "raw"),
    )  # fmt: skip


def test_disks_keep_libvirts_order_not_alphabetical() -> None:
    # libvirt orders by bus then disk index: vdz < vdaa, and sdc (sata) before sdb (scsi).
    info = parse_domain(fixture("inactive_variants.xml"), VmState.STOPPED)
    targets = [d.target for d in info.disks]
    assert targets.index("vdz") < targets.index("vdaa")
    assert targets.index("sdc") < targets.index("sdb")


def test_live_chain_three_deep_top_first() -> None:
    info = parse_domain(fixture("live_backing_chain.xml"), VmState.RUNNING)
    disks = {d.target: d for d in info.disks}
    assert info.state is VmState.RUNNING
    assert disks["vda"].path == f"{FX}/top.qcow2"
    assert disks["vda"].backing == (f"{FX}/mid.qcow2", f"{FX}/base.qcow2")
    assert disks["vda"].boot_order == 1
    assert disks["vda"].serial == "root-0001"
    assert disks["vdb"].backing == ()  # <backingStore/>: no backing file
    assert disks["vdc"] == DomainDisk("vdc", "disk", "file", f"{FX}/data2.img", "raw")
    # An empty live cdrom has a <driver> without type.
    assert disks["sda"] == DomainDisk("sda", "cdrom", "file", None, None, readonly=True)


def test_inactive_after_live_snapshot_carries_the_chain() -> None:
    disks = disk_map(fixture("inactive_after_snapshot.xml"))
    assert disks["vdb"].path == f"{FX}/data1.snap1.qcow2"
    assert disks["vdb"].backing == (f"{FX}/data1.qcow2",)
    assert disks["vda"].backing == ()


def test_chain_through_block_and_stopping_at_network() -> None:
    info = parse_domain(fixture("live_mixed_backing.xml"), VmState.PAUSED, persistent=False)
    disks = {d.target: d for d in info.disks}
    assert info.uuid == "a1b2c3d4e5f6478899aabbccddeeff00"
    assert info.persistent is False
    assert disks["vda"].backing == ("/dev/sg-vg/root-snap1", "/var/lib/snapgroup/vm3/root.qcow2")
    # No local path for an nbd layer: the chain stops rather than skip it.
    assert disks["vdb"].backing == ()


def test_disk_without_target_is_skipped() -> None:
    xml = (
        "<domain><name>x</name><uuid>5b8e7c1a-2f3d-4e5a-9b6c-7d8e9f0a1b2c</uuid><devices>"
        "<disk type='file'><source file='/a'/></disk>"
        "<disk type='file'><source file='/b'/><target dev='vda'/></disk></devices></domain>"
    )
    disks = parse_domain(xml, VmState.STOPPED).disks
    assert [(d.target, d.device, d.path, d.format) for d in disks] == [("vda", "disk", "/b", None)]


@pytest.mark.parametrize(
    "xml",
    [
        "<domain><name>x</name",  # malformed
        "<domain><name>x</name></domain>",  # no uuid
        "<domain><uuid>5b8e7c1a2f3d4e5a9b6c7d8e9f0a1b2c</uuid></domain>",  # no name
        "<domain><name>x</name><uuid>not-a-uuid</uuid></domain>",
        "<domainsnapshot/>",
    ],
)
def test_bad_domain_xml(xml: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_domain(xml, VmState.STOPPED)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5B8E7C1A-2F3D-4E5A-9B6C-7D8E9F0A1B2C", "5b8e7c1a2f3d4e5a9b6c7d8e9f0a1b2c"),
        ("5b8e7c1a2f3d4e5a9b6c7d8e9f0a1b2c", "5b8e7c1a2f3d4e5a9b6c7d8e9f0a1b2c"),
    ],
)
def test_normalize_uuid(value: str, expected: str) -> None:
    assert normalize_uuid(value) == expected


@pytest.mark.parametrize("value", ["", "xyz", "5b8e7c1a2f3d4e5a9b6c7d8e9f0a1b2", "g" * 32])
def test_normalize_uuid_rejects(value: str) -> None:
    with pytest.raises(InvalidArgument):
        normalize_uuid(value)


def test_active_commit_base_from_the_mirror() -> None:
    lab = "/var/tmp/snapgroup-lab/sg-lab-fx"
    ready = fixture("live_active_commit_ready.xml")
    assert active_commit_base(ready, "vdb") == f"{lab}/data1.qcow2"
    assert active_commit_base(ready, "vda") is None
    assert active_commit_base(ready, "vdq") is None
    # The <mirror> is not part of the disk's chain.
    vdb = disk_map(ready)["vdb"]
    assert (vdb.path, vdb.backing) == (f"{lab}/data1.s1.qcow2", (f"{lab}/data1.qcow2",))
    assert active_commit_base(fixture("live_backing_chain.xml"), "vda") is None


# -- snapshot_xml ----------------------------------------------------------------------


def test_snapshot_xml_overlays_external_rest_no() -> None:
    overlays = [
        DiskOverlay("vdb", "/d/data1.qcow2", "/d/data1.s1.qcow2"),
        DiskOverlay("vda", "/d/root.qcow2", "/d/root.s1.qcow2"),
    ]
    root = ET.fromstring(snapshot_xml(overlays, ["vda", "vdb", "vdc", "sda"]))
    assert root.tag == "domainsnapshot"
    disks = root.findall("disks/disk")
    assert [(d.get("name"), d.get("snapshot")) for d in disks] == [
        ("vda", "external"),
        ("vdb", "external"),
        ("vdc", "no"),
        ("sda", "no"),
    ]
    for disk, overlay in ((disks[0], "/d/root.s1.qcow2"), (disks[1], "/d/data1.s1.qcow2")):
        assert disk.get("type") == "file"
        assert child(disk, "source").get("file") == overlay
        assert child(disk, "driver").get("type") == "qcow2"
    assert list(disks[2]) == []


def test_snapshot_xml_escapes_paths() -> None:
    odd = "/d/a'b\"c<&>.qcow2"
    xml = snapshot_xml([DiskOverlay("vda", "/d/root.qcow2", odd)], ["vda"])
    assert child(ET.fromstring(xml), "disks/disk/source").get("file") == odd


def test_snapshot_xml_rejects() -> None:
    ov = DiskOverlay("vda", "/a", "/b")
    with pytest.raises(InvalidArgument):
        snapshot_xml([], ["vda"])
    with pytest.raises(InvalidArgument):
        snapshot_xml([ov, ov], ["vda"])
    with pytest.raises(NotFound):
        snapshot_xml([DiskOverlay("vdq", "/a", "/b")], ["vda"])


def test_snapshot_xml_with_the_memory_names_its_file_first() -> None:
    ov = DiskOverlay("vda", "/d/root.qcow2", "/d/root.s1.qcow2")
    root = ET.fromstring(snapshot_xml([ov], ["vda", "vdb"], memory_file="/d/abc.mem"))
    memory = child(root, "memory")
    assert (memory.get("snapshot"), memory.get("file")) == ("external", "/d/abc.mem")
    assert [c.tag for c in root] == ["memory", "disks"]
    assert "<memory" not in snapshot_xml([ov], ["vda"])  # disk-only: no memory element
    with pytest.raises(InvalidArgument, match="absolute"):
        snapshot_xml([ov], ["vda"], memory_file="abc.mem")


# -- with_disk_sources -----------------------------------------------------------------


def test_with_disk_sources_replaces_source_and_drops_backing_store() -> None:
    original = fixture("inactive_after_snapshot.xml")
    new = with_disk_sources(original, {"vdb": f"{FX}/data1.s2.qcow2"})
    root = ET.fromstring(new)
    vdb = find_disk(root, "vdb")
    assert child(vdb, "source").get("file") == f"{FX}/data1.s2.qcow2"
    assert child(vdb, "driver").attrib == {"name": "qemu", "type": "qcow2"}
    assert vdb.find("backingStore") is None
    assert disk_map(new)["vdb"].backing == ()
    # Everything else is untouched: compare with vdb removed from both documents.
    before, after = ET.fromstring(original), root
    for doc in (before, after):
        child(doc, "devices").remove(find_disk(doc, "vdb"))
    assert ET.canonicalize(ET.tostring(before)) == ET.canonicalize(ET.tostring(after))


def test_with_disk_sources_keeps_namespace_prefixes_and_secrets() -> None:
    new = with_disk_sources(fixture("inactive_after_snapshot.xml"), {"vda": "/x/root.qcow2"})
    assert "<qemu:commandline>" in new
    assert "<zs:vm " in new
    assert 'passwd="s3cret"' in new


def test_with_disk_sources_raw_becomes_qcow2_and_live_index_goes() -> None:
    new = with_disk_sources(
        fixture("live_backing_chain.xml"),
        {"vdc": "/x/data2.s1.qcow2", "vda": "/x/top2.qcow2"},
    )
    disks = disk_map(new)
    assert disks["vdc"].format == "qcow2"
    assert disks["vdc"].path == "/x/data2.s1.qcow2"
    assert disks["vda"].backing == ()
    source = find_disk(ET.fromstring(new), "vda").find("source")
    assert source is not None and "index" not in source.attrib
    assert disks["vdb"].path == f"{FX}/data1.qcow2"


def test_with_disk_sources_adds_missing_driver() -> None:
    xml = (
        "<domain><name>x</name><uuid>5b8e7c1a-2f3d-4e5a-9b6c-7d8e9f0a1b2c</uuid><devices>"
        "<disk type='file' device='disk'><source file='/a'/><target dev='vda'/></disk>"
        "</devices></domain>"
    )
    assert disk_map(with_disk_sources(xml, {"vda": "/b"}))["vda"].format == "qcow2"


@pytest.mark.parametrize(
    ("sources", "error"),
    [
        ({"vdq": "/x/a.qcow2"}, NotFound),
        ({}, InvalidArgument),
        ({"vda": "relative.qcow2"}, InvalidArgument),
        ({"vdc": "/x/a.qcow2"}, InvalidArgument),  # block device
        ({"vdd": "/x/a.qcow2"}, InvalidArgument),  # network
        ({"sda": "/x/a.qcow2"}, InvalidArgument),  # cdrom
    ],
)
def test_with_disk_sources_rejects(sources: dict[str, str], error: type[Exception]) -> None:
    with pytest.raises(error):
        with_disk_sources(fixture("inactive_variants.xml"), sources)
