"""snapgroup.ports.Hypervisor on libvirt. The only package that imports libvirt.

One class, LibvirtHypervisor, made of one module per family of domain verbs over a
shared connection (connection.py), whose every call's errors are translated in one
place (errors.py): snapshots.py, blockjobs.py, definitions.py, lifecycle.py, agent.py.
A new verb goes in its family's module (or a new one, added to the bases below).

Behaviour checked against libvirt 9.0 / QEMU 7.2 (blockdev mode):

* A live external snapshot (and a block commit) updates the persistent definition too:
  its <source> becomes the overlay and a <backingStore> chain is written into it.
  libvirt honours that stored chain over the image header at the next start.
* With REUSE_EXT neither libvirt nor QEMU checks or rewrites the overlay's backing link:
  QEMU stacks the overlay on the current top whatever its header says.
* Under DAC dynamic_ownership libvirt chowns each file it hands QEMU to libvirt-qemu
  (mode kept, so a root 0600 overlay works) and restores the owner when QEMU lets go.
"""

from __future__ import annotations

from snapgroup.adapters.libvirt_hv.agent import GuestAgent
from snapgroup.adapters.libvirt_hv.blockjobs import BlockJobs
from snapgroup.adapters.libvirt_hv.definitions import Definitions
from snapgroup.adapters.libvirt_hv.lifecycle import Lifecycle
from snapgroup.adapters.libvirt_hv.snapshots import Snapshots

__all__ = ["LibvirtHypervisor"]


class LibvirtHypervisor(Snapshots, BlockJobs, Definitions, Lifecycle, GuestAgent):
    """Hypervisor port on libvirt. Connects on first use; safe to share across threads.

    `poll_interval`: seconds between block-job polls. `job_timeout`: give up (abort the
    job, raise Timeout) after this many seconds; None waits as long as the data needs.
    `settle_timeout`: how long libvirt may take to show a finished job in the XML.
    """
