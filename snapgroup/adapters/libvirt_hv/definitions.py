"""Definition verbs: the persistent definition read, redefined onto new disk sources,
a new domain defined from it (a clone) or from a backup's copy (a restore), a saved
memory state made such a new domain's (adapters/save_image.py), a domain undefined,
every domain listed."""

from __future__ import annotations

import libvirt

from snapgroup.adapters import save_image
from snapgroup.adapters.domxml import clone_xml, restore_xml, saved_state_xml, with_disk_sources
from snapgroup.adapters.libvirt_hv.connection import DEFINITION_FLAGS, LibvirtConnection, dashed
from snapgroup.domain.errors import HypervisorError, InvalidArgument, NotFound
from snapgroup.domain.models import DomainInfo


class Definitions(LibvirtConnection):
    def definition_xml(self, vm_uuid: str) -> str:
        dom = self._domain(vm_uuid)
        with self._calls():
            return str(dom.XMLDesc(DEFINITION_FLAGS))

    def set_disk_sources(self, vm_uuid: str, sources: dict[str, str]) -> None:
        dom = self._domain(vm_uuid)
        with self._calls():
            active = bool(dom.isActive())
            name = str(dom.name())
            xml = str(dom.XMLDesc(DEFINITION_FLAGS))
        if active:
            # Redefining a running domain only changes its next boot, while QEMU keeps
            # writing the old files: the two would disagree.
            raise HypervisorError(f"domain {name} is running; stop it before redefining disks")
        new_xml = with_disk_sources(xml, sources)
        conn = self._connection()
        with self._calls():
            conn.defineXML(new_xml)
        defined = {disk.target: disk.path for disk in self._info(dom).disks}
        wrong = {t: p for t, p in sources.items() if defined.get(t) != p}
        if wrong:
            raise HypervisorError(f"domain {name}: libvirt did not keep the new sources {wrong}")

    def define_clone(
        self, vm_uuid: str, *, name: str, new_uuid: str, sources: dict[str, str]
    ) -> DomainInfo:
        xml = self.definition_xml(vm_uuid)
        return self._define_new(
            clone_xml(xml, name=name, uuid=new_uuid, sources=sources), name, new_uuid
        )

    def define_restored(
        self, xml: str, *, name: str, new_uuid: str, sources: dict[str, str]
    ) -> DomainInfo:
        return self._define_new(
            restore_xml(xml, name=name, uuid=new_uuid, sources=sources), name, new_uuid
        )

    def adopt_memory_state(self, vm_uuid: str, memory_file: str, *, into: str | None) -> None:
        dom = self._domain(vm_uuid)
        with self._calls():
            if dom.isActive():
                raise HypervisorError(f"domain {dom.name()} is running: its state is its own")
        image = save_image.read_image(memory_file)
        xml = saved_state_xml(image.xml, self.definition_xml(vm_uuid))
        if into is None:
            save_image.rewrite_xml(image, xml)
        else:
            save_image.write_image(image, into, xml)

    def _define_new(self, xml: str, name: str, new_uuid: str) -> DomainInfo:
        """Define a new domain, once none has `name` or `new_uuid`: defineXML would
        silently REdefine an existing domain of that name and UUID."""
        conn = self._connection()
        for taken in (name, dashed(new_uuid)):
            try:
                with self._calls():
                    (conn.lookupByName if taken == name else conn.lookupByUUIDString)(taken)
            except NotFound:
                continue
            raise InvalidArgument(f"a domain {taken} already exists")
        with self._calls():
            made = conn.defineXML(xml)
        return self._info(made)

    def undefine(self, vm_uuid: str) -> None:
        dom = self._domain(vm_uuid)
        with self._calls():
            if dom.isActive():
                raise HypervisorError(f"domain {dom.name()} is running; not undefined")
            dom.undefineFlags(
                libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
            )

    def list_vms(self) -> list[tuple[str, str]]:
        conn = self._connection()
        with self._calls():
            return [(d.UUIDString().replace("-", ""), d.name()) for d in conn.listAllDomains(0)]
