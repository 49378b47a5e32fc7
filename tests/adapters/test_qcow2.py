"""snapgroup.adapters.qcow2 against the real qemu-img: the overlays it writes are byte for
byte qemu-img's, and the chains it reads are what `qemu-img info --backing-chain -U`
reports; every case it does not handle is left to qemu-img (None)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from snapgroup.adapters import qcow2
from snapgroup.adapters.qemu_img import QemuImg
from snapgroup.domain.errors import ImageToolError
from snapgroup.domain.models import DiskOverlay, ImageInfo
from tests.adapters.tools import require_qemu_tools, sh

MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB

require_qemu_tools()


def qemu_chain(path: Path) -> list[ImageInfo]:
    """What QemuImg.chain reports through qemu-img itself."""
    return QemuImg(native=False).chain(str(path), shared=True)


@pytest.mark.parametrize(
    "size", [MiB + 1536, 64 * MiB, 512 * MiB, 512 * MiB + 512, 10 * GiB, 3 * TiB, 4 * TiB]
)
@pytest.mark.parametrize("name_len", [1, 200, 900])
def test_overlay_is_byte_for_byte_qemu_img(tmp_path: Path, size: int, name_len: int) -> None:
    backing = str(tmp_path / ("b" * name_len))[-name_len:]
    backing = "/" + backing.lstrip("/")
    ref = tmp_path / "ref.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, "-u", ref, size)
    assert qcow2.overlay_bytes(backing=backing, backing_format="qcow2", size=size) == (
        ref.read_bytes()
    )


def test_native_overlay_checks_clean_and_reads_its_backing(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", base, "64M")
    sh("qemu-io", "-f", "qcow2", "-c", "write -P 7 1M 1M", base)
    top = tmp_path / "top.qcow2"
    QemuImg().create_overlay(str(top), backing=str(base), backing_format="qcow2", size=64 * MiB)
    assert os.stat(top).st_mode & 0o777 == 0o600
    sh("qemu-img", "check", top)
    sh("qemu-io", "-f", "qcow2", "-c", "read -P 7 1M 1M", "-c", "write -P 9 2M 1M", top)
    sh("qemu-img", "check", top)
    sh("qemu-io", "-r", "-f", "qcow2", "-c", "read -P 9 2M 1M", top)


def test_cases_it_does_not_write_go_to_qemu_img(tmp_path: Path) -> None:
    assert qcow2.overlay_bytes(backing="/b", backing_format="qcow2", size=5 * TiB) is None
    assert qcow2.overlay_bytes(backing="/b", backing_format="qcow2", size=1000) is None
    assert qcow2.overlay_bytes(backing="/" + "b" * 2000, backing_format="qcow2", size=MiB) is None
    base = tmp_path / "base.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", base, "8T")
    top = tmp_path / "top.qcow2"
    QemuImg().create_overlay(str(top), backing=str(base), backing_format="qcow2", size=8 * TiB)
    assert qcow2.read_chain(str(top)) == qemu_chain(top)


def test_chain_matches_qemu_img(tmp_path: Path) -> None:
    raw = tmp_path / "base.raw"
    sh("qemu-img", "create", "-q", "-f", "raw", raw, "32M")
    mid = tmp_path / "mid.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", raw, mid)
    sh("qemu-io", "-f", "qcow2", "-c", "write -P 1 0 3M", mid)
    sub = tmp_path / "sub"
    sub.mkdir()
    top = sub / "top.qcow2"  # a relative backing name: relative to the image's directory
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "../mid.qcow2", top)
    v2 = tmp_path / "v2.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-F", "qcow2", "-b", top, v2)
    for image in (raw, mid, top, v2):
        if image != raw:
            native = qcow2.read_chain(str(image))
            assert native is not None
            assert native == qemu_chain(image)
    assert QemuImg().chain(str(v2), shared=True) == qemu_chain(v2)


def test_unhandled_chains_are_left_to_qemu_img(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", base, "8M")
    probed = tmp_path / "probed.qcow2"  # no backing format in the header: qemu probes
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", probed)
    data = probed.read_bytes()  # the backing format extension becomes an unknown one
    probed.write_bytes(data.replace(b"\xe2\x79\x2a\xca", b"\x12\x34\x56\x78", 1))
    header = json.loads(sh("qemu-img", "info", "--output=json", probed))
    assert "backing-filename-format" not in header
    assert qcow2.read_chain(str(probed)) is None
    missing = tmp_path / "missing.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, missing)
    base.unlink()
    assert qcow2.read_chain(str(missing)) is None
    assert qcow2.read_chain(str(tmp_path / "nothing.qcow2")) is None
    raw = tmp_path / "plain.img"  # a top that is not qcow2: qemu-img probes it
    raw.write_bytes(b"\0" * 4096)
    assert qcow2.read_chain(str(raw)) is None
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", a, "8M")
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", a, b)
    sh("qemu-img", "rebase", "-u", "-F", "qcow2", "-b", b, a)  # a loop
    assert qcow2.read_chain(str(b)) is None
    enc = tmp_path / "enc.qcow2"
    create = [
        "qemu-img", "create", "-q", "--object", "secret,id=s0,data=pw", "-f", "qcow2",
        "-o", "encrypt.format=luks,encrypt.key-secret=s0", str(enc), "8M",
    ]  # fmt: skip
    for _ in range(5):  # LUKS times its key derivation: a loaded host can fail that
        done = subprocess.run(create, capture_output=True, text=True, check=False)
        if "accurate CPU usage" not in done.stderr:
            break
    assert done.returncode == 0, done.stderr
    assert qcow2.read_chain(str(enc)) is None


def test_a_native_overlay_is_qemu_img_s_bytes_and_blocks(tmp_path: Path) -> None:
    """Only the ~1 KiB that is not zeros is written (three writes, not ~200 KiB), its
    blocks allocated as qemu-img's are (a full disk fails the create, not QEMU later)."""
    base = tmp_path / "base.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", base, "64M")
    ref = tmp_path / "ref.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, "-u", ref, "64M")
    top = tmp_path / "top.qcow2"
    QemuImg().create_overlay(str(top), backing=str(base), backing_format="qcow2", size=64 * MiB)
    assert top.read_bytes() == ref.read_bytes()
    assert top.stat().st_blocks == ref.stat().st_blocks
    sh("qemu-img", "check", top)


