"""libvirt domain and snapshot XML, read and written with ElementTree only.

No libvirt import here: these functions are pure so they can be tested against fixture
files. Data never goes into a string template: every path and name is set as an
element attribute or text, so ElementTree does the escaping.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence

from snapgroup.domain.errors import InvalidArgument, NotFound
from snapgroup.domain.models import DiskOverlay, DomainDisk, DomainInfo, VmState

_HEX32 = re.compile(r"[0-9a-f]{32}")
# ElementTree invents ns0, ns1... itself and refuses to have them registered.
_GENERATED_PREFIX = re.compile(r"ns\d+")


def normalize_uuid(value: str) -> str:
    """'8B2F...-...' or 32 hex digits -> 32 lowercase hex digits; InvalidArgument else."""
    compact = value.strip().replace("-", "").lower()
    if not _HEX32.fullmatch(compact):
        raise InvalidArgument(f"not a UUID: {value!r}")
    return compact


def _parse(xml: str) -> ET.Element:
    try:
        return ET.fromstring(xml)
    except ET.ParseError as exc:
        raise InvalidArgument(f"malformed domain XML: {exc}") from exc


def _source_path(source_type: str, source: ET.Element | None) -> str | None:
    """The local path of a <source>; None for network, volume and empty (no media)."""
    if source is None:
        return None
    attribute = {"file": "file", "block": "dev", "dir": "dir"}.get(source_type)
    return source.get(attribute) if attribute else None


def _backing_chain(holder: ET.Element) -> tuple[str, ...]:
    """Paths of the nested <backingStore> elements under `holder`, top first.

    An empty <backingStore/> ends the chain. A layer without a local path (an nbd or rbd
    backing) also ends it: skipping it would make the layer below look like the direct
    backing file, which is false.
    """
    chain: list[str] = []
    store = holder.find("backingStore")
    while store is not None:
        path = _source_path(store.get("type", ""), store.find("source"))
        if path is None:
            break
        chain.append(path)
        store = store.find("backingStore")
    return tuple(chain)


def _parse_disk(disk: ET.Element) -> DomainDisk | None:
    target = disk.find("target")
    dev = target.get("dev") if target is not None else None
    if not dev:
        return None
    source_type = disk.get("type", "file")
    driver = disk.find("driver")
    boot = disk.find("boot")
    boot_order = boot.get("order") if boot is not None else None
    serial = disk.findtext("serial")
    return DomainDisk(
        target=dev,
        device=disk.get("device", "disk"),
        source_type=source_type,
        path=_source_path(source_type, disk.find("source")),
        format=driver.get("type") if driver is not None else None,
        readonly=disk.find("readonly") is not None,
        shareable=disk.find("shareable") is not None,
        boot_order=int(boot_order) if boot_order else None,
        serial=serial.strip() if serial else None,
        backing=_backing_chain(disk),
    )


def parse_domain(xml: str, state: VmState, *, persistent: bool = True) -> DomainInfo:
    """A DomainInfo from a domain's XML (live or inactive), disks in document order."""
    root = _parse(xml)
    if root.tag != "domain":
        raise InvalidArgument(f"expected <domain>, got <{root.tag}>")
    name = root.findtext("name")
    uuid = root.findtext("uuid")
    if not name or not uuid:
        raise InvalidArgument("domain XML has no <name> or <uuid>")
    disks = tuple(parsed for disk in root.iterfind("devices/disk") if (parsed := _parse_disk(disk)))
    return DomainInfo(
        uuid=normalize_uuid(uuid),
        name=name.strip(),
        state=state,
        disks=disks,
        persistent=persistent,
    )


def active_commit_base(xml: str, target: str) -> str | None:
    """The base of an active commit running on `target` (live XML's <mirror
    job='active-commit'>), or None when the disk has no such job."""
    for dev, disk in _disks_by_target(_parse(xml)):
        mirror = disk.find("mirror")
        if dev == target and mirror is not None and mirror.get("job") == "active-commit":
            return _source_path(mirror.get("type", "file"), mirror.find("source"))
    return None


