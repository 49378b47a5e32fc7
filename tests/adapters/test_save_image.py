"""libvirt's QEMU save image read and written without libvirt (adapters/save_image.py),
on synthetic files laid out as libvirt 9.0 writes them; the domain XML a copy gets
(domxml.saved_state_xml); pack_memory / unpack_memory with the real qemu-img. A real
file libvirt wrote is tests/lab/test_memory_copies.py's."""

from __future__ import annotations

import os
import stat
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from snapgroup.adapters import save_image
from snapgroup.adapters.domxml import saved_state_xml
from snapgroup.adapters.qemu_img import QemuImg
from snapgroup.domain.errors import InvalidArgument

XML = (
    "<domain type='qemu'><name>vm1</name><uuid>9dd9a31c-218e-48b4-869b-4014f7cdbba9</uuid></domain>"
)
COOKIE = b"<cookie>\n  <cpu mode='custom'/>\n</cookie>\n\0"
STREAM = b"QEVM\x00\x00\x00\x03" + bytes(range(256)) * 4000  # ~1 MiB of "migration stream"


def _libvirt_file(
    path: Path, *, order: str = "<", cookie: bytes = COOKIE, magic: bytes = b"LibvirtQemudSave"
) -> None:
    """A save image as qemu_saveimage.c's virQEMUSaveDataWrite lays it out."""
    xml = XML.encode() + b"\0"
    data_len = len(xml) + len(cookie) + 64 * 1024
    unused = tuple(range(1, 15))  # kept as they are, whatever they hold
    header = struct.pack(
        order + "16s5I14I", magic, 2, data_len, 1, 0, len(xml) if cookie else 0, *unused
    )
    path.write_bytes(header + xml + cookie + bytes(data_len - len(xml) - len(cookie)) + STREAM)


def test_the_header_is_92_bytes_as_libvirt_9_writes_it() -> None:
    assert save_image.HEADER_SIZE == 92


@pytest.mark.parametrize("order", ["<", ">"])
def test_read_a_save_image(tmp_path: Path, order: str) -> None:
    path = tmp_path / "a.save"
    _libvirt_file(path, order=order)
    image = save_image.read_image(str(path))
    assert (image.version, image.was_running, image.format) == (2, 1, 0)
    assert image.xml == XML and image.cookie == COOKIE and image.byteorder == order
    assert image.unused == tuple(range(1, 15))
    with open(path, "rb") as f:
        f.seek(image.stream_offset)
        assert f.read() == STREAM


def test_a_copy_carries_the_new_xml_and_the_stream_byte_for_byte(tmp_path: Path) -> None:
    source = tmp_path / "a.save"
    _libvirt_file(source)
    image = save_image.read_image(str(source))
    before = source.read_bytes()
    new_xml = XML.replace("vm1", "a-much-longer-name-for-the-clone" * 10)
    copy = tmp_path / "b.mem"
    save_image.write_image(image, str(copy), new_xml)

    assert source.read_bytes() == before  # the source is never changed
    assert stat.S_IMODE(os.stat(copy).st_mode) == 0o600
    read = save_image.read_image(str(copy))
    assert read.xml == new_xml and read.cookie == COOKIE
    assert (read.version, read.was_running, read.format, read.unused) == (
        image.version, image.was_running, image.format, image.unused,
    )  # fmt: skip
    assert read.data_len == len(new_xml) + 1 + len(COOKIE) + save_image.PADDING
    raw = copy.read_bytes()
    assert raw[:16] == b"LibvirtQemudSave" and raw[read.stream_offset :] == STREAM
    # cookieOffset is the XML's length with its NUL, as libvirt writes it
    assert struct.unpack_from("<I", raw, 32)[0] == len(new_xml) + 1
    with pytest.raises(save_image.SaveImageError, match="File exists"):
        save_image.write_image(image, str(copy), new_xml)  # never overwritten


def test_an_image_without_a_cookie(tmp_path: Path) -> None:
    source = tmp_path / "a.save"
    _libvirt_file(source, cookie=b"")
    image = save_image.read_image(str(source))
    assert image.cookie == b""
    save_image.write_image(image, str(tmp_path / "b"), XML)
    raw = (tmp_path / "b").read_bytes()
    assert struct.unpack_from("<I", raw, 32)[0] == 0 and raw.endswith(STREAM)


