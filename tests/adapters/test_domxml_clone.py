"""clone_xml: what must differ for a clone to run beside its original, and nothing else."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from snapgroup.adapters.domxml import clone_xml, parse_domain
from snapgroup.domain.errors import InvalidArgument, NotFound
from snapgroup.domain.models import VmState

SOURCE = (
    Path(__file__).resolve().parents[2] / "fixtures" / "domxml" / "inactive_clone_source.xml"
).read_text()
NEW = "7e57c10e" + "0" * 24
SOURCES = {
    "vda": "/var/lib/snapgroup/web/c-root.qcow2",
    "vdb": "/var/lib/snapgroup/web/c-data.qcow2",
}


def cloned() -> ET.Element:
    return ET.fromstring(clone_xml(SOURCE, name="web-copy", uuid=NEW, sources=SOURCES))


def test_name_uuid_and_smbios_uuid_are_new() -> None:
    root = cloned()
    assert root.findtext("name") == "web-copy"
    assert root.findtext("uuid") == "7e57c10e-0000-0000-0000-000000000000"
    entries = {e.get("name"): e.text for e in root.iterfind("sysinfo/system/entry")}
    assert entries == {"manufacturer": "Example"}  # libvirt refuses a uuid that differs


def test_disks_move_to_the_overlays_without_the_stored_chain() -> None:
    info = parse_domain(clone_xml(SOURCE, name="c", uuid=NEW, sources=SOURCES), VmState.STOPPED)
    disks = {d.target: d for d in info.disks}
    assert disks["vda"].path == SOURCES["vda"] and disks["vda"].backing == ()
    assert disks["vdb"].path == SOURCES["vdb"] and disks["vdb"].serial == "data-0001"
    assert disks["vda"].boot_order == 1
    # shared read-only things stay shared
    assert disks["vdc"].path == "/var/lib/snapgroup/golden.qcow2"
    assert disks["vdd"].path == "/var/lib/snapgroup/shared/quorum.img"
    assert disks["sda"].path == "/var/lib/snapgroup/iso/install.iso"
    assert (
        ET.fromstring(clone_xml(SOURCE, name="c", uuid=NEW, sources=SOURCES)).find(
            "devices/disk/source[@index]"
        )
        is None
    )


def test_macs_and_tap_names_are_left_to_libvirt() -> None:
    interfaces = cloned().findall("devices/interface")
    assert len(interfaces) == 2
    assert all(i.find("mac") is None and i.find("target") is None for i in interfaces)
    assert [
        i.find("source").get("network") or i.find("source").get("bridge") for i in interfaces
    ] == [  # type: ignore[union-attr]
        "default",
        "br0",
    ]


def test_files_of_its_own() -> None:
    root = cloned()
    assert root.find("os/nvram") is None  # libvirt makes a fresh one from the template
    assert root.find("os/loader") is not None
    paths = {root.find(f"devices/{t}/source").get("path") for t in ("serial", "console")}  # type: ignore[union-attr]
    assert paths == {f"/var/log/vms/{NEW}-0.log"}  # both still the same file
    channel = root.find("devices/channel/source")
    assert channel is not None and channel.get("path") is None and channel.get("mode") == "bind"


def test_everything_else_is_kept() -> None:
    root = cloned()
    assert root.get("type") == "kvm"
    assert root.findtext("memory") == "1048576"
    assert root.find("devices/graphics").get("passwd") == "s3cret"  # type: ignore[union-attr]
    assert "https://example.invalid/app/1" in clone_xml(SOURCE, name="c", uuid=NEW, sources=SOURCES)
    assert 'xmlns:app="https://example.invalid/app/1"' in clone_xml(
        SOURCE, name="c", uuid=NEW, sources=SOURCES
    )


def test_a_writable_disk_left_out_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="vdb"):
        clone_xml(SOURCE, name="c", uuid=NEW, sources={"vda": SOURCES["vda"]})


def test_bad_sources_are_refused() -> None:
    with pytest.raises(NotFound):
        clone_xml(SOURCE, name="c", uuid=NEW, sources={**SOURCES, "vdz": "/x.qcow2"})
    with pytest.raises(InvalidArgument):
        clone_xml(SOURCE, name="c", uuid=NEW, sources={**SOURCES, "vda": "rel.qcow2"})
    with pytest.raises(InvalidArgument):
        clone_xml(SOURCE, name="c", uuid="not-a-uuid", sources=SOURCES)
    with pytest.raises(InvalidArgument):
        clone_xml(SOURCE, name=" ", uuid=NEW, sources=SOURCES)


def test_names_are_data_never_markup() -> None:
    root = ET.fromstring(clone_xml(SOURCE, name="a<b>&'\"", uuid=NEW, sources=SOURCES))
    assert root.findtext("name") == "a<b>&'\""
