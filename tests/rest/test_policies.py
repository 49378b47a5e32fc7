"""Snapshot policies over REST on the fakes: our paths (create or replace, list, show,
remove, status) and ZStack's CreateSchedulerJob of type volumeSnapshotGroup mapped onto
a policy; bad input answers 400 with SYS.1007, unknown names 404."""

from __future__ import annotations

from datetime import timedelta

from tests.rest.conftest import VM, Api


def test_policy_crud_and_status(api: Api) -> None:
    body = {"params": {"name": "p1", "vms": ["vm1"], "hourly": 3, "daily": 2}}
    made = api.call("POST", "/snapgroup/policies", json=body)
    assert made.status_code == 200, made.text
    inventory = made.json()["inventory"]
    assert (inventory["name"], inventory["hourly"], inventory["vms"]) == ("p1", 3, ["vm1"])
    listed = api.call("GET", "/snapgroup/policies").json()["inventories"]
    assert [p["name"] for p in listed] == ["p1"]
    replaced = api.call(
        "PUT", "/snapgroup/policies/p1", json={"params": {"all": True, "hourly": 1}}
    ).json()["inventory"]
    assert replaced["all"] and replaced["hourly"] == 1 and replaced["uuid"] == inventory["uuid"]
    status = api.call("GET", "/snapgroup/policy-status")
    assert status.status_code == 200 and status.json()["state"] == "CRIT"  # nothing taken
    api.engine.autosnap(parallel=1, wait=0)
    doc = api.call("GET", "/snapgroup/policy-status").json()
    assert doc["state"] == "OK" and doc["vms"][0]["slots"][0]["slot"] == "hourly"
    later = api.clock.now + timedelta(hours=2, minutes=30)  # the engine's clock only
    api.engine.clock = lambda: later
    assert api.call("GET", "/snapgroup/policy-status").json()["state"] == "CRIT"
    assert api.call("DELETE", "/snapgroup/policies/p1").status_code == 200
    gone = api.call("GET", "/snapgroup/policies/p1")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "SYS.1003"
    assert len(api.engine.list_groups(vm="vm1")) == 1  # the group it took stays


def test_bad_policies_are_refused(api: Api) -> None:
    for params in (
        {"name": "p", "vms": ["vm1"]},  # keeps nothing
        {"name": "p", "hourly": 1},  # neither vms nor all
        {"name": "p", "vms": ["vm1"], "all": True, "hourly": 1},
        {"name": "p", "vms": ["vm1"], "hourly": -1},
        {"name": "bad name", "vms": ["vm1"], "hourly": 1},
        {"name": "p", "all": True, "hourly": 1, "minFreePercent": 100},
        {"name": "p", "vms": ["vm1"], "frequent": 1, "every": 7},
        {"name": "p", "vms": ["vm1"], "hourly": "3"},  # a string is not a count
    ):
        response = api.call("POST", "/snapgroup/policies", json={"params": params})
        assert response.status_code == 400, (params, response.text)
        assert response.json()["error"]["code"] == "SYS.1007"
    assert api.call("DELETE", "/snapgroup/policies/nope").status_code == 404
    assert api.call("GET", "/snapgroup/policies").json()["inventories"] == []


def test_zstack_scheduler_job_becomes_a_policy(api: Api) -> None:
    root = api.root_volume()
    params = {
        "name": "nightly",
        "targetResourceUuid": root,
        "type": "volumeSnapshotGroup",
        "parameters": {"snapshotGroupMaxNumber": "4"},
    }
    made = api.call("POST", "/scheduler/jobs", json={"params": params})
    assert made.status_code == 200, made.text
    job = made.json()["inventory"]
    assert job["targetResourceUuid"] == root and job["state"] == "Enabled"
    assert job["jobData"] == {"snapshotGroupMaxNumber": "4"} and job["triggersUuid"] == []
    policy = api.engine.policy(f"zstack-job-{job['uuid']}").policy
    assert policy.vms == (VM,) and policy.retention.hourly == 4
    assert [j["uuid"] for j in api.call("GET", "/scheduler/jobs").json()["inventories"]] == [
        job["uuid"]
    ]
    for bad in (
        {**params, "type": "startVm"},
        {**params, "parameters": {"snapshotGroupMaxNumber": "many"}},
        {**params, "parameters": {}},
    ):
        response = api.call("POST", "/scheduler/jobs", json={"params": bad})
        assert response.status_code == 400 and response.json()["error"]["code"] == "SYS.1007"
    unknown = {**params, "targetResourceUuid": "f" * 32}
    assert api.call("POST", "/scheduler/jobs", json={"params": unknown}).status_code == 404
    assert api.call("DELETE", f"/scheduler/jobs/{job['uuid']}").status_code == 200
    assert api.call("GET", "/scheduler/jobs").json()["inventories"] == []
    assert api.call("DELETE", f"/scheduler/jobs/{job['uuid']}").status_code == 404


def test_zstack_trigger_gives_the_job_its_slot(api: Api) -> None:
    params = {
        "name": "nightly",
        "targetResourceUuid": api.root_volume(),
        "type": "volumeSnapshotGroup",
        "parameters": {"snapshotGroupMaxNumber": "5"},
    }
    job = api.call("POST", "/scheduler/jobs", json={"params": params}).json()["inventory"]
    made = api.call(
        "POST",
        "/scheduler/triggers",
        json={"params": {"name": "daily", "schedulerType": "simple", "schedulerInterval": 86400}},
    )
    assert made.status_code == 200, made.text
    trigger = made.json()["inventory"]
    assert (trigger["schedulerType"], trigger["schedulerInterval"]) == ("simple", 86400)
    path = f"/scheduler/jobs/{job['uuid']}/scheduler/triggers/{trigger['uuid']}"
    assert api.call("POST", path).status_code == 200
    retention = api.engine.policy(f"zstack-job-{job['uuid']}").policy.retention
    assert (retention.daily, retention.hourly) == (5, 0)
    listed = api.call("GET", "/scheduler/jobs").json()["inventories"][0]
    assert listed["triggersUuid"] == [trigger["uuid"]]
    assert listed["jobData"] == {"snapshotGroupMaxNumber": "5"}
    quarter = api.call(
        "POST",
        "/scheduler/triggers",
        json={"params": {"name": "q", "schedulerType": "simple", "schedulerInterval": 900}},
    ).json()["inventory"]
    path = f"/scheduler/jobs/{job['uuid']}/scheduler/triggers/{quarter['uuid']}"
    assert api.call("POST", path).status_code == 200
    retention = api.engine.policy(f"zstack-job-{job['uuid']}").policy.retention
    assert (retention.frequent, retention.every, retention.daily) == (5, 15, 0)
    for bad in (
        {"name": "c", "schedulerType": "cron", "cron": "0 0 * * * ?"},
        {"name": "odd", "schedulerType": "simple", "schedulerInterval": 7000},
        {"name": "none", "schedulerType": "simple"},
    ):
        refused = api.call("POST", "/scheduler/triggers", json={"params": bad})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "SYS.1007"
    unknown = f"/scheduler/jobs/{job['uuid']}/scheduler/triggers/{'f' * 32}"
    assert api.call("POST", unknown).status_code == 404
    assert api.call("DELETE", f"/scheduler/triggers/{trigger['uuid']}").status_code == 200
    names = [t["name"] for t in api.call("GET", "/scheduler/triggers").json()["inventories"]]
    assert names == ["q"]