def snapshot_xml(
    overlays: Sequence[DiskOverlay], all_targets: Sequence[str], *, memory_file: str | None = None
) -> str:
    """<domainsnapshot> for one external snapshot onto `overlays`: disk-only, or with
    the memory state saved to `memory_file` (an absolute path).

    Every target in `all_targets` is named: the overlays' ones external, the rest
    snapshot='no', so libvirt's defaults (which differ by disk kind) never decide.
    """
    by_target: dict[str, DiskOverlay] = {}
    for overlay in overlays:
        if overlay.target in by_target:
            raise InvalidArgument(f"disk {overlay.target} given twice")
        by_target[overlay.target] = overlay
    if not by_target:
        raise InvalidArgument("no disk to snapshot")
    unknown = sorted(set(by_target) - set(all_targets))
    if unknown:
        raise NotFound(f"the domain has no disk {', '.join(unknown)}")

    root = ET.Element("domainsnapshot")
    if memory_file is not None:
        if not memory_file.startswith("/"):
            raise InvalidArgument(f"memory file must be an absolute path: {memory_file!r}")
        ET.SubElement(root, "memory", snapshot="external", file=memory_file)
    disks = ET.SubElement(root, "disks")
    for target in dict.fromkeys(all_targets):  # ordered, without repeats
        chosen = by_target.get(target)
        if chosen is None:
            ET.SubElement(disks, "disk", name=target, snapshot="no")
            continue
        disk = ET.SubElement(disks, "disk", name=target, snapshot="external", type="file")
        ET.SubElement(disk, "source", file=chosen.overlay)
        ET.SubElement(disk, "driver", type="qcow2")
    return ET.tostring(root, encoding="unicode")


def _register_prefixes(xml: str) -> None:
    """Keep the document's namespace prefixes (qemu:, metadata owners') on output.

    ElementTree would rename them ns0, ns1...: still valid for libvirt, which matches
    namespaces by URI, but a redefinition should not rewrite what it does not change.
    The registry is process-wide; a prefix always names the same libvirt URI in practice.
    """
    for _event, (prefix, uri) in ET.iterparse(io.StringIO(xml), events=("start-ns",)):
        if prefix and not _GENERATED_PREFIX.fullmatch(prefix):
            ET.register_namespace(prefix, uri)


def _disks_by_target(root: ET.Element) -> Iterator[tuple[str, ET.Element]]:
    for disk in root.iterfind("devices/disk"):
        target = disk.find("target")
        dev = target.get("dev") if target is not None else None
        if dev:
            yield dev, disk


def with_disk_sources(xml: str, sources: dict[str, str]) -> str:
    """The persistent XML with each target's top file replaced by a qcow2 file.

    Any <backingStore> under a changed disk is dropped: libvirt honours a backingStore
    in the persistent definition over the image header at the next start, so a stale
    one would start QEMU on the old chain. Without it libvirt reads the new file's header.
    """
    if not sources:
        raise InvalidArgument("no disk source to change")
    for target, path in sources.items():
        if not path.startswith("/"):
            raise InvalidArgument(f"disk {target}: source must be an absolute path: {path!r}")
    _register_prefixes(xml)
    root = _parse(xml)
    disks = dict(_disks_by_target(root))
    unknown = sorted(set(sources) - set(disks))
    if unknown:
        raise NotFound(f"the domain has no disk {', '.join(unknown)}")

    for target, path in sources.items():
        disk = disks[target]
        source = disk.find("source")
        # A block or network disk would need its whole <source> rebuilt, and a cdrom is
        # no snapshot target: the engine only manages qcow2 files of plain disks.
        if disk.get("type", "file") != "file" or disk.get("device", "disk") != "disk":
            raise InvalidArgument(
                f"disk {target} is a {disk.get('type')} {disk.get('device')}, not a file disk"
            )
        if source is None:
            raise InvalidArgument(f"disk {target} has no source to replace")
        source.set("file", path)
        source.attrib.pop("index", None)  # live-XML bookkeeping, not configuration
        _as_qcow2_top(disk)
    return ET.tostring(root, encoding="unicode")


