"""FakeImageTool: qemu-img's stand-in (ports.ImageTool), in memory.

Each image keeps its own clusters as a dict, so a test can read the view a chain presents
(`read`) and prove a merge kept it; FakeHypervisor (snapgroup.testing.fakes) drives the
same images. A copy into a real directory (a backup repository's) is also written there
as a JSON file, which the real BackupRepo hashes, sizes and renames.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from snapgroup.domain.backup_manifest import ImageCheck
from snapgroup.domain.errors import ImageToolError
from snapgroup.domain.models import BlockJobProgress, DiskOverlay, ImageInfo
from snapgroup.ports import ProgressFn
from snapgroup.testing.fake_faults import Faults, serialised
from snapgroup.testing.fake_memory import MemoryFiles

ZERO = "\0"  # an allocated cluster that reads as zeros (as if never written)


@dataclass
class FakeImage:
    format: str = "qcow2"
    virtual_size: int = 1 << 30
    backing: str | None = None
    clusters: dict[int, str] = field(default_factory=dict)


class FakeImageTool(MemoryFiles, Faults):
    def __init__(self, free: int = 1 << 40) -> None:
        super().__init__()
        self.images: dict[str, FakeImage] = {}
        self.free = free
        self.corrupt: set[str] = set()
        self.leaks: dict[str, int] = {}  # path -> leaked clusters (a writer killed mid-write)
        self._layers: dict[tuple[str, str, int, int, str | None], ImageInfo] = {}

    # helpers for tests
    @serialised
    def add(
        self,
        path: str,
        *,
        backing: str | None = None,
        fmt: str = "qcow2",
        data: dict[int, str] | None = None,
    ) -> None:
        self.images[path] = FakeImage(format=fmt, backing=backing, clusters=dict(data or {}))

    @serialised
    def write(self, path: str, cluster: int, value: str) -> None:
        self.images[path].clusters[cluster] = value

    @serialised
    def read(self, path: str) -> dict[int, str]:
        """The guest-visible view of the chain topped by `path`."""
        view: dict[int, str] = {}
        for layer in reversed(self.chain(path)):
            view.update(self.images[layer.path].clusters)
        return {c: v for c, v in view.items() if v != ZERO}

    # the port
    @serialised
    def chain(self, path: str, *, shared: bool = False) -> list[ImageInfo]:
        self._call("chain", path)
        layers: list[ImageInfo] = []
        current: str | None = path
        while current is not None:
            image = self.images.get(current) or self._from_file(current)
            if image is None:
                raise ImageToolError(f"qemu-img: could not open '{current}'")
            layers.append(self._layer(current, image))
            current = image.backing
        return layers

    def _from_file(self, path: str) -> FakeImage | None:
        """An image _written into a real directory, found at its path now (a backup
        repository renames its files: a partial's become the backup's)."""
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            image = FakeImage(
                virtual_size=doc["size"],
                backing=doc["backing"],
                clusters={int(c): v for c, v in doc["clusters"].items()},
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        self.images[path] = image
        return image

    def _layer(self, path: str, image: FakeImage) -> ImageInfo:
        """The layer as `chain` reports it. The same (immutable) object while nothing it
        shows changes: a frozen dataclass built per layer (16 disks x 101 per create in
        bench 6) was the fake's own cost, none of the engine's."""
        key = (path, image.format, image.virtual_size, len(image.clusters), image.backing)
        layer = self._layers.get(key)
        if layer is None:
            layer = ImageInfo(
                path,
                image.format,
                image.virtual_size,
                len(image.clusters) * 65536,
                image.backing,
                "qcow2" if image.backing else None,
            )
            self._layers[key] = layer
        return layer

    @serialised
    def create_overlay(
        self, path: str, *, backing: str, backing_format: str, size: int | None = None
    ) -> None:
        self._call("create_overlay", path, backing)
        if path in self.images:
            raise ImageToolError(f"{path} already exists")
        base = self.images.get(backing)
        if base is None and size is None:
            raise ImageToolError(f"could not open backing file {backing}")
        self.images[path] = FakeImage(
            virtual_size=size or (base.virtual_size if base else 0), backing=backing
        )

    def create_overlays(
        self, overlays: Sequence[DiskOverlay], *, sizes: Mapping[str, int], backing_format: str
    ) -> None:
        """One create_overlay each, in order (its faults apply); all or none."""
        made: list[str] = []
        try:
            for o in overlays:
                self.create_overlay(
                    o.overlay,
                    backing=o.current,
                    backing_format=backing_format,
                    size=sizes[o.target],
                )
                made.append(o.overlay)
        except BaseException:
            for path in made:
                with contextlib.suppress(ImageToolError):
                    self.remove(path)
            raise

    def commit(self, top: str, *, base: str, progress: ProgressFn | None = None) -> None:
        with self.lock:
            self._call("commit", top, base)
            merge_down(self.images, top, base)
        if progress:
            progress(BlockJobProgress(1, 1))

    @serialised
    def rebase(self, image: str, *, backing: str | None, backing_format: str, unsafe: bool) -> None:
        self._call("rebase", image, backing)
        target = self.images[image]
        if not unsafe:
            # Copy every cluster the image does not hold whose old and new backing views
            # differ; ZERO stands for a cluster the new backing has but the old did not.
            old = self.read(target.backing) if target.backing else {}
            new = self.read(backing) if backing else {}
            for cluster in set(old) | set(new):
                if cluster not in target.clusters and old.get(cluster) != new.get(cluster):
                    target.clusters[cluster] = old.get(cluster, ZERO)
        target.backing = backing

    # Backups. A file's damage for `check`: `corrupt` holds the paths that report it.
    @serialised
    def flatten(
        self,
        source: str,
        target: str,
        *,
        shared: bool,
        compress: bool = False,
        progress: ProgressFn | None = None,
    ) -> None:
        self._call("flatten", source, target)
        size = self.images[self.chain(source)[0].path].virtual_size
        self.images[target] = FakeImage(virtual_size=size, clusters=self.read(source))
        _written(target, self.images[target])

    @serialised
    def export_incremental(
        self,
        layers: Sequence[str],
        target: str,
        *,
        base_name: str,
        compress: bool = False,
        progress: ProgressFn | None = None,
    ) -> None:
        self._call("export_incremental", tuple(layers), target, base_name)
        base = os.path.normpath(os.path.join(os.path.dirname(target), base_name))
        if not layers or (base not in self.images and self._from_file(base) is None):
            raise ImageToolError(f"incremental export {target}: no layers or no base {base}")
        clusters: dict[int, str] = {}
        for layer in layers:  # bottom first: the top layer wins
            clusters.update(self.images[layer].clusters)
        size = self.images[layers[-1]].virtual_size
        self.images[target] = FakeImage(virtual_size=size, backing=base, clusters=clusters)
        _written(target, self.images[target])

    @serialised
    def check(self, path: str, *, shared: bool = False) -> ImageCheck:
        self._call("check", path)
        if path not in self.images and self._from_file(path) is None:
            raise ImageToolError(f"qemu-img: could not open '{path}'")
        leaks = self.leaks.get(path, 0)
        return ImageCheck(corruptions=int(path in self.corrupt), leaks=leaks, check_errors=0)

    @serialised
    def repair_leaks(self, path: str) -> ImageCheck:
        self._call("repair_leaks", path)
        self.leaks.pop(path, None)
        return self.check(path)

    @serialised
    def set_backing(self, image: str, *, backing_name: str | None, safe: bool) -> None:
        base = None
        if backing_name is not None:
            base = os.path.normpath(os.path.join(os.path.dirname(image), backing_name))
        self.rebase(image, backing=base, backing_format="qcow2", unsafe=not safe)

    @serialised
    def remove(self, path: str) -> None:
        self._call("remove", path)
        self.images.pop(path, None)

    def wait_released(self) -> None:
        """Space is released at once here."""

    @serialised
    def exists(self, path: str) -> bool:
        return path in self.images

    def free_bytes(self, directory: str) -> int:
        return self.free

    def filesystem(self, directory: str) -> int:
        return 0  # one filesystem holds every fake image


def _written(target: str, image: FakeImage) -> None:
    """A copy into a real directory (a backup repository's: the real BackupRepo hashes,
    sizes and renames what is there) is also written as a file: the image as JSON."""
    if os.path.isdir(os.path.dirname(target)):
        with open(target, "w", encoding="utf-8") as f:
            doc = {"size": image.virtual_size, "backing": image.backing, "clusters": image.clusters}
            json.dump(doc, f, sort_keys=True)


def merge_down(images: dict[str, FakeImage], top: str, base: str) -> None:
    """Copy every cluster between top and base (top winning) into base."""
    layers = []
    current: str | None = top
    while current is not None and current != base:
        layers.append(images[current])
        current = images[current].backing
    if current != base:
        raise ImageToolError(f"{base} is not below {top}")
    for layer in reversed(layers):
        images[base].clusters.update(layer.clusters)
