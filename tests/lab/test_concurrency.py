"""Many processes creating and deleting groups at once, on one VM and on several: the
per-VM lock serialises each VM, different VMs go on in parallel, and afterwards the
metadata matches reality with every group whole."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapgroup.api import Engine
from snapgroup.testing.labvm import LabVm, create_lab_vm, lab_directory
from tests.lab.tools import backing_chain

pytestmark = pytest.mark.lab
WORKERS_PER_VM = 3
ROUNDS = 3


@pytest.fixture
def two_vms() -> Iterator[list[LabVm]]:
    vms = []
    try:
        for _ in range(2):
            name = f"sg-lab-{uuid.uuid4().hex[:8]}"
            vms.append(create_lab_vm(lab_directory(name), name=name))
        yield vms
    finally:
        for vm in vms:
            vm.destroy()


def test_hammering_one_vm_and_several(engine: Engine, two_vms: list[LabVm]) -> None:
    root = Path(__file__).resolve().parents[2]
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.lab.hammer_worker",
                "--db",
                engine.db.url,
                "--vm",
                vm.name,
                "--rounds",
                str(ROUNDS),
                "--seed",
                str(i * 10 + w),
            ],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, vm in enumerate(two_vms)
        for w in range(WORKERS_PER_VM)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    elapsed = time.monotonic() - started
    reports = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        reports.append(json.loads(out))
    creates = sum(r["counts"]["create"] for r in reports)
    deletes = sum(r["counts"]["delete"] for r in reports)
    print(f"\n{len(procs)} processes, {creates} creates + {deletes} deletes in {elapsed:.1f} s")
    assert [e for r in reports for e in r["errors"]] == []
    assert creates == len(procs) * ROUNDS
    assert engine.verify() == []
    for vm in two_vms:
        groups = engine.list_groups(vm=vm.name)
        assert len(groups) == WORKERS_PER_VM * ROUNDS - sum(
            r["counts"]["delete"] for r, p in zip(reports, procs, strict=True) if vm.name in p.args
        )
        for g in groups:  # intact: all three refs, each file present and in the chain
            assert g.snapshot_count == 3
            for ref in g.refs:
                assert Path(ref.install_path).exists()
        top = engine.volumes(vm.name)[0].install_path
        assert top is not None and len(backing_chain(top)) == len(groups) + 1
    assert [op for op in engine.operations(limit=1000) if op.state != "done"] == []
