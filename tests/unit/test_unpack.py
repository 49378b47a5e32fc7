"""Unpacking a guest's tar stream on the host (infra/unpack.py): hostile members never
write outside the target directory, links never lead out of it, nothing is overwritten."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapgroup.domain.errors import OperationError
from snapgroup.infra.unpack import unpack_tar, write_file

MTIME = 1_700_000_000


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, MTIME
    return info, data


def _dir(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, MTIME
    return info, None


def _link(name: str, target: str, *, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname, info.mtime = target, MTIME
    return info, None


def _chunks(data: bytes, size: int = 7) -> Iterator[bytes]:
    """Odd-sized chunks, as a pipe delivers them."""
    for at in range(0, len(data), size):
        yield data[at : at + size]


def _everything_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """dest (empty, where the tar goes) and outside (a sibling holding a victim file)."""
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (outside / "victim").write_text("untouched")
    return dest, outside


def test_a_tree_keeps_its_bytes_mtimes_and_modes(layout: tuple[Path, Path]) -> None:
    dest, _ = layout
    data = _tar(
        _dir("./"),
        _dir("./etc", 0o750),
        _file("./etc/app.conf", b"key=value\n", 0o640),
        _file("./run.sh", b"#!/bin/sh\n", 0o755),
        _link("./etc/current", "app.conf"),
    )
    report = unpack_tar(_chunks(data), str(dest))
    assert (dest / "etc" / "app.conf").read_bytes() == b"key=value\n"
    assert (dest / "etc" / "app.conf").stat().st_mtime == MTIME
    assert stat.S_IMODE((dest / "etc" / "app.conf").stat().st_mode) == 0o640
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "etc").stat().st_mode) == 0o750
    assert (dest / "etc").stat().st_mtime == MTIME  # set after its files were written
    assert os.readlink(dest / "etc" / "current") == "app.conf"
    assert (report.files, report.directories, report.links, report.skipped) == (2, 2, 1, [])


@pytest.mark.parametrize(
    "hostile",
    [
        [_file("/abs-victim", b"x")],  # absolute name: written inside, as abs-victim
        [_file("../outside/victim", b"owned")],  # climbs out
        [_file("./a/../../outside/victim", b"owned")],
        [_link("./escape", "../outside"), _file("./escape/victim", b"owned")],  # via a symlink
        [_link("./abs", "/etc"), _file("./abs/snapgroup-test-owned", b"owned")],
        [_link("./hard", "../outside/victim", hard=True)],  # a hard link to a host file
    ],
    ids=["absolute", "dotdot", "dotdot-inside", "symlink-out", "symlink-abs", "hardlink-out"],
)
def test_hostile_members_never_escape(
    layout: tuple[Path, Path], hostile: list[tuple[tarfile.TarInfo, bytes | None]]
) -> None:
    dest, outside = layout
    report = unpack_tar(_chunks(_tar(*hostile)), str(dest))
    assert (outside / "victim").read_text() == "untouched"
    assert not Path("/abs-victim").exists()
    assert not Path("/etc/snapgroup-test-owned").exists()
    # Refused and reported, or (an absolute name) made relative: inside `dest` either way.
    assert report.skipped or _everything_under(dest) == {"abs-victim"}
    for path in dest.rglob("*"):  # whatever was made stays inside and points inside
        if path.is_symlink():
            assert os.path.realpath(path).startswith(str(dest) + os.sep)


def test_device_nodes_and_special_bits_are_not_made(layout: tuple[Path, Path]) -> None:
    dest, _ = layout
    device = tarfile.TarInfo("./sda")
    device.type, device.devmajor, device.devminor = tarfile.BLKTYPE, 8, 0
    report = unpack_tar(_chunks(_tar((device, None), _file("./suid", b"x", 0o4777))), str(dest))
    assert not (dest / "sda").exists()
    assert [name for name, _ in report.skipped] == ["./sda"]
    mode = stat.S_IMODE((dest / "suid").stat().st_mode)
    assert mode == 0o755  # no setuid, no group/other write


def test_a_broken_stream_is_a_clear_error(layout: tuple[Path, Path]) -> None:
    dest, _ = layout
    data = _tar(_file("./big", b"y" * 5000))
    with pytest.raises(OperationError, match="damaged"):
        unpack_tar(_chunks(data[:1500]), str(dest))


def test_write_file_never_overwrites_nor_follows_a_link(tmp_path: Path) -> None:
    (tmp_path / "victim").write_text("untouched")
    (tmp_path / "link").symlink_to(tmp_path / "victim")
    for name in ("victim", "link"):
        with pytest.raises(OperationError, match="exists"):
            write_file([b"owned"], str(tmp_path / name), mode=0o644, mtime_ns=0)
    assert (tmp_path / "victim").read_text() == "untouched"
    written = write_file(
        _chunks(b"hello world"), str(tmp_path / "new"), mode=0o6777, mtime_ns=MTIME * 10**9
    )
    assert written == 11 and (tmp_path / "new").read_bytes() == b"hello world"
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o755
    assert (tmp_path / "new").stat().st_mtime_ns == MTIME * 10**9


def test_a_failed_write_leaves_no_file(tmp_path: Path) -> None:
    def failing() -> Iterator[bytes]:
        yield b"part"
        raise OperationError("the appliance stopped")

    with pytest.raises(OperationError):
        write_file(failing(), str(tmp_path / "f"), mode=0o644, mtime_ns=0)
    assert _everything_under(tmp_path) == set()


def test_pax_mtimes_are_kept_to_the_nanosecond(layout: tuple[Path, Path]) -> None:
    dest, _ = layout
    info, data = _file("./f", b"x")
    info.pax_headers = {"mtime": "1700000123.456789012"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(data))
    unpack_tar(_chunks(buf.getvalue()), str(dest))
    assert (dest / "f").stat().st_mtime_ns == 1700000123_456789012


def test_the_stream_is_read_to_its_end(layout: tuple[Path, Path]) -> None:
    """tar stops at its end marker; the record padding after it must be read too (the
    appliance's stream is not finished until then)."""
    dest, _ = layout
    finished = []

    def stream() -> Iterator[bytes]:
        yield from _chunks(_tar(_file("./f", b"x")), 512)
        finished.append(True)

    unpack_tar(stream(), str(dest))
    assert finished == [True]
