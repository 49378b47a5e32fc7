"""A backup repository's files one at a time, knowing nothing of its layout (that is
backup_repo.py's): the checksum a manifest records and why a file is not what its
manifest says, durable writes (fsync; write beside and rename over). What fails here
fails as RepositoryError (SYS.1006 with the path and the cause; backup_scan.py's, with
the directories listed and the check every name the repository makes goes through)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import mmap
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from snapgroup.adapters.backup_scan import RepositoryError
from snapgroup.domain.backup_manifest import PIECE_SIZE

_CHUNK = 4 << 20
# Threads hashing one file's pieces: the cores, up to 4 (beyond, the disk is the limit).
_HASHERS = max(1, min(4, os.cpu_count() or 1))


# checksums ------------------------------------------------------------------------------


def sha256_file(path: str, piece_size: int | None = PIECE_SIZE, *, mapped: bool = False) -> str:
    """The file's checksum as a manifest records it: SHA-256 over its pieces' SHA-256
    digests, the pieces hashed on up to _HASHERS threads (hashlib drops the GIL), or with
    `piece_size` None the plain SHA-256 of the whole file (formatVersion 1). OSError for a
    missing or unreadable file. `mapped`: hashed from a memory map, without a copy into a
    buffer (~12% faster here); only for a file nobody else may truncate meanwhile (a
    mapping of a shrunken file faults the process): one this process just wrote."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if piece_size is None:
            return _sha256_range(fd, 0, size).hex()
        starts = range(0, size, piece_size)
        workers = max(1, min(_HASHERS, len(starts)))
        with contextlib.ExitStack() as stack:
            hash_piece: Callable[[int, int], bytes] = functools.partial(_sha256_range, fd)
            if mapped and size:
                whole = stack.enter_context(mmap.mmap(fd, size, prot=mmap.PROT_READ))
                view = stack.enter_context(memoryview(whole))

                def hash_piece(at: int, length: int) -> bytes:
                    return hashlib.sha256(view[at : at + length]).digest()

            pool = stack.enter_context(ThreadPoolExecutor(workers, thread_name_prefix="sha256"))
            digests = list(pool.map(lambda at: hash_piece(at, min(piece_size, size - at)), starts))
        return hashlib.sha256(b"".join(digests)).hexdigest()
    finally:
        os.close(fd)


def _sha256_range(fd: int, offset: int, length: int) -> bytes:
    digest = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    while length > 0:
        n = os.preadv(fd, [view[: min(_CHUNK, length)]], offset)
        if n == 0:  # the file shrank meanwhile: what is there is what is hashed
            break
        digest.update(view[:n])
        offset += n
        length -= n
    return digest.digest()


def file_problem(path: str, sha256: str, piece_size: int | None = PIECE_SIZE) -> str | None:
    """Why a repository file is not what its manifest says: missing, unreadable or a
    different SHA-256; None when it is."""
    try:
        actual = sha256_file(path, piece_size)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    return None if actual == sha256 else f"sha256 mismatch (expected {sha256}, found {actual})"


def seal_file(path: str) -> str:
    """fsync a file just written and read its checksum, side by side: the writeback
    is the disk's work, the hashing the cores' (together ~ the longer of the two)."""
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="fsync") as pool:
            synced = pool.submit(fsync_file, path)
            digest = sha256_file(path, mapped=True)  # just written, in our partial
            synced.result()
    except OSError as exc:
        raise RepositoryError(f"cannot seal {path}: {exc.strerror}") from exc
    return digest


def file_size(path: str | os.PathLike[str]) -> int:
    try:
        return os.stat(path).st_size
    except OSError as exc:
        raise RepositoryError(f"cannot stat {path}: {exc.strerror}") from exc


# durable writes ------------------------------------------------------------------------


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, text: str) -> None:
    """Write beside, fsync, rename over: a reader sees the old text or the new, whole."""
    tmp = path + ".tmp"
    # 0600: the manifest holds the domain XML, graphics passwords included.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    fsync_dir(os.path.dirname(path))
