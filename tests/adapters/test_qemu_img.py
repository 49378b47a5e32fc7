"""QemuImg against the real qemu-img and qemu-io, on files in tmp_path (no hypervisor).

Guest data is written with qemu-io patterns and compared with `qemu-img compare`, which
reads each image through its whole backing chain, i.e. the guest's view.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from snapgroup.adapters.qemu_img import PROGRESS_END, QemuImg
from snapgroup.domain.errors import ImageToolError
from snapgroup.domain.models import BlockJobProgress
from tests.adapters.tools import require_qemu_tools, sh

MiB = 1024 * 1024
SIZE = 16 * MiB

require_qemu_tools()


def qcow2(path: Path, *, backing: Path | str | None = None, size: int = SIZE) -> Path:
    if backing is None:
        sh("qemu-img", "create", "-q", "-f", "qcow2", path, str(size))
    else:
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, path)
    return path


def write(path: Path, pattern: int, offset: int, length: int) -> None:
    sh("qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {offset} {length}", path)


def reads(path: Path, pattern: int, offset: int, length: int) -> bool:
    """Whether the guest would read `pattern` there (qemu-io exits 1 on a mismatch)."""
    cmd = f"read -P {pattern:#x} {offset} {length}"
    done = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", cmd, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    mismatch = "Pattern verification failed" in done.stdout
    assert done.returncode == (1 if mismatch else 0), done.stderr
    return not mismatch


def same_view(a: Path, b: Path) -> bool:
    done = subprocess.run(
        ["qemu-img", "compare", "-q", str(a), str(b)], capture_output=True, check=False
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode == 0


def snapshot_raw(image: Path, dest: Path) -> Path:
    """The guest's view of `image`, frozen in a raw file."""
    sh("qemu-img", "convert", "-O", "raw", image, dest)
    return dest


