"""The libvirt adapter's parse of a domain's XML, remembered (connection.parsed_domain):
the same answer as parse_domain, one object per XML, state and persistence."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from snapgroup.adapters.domxml import parse_domain
from snapgroup.adapters.libvirt_hv.connection import parsed_domain
from snapgroup.domain.models import VmState

XML = Path(__file__).resolve().parents[2] / "fixtures" / "domxml" / "inactive_variants.xml"


def test_the_same_xml_is_parsed_once_and_answered_as_parse_domain_does() -> None:
    xml = XML.read_text()
    first = parsed_domain(xml, VmState.RUNNING, True)
    assert first == parse_domain(xml, VmState.RUNNING, persistent=True)
    assert parsed_domain("".join(xml), VmState.RUNNING, True) is first  # equal text
    assert parsed_domain(xml, VmState.PAUSED, True).state is VmState.PAUSED
    assert parsed_domain(xml, VmState.RUNNING, False).persistent is False
    changed = xml.replace("</name>", "-2</name>", 1)
    assert parsed_domain(changed, VmState.RUNNING, True).name == first.name + "-2"


def test_what_it_shares_cannot_be_changed() -> None:
    info = parsed_domain(XML.read_text(), VmState.STOPPED, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.disks[0].path = "/elsewhere"  # type: ignore[misc]
    assert isinstance(info.disks, tuple)
