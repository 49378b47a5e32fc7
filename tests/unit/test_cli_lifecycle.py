"""The lifecycle commands through the CLI: exit codes, JSON documents, error codes."""

from __future__ import annotations

import json

from snapgroup.domain.models import VmState
from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Lab
from tests.unit.test_cli import cli

VM = "a" * 32


def _groups(lab: Lab, n: int, state: VmState = VmState.STOPPED) -> list[str]:
    lab_domain(lab.hv, state=state)
    return [lab.engine.create(vm="vm1", name=f"g{k}").uuid for k in range(n)]


def test_check_json(lab: Lab) -> None:
    (g,) = _groups(lab, 1)
    code, out, _ = cli(lab, "--json", "check", g)
    assert code == 0
    assert json.loads(out) == {"results": [{"uuid": g, "available": True, "reason": None}]}


def test_check_table_and_unknown_group(lab: Lab) -> None:
    (g,) = _groups(lab, 1)
    code, out, _ = cli(lab, "check", g)
    assert (code, out) == (0, f"GROUP{' ' * 29}AVAILABLE  REASON\n{g}  yes        -\n")
    code, out, _ = cli(lab, "--json", "check", g, "f" * 32)
    assert code == 1 and json.loads(out)["error"]["code"] == "SYS.1003"
    code, out, _ = cli(lab, "--json", "check", "nope")
    assert code == 1 and json.loads(out)["error"]["code"] == "SYS.1007"


def test_revert_json_and_refusal_while_running(lab: Lab) -> None:
    g0, _ = _groups(lab, 2, VmState.RUNNING)
    code, out, _ = cli(lab, "--json", "revert", g0)
    error = json.loads(out)["error"]
    assert code == 1 and error["code"] == "SYS.1006" and "--stop" in error["details"]
    code, out, _ = cli(lab, "--json", "revert", g0, "--stop", "--stop-timeout", "0")
    assert code == 0
    document = json.loads(out)
    assert set(document) == {"results", "safetyGroupUuid"}
    assert [set(r) for r in document["results"]] == [
        {"volumeUuid", "snapshotUuid", "success", "error"}
    ] * 3
    assert all(r["success"] and r["error"] is None for r in document["results"])
    assert document["safetyGroupUuid"] in {g.uuid for g in lab.engine.list_groups()}


def test_revert_failure_has_a_top_level_error(lab: Lab) -> None:
    from snapgroup.domain.errors import HypervisorError

    g0, _ = _groups(lab, 2)
    lab.hv.fail["set_disk_sources"] = HypervisorError("refused")
    code, out, _ = cli(lab, "--json", "revert", g0, "--no-safety-group")
    document = json.loads(out)
    assert code == 1
    assert document["error"]["code"] == "SYS.1006"
    assert document["error"]["cause"]["details"] == "refused"
    assert [r["success"] for r in document["results"]] == [False] * 3


def test_revert_volumes_must_belong_to_the_group(lab: Lab) -> None:
    (g,) = _groups(lab, 1)
    code, out, _ = cli(lab, "--json", "revert", g, "--volumes", "9" * 32)
    assert code == 1 and json.loads(out)["error"]["code"] == "SYS.1007"


def test_ungroup_snapshots_and_delete_snapshot(lab: Lab) -> None:
    g0, _ = _groups(lab, 2)
    code, out, _ = cli(lab, "--json", "ungroup", g0)
    assert code == 0 and json.loads(out)["inventory"]["uuid"] == g0
    code, out, _ = cli(lab, "--json", "snapshots", "--vm", "vm1")
    inventories = json.loads(out)["inventories"]
    assert code == 0 and len(inventories) == 6
    loose = [s["uuid"] for s in inventories if s["groupUuid"] is None]
    assert len(loose) == 3
    code, out, _ = cli(lab, "--json", "delete-snapshot", loose[0])
    assert code == 0
    assert json.loads(out) == {
        "results": [
            {
                "snapshotUuid": loose[0],
                "volumeUuid": inventories[0]["volumeUuid"],
                "success": True,
                "error": None,
            }
        ]
    }
    code, out, _ = cli(lab, "--json", "delete-snapshot", "e" * 32)
    assert code == 1 and json.loads(out)["error"]["code"] == "SYS.1003"


def test_tree_and_sync_text(lab: Lab) -> None:
    g0, g1 = _groups(lab, 2)
    code, out, _ = cli(lab, "tree", "--vm", "vm1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"VM vm1 ({VM})"
    assert lines[1].startswith(f"g0  {g0}  ") and not lines[1].endswith("current")
    assert lines[2].startswith(f"└── g1  {g1}  ") and lines[2].endswith("  <- current")
    code, out, _ = cli(lab, "sync", "--vm", "vm1")
    assert (code, out) == (0, "nothing changed\n")
    code, out, _ = cli(lab, "--json", "sync")
    assert (code, json.loads(out)) == (0, {"changes": []})


def test_clone_json(lab: Lab) -> None:
    (g,) = _groups(lab, 1, VmState.RUNNING)
    code, out, _ = cli(lab, "--json", "clone", g, "--name", "copy", "--start")
    assert code == 0
    inventory = json.loads(out)["inventory"]
    assert inventory["name"] == "copy" and inventory["state"] == "Running"
    assert inventory["volumeSnapshotGroupUuid"] == g and len(inventory["volumes"]) == 3
    code, out, _ = cli(lab, "--json", "clone", g, "--name", "copy")
    assert code == 1 and json.loads(out)["error"]["code"] == "SYS.1007"  # name taken
