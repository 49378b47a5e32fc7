"""QueryVolumeSnapshot, QueryVolumeSnapshotTree and DeleteVolumeSnapshot on the fakes."""

from __future__ import annotations

from typing import Any

from snapgroup.domain.models import VmState
from tests.rest.conftest import VM, Api


def _get(api: Api, path: str, **params: Any) -> dict[str, Any]:
    response = api.call("GET", path, params=params)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def test_snapshots_trees_and_deleting_one(api: Api) -> None:
    first, second = api.create("one"), api.create("two")
    root = api.root_volume()
    snaps = _get(api, "/volume-snapshots", q=f"volumeUuid={root}", sort="createDate")
    listed = snaps["inventories"]
    assert [s["groupUuid"] for s in listed] == [first["uuid"], second["uuid"]]
    assert [s["latest"] for s in listed] == [False, True]
    assert listed[1]["parentUuid"] == listed[0]["uuid"]
    assert listed[0]["primaryStorageInstallPath"] == "/lab/disk0.qcow2"
    assert _get(api, "/volume-snapshots", count="true") == {"total": 6}
    assert _get(api, "/volume-snapshots", q="latest=true", count="true") == {"total": 3}

    (tree,) = _get(api, "/volume-snapshots/trees", q=f"volumeUuid={root}")["inventories"]
    assert tree["uuid"] == root and tree["current"] is True
    assert tree["tree"]["inventory"]["uuid"] == listed[0]["uuid"]
    assert [c["inventory"]["uuid"] for c in tree["tree"]["children"]] == [listed[1]["uuid"]]

    api.hv.domains[VM].state = VmState.STOPPED
    done = api.wait(api.call("DELETE", f"/volume-snapshots/{listed[0]['uuid']}"))
    assert done.status_code == 200, done.text
    assert done.json()["results"][0]["success"] is True
    left = _get(api, "/volume-snapshots", q=f"volumeUuid={root}")["inventories"]
    assert [s["uuid"] for s in left] == [listed[1]["uuid"]]
    group = _get(api, f"/volume-snapshots/group/{first['uuid']}")["inventories"][0]
    assert any(r["snapshotDeleted"] for r in group["volumeSnapshotRefs"])
    missing = api.call("DELETE", f"/volume-snapshots/{listed[0]['uuid']}")
    assert missing.status_code == 404


def test_revert_volume_from_a_groups_snapshot(api: Api) -> None:
    first = api.create("one")
    api.create("two")
    root = api.root_volume()
    snap = next(r for r in first["volumeSnapshotRefs"] if r["volumeUuid"] == root)
    path = f"/volume-snapshots/{snap['volumeSnapshotUuid']}/actions"
    body: dict[str, Any] = {"revertVolumeFromSnapshot": {}}
    running = api.wait(api.call("PUT", path, json=body))
    assert running.status_code == 503, running.text  # the VM must be stopped first
    api.hv.domains[VM].state = VmState.STOPPED
    done = api.wait(api.call("PUT", path, json=body))
    assert done.status_code == 200, done.text
    assert done.json()["safetyGroupUuid"]
    assert [r["volumeUuid"] for r in done.json()["results"]] == [root]
    # The root disk now sits on a fresh overlay of that snapshot; the data disks did not move.
    top = api.engine.hv.lookup(VM).disks[0].path
    assert top is not None and api.images.images[top].backing == snap["volumeSnapshotInstallPath"]
    assert api.call("PUT", path, json={"other": {}}).status_code == 400


def test_a_reverted_tree_marks_the_branch_the_volume_is_on(api: Api) -> None:
    """one -> two, the root volume reverted to one (a safety snapshot on two first),
    then three: one has two children; the current branch is one -> three."""
    api.create("one")
    api.create("two")
    root = api.root_volume()
    by_name = {
        s["name"].split("-")[0]: s
        for s in _get(api, "/volume-snapshots", q=f"volumeUuid={root}")["inventories"]
    }
    one, two = by_name["one"]["uuid"], by_name["two"]["uuid"]
    api.hv.domains[VM].state = VmState.STOPPED
    body = {"revertVolumeFromSnapshot": {}}
    done = api.wait(api.call("PUT", f"/volume-snapshots/{one}/actions", json=body))
    assert done.status_code == 200, done.text
    api.create("three")

    listed = _get(api, "/volume-snapshots", q=f"volumeUuid={root}", sort="createDate")
    snaps = listed["inventories"]
    assert len(snaps) == 4  # one, two, the safety group's, three
    safety, three = snaps[2]["uuid"], snaps[3]["uuid"]
    assert [s["latest"] for s in snaps] == [False, False, False, True]
    (tree,) = _get(api, "/volume-snapshots/trees", q=f"volumeUuid={root}")["inventories"]
    assert tree["current"] is True
    top = tree["tree"]
    assert (top["inventory"]["uuid"], top["current"]) == (one, True)
    children = {c["inventory"]["uuid"]: c for c in top["children"]}
    assert list(children) == [two, three]  # oldest first
    assert (children[two]["current"], children[three]["current"]) == (False, True)
    (left_behind,) = children[two]["children"]
    assert (left_behind["inventory"]["uuid"], left_behind["current"]) == (safety, False)
    assert children[three]["children"] == []
    # A data volume (not reverted): one chain, all of it current.
    data = _get(api, "/volume-snapshots/trees", q=f"volumeUuid!={root}")["inventories"]
    for other in data:
        node, depth = other["tree"], 1
        while node["children"]:
            assert node["current"] is True and len(node["children"]) == 1
            node, depth = node["children"][0], depth + 1
        assert node["current"] is True and depth == 4
