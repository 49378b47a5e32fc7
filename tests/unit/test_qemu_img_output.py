"""What qemu-img prints, read without running it (adapters/qemu_img_output.py)."""

from __future__ import annotations

import json

import pytest

from snapgroup.adapters.qemu_img_output import (
    PROGRESS_END,
    backing_chain,
    check_report,
    meter,
    scaled,
)
from snapgroup.domain.backup_manifest import ImageCheck
from snapgroup.domain.errors import ImageToolError
from snapgroup.domain.models import BlockJobProgress


def test_the_meter_is_read_in_hundredths_of_a_percent() -> None:
    assert meter("    (12.34/100%)\r") == BlockJobProgress(1234, PROGRESS_END)
    assert meter("(100.00/100%)") == BlockJobProgress(PROGRESS_END, PROGRESS_END)
    assert meter("Image committed.") is None


def test_a_step_reports_on_the_whole_operations_scale() -> None:
    seen: list[BlockJobProgress] = []
    report = scaled(seen.append, 1, 2)
    assert report is not None and scaled(None, 1, 2) is None
    report(BlockJobProgress(1, 2))
    assert seen == [BlockJobProgress(PROGRESS_END * 3 // 4, PROGRESS_END)]


def test_a_chain_is_read_top_first_and_an_old_relative_link_against_its_image() -> None:
    out = json.dumps(
        [
            {
                "filename": "/vms/top.qcow2",
                "format": "qcow2",
                "virtual-size": 1 << 30,
                "actual-size": 196608,
                "backing-filename": "base.qcow2",  # no full-backing-filename: older output
                "backing-filename-format": "qcow2",
            },
            {"filename": "/vms/base.qcow2", "format": "raw", "virtual-size": 1 << 30},
        ]
    )
    top, base = backing_chain(out, "/vms/top.qcow2")
    assert (top.path, top.backing, top.backing_format) == (
        "/vms/top.qcow2",
        "/vms/base.qcow2",
        "qcow2",
    )
    assert (base.format, base.backing, base.actual_size, base.cluster_size) == (
        "raw",
        None,
        0,
        65536,
    )


@pytest.mark.parametrize("out", ["[]", "{}", "not json", '[{"filename": "/a"}]'])
def test_a_chain_it_cannot_read_is_an_image_tool_error(out: str) -> None:
    with pytest.raises(ImageToolError, match="qemu-img info: unexpected output for /a"):
        backing_chain(out, "/a")


def test_a_check_report_counts_corruptions_and_leaks() -> None:
    out = json.dumps({"corruptions": 1, "leaks": 3, "check-errors": 0, "leaks-fixed": 2})
    assert check_report(out, "/a") == ImageCheck(corruptions=1, leaks=3, check_errors=0)
    assert check_report("{}", "/a") == ImageCheck(corruptions=0, leaks=0, check_errors=0)
    with pytest.raises(ImageToolError, match="qemu-img check: unexpected output for /a"):
        check_report("[]", "/a")
