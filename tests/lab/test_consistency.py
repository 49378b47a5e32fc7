"""The proof, on the real lab guest under its writer's load (lab/consistency.py):

* every group is one point in time across the disks: 0 violations of the writer's
  cross-disk order, application-consistent (frozen) and crash-consistent (no freeze: the
  ONE libvirt call alone) alike;
* the same check run on a deliberately non-atomic baseline (one libvirt snapshot call per
  disk, one after another) finds violations: the check bites;
* application-consistent snapshots need no journal recovery (e2fsck -fn clean, no
  needs_recovery), while crash-consistent ones do.

`make consistency` runs the same harness with 200 groups per mode and prints the figures.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import consistency
from lab.consistency import Figures, ModeFigures

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
APPLICATION = 50  # the bar: at least 50
CRASH = 20
# The baseline's violation rate here is most of its snapshots (the writer does a round
# in ~0.1 s; consecutive per-disk calls are ~0.15 s apart): 20 cannot all miss.
BASELINE = 20


@pytest.fixture(scope="module")
def figures() -> Iterator[Figures]:
    build = subprocess.run(
        [sys.executable, str(REPO / "lab" / "build_guest.py"), "--out", str(consistency.GUEST)],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert build.returncode == 0, build.stderr
    result = consistency.run(groups={"application": APPLICATION, "crash": CRASH}, baseline=BASELINE)
    print("\n" + result.report())
    yield result


def _mode(figures: Figures, mode: str) -> ModeFigures:
    return next(m for m in figures.ours if m.mode == mode)


def test_every_group_is_one_point_in_time_under_load(figures: Figures) -> None:
    application, crash = _mode(figures, "application"), _mode(figures, "crash")
    assert len(application.readings) == APPLICATION
    assert len(crash.readings) == CRASH
    # The writer really ran throughout: the first disk's value grew across the run.
    values = [r.values[0] for m in figures.ours for r in m.readings]
    assert values[-1] - values[0] >= APPLICATION, values
    assert application.violations == [], [
        (r.sample.label, r.values) for r in application.violations
    ]
    assert crash.violations == [], [(r.sample.label, r.values) for r in crash.violations]
    assert application.types == {"Application": APPLICATION}
    assert crash.types == {"Crash": CRASH}
    assert all(0 < ms < 10_000 for ms in application.freeze_millis)


def test_the_check_bites_on_a_non_atomic_baseline(figures: Figures) -> None:
    assert figures.baseline is not None
    assert len(figures.baseline.readings) == BASELINE
    assert len(figures.baseline.violations) >= 1


def test_application_snapshots_need_no_journal_recovery(figures: Figures) -> None:
    application, crash = _mode(figures, "application"), _mode(figures, "crash")
    assert application.unclean_application == []
    assert not any(any(r.needed_recovery) for r in application.readings)
    assert all(all(r.fsck_clean) for r in application.readings)
    # ... which is not a given: without the freeze, ext4 needs its journal replayed.
    assert all(any(r.needed_recovery) for r in crash.readings)
