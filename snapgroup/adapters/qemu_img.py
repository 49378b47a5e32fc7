"""ImageTool on the real qemu-img (behaviour checked against qemu-img 7.2).

Every path is made absolute before qemu-img sees it: relative names would be resolved
against our cwd by us but against the image's directory by qemu for backing links, and
a name like "a:b" would be read as a protocol prefix. Absolute paths avoid both.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from snapgroup.adapters import file_digest, file_release, qcow2
from snapgroup.adapters.qemu_img_output import (
    PROGRESS_END,
    backing_chain,
    check_report,
    meter,
    scaled,
)
from snapgroup.adapters.runner import run
from snapgroup.domain.backup_manifest import ImageCheck
from snapgroup.domain.errors import ImageToolError
from snapgroup.domain.models import DiskOverlay, FileDigest, ImageInfo
from snapgroup.ports import ProgressFn

__all__ = ["PROGRESS_END", "QemuImg"]  # PROGRESS_END: the scale of its progress

# A backup file's clusters compressed: zstd, several times faster than qcow2's default
# zlib (1 GiB here: 1.2 s vs 6.7 s); a cluster that does not shrink is written plain.
_COMPRESS = ("-c", "-o", "compression_type=zstd")
OVERLAY_WORKERS = 8  # qemu-img processes making overlays side by side


def _abspath(path: str, what: str) -> str:
    # os.path.abspath("") is the cwd: an empty name must never become a directory path.
    if not path:
        raise ImageToolError(f"{what}: empty path")
    return os.path.abspath(path)


class QemuImg:
    """snapgroup.ports.ImageTool. Raises ImageToolError (HOST.1003) for every failure.

    `timeout` bounds the metadata-only calls (info, create, unsafe rebase) so a hung
    storage mount cannot block the engine forever; commit and safe rebase copy data,
    take as long as the data needs, and are not bounded.
    """

    def __init__(
        self, binary: str = "qemu-img", *, timeout: float | None = 300.0, native: bool = True
    ) -> None:
        """`native`: read shared (-U) chains and write overlays of a given size in-process
        (qcow2.py: what qemu-img would, without a process per disk; plain cases only)."""
        self.binary = binary
        self.timeout = timeout
        self.native = native

    def chain(self, path: str, *, shared: bool = False) -> list[ImageInfo]:
        if shared and self.native:
            # No lock is probed with -U either: read the headers in-process (qcow2.py);
            # anything but the plain cases (or any error) is qemu-img's to tell.
            native = qcow2.read_chain(_abspath(path, "image"))
            if native is not None:
                return native
        argv = [self.binary, "info", "--backing-chain", "--output=json"]
        if shared:
            argv.append("-U")
        argv.append(_abspath(path, "image"))
        return backing_chain(run(argv, timeout=self.timeout), path)

    def create_overlay(
        self, path: str, *, backing: str, backing_format: str, size: int | None = None
    ) -> None:
        path = _abspath(path, "overlay")
        backing = _abspath(backing, "backing file")
        if size is not None and size <= 0:
            raise ImageToolError(f"overlay {path}: size must be positive, got {size}")
        # A stat takes no image lock, so this is safe while QEMU holds the file; with -u
        # qemu-img itself would happily link the overlay to a missing file.
        if not os.path.exists(backing):
            raise ImageToolError(f"overlay {path}: backing file {backing} does not exist")
        # qemu-img create silently truncates an existing file. O_EXCL reserves the name
        # atomically (a concurrent creator, or a file that appeared since any check,
        # makes this fail); qemu-img then formats the empty file we own in place.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise ImageToolError(f"overlay {path} already exists; refusing to overwrite") from None
        except OSError as exc:
            raise ImageToolError(f"overlay {path}: cannot create: {exc.strerror}") from exc
        try:
            os.fchmod(fd, 0o600)  # the umask may have narrowed the O_CREAT mode
            native = (
                size is not None
                and self.native
                and self._write_native(
                    fd, path, backing=backing, backing_format=backing_format, size=size
                )
            )
        finally:
            os.close(fd)
        if native:
            return
        argv = [self.binary, "create", "-q", "-f", "qcow2", "-F", backing_format, "-b", backing]
        if size is not None:
            # -u: take the size from us and do not open the backing file, which a
            # running QEMU holds (and may be writing).
            argv += ["-u", path, str(size)]
        else:
            argv.append(path)
        try:
            run(argv, timeout=self.timeout)
            # qemu-img 7.2 reuses our inode; re-assert 0600 in case a version recreates it.
            os.chmod(path, 0o600)
        except BaseException:
            self.remove(path)  # the name is ours (O_EXCL): drop the half-made file
            raise

    def create_overlays(
        self, overlays: Sequence[DiskOverlay], *, sizes: Mapping[str, int], backing_format: str
    ) -> None:
        """Those qcow2.py writes, one after another: four small writes each, where a
        thread apiece only added its start and the GIL's hand-offs (16 overlays: 0.6 ms
        in turn, 2-12 ms over 8 threads here); the others, qemu-img processes side by
        side. All or none: what this call made is removed on a failure."""
        made: list[str] = []

        def make(o: DiskOverlay) -> None:
            self.create_overlay(
                o.overlay, backing=o.current, backing_format=backing_format, size=sizes[o.target]
            )
            made.append(o.overlay)  # list.append: safe from the pool's threads

        try:
            processes = []
            for o in overlays:
                if self._native_case(o.current, backing_format, sizes[o.target]):
                    make(o)
                else:
                    processes.append(o)
            if processes:
                with ThreadPoolExecutor(max_workers=min(OVERLAY_WORKERS, len(processes))) as pool:
                    errors = [f.exception() for f in [pool.submit(make, o) for o in processes]]
                if failed := [e for e in errors if e is not None]:
                    raise failed[0]
        except BaseException:
            for path in made:  # a failed create_overlay leaves no file of its own
                with contextlib.suppress(ImageToolError):
                    self.remove(path)
            raise

    def _native_case(self, backing: str, backing_format: str, size: int) -> bool:
        """Whether create_overlay writes this one in-process (qcow2.py)."""
        backing = _abspath(backing, "backing file")
        return self.native and (
            qcow2.overlay_pieces(backing=backing, backing_format=backing_format, size=size)
            is not None
        )

    def _write_native(
        self, fd: int, path: str, *, backing: str, backing_format: str, size: int
    ) -> bool:
        """The bytes `qemu-img create -u` would write, into the file we reserved (`fd`);
        False when qcow2.py does not write that case (nothing was written then)."""
        try:
            return qcow2.write_overlay(
                fd, backing=backing, backing_format=backing_format, size=size
            )
        except OSError as exc:
            self.remove(path)  # the name is ours (O_EXCL): drop the half-made file
            raise ImageToolError(f"overlay {path}: cannot write: {exc.strerror}") from exc

    def commit(self, top: str, *, base: str, progress: ProgressFn | None = None) -> None:
        # Always -b, which implies -d: `top` is NOT emptied and keeps its exact view.
        # `base` ends up holding top's whole view; layers strictly between them now
        # read garbage and must be dropped or rebased away by the caller. Backing links
        # are not rewritten. qemu-img refuses a base not in top's chain.
        argv = [self.binary, "commit", "-f", "qcow2"]
        if progress is not None:
            argv.append("-p")
        argv += ["-b", _abspath(base, "commit base"), _abspath(top, "commit top")]

        def on_line(line: str) -> None:
            if progress is not None and (seen := meter(line)) is not None:
                progress(seen)

        run(argv, on_line=on_line if progress is not None else None)

    def rebase(self, image: str, *, backing: str | None, backing_format: str, unsafe: bool) -> None:
        image = _abspath(image, "image")
        argv = [self.binary, "rebase", "-q", "-f", "qcow2"]
        if unsafe:
            argv.append("-u")
        if backing is None:
            # -b "": no backing file; a safe rebase first copies the whole old backing view.
            argv += ["-b", "", image]
        else:
            backing = _abspath(backing, "backing file")
            # Unsafe mode only rewrites the header and qemu-img accepts a missing file there.
            if not os.path.exists(backing):
                raise ImageToolError(f"rebase {image}: backing file {backing} does not exist")
            argv += ["-F", backing_format, "-b", backing, image]
        # A safe rebase copies every cluster that differs between old and new backing.
        run(argv, timeout=self.timeout if unsafe else None)

    # Backups: the repository's files (adapters/backup_repo.py says why these commands).

    def flatten(
        self,
        source: str,
        target: str,
        *,
        shared: bool,
        compress: bool = False,
        progress: ProgressFn | None = None,
    ) -> None:
        """A new standalone qcow2 `target` holding the guest view of `source`'s chain: a
        full export (`shared`: -U, the source may be a running QEMU's backing file) or a
        restore. -W: out-of-order writes; the target means nothing until it is complete."""
        argv = [self.binary, "convert", "-f", "qcow2", "-O", "qcow2", "-W", "-m", "16"]
        if shared:
            argv.append("-U")
        if compress:
            argv += _COMPRESS
        argv += [_abspath(source, "source image"), _abspath(target, "target image")]
        self._copy(argv, progress, 0, 1)

    def pack_memory(self, source: str, target: str) -> None:
        """A memory group's saved state (a raw file) as a new zstd-compressed qcow2
        `target`: a backup's copy (checksummed and `qemu-img check`ed as its disks are)."""
        argv = [self.binary, "convert", "-f", "raw", "-O", "qcow2", *_COMPRESS, "-W", "-m", "16"]
        run([*argv, _abspath(source, "memory file"), _abspath(target, "target image")])

    def unpack_memory(self, source: str, target: str, *, size: int) -> None:
        """pack_memory's copy back as the raw file `target` (new, 0600: a guest's memory)
        of `size` bytes (qcow2 rounds a size up to 512 bytes: the tail is cut)."""
        target = _abspath(target, "memory file")
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, size + 511 & ~511)
            finally:
                os.close(fd)
        except OSError as exc:
            raise ImageToolError(f"cannot create {target}: {exc.strerror}") from exc
        try:
            run([self.binary, "convert", "-n", "-f", "qcow2", "-O", "raw", "-W", "-m", "16",
                 _abspath(source, "source image"), target])  # fmt: skip
            os.truncate(target, size)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(target)
            raise

    def export_incremental(
        self,
        layers: Sequence[str],
        target: str,
        *,
        base_name: str,
        compress: bool = False,
        progress: ProgressFn | None = None,
    ) -> None:
        """A new qcow2 `target` backed by `base_name` (relative to target's directory,
        written as is) holding exactly the clusters allocated in `layers`, the local files
        bottom first above the base's point in time up to the exported one. convert -B
        copies only its source's TOP layer, so each layer is copied onto the previous
        copy and the copies are committed into the first one. Compressed: commit writes
        plain clusters, so several layers' merged copy is converted once more, with -c."""
        if not layers:
            raise ImageToolError(f"incremental export {target}: no layers given")
        target = _abspath(target, "target image")
        several = len(layers) > 1
        outs = [target] + [f"{target}.layer{i}" for i in range(1, len(layers))]
        packed = f"{target}.packed"
        steps = len(layers) + (1 + compress if several else 0)
        try:
            for i, layer in enumerate(layers):
                backing = base_name if i == 0 else os.path.basename(outs[i - 1])
                argv = [*self._increment(backing), *(_COMPRESS if compress and not several else ())]
                self._copy([*argv, _abspath(layer, "layer"), outs[i]], progress, i, steps)
            if several:
                self.commit(outs[-1], base=target, progress=scaled(progress, len(layers), steps))
            if several and compress:
                argv = [*self._increment(base_name), *_COMPRESS, target, packed]
                self._copy(argv, progress, steps - 1, steps)
                os.replace(packed, target)
        finally:
            for extra in [*outs[1:], packed]:
                self.remove(extra)

    def _increment(self, backing: str) -> list[str]:
        """convert's argv up to its files: a copy of the source's top layer over `backing`.
        -m 4: an increment's few scattered clusters copy faster with fewer coroutines
        (40 MiB in 1 MiB pieces, medians of 12: 31 ms at -m 4, 36 at 8, 43 at 16)."""
        argv = [self.binary, "convert", "-U", "-f", "qcow2", "-O", "qcow2", "-W", "-m", "4"]
        return [*argv, "-B", backing, "-F", "qcow2"]

    def check(self, path: str, *, shared: bool = False) -> ImageCheck:
        """`qemu-img check` of the file by itself: its backing file is not opened (a
        missing base is the repository's finding, not this file's corruption)."""
        return self._check(path, ["-U"] if shared else [])

    def repair_leaks(self, path: str) -> ImageCheck:
        """`qemu-img check -r leaks`, which takes the file's write lock: refused (an
        ImageToolError) while another process, QEMU included, holds the file."""
        return self._check(path, ["-r", "leaks"])

    def _check(self, path: str, options: list[str]) -> ImageCheck:
        spec = {"driver": "qcow2", "file": {"driver": "file", "filename": _abspath(path, "image")}}
        argv = [
            self.binary,
            "check",
            *options,
            "--output=json",
            "json:" + json.dumps({**spec, "backing": None}),
        ]
        # 2: corruptions, 3: leaks only; both print their report. After a repair the
        # report counts what is left ("leaks-fixed" the freed ones). Each leaked
        # cluster is a line on stderr, which only the debug log shows.
        return check_report(run(argv, ok_codes=(0, 2, 3)), path)

    def set_backing(self, image: str, *, backing_name: str | None, safe: bool) -> None:
        """Point `image` at `backing_name`, relative to the image's directory and written
        as is (None: standalone). `safe` first copies into `image` every cluster that
        differs between its old and new backing view, so its own view never changes."""
        image = _abspath(image, "image")
        argv = [self.binary, "rebase", "-q", "-f", "qcow2"]
        if not safe:
            argv.append("-u")
        if backing_name is None:
            argv += ["-b", "", image]
        else:
            resolved = os.path.join(os.path.dirname(image), backing_name)
            if os.path.isabs(backing_name) or not os.path.exists(resolved):
                raise ImageToolError(f"rebase {image}: no backing file {backing_name} beside it")
            argv += ["-F", "qcow2", "-b", backing_name, image]
        run(argv, timeout=None if safe else self.timeout)

    def _copy(self, argv: list[str], progress: ProgressFn | None, step: int, steps: int) -> None:
        """Run a copying command; its -p meter becomes step `step` of `steps`."""
        if progress is None:
            run(argv)
            return
        report = scaled(progress, step, steps)
        assert report is not None

        def on_line(line: str) -> None:
            if (seen := meter(line)) is not None:
                report(seen)

        run([*argv[:2], "-p", *argv[2:]], on_line=on_line)

    def remove(self, path: str) -> None:
        """The name goes now; its blocks are freed by a background thread
        (file_release.py: no caller needs to wait for them)."""
        file_release.remove(path)

    def wait_released(self) -> None:
        file_release.wait_released()

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def digest(self, path: str) -> FileDigest:
        return file_digest.digest(path)

    def free_bytes(self, directory: str) -> int:
        try:
            st = os.statvfs(directory)
        except OSError as exc:
            raise ImageToolError(f"cannot stat filesystem of {directory}: {exc.strerror}") from exc
        # f_bavail: what an unprivileged writer (QEMU runs as one) can still allocate.
        return st.f_bavail * st.f_frsize

    def filesystem(self, directory: str) -> int:
        try:
            return os.stat(directory).st_dev
        except OSError as exc:
            raise ImageToolError(f"cannot stat {directory}: {exc.strerror}") from exc