def _as_qcow2_top(disk: ET.Element) -> None:
    """A qcow2 driver, and no stored <backingStore>: libvirt reads the chain anew from
    the image headers (it would trust a stale stored chain over them)."""
    driver = disk.find("driver")
    if driver is None:
        driver = ET.Element("driver", name="qemu")
        disk.insert(0, driver)
    driver.set("type", "qcow2")
    for store in disk.findall("backingStore"):
        disk.remove(store)


_CHARDEVS = ("serial", "console", "parallel", "channel")


def _dashed_uuid(compact: str) -> str:
    c = normalize_uuid(compact)
    return "-".join((c[:8], c[8:12], c[12:16], c[16:20], c[20:]))


def clone_xml(xml: str, *, name: str, uuid: str, sources: dict[str, str]) -> str:
    """A persistent definition for a clone of the domain in `xml` (its inactive XML).

    What must differ so both can run side by side: name, UUID (also the SMBIOS one),
    MAC addresses (dropped: libvirt assigns fresh ones), the writable disks (each target
    in `sources` moves to that qcow2 file, without the original's stored backing chain),
    the NVRAM file (dropped: libvirt makes the clone its own), and files the chardevs
    write to (`<uuid>-N.log` beside the original's). Read-only and shareable disks and
    cdroms are kept: sharing those is safe. Any other writable disk is refused.
    """
    if not name or not name.strip():
        raise InvalidArgument("the clone needs a name")
    for target, path in sources.items():
        if not path.startswith("/"):
            raise InvalidArgument(f"disk {target}: source must be an absolute path: {path!r}")
    _register_prefixes(xml)
    root = _parse(xml)
    if root.tag != "domain":
        raise InvalidArgument(f"expected <domain>, got <{root.tag}>")
    for tag, text in (("name", name), ("uuid", _dashed_uuid(uuid))):
        element = root.find(tag)
        if element is None:
            raise InvalidArgument(f"domain XML has no <{tag}>")
        element.text = text
    for sysinfo in root.iterfind("sysinfo/system"):
        for entry in sysinfo.findall("entry"):
            if entry.get("name") == "uuid":  # libvirt refuses one that differs from <uuid>
                sysinfo.remove(entry)
    for os_el in root.iterfind("os"):
        for nvram in os_el.findall("nvram"):
            os_el.remove(nvram)
    devices = root.find("devices")
    if devices is None:
        raise InvalidArgument("domain XML has no <devices>")
    for interface in devices.iterfind("interface"):
        for tag in ("mac", "target"):  # a new MAC from libvirt; the tap name is runtime
            for element in interface.findall(tag):
                interface.remove(element)
    _clone_disks(devices, sources)
    _clone_chardev_files(devices, uuid)
    return ET.tostring(root, encoding="unicode")


def _clone_disks(devices: ET.Element, sources: dict[str, str]) -> None:
    seen: set[str] = set()
    for disk in devices.iterfind("disk"):
        target = disk.find("target")
        dev = target.get("dev") if target is not None else None
        if dev is None:
            continue
        if dev not in sources:
            writable = disk.find("readonly") is None and disk.find("shareable") is None
            if disk.get("device", "disk") == "disk" and writable:
                raise InvalidArgument(
                    f"writable disk {dev} is not cloned: two VMs would write to one file"
                )
            continue
        if disk.get("type", "file") != "file" or disk.get("device", "disk") != "disk":
            raise InvalidArgument(f"disk {dev} is not a file disk")
        seen.add(dev)
        source = disk.find("source")
        if source is None:
            source = ET.SubElement(disk, "source")
        source.attrib.clear()
        source.set("file", sources[dev])
        _as_qcow2_top(disk)
    unknown = sorted(set(sources) - seen)
    if unknown:
        raise NotFound(f"the domain has no disk {', '.join(unknown)}")


