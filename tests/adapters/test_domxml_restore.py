"""restore_xml: a new VM from a backup's saved definition: as a clone (new name, UUID,
MACs), its disks on the restored files; a writable disk the backup lacks is dropped,
never left pointing at the original's file."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from snapgroup.adapters.domxml import parse_domain, restore_xml
from snapgroup.domain.models import VmState

SOURCE = (
    Path(__file__).resolve().parents[2] / "fixtures" / "domxml" / "inactive_clone_source.xml"
).read_text()
NEW = "7e57c10e" + "1" * 24


def test_restored_disks_identity_and_macs() -> None:
    xml = restore_xml(
        SOURCE,
        name="web-restored",
        uuid=NEW,
        sources={"vda": "/r/a.qcow2", "vdb": "/r/b.qcow2"},
    )
    root = ET.fromstring(xml)
    assert root.findtext("name") == "web-restored"
    assert root.findtext("uuid") == "7e57c10e-1111-1111-1111-111111111111"
    assert all(i.find("mac") is None for i in root.iterfind("devices/interface"))
    disks = {d.target: d for d in parse_domain(xml, VmState.STOPPED).disks}
    assert disks["vda"].path == "/r/a.qcow2" and disks["vda"].format == "qcow2"
    assert disks["vdb"].path == "/r/b.qcow2" and disks["vda"].backing == ()


def test_a_writable_disk_the_backup_lacks_is_dropped() -> None:
    original = {d.target: d for d in parse_domain(SOURCE, VmState.STOPPED).disks}
    xml = restore_xml(SOURCE, name="r", uuid=NEW, sources={"vda": "/r/a.qcow2"})
    disks = {d.target: d for d in parse_domain(xml, VmState.STOPPED).disks}
    assert "vdb" in original and "vdb" not in disks  # never the original's data file
    assert disks["vda"].path == "/r/a.qcow2"
    # read-only and shareable disks and cdroms are kept, as a clone keeps them
    assert {"vdc", "vdd", "sda"} <= set(disks)
    assert all(
        d.readonly or d.shareable or d.device != "disk" or d.path.startswith("/r/")  # type: ignore[union-attr]
        for d in disks.values()
    )
