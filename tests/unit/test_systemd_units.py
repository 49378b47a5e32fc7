"""The systemd units in contrib/systemd: the settings the policies rely on, and
systemd's own verdict (systemd-analyze verify / calendar) where systemd is installed."""

from __future__ import annotations

import configparser
import itertools
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "contrib" / "systemd"
NAMES = (
    "snapgroup-autosnap.service",
    "snapgroup-autosnap.timer",
    "snapgroup-daemon.service",
    "snapgroup-serve.service",
)
EXEC = "/usr/local/bin/snapgroup"


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((UNITS / name).read_text(), source=name)
    return parser


def test_the_units_are_there_and_no_others() -> None:
    assert sorted(p.name for p in UNITS.iterdir()) == sorted(NAMES)


def test_autosnap_service_is_a_oneshot_pass_in_utc() -> None:
    unit = _unit("snapgroup-autosnap.service")
    service = unit["Service"]
    assert service["Type"] == "oneshot"
    assert service["ExecStart"] == f"{EXEC} autosnap"
    assert service["Environment"] == "TZ=UTC"
    assert service["EnvironmentFile"] == "-/etc/snapgroup/environment"
    assert "libvirtd.service" in unit["Unit"]["After"].split()
    assert "Install" not in unit  # started by its timer only


def test_autosnap_timer_every_15_minutes_persistent() -> None:
    unit = _unit("snapgroup-autosnap.timer")
    timer = unit["Timer"]
    assert timer["OnCalendar"] == "*-*-* *:00/15:00"
    assert timer["Persistent"] == "true"
    assert timer["Unit"] == "snapgroup-autosnap.service"
    assert unit["Install"]["WantedBy"] == "timers.target"


@pytest.mark.parametrize(("name", "command"), [("daemon", "daemon"), ("serve", "serve")])
def test_long_running_services(name: str, command: str) -> None:
    unit = _unit(f"snapgroup-{name}.service")
    service = unit["Service"]
    assert service["Type"] == "simple"
    assert service["ExecStart"].split()[:2] == [EXEC, command]
    assert service["Restart"] == "on-failure"
    # the daemon runs a command only when its environment is the client's: one file
    assert service["EnvironmentFile"] == "-/etc/snapgroup/environment"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_serve_listens_on_loopback_only() -> None:
    assert "--listen 127.0.0.1:" in _unit("snapgroup-serve.service")["Service"]["ExecStart"]


needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


@needs_systemd
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this snapgroup
    program = Path(sys.executable).parent / "snapgroup"
    assert program.exists()
    for name in NAMES:
        text = (UNITS / name).read_text().replace(EXEC, str(program))
        (tmp_path / name).write_text(text)
    run = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(tmp_path / n) for n in NAMES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (run.returncode, run.stderr) == (0, "")


@needs_systemd
def test_systemd_reads_the_timer_as_every_quarter_hour_utc(tmp_path: Path) -> None:
    (tmp_path / "bad.timer").write_text(
        (UNITS / "snapgroup-autosnap.timer").read_text().replace("Persistent", "Persistant")
    )
    bad = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / "bad.timer")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Unknown key 'Persistant'" in bad.stderr  # verify does catch a typo
    spec = _unit("snapgroup-autosnap.timer")["Timer"]["OnCalendar"]
    run = subprocess.run(
        ["systemd-analyze", "calendar", "--iterations=5", spec],
        capture_output=True,
        text=True,
        check=True,
        env={"TZ": "UTC", "PATH": "/usr/bin:/bin"},
    )
    stamps = re.findall(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", run.stdout)
    times = [datetime.fromisoformat(s) for s in stamps]
    assert len(times) == 5
    assert all(t.minute % 15 == 0 and t.second == 0 for t in times)
    assert {(b - a).total_seconds() for a, b in itertools.pairwise(times)} == {900.0}
