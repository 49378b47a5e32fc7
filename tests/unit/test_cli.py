from __future__ import annotations

import io
import json
import re
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.main import main
from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Lab

REF_KEYS = {
    "volumeSnapshotUuid",
    "volumeSnapshotGroupUuid",
    "deviceId",
    "snapshotDeleted",
    "volumeUuid",
    "volumeName",
    "volumeType",
    "volumeSnapshotInstallPath",
    "volumeSnapshotName",
    "volumeLastAttachDate",
    "createDate",
    "lastOpDate",
    # ours, beside the seed's: Changed when a failed merge wrote into the file
    "snapshotStatus",
    "statusReason",
}
GROUP_KEYS = {
    "uuid",
    "snapshotCount",
    "name",
    "description",
    "vmInstanceUuid",
    "createDate",
    "lastOpDate",
    "volumeSnapshotRefs",
    # ours, beside the seed's (snapgroup.ops.consistency)
    "consistencyType",
    "frozenFilesystems",
    "freezeMillis",
    "consistencyNote",
    # ours, snapshot policies (snapgroup.domain.retention)
    "policy",
    "policyLabel",
    "protected",
    # ours, memory groups (snapgroup.ops.memory_state)
    "withMemory",
    "memory",
}


def cli(lab: Lab, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def context(args: Any) -> Context:
        return Context(make_engine=lambda: lab.engine, as_json=args.json)

    code = main(list(argv), out=out, err=err, context_factory=context)
    return code, out.getvalue(), err.getvalue()


def test_json_documents_follow_the_seed(lab: Lab) -> None:
    lab_domain(lab.hv)
    code, out, _ = cli(lab, "--json", "create", "--vm", "vm1", "--name", "group")
    assert code == 0
    inventory = json.loads(out)["inventory"]
    assert set(inventory) == GROUP_KEYS
    assert inventory["snapshotCount"] == 3
    assert re.fullmatch(
        r"[A-Z][a-z]{2} \d{1,2}, \d{4} \d{1,2}:\d{2}:\d{2} [AP]M", inventory["createDate"]
    )
    ref = inventory["volumeSnapshotRefs"][0]
    assert set(ref) == REF_KEYS
    assert (ref["deviceId"], ref["volumeType"], ref["snapshotDeleted"]) == (0, "Root", False)
    assert ref["volumeSnapshotName"] == "group-" + ref["volumeName"]
    assert (ref["snapshotStatus"], ref["statusReason"]) == ("Ready", None)

    code, out, _ = cli(lab, "--json", "list")
    assert code == 0 and [g["uuid"] for g in json.loads(out)["inventories"]] == [inventory["uuid"]]

    code, out, _ = cli(lab, "--json", "update", inventory["uuid"], "--name", "new name")
    assert code == 0 and json.loads(out)["inventory"]["name"] == "new name"

    code, out, _ = cli(lab, "--json", "delete", inventory["uuid"], "--mode", "Enforcing")
    results = json.loads(out)
    assert code == 0 and "error" not in results
    assert [r["success"] for r in results["results"]] == [True] * 3
    assert set(results["results"][0]) == {"snapshotUuid", "volumeUuid", "success", "error"}


def test_errors_leave_with_the_seed_error_shape_and_nonzero_status(lab: Lab) -> None:
    code, out, err = cli(lab, "--json", "show", "not-a-uuid")
    assert code == 1 and err == ""
    error = json.loads(out)["error"]
    assert error["code"] == "SYS.1007"
    assert set(error) == {"code", "description", "details", "elaboration", "opaque", "cause"}

    code, out, err = cli(lab, "show", "f" * 32)
    assert (code, out) == (1, "")
    assert err == f"error SYS.1003: snapshot group {'f' * 32} not found\n"


def test_volumes_table_says_why_a_disk_is_skipped(lab: Lab) -> None:
    lab_domain(lab.hv, data_disks=1)
    code, out, _ = cli(lab, "volumes", "--vm", "vm1")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == [
        "DEV",
        "TARGET",
        "TYPE",
        "FORMAT",
        "VOLUME",
        "UUID",
        "PATH",
        "GROUP",
    ]
    assert lines[1].split()[:4] == ["0", "vda", "Root", "qcow2"]
    assert lines[1].split()[-1] == "snapshotted"
    code, out, _ = cli(lab, "--json", "volumes", "--vm", "vm1")
    disks = json.loads(out)["inventories"]
    assert [d["target"] for d in disks] == ["vda", "vdb"]
    assert disks[1]["installPath"] == "/lab/disk1.qcow2" and disks[1]["reason"] is None


def test_delete_of_an_unknown_group_succeeds_with_empty_results(lab: Lab) -> None:
    code, out, _ = cli(lab, "--json", "delete", "e" * 32)
    assert (code, json.loads(out)) == (0, {"results": []})


def test_list_with_no_groups_prints_just_the_header(lab: Lab) -> None:
    code, out, _ = cli(lab, "list")
    assert code == 0
    assert out.split() == ["UUID", "NAME", "VM", "SNAPSHOTS", "CREATED"]
