"""snapgroup hosts: the hosts of the store, their leases and their VMs (text and --json)."""

from __future__ import annotations

import json

from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Lab
from tests.unit.test_cli import cli

VM = "a" * 32


def test_hosts_lists_this_host_its_lease_and_vms(lab: Lab) -> None:
    lab_domain(lab.hv)
    lab.engine.create(vm="vm1", name="g")
    code, out, _ = cli(lab, "--json", "hosts")
    assert code == 0
    (host,) = json.loads(out)["inventories"]
    assert host["name"] == lab.engine.host and host["live"] is True
    assert host["vmInstanceUuids"] == [VM] and host["running"] == [VM]
    assert host["address"] is None and host["leaseExpires"] > host["heartbeat"]
    assert host["queuedRequests"] == 0 and host["retired"] is None
    code, out, _ = cli(lab, "hosts")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == [
        "HOST",
        "LEASE",
        "UNTIL",
        "(UTC)",
        "SERVES",
        "OWNS",
        "VMS",
        "RUNS",
        "VMS",
        "QUEUED",
    ]
    assert row.startswith(f"{lab.engine.host} (this host)  live  ") and row.endswith(f"{VM}  -")
