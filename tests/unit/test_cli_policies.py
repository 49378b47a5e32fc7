"""The policy commands on fakes: documents, exit statuses, bad input with stable codes,
install-units' file rewriting under --root."""

from __future__ import annotations

import configparser
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Lab
from tests.unit.test_cli import cli

T0 = datetime(2026, 12, 1, 10, 30, tzinfo=UTC)


def _at(lab: Lab, moment: datetime) -> None:
    lab.engine.clock = lambda: moment


def test_policy_crud_and_status(lab: Lab) -> None:
    lab_domain(lab.hv)
    code, out, _ = cli(lab, "--json", "policy", "set", "p1", "--vm", "vm1", "--hourly", "3")
    doc = json.loads(out)
    assert code == 0 and doc["created"] and doc["policy"]["hourly"] == 3
    assert doc["policy"]["vms"] == ["vm1"] and doc["policy"]["exportTo"] is None
    code, out, _ = cli(
        lab, "--json", "policy", "set", "p1", "--all", "--exclude", "x", "--daily", "2",
        "--export-to", "/backups", "--export-keep", "4", "--export-compress",
    )  # fmt: skip
    doc = json.loads(out)["policy"]
    assert (doc["all"], doc["exclude"], doc["hourly"], doc["daily"]) == (True, ["x"], 0, 2)
    assert (doc["exportTo"], doc["exportKeep"], doc["exportCompress"]) == ("/backups", 4, True)
    code, out, _ = cli(lab, "policy", "list")
    assert code == 0 and "p1" in out and "daily=2" in out and "all but x" in out
    code, out, _ = cli(lab, "--json", "policy", "show", "p1")
    assert json.loads(out)["policy"]["name"] == "p1"
    # replaced again, without the export (the fakes have no backup repository)
    code, out, _ = cli(
        lab, "--json", "policy", "set", "p1", "--all", "--exclude", "x", "--daily", "2"
    )
    assert code == 0 and json.loads(out)["policy"]["exportTo"] is None
    # no group yet: CRIT, nagios exit 2
    code, out, _ = cli(lab, "--json", "policy", "status")
    assert code == 2 and json.loads(out)["vms"][0]["slots"][0]["state"] == "CRIT"
    _at(lab, T0)
    code, out, _ = cli(lab, "autosnap", "--dry-run")
    assert code == 0 and "WOULD TAKE" in out.splitlines()[0] and lab.engine.list_groups() == []
    code, out, _ = cli(lab, "--json", "autosnap")
    report = json.loads(out)
    assert (
        code == 0 and report["ok"] and report["vms"][0]["taken"]["name"].startswith("auto-daily-")
    )
    code, out, _ = cli(lab, "policy", "status")
    assert code == 0 and "OK" in out
    _at(lab, T0 + timedelta(days=1, hours=14))  # 1.5 days + : WARN
    code, out, _ = cli(lab, "--json", "policy", "status")
    assert code == 1 and json.loads(out)["state"] == "WARN"
    code, out, _ = cli(lab, "--json", "policy", "remove", "p1")
    assert code == 0
    code, out, _ = cli(lab, "--json", "policy", "show", "p1")
    assert code == 1 and json.loads(out)["error"]["code"] == "SYS.1003"
    assert len(lab.engine.list_groups(vm="vm1")) == 1  # its group stays


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["policy", "set", "p", "--vm", "a"], "SYS.1007", "keeps nothing"),
        (["policy", "set", "p", "--vm", "a", "--hourly", "-1"], "SYS.1007", ">= 0"),
        (["policy", "set", "bad name", "--vm", "a", "--hourly", "1"], "SYS.1007", "policy name"),
        (
            ["policy", "set", "p", "--vm", "a", "--frequent", "2", "--every", "7"],
            "SYS.1007",
            "1440",
        ),
        (
            ["policy", "set", "p", "--vm", "a", "--hourly", "1", "--exclude", "b"],
            "SYS.1007",
            "--all",
        ),
        (
            ["policy", "set", "p", "--all", "--hourly", "1", "--min-free-percent", "100"],
            "SYS.1007",
            "<100",
        ),
        (
            ["policy", "set", "p", "--all", "--hourly", "1", "--export-keep", "2"],
            "SYS.1007",
            "--export-to",
        ),
        (
            ["policy", "set", "p", "--all", "--hourly", "1", "--export-to", "rel"],
            "SYS.1007",
            "absolute",
        ),
        (
            ["policy", "set", "p", "--all", "--hourly", "1", "--export-compress"],
            "SYS.1007",
            "--export-compress needs --export-to",
        ),
        (["policy", "remove", "nope"], "SYS.1003", "nope"),
        (["autosnap", "--parallel", "0"], "SYS.1007", "--parallel"),
        (["protect", "f" * 32], "SYS.1003", "not found"),
        (["protect", "not-a-uuid"], "SYS.1007", "uuid"),
    ],
)
def test_bad_input_has_a_stable_code(lab: Lab, argv: list[str], code: str, needle: str) -> None:
    status, out, _ = cli(lab, "--json", *argv)
    error = json.loads(out)["error"]
    assert status == 1 and error["code"] == code and needle in error["details"], error