@contextmanager
def held_by_writer(path: Path) -> Iterator[None]:
    """Keep `path` open read-write in qemu-io, as a running VM would (write lock)."""
    proc = subprocess.Popen(
        ["qemu-io", "-f", "qcow2", str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        seen = b""
        while b"qemu-io>" not in seen:  # the prompt appears once the image is open
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, f"qemu-io exited: {seen!r}"
            seen += chunk
        yield
    finally:
        proc.stdin.close()  # EOF quits qemu-io
        proc.wait(timeout=10)


@pytest.fixture
def tool() -> QemuImg:
    return QemuImg()


@pytest.fixture
def three(tmp_path: Path) -> tuple[Path, Path, Path]:
    """base <- mid <- top, each layer writing its own pattern over part of the disk.

    base: 0xaa over 0-8M; mid: 0xbb over 2-4M; top: 0xcc over 3-5M.
    mid's link is relative, as images made by other tools often are.
    """
    base = qcow2(tmp_path / "base.qcow2")
    write(base, 0xAA, 0, 8 * MiB)
    mid = qcow2(tmp_path / "mid.qcow2", backing="base.qcow2")
    write(mid, 0xBB, 2 * MiB, 2 * MiB)
    top = qcow2(tmp_path / "top.qcow2", backing=tmp_path / "mid.qcow2")
    write(top, 0xCC, 3 * MiB, 2 * MiB)
    return base, mid, top


# -- chain -----------------------------------------------------------------------------


def test_chain_lists_three_layers_top_first(
    tool: QemuImg, three: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, mid, top = three
    monkeypatch.chdir(tmp_path)
    layers = tool.chain("top.qcow2")  # a relative name still yields absolute paths
    assert [i.path for i in layers] == [str(top), str(mid), str(base)]
    assert [i.backing for i in layers] == [str(mid), str(base), None]  # mid's link was relative
    assert [i.backing_format for i in layers] == ["qcow2", "qcow2", None]
    assert all(i.format == "qcow2" and i.virtual_size == SIZE for i in layers)
    assert layers[2].actual_size >= 8 * MiB  # base holds 8 MiB of data
    assert 2 * MiB <= layers[0].actual_size < 8 * MiB


def test_chain_of_a_raw_image(tool: QemuImg, tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    sh("qemu-img", "create", "-q", "-f", "raw", raw, "1M")
    [info] = tool.chain(str(raw))
    assert (info.path, info.format, info.virtual_size, info.backing) == (str(raw), "raw", MiB, None)


def test_chain_of_a_held_image_needs_shared(tool: QemuImg, three: tuple[Path, Path, Path]) -> None:
    _, _, top = three
    with held_by_writer(top):
        with pytest.raises(ImageToolError, match="lock"):
            tool.chain(str(top))
        assert len(tool.chain(str(top), shared=True)) == 3


def test_chain_with_a_missing_backing_file_fails(
    tool: QemuImg, three: tuple[Path, Path, Path]
) -> None:
    base, _, top = three
    base.unlink()
    with pytest.raises(ImageToolError) as info:
        tool.chain(str(top))
    assert info.value.code == "HOST.1003"
    assert str(base) in info.value.details


# -- create_overlay ----------------------------------------------------------------------


def test_overlay_is_0600_absolute_and_shows_its_backing(
    tool: QemuImg, three: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, top = three
    monkeypatch.chdir(tmp_path)
    old_umask = os.umask(0)  # a permissive umask must not widen the mode
    try:
        tool.create_overlay("snap.qcow2", backing="top.qcow2", backing_format="qcow2")
    finally:
        os.umask(old_umask)
    overlay = tmp_path / "snap.qcow2"
    assert stat.S_IMODE(overlay.stat().st_mode) == 0o600
    info = tool.chain(str(overlay))[0]
    assert (info.format, info.virtual_size) == ("qcow2", SIZE)
    assert (info.backing, info.backing_format) == (str(top), "qcow2")
    # The header itself stores the absolute path, not the name we were given.
    assert str(top) in sh("qemu-img", "info", overlay)
    assert same_view(overlay, top)


def test_overlay_never_overwrites(tool: QemuImg, three: tuple[Path, Path, Path]) -> None:
    _, _, top = three
    existing = top.parent / "taken.qcow2"
    existing.write_bytes(b"precious")
    existing.chmod(0o644)
    for size in (None, SIZE):
        with pytest.raises(ImageToolError, match="already exists"):
            tool.create_overlay(str(existing), backing=str(top), backing_format="qcow2", size=size)
    assert existing.read_bytes() == b"precious"
    assert stat.S_IMODE(existing.stat().st_mode) == 0o644


def test_overlay_refuses_an_existing_image_too(
    tool: QemuImg, three: tuple[Path, Path, Path]
) -> None:
    _, mid, top = three
    before = mid.read_bytes()
    with pytest.raises(ImageToolError):
        tool.create_overlay(str(mid), backing=str(top), backing_format="qcow2")
    assert mid.read_bytes() == before


def test_overlay_with_size_does_not_open_the_backing_file(tool: QemuImg, tmp_path: Path) -> None:
    # A backing file that is not qcow2 at all: opening it as qcow2 fails, so a success
    # proves qemu-img never opened it.
    junk = tmp_path / "junk.qcow2"
    junk.write_bytes(b"\0" * 65536)
    with pytest.raises(ImageToolError, match="qcow2"):
        tool.create_overlay(str(tmp_path / "a.qcow2"), backing=str(junk), backing_format="qcow2")
    assert not (tmp_path / "a.qcow2").exists()  # the reserved name was released

    overlay = tmp_path / "b.qcow2"
    tool.create_overlay(str(overlay), backing=str(junk), backing_format="qcow2", size=SIZE)
    qcow2(junk)  # now make the backing real so the new overlay can be inspected
    info = tool.chain(str(overlay))[0]
    assert (info.virtual_size, info.backing) == (SIZE, str(junk))
    assert stat.S_IMODE(overlay.stat().st_mode) == 0o600


def test_overlay_with_size_while_a_writer_holds_the_backing(
    tool: QemuImg, three: tuple[Path, Path, Path]
) -> None:
    _, _, top = three
    overlay = top.parent / "live.qcow2"
    with held_by_writer(top):
        tool.create_overlay(str(overlay), backing=str(top), backing_format="qcow2", size=SIZE)
    assert same_view(overlay, top)


def test_overlay_on_a_missing_backing_file_fails_and_leaves_nothing(
    tool: QemuImg, tmp_path: Path
) -> None:
    overlay = tmp_path / "o.qcow2"
    with pytest.raises(ImageToolError, match="does not exist"):
        tool.create_overlay(
            str(overlay), backing=str(tmp_path / "nope"), backing_format="qcow2", size=SIZE
        )
    assert not overlay.exists()


def test_overlay_refuses_an_empty_backing_name(tool: QemuImg, tmp_path: Path) -> None:
    # abspath("") would be the cwd.
    with pytest.raises(ImageToolError, match="empty"):
        tool.create_overlay(str(tmp_path / "o.qcow2"), backing="", backing_format="qcow2")


# -- commit and rebase ---------------------------------------------------------------------


def test_commit_middle_into_base_then_unsafe_rebase_keeps_the_top_view(
    tool: QemuImg, three: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """Dropping a snapshot in the middle: merge mid into base, relink top, delete mid."""
    base, mid, top = three
    top_before = snapshot_raw(top, tmp_path / "top.raw")
    mid_before = snapshot_raw(mid, tmp_path / "mid.raw")

    tool.commit(str(mid), base=str(base))
    assert same_view(base, mid_before)  # base now holds mid's view
    assert same_view(top, top_before)

    tool.rebase(str(top), backing=str(base), backing_format="qcow2", unsafe=True)
    tool.remove(str(mid))
    assert [i.path for i in tool.chain(str(top))] == [str(top), str(base)]
    assert same_view(top, top_before)
    assert reads(top, 0xBB, 2 * MiB, MiB)  # mid's data, now served by base


def test_commit_top_into_base_gives_base_the_top_view(
    tool: QemuImg, three: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    base, mid, top = three
    top_before = snapshot_raw(top, tmp_path / "top.raw")
    tool.commit(str(top), base=str(base))
    assert same_view(base, top_before)
    # -b keeps top intact (not emptied) and its view unchanged...
    assert same_view(top, top_before)
    assert tool.chain(str(top))[0].actual_size >= 2 * MiB
    # ...but a layer between top and base reads the new base now: it is no longer valid.
    assert not reads(mid, 0xAA, 4 * MiB, MiB)
    assert reads(mid, 0xCC, 4 * MiB, MiB)


def test_commit_reports_progress(tool: QemuImg, tmp_path: Path) -> None:
    base = qcow2(tmp_path / "base.qcow2", size=64 * MiB)
    top = qcow2(tmp_path / "top.qcow2", backing=base)
    write(top, 0x5A, 0, 32 * MiB)
    seen: list[BlockJobProgress] = []
    tool.commit(str(top), base=str(base), progress=seen.append)
    assert seen
    assert all(p.end == PROGRESS_END > 0 and 0 <= p.cur <= p.end for p in seen)
    assert [p.cur for p in seen] == sorted(p.cur for p in seen)
    assert seen[-1].cur == PROGRESS_END
    assert reads(base, 0x5A, 0, 32 * MiB)


def test_commit_into_a_file_outside_the_chain_fails(
    tool: QemuImg, three: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, _, top = three
    stranger = qcow2(tmp_path / "stranger.qcow2")
    with pytest.raises(ImageToolError) as info:
        tool.commit(str(top), base=str(stranger))
    err = info.value
    assert err.code == "HOST.1003"
    assert "qemu-img" in err.details and "exit code 1" in err.details
    assert "Did not find" in err.details  # qemu-img's own stderr
    assert err.to_dict()["code"] == "HOST.1003"


def test_commit_of_a_held_image_fails_on_the_lock(
    tool: QemuImg, three: tuple[Path, Path, Path]
) -> None:
    base, _, top = three
    with held_by_writer(top), pytest.raises(ImageToolError, match="lock"):
        tool.commit(str(top), base=str(base))


def test_safe_rebase_copies_what_the_new_backing_lacks(
    tool: QemuImg, three: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    base, mid, top = three
    top_before = snapshot_raw(top, tmp_path / "top.raw")
    tool.rebase(str(top), backing=str(base), backing_format="qcow2", unsafe=False)
    mid.unlink()
    assert tool.chain(str(top))[0].backing == str(base)
    assert same_view(top, top_before)


def test_rebase_onto_a_missing_file_fails_and_keeps_the_header(
    tool: QemuImg, three: tuple[Path, Path, Path]
) -> None:
    _, mid, top = three
    with pytest.raises(ImageToolError, match="does not exist"):
        tool.rebase(str(top), backing=str(top.parent / "nope"), backing_format="qcow2", unsafe=True)
    assert tool.chain(str(top))[0].backing == str(mid)


# -- files ---------------------------------------------------------------------------------


def test_remove_exists_and_free_bytes(tool: QemuImg, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    assert tool.exists(str(f))
    tool.remove(str(f))
    assert not tool.exists(str(f))
    tool.remove(str(f))  # already gone: fine
    with pytest.raises(ImageToolError):
        tool.remove(str(tmp_path))  # a directory is not a file the engine made

    st = os.statvfs(tmp_path)
    assert tool.free_bytes(str(tmp_path)) == pytest.approx(st.f_bavail * st.f_frsize, rel=0.01)
    with pytest.raises(ImageToolError):
        tool.free_bytes(str(tmp_path / "no-such-dir"))


def test_missing_binary_is_an_image_tool_error(tmp_path: Path) -> None:
    with pytest.raises(ImageToolError, match="qemu-img") as info:
        QemuImg(binary="/nonexistent/qemu-img").chain(str(tmp_path / "x"))
    assert info.value.code == "HOST.1003"


def test_remove_frees_the_space_in_the_background_without_leaking_fds(
    tool: QemuImg, tmp_path: Path
) -> None:
    def open_fds() -> int:
        """Descriptors of this test's files (others come and go with other threads)."""
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # closed since the listing
                count += os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path))
        return count

    before = open_fds()
    files = [tmp_path / f"f{i}" for i in range(5)]
    for f in files:
        f.write_bytes(b"x" * 65536)
        tool.remove(str(f))
        assert not f.exists()  # the name is gone at once
    with pytest.raises(ImageToolError):
        tool.remove(str(tmp_path))  # refused, and its reference dropped
    tool.wait_released()
    assert open_fds() == before
    assert list(tmp_path.iterdir()) == []