def test_rewrite_in_place_within_the_padding(tmp_path: Path) -> None:
    path = tmp_path / "a.save"
    _libvirt_file(path)
    image = save_image.read_image(str(path))
    save_image.rewrite_xml(image, XML.replace("vm1", "restored"))
    read = save_image.read_image(str(path))
    assert read.xml == XML.replace("vm1", "restored") and read.cookie == COOKIE
    assert read.data_len == image.data_len and path.read_bytes().endswith(STREAM)
    with pytest.raises(save_image.SaveImageError, match="does not fit"):
        save_image.rewrite_xml(read, XML + " " * image.data_len)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"short", "too short"),
        (b"LibvirtQemudPart" + bytes(76), "incomplete"),
        (b"QEVM" + bytes(100), "not a libvirt save image"),
        (
            b"LibvirtQemudSave" + struct.pack("<5I14I", 2, 1 << 30, 0, 0, 0, *([0] * 14)),
            "unsupported",
        ),
        (b"LibvirtQemudSave" + struct.pack("<5I14I", 2, 4096, 0, 0, 0, *([0] * 14)), "truncated"),
        (  # a damaged or hostile header: an error of ours, never a UnicodeDecodeError
            b"LibvirtQemudSave" + struct.pack("<5I14I", 2, 4, 0, 0, 0, *([0] * 14)) + b"<\xff>\0",
            "not UTF-8",
        ),
    ],
)
def test_what_is_not_a_save_image_is_refused(tmp_path: Path, content: bytes, error: str) -> None:
    path = tmp_path / "x"
    path.write_bytes(content)
    with pytest.raises(save_image.SaveImageError, match=error):
        save_image.read_image(str(path))


def test_a_failed_copy_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "a.save"
    _libvirt_file(source)
    image = save_image.read_image(str(source))
    source.unlink()  # the stream cannot be read
    with pytest.raises(save_image.SaveImageError):
        save_image.write_image(image, str(tmp_path / "b"), XML)
    assert not (tmp_path / "b").exists()


SAVED = """<domain type='qemu'>
  <name>vm1</name>
  <uuid>9dd9a31c-218e-48b4-869b-4014f7cdbba9</uuid>
  <sysinfo type='smbios'><system>
    <entry name='uuid'>9dd9a31c-218e-48b4-869b-4014f7cdbba9</entry>
  </system></sysinfo>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <nvram>/var/lib/libvirt/qemu/nvram/vm1_VARS.fd</nvram></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/vm/overlay-of-the-group.qcow2' index='2'/>
      <backingStore type='file' index='1'>
        <format type='qcow2'/><source file='/vm/root.qcow2'/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/x.iso'/><target dev='sda' bus='sata'/><readonly/>
    </disk>
    <interface type='user'><mac address='52:54:00:49:53:38'/><model type='virtio'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/></interface>
    <serial type='file'><source path='/vm/console.log'/><target port='0'/></serial>
  </devices>
</domain>"""

DEFINED = """<domain type='qemu'>
  <name>clone-1</name>
  <uuid>0b2a95a9-83b5-4604-97e2-af7c0f6e9469</uuid>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/vm/clone-overlay.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <interface type='user'><mac address='52:54:00:aa:bb:cc'/><model type='virtio'/></interface>
  </devices>
</domain>"""


def test_saved_state_xml_is_the_new_domains_with_the_saved_machine() -> None:
    root = ET.fromstring(saved_state_xml(SAVED, DEFINED))
    assert root.findtext("name") == "clone-1"
    assert root.findtext("uuid") == "0b2a95a9-83b5-4604-97e2-af7c0f6e9469"
    assert root.find("sysinfo/system/entry[@name='uuid']") is None
    assert root.find("os/nvram") is None  # libvirt gives the new domain its own
    (disk, cdrom) = root.findall("devices/disk")
    assert disk.find("source").attrib == {"file": "/vm/clone-overlay.qcow2"}  # type: ignore[union-attr]
    assert disk.find("backingStore") is None
    assert disk.find("address").get("slot") == "0x03"  # type: ignore[union-attr]  # the saved machine
    assert cdrom.find("source").get("file") == "/iso/x.iso"  # type: ignore[union-attr]
    (interface,) = root.findall("devices/interface")
    assert [m.get("address") for m in interface.findall("mac")] == ["52:54:00:aa:bb:cc"]
    assert interface.find("address").get("slot") == "0x02"  # type: ignore[union-attr]
    serial = root.find("devices/serial/source")
    assert serial is not None and serial.get("path") != "/vm/console.log"
    assert root.find("os/type").get("machine") == "pc-i440fx-7.2"  # type: ignore[union-attr]


def test_a_saved_writable_disk_the_definition_lacks_is_refused() -> None:
    defined = DEFINED.replace("dev='vda'", "dev='vdb'")
    with pytest.raises(InvalidArgument, match="vda"):
        saved_state_xml(SAVED, defined)


def test_pack_and_unpack_memory_with_qemu_img(tmp_path: Path) -> None:
    source = tmp_path / "a.save"
    _libvirt_file(source)
    size = source.stat().st_size
    assert size % 512  # qcow2 rounds it up: unpack cuts the tail
    images = QemuImg()
    packed = tmp_path / "memory.qcow2"
    images.pack_memory(str(source), str(packed))
    assert images.chain(str(packed))[0].format == "qcow2"
    out = tmp_path / "back.mem"
    images.unpack_memory(str(packed), str(out), size=size)
    assert out.read_bytes() == source.read_bytes()
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    with pytest.raises(Exception, match="exists"):
        images.unpack_memory(str(packed), str(out), size=size)
