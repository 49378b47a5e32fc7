"""snapgroup libvirt-hook NAME OPERATION: libvirt's qemu hook (contrib/libvirt,
installed by install-units). An incoming migration (`migrate`) of a VM that a snapgroup
operation holds is refused (exit 1, the reason on stderr, which libvirt reports); any
other operation passes. It reads the domain's XML on stdin and never calls libvirt (a
hook must not: libvirtd waits for it)."""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.domain.errors import Busy, InvalidArgument
from snapgroup.domain.validate import parse_uuid


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "libvirt-hook",
    )
    parser.add_argument("name", help="the domain's name")
    parser.add_argument("operation", help="libvirt's hook operation (migrate, start, ...)")
    parser.add_argument("more", nargs="*", help=argparse.SUPPRESS)
    # Never libvirt from a hook: no recovery first (it would look the VMs up).
    parser.set_defaults(run=run, skip_auto_recover=True)


def vm_uuid_of(xml: str) -> str:
    try:
        uuid = ET.fromstring(xml).findtext("uuid")
    except ET.ParseError as exc:
        raise InvalidArgument(f"the hook's stdin is not a domain's XML: {exc}") from None
    if not uuid:
        raise InvalidArgument("the domain's XML on the hook's stdin has no <uuid>")
    return parse_uuid(uuid, "the domain's uuid")


def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.operation != "migrate":
        return 0
    vm_uuid = vm_uuid_of(sys.stdin.read())
    if ctx.engine.vm_busy(vm_uuid):
        raise Busy(
            f"snapgroup: an operation holds VM {args.name} ({vm_uuid}): migrate it once "
            "the operation has ended (`snapgroup operations` shows it)"
        )
    return 0
