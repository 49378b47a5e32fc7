"""libvirt's errors, translated: THE one place a libvirtError becomes the port's error
family (snapgroup.domain.errors). Every verb raises through it."""

from __future__ import annotations

import libvirt

from snapgroup.domain.errors import (
    HypervisorError,
    HypervisorUnavailable,
    NotFound,
    SnapgroupError,
)

# Failures to reach libvirtd at all, as opposed to libvirtd refusing a request.
_UNAVAILABLE_CODES = frozenset(
    {
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_INVALID_CONN,
        libvirt.VIR_ERR_AUTH_FAILED,
        libvirt.VIR_ERR_AUTH_CANCELLED,
        libvirt.VIR_ERR_AUTH_UNAVAILABLE,
    }
)


def quiet(_ctx: object, _err: object) -> None:
    """libvirt's default handler prints every error to stderr; we raise them instead."""


def translate(exc: libvirt.libvirtError, *, opening: bool = False) -> SnapgroupError:
    """THE mapping from a libvirt error to the port's error family."""
    code = exc.get_error_code()
    message = exc.get_error_message() or str(exc)
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return NotFound(message)
    # Any failure of open() means no hypervisor; later, errors raised by the RPC layer
    # itself (socket closed, connection reset) mean libvirtd went away under us.
    if opening or code in _UNAVAILABLE_CODES or exc.get_error_domain() == libvirt.VIR_FROM_RPC:
        return HypervisorUnavailable(message)
    return HypervisorError(message)