def test_protect_then_delete_refused_and_dry_run(lab: Lab) -> None:
    lab_domain(lab.hv)
    group = lab.engine.create(vm="vm1", name="g")
    code, out, _ = cli(lab, "--json", "protect", group.uuid)
    assert code == 0 and json.loads(out)["inventory"]["protected"] is True
    code, out, _ = cli(lab, "show", group.uuid)
    assert code == 0 and "protected:         yes\n" in out and "policy:            -\n" in out
    code, out, _ = cli(lab, "--json", "delete", group.uuid)
    error = json.loads(out)["error"]
    assert code == 1 and error["code"] == "SYS.1006"
    assert f"group {group.uuid} (g) is protected; unprotect it first" in error["details"]
    code, out, _ = cli(lab, "--json", "delete", group.uuid, "--dry-run")
    assert code == 1 and json.loads(out)["plan"]["wouldRefuse"]
    cli(lab, "unprotect", group.uuid)
    code, out, _ = cli(lab, "delete", group.uuid, "--dry-run")
    assert code == 0 and "nothing changed (dry run)" in out and "vda" in out
    assert lab.engine.get(group.uuid).uuid == group.uuid  # still there
    code, _, _ = cli(lab, "delete", group.uuid)
    assert code == 0 and lab.engine.list_groups(vm="vm1") == []


def test_install_units_rewrites_exec_start_under_root(lab: Lab, tmp_path: Path) -> None:
    exe = "/opt/sg/bin/snapgroup"
    code, out, _ = cli(lab, "install-units", "--root", str(tmp_path), "--exec", exe, "--dry-run")
    assert code == 0 and "would write" in out and not (tmp_path / "etc").exists()
    code, out, _ = cli(lab, "--json", "install-units", "--root", str(tmp_path), "--exec", exe)
    doc = json.loads(out)
    assert code == 0 and doc["commands"] == []  # systemctl only for the real root
    units = tmp_path / "etc/systemd/system"
    names = sorted(p.name for p in units.iterdir())
    assert names == [
        "snapgroup-autosnap.service",
        "snapgroup-autosnap.timer",
        "snapgroup-daemon.service",
        "snapgroup-serve.service",
    ]
    for name in names:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read(units / name)
        if parser.has_option("Service", "ExecStart"):
            assert parser["Service"]["ExecStart"].startswith(exe + " ")
        assert "/usr/local/bin/snapgroup" not in (units / name).read_text().split("ExecStart")[-1]
    code, out, _ = cli(lab, "--json", "install-units", "--root", str(tmp_path), "--exec", "rel")
    assert code == 1 and json.loads(out)["error"]["code"] == "SYS.1007"
