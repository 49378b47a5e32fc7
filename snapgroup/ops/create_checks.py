"""What a create checks of the VM's disks before it makes anything: which disks go in
the group (deviceId order) and that each one's real chain is the recorded one."""

from __future__ import annotations

from snapgroup.domain.errors import ImageToolError, OperationError
from snapgroup.domain.planner import expected_chain
from snapgroup.ops.context import OpContext
from snapgroup.ops.discovery import Discovered
from snapgroup.store.snapshots import ChainLink
from snapgroup.store.tables import VolumeRow

MAX_CHAIN_DEPTH = 200  # libvirt refuses to open a deeper backing chain


def check_chain(ctx: OpContext, volume: VolumeRow, live: bool, recorded: list[ChainLink]) -> int:
    """The real chain must be what the metadata says (`recorded`: Repo.chains);
    returns the virtual size."""
    try:
        chain = ctx.images.chain(volume.install_path, shared=live)
    except ImageToolError as exc:
        raise OperationError(
            f"disk {volume.target} ({volume.install_path}): missing file or broken chain",
            cause=exc,
        ) from exc
    if chain[0].format != "qcow2":
        raise OperationError(f"{volume.install_path} is {chain[0].format}, not qcow2")
    if len(chain) >= MAX_CHAIN_DEPTH:
        raise OperationError(
            f"disk {volume.target} has {len(chain)} layers; libvirt refuses chains deeper "
            f"than {MAX_CHAIN_DEPTH}: delete older groups first"
        )
    expected = expected_chain(volume, recorded)
    actual = [layer.path for layer in chain]
    if actual[: len(expected)] != expected:
        raise OperationError(
            f"volume {volume.uuid}: the real chain {actual} does not match the "
            f"recorded chain {expected}"
        )
    return chain[0].virtual_size


def choose_disks(found: Discovered, *, skip_unsupported: bool) -> list[str]:
    """Targets to snapshot, in deviceId order."""
    planned = [p for p in found.planned if p.device_id is not None]
    if not planned:
        raise OperationError(f"VM {found.domain.name} has no disks")
    root = planned[0]
    if not root.eligible:
        raise OperationError(
            f"root disk {root.disk.target} cannot be snapshotted: {root.skip_reason}"
        )
    blocking = [p for p in planned if p.blocks_create]
    if blocking and not skip_unsupported:
        listed = "; ".join(f"{p.disk.target}: {p.skip_reason}" for p in blocking)
        raise OperationError(
            f"VM {found.domain.name} has writable disks that cannot be snapshotted ({listed}); "
            "a group without them would not be the VM's point in time (skip_unsupported "
            "to take it anyway)"
        )
    return [p.disk.target for p in planned if p.eligible]
