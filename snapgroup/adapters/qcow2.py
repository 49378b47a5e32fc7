"""qcow2 headers read and written in-process: the two things a group create needs per
disk (its backing chain, and a new empty overlay) without a qemu-img process per disk.

Each costs a process start (~15 ms of CPU here) when done by qemu-img, against a few
hundred bytes of header I/O. Only the plain cases are handled; anything else returns
None and the caller asks qemu-img (qemu_img.py), so qemu-img stays the reference:

* read_chain(): every layer qcow2 (version 2 or 3, no encryption, not marked corrupt, no
  external data file) down to a qcow2 or raw base, every backing format recorded in the
  header, plain absolute or relative file names. Reads take no lock (like `qemu-img -U`).
* write_overlay(): byte for byte what `qemu-img create -f qcow2 -F FMT -b BACKING -u PATH
  SIZE` writes (qemu-img 7.2: version 3, 64 KiB clusters, 16-bit refcounts, zlib; the
  adapter tests compare the two), for sizes whose L1 table fits one cluster (4 TiB);
  its blocks allocated (fallocate) where qemu-img writes zeros into them.
"""

from __future__ import annotations

import os
import struct

from snapgroup.domain.models import ImageInfo

MAGIC = b"QFI\xfb"
CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
L2_COVERS = CLUSTER * (CLUSTER // 8)  # bytes of guest data one L2 table maps: 512 MiB
MAX_NATIVE_SIZE = L2_COVERS * (CLUSTER // 8)  # one L1 cluster: 4 TiB
HEADER_V3 = 112  # qemu 7.2's header length (with the compression type byte, padded)
EXT_END, EXT_BACKING_FORMAT, EXT_FEATURE_NAMES = 0, 0xE2792ACA, 0x6803F857
EXT_DATA_FILE = 0x44415441
INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE = 1 << 1, 1 << 2
MAX_BACKING_NAME = 1023  # qemu refuses longer names
_READ = 4096  # header, extensions and a backing name of any sane length
_FEATURES = (  # (type, bit, name): the feature name table qemu-img 7.2 writes
    (0, 0, b"dirty bit"),
    (0, 1, b"corrupt bit"),
    (0, 2, b"external data file"),
    (0, 3, b"compression type"),
    (0, 4, b"extended L2 entries"),
    (1, 0, b"lazy refcounts"),
    (2, 0, b"bitmaps"),
    (2, 1, b"raw external data"),
)
_HEADER = struct.Struct(">4sIQIIQIIQQIIQ")  # up to snapshots_offset (72 bytes)
_HEADER_V3_TAIL = struct.Struct(">QQQII")  # features, refcount_order, header_length


class _NotPlain(Exception):
    """Not a case handled here: qemu-img decides."""


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def _layer(path: str, declared: str | None) -> ImageInfo:
    try:
        with open(path, "rb") as f:
            head = f.read(_READ)
            st = os.fstat(f.fileno())
    except OSError as exc:
        raise _NotPlain from exc
    actual = st.st_blocks * 512
    is_qcow2 = head[:4] == MAGIC
    if declared == "raw" and not is_qcow2:
        return ImageInfo(path, "raw", st.st_size, actual, None)
    if not is_qcow2 or declared not in (None, "qcow2"):
        raise _NotPlain  # a probed raw file, another format, or a mismatch
    if len(head) < _HEADER.size:
        raise _NotPlain
    (
        _magic,
        version,
        backing_offset,
        backing_size,
        cluster_bits,
        size,
        crypt,
        *_rest,
    ) = _HEADER.unpack_from(head)
    if version not in (2, 3) or crypt != 0 or not 9 <= cluster_bits <= 21:
        raise _NotPlain
    ext_start = 72
    if version == 3:
        if len(head) < 104:
            raise _NotPlain
        incompat, _compat, _autoclear, _order, header_length = _HEADER_V3_TAIL.unpack_from(head, 72)
        if incompat & (INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE):
            raise _NotPlain
        ext_start = header_length
    backing_format = None
    pos = ext_start
    while True:
        if pos + 8 > len(head):
            raise _NotPlain
        ext_type, ext_len = struct.unpack_from(">II", head, pos)
        if ext_type == EXT_END:
            break
        if ext_type == EXT_DATA_FILE:
            raise _NotPlain
        data = head[pos + 8 : pos + 8 + ext_len]
        if len(data) != ext_len:
            raise _NotPlain
        if ext_type == EXT_BACKING_FORMAT:
            backing_format = data.decode("ascii", "strict")
        pos += 8 + _pad8(ext_len)
    backing = None
    if backing_offset:
        raw_name = head[backing_offset : backing_offset + backing_size]
        if len(raw_name) != backing_size or not raw_name:
            raise _NotPlain
        name = raw_name.decode("utf-8", "strict")
        if ":" in name or backing_format is None:
            raise _NotPlain  # protocol prefixes, json: names, probed formats
        backing = os.path.abspath(os.path.join(os.path.dirname(path), name))
    return ImageInfo(path, "qcow2", size, actual, backing, backing_format, 1 << cluster_bits)


def read_chain(path: str, *, limit: int = 1000) -> list[ImageInfo] | None:
    """The backing chain from `path` down, top first, as `qemu-img info --backing-chain
    -U` would give it; None when a layer is not a plain case (or missing, or the chain
    loops): ask qemu-img then, which also words the error."""
    chain: list[ImageInfo] = []
    seen: set[str] = set()
    current: str | None = os.path.abspath(path)
    declared: str | None = None
    try:
        while current is not None:
            if current in seen or len(chain) >= limit:
                return None
            seen.add(current)
            layer = _layer(current, declared)
            chain.append(layer)
            current, declared = layer.backing, layer.backing_format
    except (_NotPlain, UnicodeDecodeError, struct.error):
        return None
    return chain


def overlay_pieces(
    *, backing: str, backing_format: str, size: int
) -> tuple[int, list[tuple[int, bytes]]] | None:
    """An empty qcow2 overlay on `backing` (an absolute path) as its length and the
    pieces of it that are not zeros, each (offset, bytes); None when it is not a case
    written here. Of its ~200 KiB only the header cluster's first bytes, the refcount
    table's one entry and the refcount block's four are not zeros."""
    name = backing.encode("utf-8")
    fmt = backing_format.encode("ascii")
    if not 0 < size <= MAX_NATIVE_SIZE or size % 512 or not 0 < len(name) <= MAX_BACKING_NAME:
        return None
    if not fmt or len(fmt) > 16:
        return None
    l1_size = -(-size // L2_COVERS)
    ext = struct.pack(">II", EXT_BACKING_FORMAT, len(fmt)) + fmt.ljust(_pad8(len(fmt)), b"\0")
    table = b"".join(struct.pack(">BB46s", kind, bit, text) for kind, bit, text in _FEATURES)
    ext += struct.pack(">II", EXT_FEATURE_NAMES, len(table)) + table
    ext += struct.pack(">II", EXT_END, 0)
    backing_offset = HEADER_V3 + len(ext)
    if backing_offset + len(name) > CLUSTER:
        return None
    refcount_table, refcount_block, l1_table = CLUSTER, 2 * CLUSTER, 3 * CLUSTER
    header = _HEADER.pack(
        MAGIC,
        3,
        backing_offset,
        len(name),
        CLUSTER_BITS,
        size,
        0,  # no encryption
        l1_size,
        l1_table,
        refcount_table,
        1,  # refcount table clusters
        0,  # snapshots
        0,
    )
    header += _HEADER_V3_TAIL.pack(0, 0, 0, 4, HEADER_V3)  # 16-bit refcounts
    header = header.ljust(HEADER_V3, b"\0")  # compression type zlib (0), padding
    # Header, refcount table, refcount block and L1 table: one reference each.
    refcounts = struct.pack(">4H", 1, 1, 1, 1)
    pieces = [
        (0, header + ext + name),
        (refcount_table, struct.pack(">Q", refcount_block)),
        (refcount_block, refcounts),
    ]
    return l1_table + l1_size * 8, pieces  # the L1 table: all zeros


def overlay_bytes(*, backing: str, backing_format: str, size: int) -> bytes | None:
    """The bytes of an empty qcow2 overlay on `backing` (an absolute path), or None when
    it is not a case written here."""
    made = overlay_pieces(backing=backing, backing_format=backing_format, size=size)
    if made is None:
        return None
    length, pieces = made
    image = bytearray(length)
    for offset, data in pieces:
        image[offset : offset + len(data)] = data
    return bytes(image)


def write_overlay(fd: int, *, backing: str, backing_format: str, size: int) -> bool:
    """Write the overlay into `fd`, an empty file the caller created (and owns); False
    (nothing written) when it is not a case written here. Its blocks are allocated
    whole first, as qemu-img's writing them does (a full disk fails here, not under
    QEMU later), without writing their zeros (they read as zeros); then only the pieces
    that are not zeros are written: three small writes instead of ~200 KiB, most of a
    native overlay's cost."""
    made = overlay_pieces(backing=backing, backing_format=backing_format, size=size)
    if made is None:
        return False
    length, pieces = made
    os.posix_fallocate(fd, 0, length)
    for offset, data in pieces:
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    return True
