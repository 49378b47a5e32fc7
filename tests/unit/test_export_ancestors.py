"""Which groups an export may build on (ops/export.py ContextSource.group().ancestors):
the groups below the exported one in the VM's tree, nearest first, never a group of
another branch; on fakes (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from snapgroup.domain.models import VmState
from snapgroup.ops.export import ContextSource
from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Lab


def test_ancestors_are_the_groups_below_nearest_first_across_a_revert(
    lab: Lab, tmp_path: Path
) -> None:
    """g1 <- g2 <- g3; revert to g1 (safety group S above g3); g4 on the new branch.
    g4 builds on g1 only; g3 on g2 then g1; S (taken at the revert, on g3's branch)
    on g3, g2, g1; g1 on nothing."""
    lab_domain(lab.hv, state=VmState.STOPPED, directory=str(tmp_path))
    g1, g2, g3 = (lab.engine.create(vm="vm1", name=f"g{n}") for n in (1, 2, 3))
    report = lab.engine.revert(g1.uuid)
    assert report.error is None and report.safety_group is not None
    safety = report.safety_group
    g4 = lab.engine.create(vm="vm1", name="g4")
    source = ContextSource(lab.engine.ctx)

    def ancestors(uuid: str) -> tuple[str, ...]:
        return source.group(uuid).ancestors

    assert ancestors(g1.uuid) == ()
    assert ancestors(g3.uuid) == (g2.uuid, g1.uuid)
    assert ancestors(safety.uuid) == (g3.uuid, g2.uuid, g1.uuid)
    assert ancestors(g4.uuid) == (g1.uuid,)
    # A group deleted locally is no longer anyone's ancestor: nothing to build on there.
    assert not lab.engine.delete(g2.uuid).error
    assert ancestors(g3.uuid) == (g1.uuid,)
    # The disks' snapshot files are the group's own, in deviceId order.
    group = source.group(g4.uuid)
    assert [d.device_id for d in group.disks] == sorted(r.device_id for r in g4.refs)
    assert {d.snapshot_file for d in group.disks} == {r.install_path for r in g4.refs}
