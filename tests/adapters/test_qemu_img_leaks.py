"""QemuImg's check and leak repair against the real qemu-img: a leaked cluster is found,
also with -U while another process holds the file, and freed only when no one does."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapgroup.adapters.qemu_img import QemuImg
from snapgroup.domain.errors import ImageToolError
from tests.adapters.test_qemu_img import held_by_writer, qcow2, reads, write
from tests.adapters.tools import require_qemu_tools
from tests.qcow2_leaks import check, leak_a_cluster

MiB = 1024 * 1024

require_qemu_tools()


@pytest.fixture
def leaky(tmp_path: Path) -> Path:
    image = qcow2(tmp_path / "base.qcow2")
    write(image, 0x5A, 0, 4 * MiB)
    leak_a_cluster(image)
    return image


def test_check_counts_leaked_clusters_and_repair_frees_them(leaky: Path) -> None:
    tool = QemuImg()
    found = tool.check(str(leaky))
    assert (found.leaks, found.corruptions, found.clean) == (1, 0, True)
    after = tool.repair_leaks(str(leaky))
    assert (after.leaks, after.corruptions) == (0, 0)
    assert check(leaky)[0] == 0
    assert reads(leaky, 0x5A, 0, 4 * MiB)  # the data is as it was


def test_a_held_file_is_checked_shared_and_never_repaired(leaky: Path) -> None:
    tool = QemuImg()
    with held_by_writer(leaky):
        with pytest.raises(ImageToolError, match="lock"):
            tool.check(str(leaky))
        assert tool.check(str(leaky), shared=True).leaks == 1
        with pytest.raises(ImageToolError, match="lock"):
            tool.repair_leaks(str(leaky))
    assert tool.check(str(leaky)).leaks == 1


def test_repair_of_a_clean_file_changes_nothing(tmp_path: Path) -> None:
    image = qcow2(tmp_path / "clean.qcow2")
    write(image, 0x11, 0, MiB)
    before = image.read_bytes()
    assert QemuImg().repair_leaks(str(image)).leaks == 0
    assert image.read_bytes() == before