def _overlay(tmp_path: Path, name: str, backing: Path) -> DiskOverlay:
    return DiskOverlay(target=name, current=str(backing), overlay=str(tmp_path / f"{name}.qcow2"))


def test_create_overlays_makes_each_in_process_or_by_qemu_img(tmp_path: Path) -> None:
    small, big = tmp_path / "small.qcow2", tmp_path / "big.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", small, "64M")
    sh("qemu-img", "create", "-q", "-f", "qcow2", big, "8T")  # past qcow2.py's 4 TiB
    overlays = [_overlay(tmp_path, "a", small), _overlay(tmp_path, "b", big)]
    sizes = {"a": 64 * MiB, "b": 8 * TiB}
    QemuImg().create_overlays(overlays, sizes=sizes, backing_format="qcow2")
    for o, backing in zip(overlays, (small, big), strict=True):
        assert os.stat(o.overlay).st_mode & 0o777 == 0o600
        top = qemu_chain(Path(o.overlay))[0]
        assert (top.backing, top.virtual_size) == (str(backing), sizes[o.target])


@pytest.mark.parametrize("failing", ["taken", "missing backing"])
def test_create_overlays_is_all_or_none(tmp_path: Path, failing: str) -> None:
    base, big = tmp_path / "base.qcow2", tmp_path / "big.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", base, "64M")
    sh("qemu-img", "create", "-q", "-f", "qcow2", big, "8T")
    bad = _overlay(tmp_path, "c", base)
    if failing == "taken":
        Path(bad.overlay).write_bytes(b"precious")
    else:  # by qemu-img (8 TiB), after the others were made in-process
        bad = _overlay(tmp_path, "c", tmp_path / "nothing.qcow2")
    overlays = [_overlay(tmp_path, "a", base), bad, _overlay(tmp_path, "b", base)]
    sizes = {"a": 64 * MiB, "b": 64 * MiB, "c": 8 * TiB if failing != "taken" else 64 * MiB}
    with pytest.raises(ImageToolError):
        QemuImg().create_overlays(overlays, sizes=sizes, backing_format="qcow2")
    assert not os.path.exists(overlays[0].overlay)
    assert not os.path.exists(overlays[2].overlay)
    if failing == "taken":
        assert Path(bad.overlay).read_bytes() == b"precious"  # never touched
    else:
        assert not os.path.exists(bad.overlay)
