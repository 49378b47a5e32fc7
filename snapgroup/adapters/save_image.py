"""libvirt's QEMU save image (`virsh save`'s file, and an external memory snapshot's
memory file), read and written without libvirt: a memory group's state resumed as
ANOTHER domain (a clone, a restored backup).

libvirt 9.0's restoreFlags and save-image-define refuse an image whose embedded domain
XML names another domain (name or UUID) than the XML they are given, so a copy for a
new domain must carry that domain's XML in its own header. The format
(src/qemu/qemu_saveimage.h, version 2; checked against files libvirt 9.0 wrote):

    char     magic[16]       "LibvirtQemudSave" ("LibvirtQemudPart" while unfinished)
    uint32   version         2 (host byte order: a byte-swapped one is read too)
    uint32   data_len        bytes of data after the header
    uint32   was_running
    uint32   format          0 raw, else the compressor of the stream
    uint32   cookieOffset    0: no cookie; else where the cookie starts in data
    uint32   unused[14]
    data     the domain XML and its NUL, the cookie (<cookie>, its NUL), zeros
    stream   QEMU's migration stream ("QEVM..."), to the end of the file

A new image keeps the source's header fields, cookie and stream byte for byte; only the
XML changes, padded as libvirt pads it (64 KiB, so that save-image-define can grow it
in place). The stream is copied in the kernel (copy_file_range, sendfile), never read
through Python.
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass

from snapgroup.domain.errors import HypervisorError

MAGIC = b"LibvirtQemudSave"
PARTIAL = b"LibvirtQemudPart"
VERSION = 2
PADDING = 64 * 1024  # libvirt's: room for the XML to grow in place
_FIELDS = "16s5I14I"
HEADER_SIZE = struct.calcsize("<" + _FIELDS)  # 92
_MAX_DATA = 16 << 20  # far beyond any domain XML: a larger data_len is a damaged file
_CHUNK = 64 << 20


class SaveImageError(HypervisorError):
    """A file that is not a complete libvirt QEMU save image, or cannot be written."""


@dataclass(frozen=True)
class SaveImage:
    path: str
    byteorder: str  # "<" or ">": as the header was written
    version: int
    data_len: int
    was_running: int
    format: int
    unused: tuple[int, ...]
    xml: str
    cookie: bytes  # with its NUL; b"" when the image has none

    @property
    def stream_offset(self) -> int:
        """Where QEMU's migration stream starts."""
        return HEADER_SIZE + self.data_len


def read_image(path: str) -> SaveImage:
    """The header, XML and cookie of the save image at `path` (the stream is not read)."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_SIZE)
            if len(head) < HEADER_SIZE:
                raise SaveImageError(f"{path} is not a libvirt save image (too short)")
            magic = head[:16]
            if magic == PARTIAL:
                raise SaveImageError(f"{path} is an incomplete save image")
            if magic != MAGIC:
                raise SaveImageError(f"{path} is not a libvirt save image (magic {magic!r})")
            order = "<"
            fields = struct.unpack(order + _FIELDS, head)
            if fields[1] > VERSION:
                order = ">"
                fields = struct.unpack(order + _FIELDS, head)
            _, version, data_len, was_running, fmt, cookie_offset, *unused = fields
            if version > VERSION or not 0 < data_len <= _MAX_DATA or cookie_offset > data_len:
                raise SaveImageError(
                    f"{path}: unsupported save image header (version {version}, "
                    f"data length {data_len}, cookie at {cookie_offset})"
                )
            data = f.read(data_len)
    except OSError as exc:
        raise SaveImageError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) < data_len:
        raise SaveImageError(f"{path} is truncated inside its header")
    xml_part = data[:cookie_offset] if cookie_offset else data
    cookie = data[cookie_offset:] if cookie_offset else b""
    try:
        xml = xml_part.split(b"\0", 1)[0].decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:  # a damaged (or hostile) header: not libvirt's
        raise SaveImageError(f"{path}: its domain XML is not UTF-8 ({exc.reason})") from exc
    if cookie:
        cookie = cookie.split(b"\0", 1)[0] + b"\0"
    return SaveImage(path, order, version, data_len, was_running, fmt, tuple(unused), xml, cookie)


def write_image(source: SaveImage, target: str, xml: str) -> None:
    """A new save image `target` (created, 0600; never overwritten): `source`'s header
    fields and cookie with `xml` as its domain XML, then `source`'s migration stream.
    Marked partial until the stream is copied and synced, as libvirt marks its own; a
    failure removes what was written."""
    data = _data(xml, source.cookie)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SaveImageError(f"cannot create {target}: {exc.strerror}") from exc
    try:
        try:
            os.write(fd, _header(source, PARTIAL, data, xml))
            _write_all(fd, data)
            with open(source.path, "rb") as src:
                _copy_stream(src.fileno(), fd, source.stream_offset)
            os.fsync(fd)
            os.pwrite(fd, _header(source, MAGIC, data, xml), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(target)
        raise SaveImageError(f"cannot write {target}: {exc.strerror}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(target)
        raise


def rewrite_xml(image: SaveImage, xml: str) -> None:
    """`image`'s own file given `xml` as its domain XML, in place (as save-image-define
    does): the new XML and cookie must fit in its data length."""
    data = _data(xml, image.cookie, pad=False)
    if len(data) > image.data_len:
        raise SaveImageError(
            f"{image.path}: the new domain XML ({len(data)} bytes with the cookie) does "
            f"not fit in the image's header ({image.data_len} bytes)"
        )
    data += bytes(image.data_len - len(data))
    fixed = SaveImage(
        image.path, image.byteorder, image.version, image.data_len, image.was_running,
        image.format, image.unused, xml, image.cookie,
    )  # fmt: skip
    try:
        fd = os.open(image.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.pwrite(fd, _header(fixed, MAGIC, data, xml) + data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise SaveImageError(f"cannot write {image.path}: {exc.strerror}") from exc


def _data(xml: str, cookie: bytes, *, pad: bool = True) -> bytes:
    if "\0" in xml:
        raise SaveImageError("a domain XML with a NUL cannot go in a save image")
    data = xml.encode() + b"\0" + cookie
    return data + bytes(PADDING) if pad else data


def _header(image: SaveImage, magic: bytes, data: bytes, xml: str) -> bytes:
    xml_len = len(xml.encode()) + 1
    return struct.pack(
        image.byteorder + _FIELDS,
        magic,
        image.version,
        len(data),
        image.was_running,
        image.format,
        xml_len if image.cookie else 0,
        *image.unused,
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_stream(src: int, dst: int, offset: int) -> None:
    """src from `offset` to its end appended to dst, in the kernel: copy_file_range
    (a reflink or a server-side copy where the filesystem can), else sendfile."""
    end = os.fstat(src).st_size
    if end < offset:
        raise SaveImageError("the save image has no migration stream after its header")
    at = offset
    while at < end:
        try:
            n = os.copy_file_range(src, dst, min(_CHUNK, end - at), at)
        except OSError:
            n = os.sendfile(dst, src, at, min(_CHUNK, end - at))
        if n == 0:
            raise SaveImageError("the save image shrank while it was copied")
        at += n