def _clone_chardev_files(devices: ET.Element, uuid: str) -> None:
    """Serial/console files get names of the clone's own (the same old path maps to the
    same new one: a <console> often mirrors <serial>); agent sockets are left for
    libvirt to place per domain."""
    renamed: dict[str, str] = {}
    compact = normalize_uuid(uuid)
    for tag in _CHARDEVS:
        for dev in devices.iterfind(tag):
            source = dev.find("source")
            if source is None:
                continue
            if dev.get("type") == "file" and source.get("path"):
                old = source.get("path", "")
                if old not in renamed:
                    directory = old.rsplit("/", 1)[0] or "/"
                    renamed[old] = f"{directory}/{compact}-{len(renamed)}.log"
                source.set("path", renamed[old])
            elif tag == "channel" and dev.get("type") == "unix" and source.get("mode") == "bind":
                source.attrib.pop("path", None)


def restore_xml(xml: str, *, name: str, uuid: str, sources: dict[str, str]) -> str:
    """A new domain from a backup's saved definition: as clone_xml (new name, UUID,
    MACs, NVRAM, chardev files; each target in `sources` on that qcow2 file), except
    that writable file disks the backup lacks are dropped rather than refused: they
    would be the original's files, which a restored VM must never write."""
    _register_prefixes(xml)
    root = _parse(xml)
    devices = root.find("devices")
    if devices is not None:
        for disk in devices.findall("disk"):
            target = disk.find("target")
            dev = target.get("dev") if target is not None else None
            writable = disk.find("readonly") is None and disk.find("shareable") is None
            if dev not in sources and disk.get("device", "disk") == "disk" and writable:
                devices.remove(disk)
    return clone_xml(ET.tostring(root, encoding="unicode"), name=name, uuid=uuid, sources=sources)


def saved_state_xml(saved_xml: str, definition_xml: str) -> str:
    """A save image's domain XML (`saved_xml`: the running domain's, as a memory snapshot
    saved it) made the state of ANOTHER domain, defined by `definition_xml` (a clone's or
    a restored backup's persistent definition): its name and UUID, its MAC addresses (by
    interface order; libvirt chose them when it was defined), its writable disks' files,
    chardev files and NVRAM as clone_xml gives them. The saved devices, addresses and CPU
    stay: QEMU's saved state must find the machine it was saved from. A writable disk of
    the saved state that the definition lacks is refused (clone_xml's rule).

    The guest itself keeps the MAC its NIC had (virtio-net's state is in the saved
    stream) until its NIC is reset; libvirt's side (tap, filters) uses the new one."""
    _register_prefixes(definition_xml)
    target = _parse(definition_xml)
    name, uuid = target.findtext("name"), target.findtext("uuid")
    if not name or not uuid:
        raise InvalidArgument("the definition has no <name> or <uuid>")
    defined = dict(_disks_by_target(target))
    sources = {}
    for dev, disk in _disks_by_target(_parse(saved_xml)):
        writable = disk.find("readonly") is None and disk.find("shareable") is None
        new = defined.get(dev)
        source = new.find("source") if new is not None else None
        if writable and disk.get("device", "disk") == "disk" and source is not None:
            sources[dev] = source.get("file", "")
    _register_prefixes(saved_xml)
    root = _parse(clone_xml(saved_xml, name=name, uuid=normalize_uuid(uuid), sources=sources))
    macs = [
        mac.get("address")
        for interface in target.iterfind("devices/interface")
        if (mac := interface.find("mac")) is not None
    ]
    for interface, address in zip(root.iterfind("devices/interface"), macs, strict=False):
        if address:
            interface.insert(0, ET.Element("mac", address=address))
    return ET.tostring(root, encoding="unicode")
