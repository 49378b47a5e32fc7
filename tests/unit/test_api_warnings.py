"""A Python caller of the API gets the warnings the CLI prints and REST job results
carry (a VM taken over from another host), in one shape: `collect_warnings()` around
the calls, a list of strings in order. Without one, they are logged (WARNING)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from snapgroup.api import Engine, collect_warnings
from snapgroup.domain.models import VmState
from snapgroup.ops.notices import collecting
from snapgroup.store.db import Database
from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool, lab_domain

VM = "a" * 32


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _moved(shared: Database) -> Engine:
    """Host b's engine; the VM, snapshotted on a, now runs on b and a's lease expired."""
    clock, images = Clock(), FakeImageTool()
    a_hv, b_hv = FakeHypervisor(images), FakeHypervisor(images)
    lab_domain(a_hv, directory="/shared")
    a = Engine(hypervisor=a_hv, images=images, db=shared, clock=clock, host="host-a")
    a.create(vm="vm1", name="on-a")
    domain = a_hv.domains[VM]
    b_hv.define(VM, domain.name, VmState.RUNNING, domain.disks)
    domain.state = VmState.STOPPED
    a_hv.undefine(VM)
    clock.now += timedelta(seconds=61)
    return Engine(hypervisor=b_hv, images=images, db=shared, clock=clock, host="host-b")


def test_an_api_caller_collects_the_take_over_warning(shared: Database) -> None:
    b = _moved(shared)
    with collect_warnings() as warnings:
        group = b.create(vm="vm1", name="on-b")
    assert group.name == "on-b"
    (said,) = warnings
    assert said.startswith(f"VM {VM} taken over from host host-a: host host-a's lease expired")
    with collect_warnings() as again:
        b.create(vm="vm1", name="again")
    assert again == []


def test_without_a_collector_the_warning_is_logged(
    shared: Database, caplog: pytest.LogCaptureFixture
) -> None:
    b = _moved(shared)
    with caplog.at_level(logging.WARNING, logger="snapgroup.ops.notices"):
        b.create(vm="vm1", name="on-b")
    (logged,) = caplog.records
    assert logged.getMessage().startswith(f"VM {VM} taken over from host host-a")


def test_a_collector_inside_another_hands_its_warnings_on(shared: Database) -> None:
    """An API caller collecting inside a command or a job: both see the warning."""
    b = _moved(shared)
    with collecting() as outer, collect_warnings() as inner:
        b.create(vm="vm1", name="on-b")
    assert len(inner) == 1 and outer == inner
