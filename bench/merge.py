"""5. Delete/merge throughput: deleting a group whose snapshots hold 2 GiB of changed
data per disk (2 disks), live and offline, in MiB/s of changed data merged, against the
native tools on copies of the same files, pair by pair:

* live: snapgroup's delete (a libvirt active block commit with pivot per disk) vs
  `virsh blockcommit --active --pivot --wait` per disk on a second VM whose disks are
  copies of the same overlays and bases;
* offline: snapgroup's delete (qemu-img commit + redefine) vs `qemu-img commit` per
  copied overlay.

Each round lays the files out anew (untimed): a group is created on the stopped VM, its
overlays are filled through qemu-io, and both overlays and bases are copied for the
baseline (rebased onto the copied bases), so both sides merge the same bytes into the
same bases.
"""

from __future__ import annotations

import os

from bench import lab
from bench.timing import Row, Stats, Target, ratios, rounds, timed
from snapgroup.api import Engine
from snapgroup.domain.errors import HypervisorUnavailable
from snapgroup.testing.labvm import LabVm

NAME = "delete-merge"
DISKS = 2
TARGET = Target(">=", 0.9)


class _Layout:
    """The files of one round: our group on `ours`, copies wired into `base`."""

    def __init__(self, eng: Engine, ours: LabVm, base: LabVm, mib: int) -> None:
        self.eng, self.ours, self.base, self.mib = eng, ours, base, mib
        self.group = ""
        self.copies: dict[str, str] = {}  # target -> copied overlay
        self.copied: list[str] = []

    def prepare(self) -> None:
        self.cleanup()
        group = self.eng.create(vm=self.ours.name, name="merge", consistency="crash")
        self.group = group.uuid
        tops = lab.domblklist(self.ours.name)
        for ref in group.refs:
            target = next(
                t for t, p in tops.items() if lab.qemu_img_chain(p)[1] == ref.install_path
            )
            overlay, base = tops[target], ref.install_path
            lab.fill(overlay, self.mib, pattern=0x30 + len(self.copied))
            copy_base = os.path.join(self.base.directory, f"copy-base-{target}.qcow2")
            copy_top = os.path.join(self.base.directory, f"copy-top-{target}.qcow2")
            for src, dst in ((base, copy_base), (overlay, copy_top)):
                lab.sh("cp", "--sparse=always", src, dst, timeout=None)
                self.copied.append(dst)
            lab.sh(
                "qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", copy_base, copy_top
            )
            self.copies[target] = copy_top
        try:
            self.eng.hv.set_disk_sources(self.base.uuid, dict(self.copies))
        except HypervisorUnavailable:  # libvirtd restarted (other people's tests): again
            self.eng.hv.set_disk_sources(self.base.uuid, dict(self.copies))
        os.sync()  # neither side's timing includes writing back the other's set-up

    def cleanup(self) -> None:
        lab.remove(self.copied)
        self.copied = []


def _ours(layout: _Layout, live: bool) -> dict[str, float]:
    """The delete (timed), then the wait until the removed files' space is released
    (timed apart): the delete returns once their names are gone and frees their blocks
    in the background, which must not overlap the other side's timing."""
    if live:
        layout.ours.start()
    try:
        report = None

        def delete() -> None:
            nonlocal report
            report = layout.eng.delete(layout.group)

        seconds = timed(delete)
        released = timed(layout.eng.images.wait_released)
        assert report is not None and all(r.success for r in report.results), report
        return {"delete": seconds, "released": released}
    finally:
        layout.ours.stop()


def _native(layout: _Layout, live: bool) -> dict[str, float]:
    """The merge (timed), then the removal of the merged-away files (timed apart): a
    snapgroup delete does both, the native commands only the first."""
    vm = layout.base
    if live:
        vm.start()
    try:
        if live:

            def work() -> None:
                for target in layout.copies:
                    lab.virsh(
                        "blockcommit",
                        vm.name,
                        target,
                        "--active",
                        "--pivot",
                        "--wait",
                        timeout=None,
                    )
        else:

            def work() -> None:
                for top in layout.copies.values():
                    lab.sh("qemu-img", "commit", "-q", "-f", "qcow2", top, timeout=None)

        commit = timed(work)
        rm = timed(lambda: lab.remove(list(layout.copies.values())))
        return {"commit": commit, "rm": rm}
    finally:
        vm.stop()


def run(runs: int, quick: bool) -> list[Row]:
    disks = 1 if quick else DISKS
    mib = 256 if quick else 2048
    rows = []
    with (
        lab.engine(NAME) as eng,
        lab.lab_vm("merge-ours", disks=disks, disk_mib=mib + 512, start=False) as ours,
        lab.lab_vm("merge-base", disks=disks, disk_mib=64, start=False) as base,
    ):
        layout = _Layout(eng, ours, base, mib)
        try:
            for live in (True, False):
                samples = rounds(
                    runs,
                    {
                        "snapgroup": lambda live=live: _ours(layout, live),  # type: ignore[misc]
                        "native": lambda live=live: _native(layout, live),  # type: ignore[misc]
                    },
                    before=layout.prepare,
                )
                total = disks * mib
                mode = "live" if live else "offline"
                native = "virsh blockcommit --active --pivot" if live else "qemu-img commit"
                ours_s, commit_s = samples["snapgroup.delete"], samples["native.commit"]
                whole_s = [c + r for c, r in zip(commit_s, samples["native.rm"], strict=True)]
                # Like for like: the whole native delete against ours until the space is free.
                freed_s = [
                    d + r for d, r in zip(ours_s, samples["snapgroup.released"], strict=True)
                ]
                rm = Stats.of(samples["native.rm"]).scaled(1000.0)
                release = Stats.of(samples["snapgroup.released"]).scaled(1000.0)
                rows.append(
                    Row(
                        bench=NAME,
                        case=f"{mode}, {disks}x{mib} MiB",
                        unit="MiB/s",
                        ours=Stats.of([total / s for s in ours_s]),
                        ours_label="snapgroup delete",
                        baseline=Stats.of([total / s for s in commit_s]),
                        baseline_label=native,
                        ratio=Stats.of(ratios(commit_s, ours_s)),
                        target=TARGET,
                        note="ratio = our MiB/s / native MiB/s; ours also removes the merged "
                        f"files, which the native command leaves (rm of the same files: "
                        f"{rm.median:.0f} ms [{rm.min:.0f}-{rm.max:.0f}]; our release of "
                        f"their space after the delete returned: {release.median:.0f} ms "
                        f"[{release.min:.0f}-{release.max:.0f}])",
                    )
                )
                rows.append(
                    Row(
                        bench=NAME,
                        case=f"  {mode}, vs the whole native delete (merge + rm)",
                        unit="MiB/s",
                        ours=Stats.of([total / s for s in freed_s]),
                        ours_label="snapgroup delete until the space is released",
                        baseline=Stats.of([total / s for s in whole_s]),
                        baseline_label=f"{native} + rm",
                        ratio=Stats.of(ratios(whole_s, freed_s)),
                        target=TARGET,
                    )
                )
        finally:
            layout.cleanup()
    return rows
