"""The fakes under the threads the engine really uses: a live delete runs one block
commit per disk side by side (Merger.finish_many) while its own thread rebases and
removes files. libvirt serialises changes to a domain; the fakes must too, or a pivot
is lost and the disk is left on a removed file (a flake seen under load)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest

from snapgroup.domain.models import DomainDisk, VmState
from snapgroup.testing.fakes import FakeHypervisor, FakeImage, FakeImageTool, lab_domain

VM = "a" * 32


class _Rendezvous(list[DomainDisk]):
    """The domain's disk list, whose every walk waits (once per thread, up to a bound)
    until the other thread walks it too: both block commits then work from the same
    list, the interleaving that lost a pivot. A fake that serialises its changes makes
    the second thread wait for the first, so the wait times out and each goes on."""

    def __init__(self, disks: list[DomainDisk], barrier: threading.Barrier) -> None:
        super().__init__(disks)
        self.barrier = barrier

    def __iter__(self) -> Iterator[DomainDisk]:
        # Broken: the other thread is held back (no meeting, no lost update).
        with contextlib.suppress(threading.BrokenBarrierError):
            self.barrier.wait()
        return super().__iter__()


@pytest.fixture
def hv() -> FakeHypervisor:
    hv = FakeHypervisor(FakeImageTool())
    lab_domain(hv, state=VmState.RUNNING, data_disks=1)
    for disk in hv.domains[VM].disks:  # an overlay on every disk, as after a snapshot
        assert disk.path is not None
        top = disk.path.replace(".qcow2", "-top.qcow2")
        hv.images.add(top, backing=disk.path, data={1: f"{disk.target}-new"})
        hv.set_disk_sources(VM, {disk.target: top})
    return hv


def test_side_by_side_active_commits_both_pivot(hv: FakeHypervisor) -> None:
    domain = hv.domains[VM]
    bases = {"vda": "/lab/disk0.qcow2", "vdb": "/lab/disk1.qcow2"}
    domain.disks = _Rendezvous(domain.disks, threading.Barrier(2, timeout=1.0))
    errors: list[BaseException] = []

    def commit(target: str) -> None:
        try:
            hv.block_commit(VM, target, top=None, base=bases[target])
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=commit, args=(t,)) for t in bases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert {d.target: d.path for d in domain.disks} == bases  # neither pivot lost
    for target, base in bases.items():
        assert hv.images.read(base) == {0: f"base{int(target == 'vdb')}", 1: f"{target}-new"}


class _PausingImages(dict[str, FakeImage]):
    """The image table, whose walk (`items`) stops after its first entry until the
    other thread has removed a file, or a bound passes (a fake that serialises its
    changes holds the remover back until the walk is done)."""

    def __init__(self, images: dict[str, FakeImage]) -> None:
        super().__init__(images)
        self.walking, self.removed = threading.Event(), threading.Event()

    def items(self) -> Iterator[tuple[str, FakeImage]]:  # type: ignore[override]
        for n, item in enumerate(super().items()):
            if n == 1:
                self.walking.set()
                self.removed.wait(timeout=1.0)
            yield item


def test_removal_beside_an_intermediate_commit(hv: FakeHypervisor) -> None:
    """An intermediate commit finds the file above its top by walking every image; a
    file removal in the delete's own thread meanwhile must not break that walk."""
    images = hv.images
    base, mid, above = "/lab/disk1.qcow2", "/lab/disk1-top.qcow2", "/lab/disk1-above.qcow2"
    images.add(above, backing=mid, data={2: "above"})
    hv.set_disk_sources(VM, {"vdb": above})
    images.add("/lab/spare.qcow2")
    table = images.images = _PausingImages(images.images)
    errors: list[BaseException] = []

    def commit() -> None:
        try:
            hv.block_commit(VM, "vdb", top=mid, base=base)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    def remove() -> None:
        table.walking.wait(timeout=5.0)  # the commit is walking the table
        images.remove("/lab/spare.qcow2")
        table.removed.set()

    committer = threading.Thread(target=commit)
    committer.start()
    remover = threading.Thread(target=remove)
    remover.start()
    for t in (committer, remover):
        t.join(timeout=30)
    assert errors == []
    assert "/lab/spare.qcow2" not in images.images
    assert images.images[above].backing == base
    assert images.read(above) == {0: "base1", 1: "vdb-new", 2: "above"}
