"""`make demo`: a lab VM's snapshot group, its whole life, step by step, through the CLI.

Runs on the embedded defaults (qemu:///system, the SQLite store under /var/lib/snapgroup).
Re-runnable: the previous demo VM, its files, backup repository, restored images and
policy are removed first.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from snapgroup.testing.labvm import LabVm, create_lab_vm

LAB_DIR = Path("/var/lib/snapgroup/lab/demo")
BACKUP_DIR = Path("/var/lib/snapgroup/lab/demo-backups")
RESTORE_DIR = Path("/var/lib/snapgroup/lab/demo-restore")
VM_NAME = "sg-demo"
POLICY = "demo"
GUEST = Path(__file__).resolve().parent.parent / "build" / "guest"
SNAPGROUP = [sys.executable, "-m", "snapgroup"]


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def sg(*args: str, capture: bool = False, echo: bool = True) -> str:
    if echo:
        print(f"$ snapgroup {shlex.join(args)}", flush=True)
    result = subprocess.run([*SNAPGROUP, *args], capture_output=capture, text=True, check=False)
    if result.returncode != 0:
        if capture:
            sys.stdout.write(result.stdout + result.stderr)
        raise SystemExit(f"demo failed at: snapgroup {shlex.join(args)}")
    if capture and echo:
        sys.stdout.write(result.stdout)
    return result.stdout if capture else ""


def sg_fields(*args: str, key: str, fields: tuple[str, ...]) -> dict[str, Any]:
    """A --json command shown by the few fields that matter here, not its whole document."""
    doc = json.loads(sg("--json", *args, capture=True, echo=False))[key]
    print(f"$ snapgroup --json {shlex.join(args)}", flush=True)
    print("  ".join(f"{f}: {json.dumps(doc[f])}" for f in fields))
    return dict(doc)


def sg_refused(*args: str) -> None:
    """A command the demo expects to be refused: its output and exit status are shown."""
    print(f"$ snapgroup {shlex.join(args)}", flush=True)
    result = subprocess.run([*SNAPGROUP, *args], capture_output=True, text=True, check=False)
    sys.stdout.write(result.stdout + result.stderr)
    if result.returncode == 0:
        raise SystemExit(f"demo failed: snapgroup {shlex.join(args)} was not refused")
    print(f"(exit status {result.returncode})")


def show(*argv: str) -> None:
    print(f"$ {shlex.join(argv)}", flush=True)
    subprocess.run(list(argv), check=True)


def _top_of(vm: str, target: str) -> str:
    out = subprocess.run(["virsh", "domblklist", vm], capture_output=True, text=True, check=True)
    return next(line.split()[1] for line in out.stdout.splitlines() if line.split()[:1] == [target])


def _group_uuids() -> list[str]:
    listed = json.loads(sg("--json", "list", "--vm", VM_NAME, capture=True, echo=False))
    return [g["uuid"] for g in listed["inventories"]]


def _policies() -> list[dict[str, object]]:
    policies: list[dict[str, object]] = json.loads(
        sg("--json", "policy", "list", capture=True, echo=False)
    )["policies"]
    return policies


def _backup_ids() -> list[str]:
    listed = json.loads(
        sg("--json", "backups", "--at", str(BACKUP_DIR), "--vm", VM_NAME, capture=True, echo=False)
    )
    return [b["backupId"] for b in listed["backups"]]


def boot_vm() -> LabVm:
    kernel, initrd = GUEST / "vmlinuz", GUEST / "initrd.gz"
    with_guest = kernel.exists() and initrd.exists()
    vm = create_lab_vm(
        LAB_DIR,
        name=VM_NAME,
        data_disks=2,
        start=True,
        kernel=kernel if with_guest else None,
        initrd=initrd if with_guest else None,
        cmdline="console=ttyS0 quiet panic=-1 acpi=noirq pci=nomsi" if with_guest else None,
        guest_agent=with_guest,
    )
    what = "the lab guest (Linux, TCG)" if with_guest else "an OS-less domain (TCG)"
    print(f"VM {vm.name} ({vm.uuid}) running {what}; disks in {vm.directory}")
    if with_guest:
        _wait_for_agent(vm.name)
    return vm


def _wait_for_agent(vm: str, timeout: float = 120.0) -> None:
    """Until the guest agent answers, so the group can be application-consistent (a
    create before that falls back to crash-consistent, and says so)."""
    started = time.monotonic()
    ping = ["virsh", "qemu-agent-command", vm, '{"execute":"guest-ping"}', "--timeout", "1"]
    while subprocess.run(ping, capture_output=True, check=False).returncode != 0:
        if time.monotonic() - started > timeout:
            print(f"no guest agent after {timeout:.0f} s; going on without it")
            return
        time.sleep(0.2)
    print(f"guest agent answering {time.monotonic() - started:.1f} s after the start")


def main() -> None:
    step("Remove what an earlier demo left")
    subprocess.run(["virsh", "-q", "destroy", VM_NAME], capture_output=True, check=False)
    subprocess.run(["virsh", "-q", "undefine", VM_NAME], capture_output=True, check=False)
    if LAB_DIR.exists():
        for f in LAB_DIR.iterdir():
            f.unlink()
    for made in (BACKUP_DIR, RESTORE_DIR):
        shutil.rmtree(made, ignore_errors=True)
    if POLICY in {p["name"] for p in _policies()}:
        sg("policy", "remove", POLICY, capture=True, echo=False)

    step("Boot a lab VM with a root disk and two data disks")
    boot_vm()
    show("virsh", "domblklist", VM_NAME)

    step("What a group would cover")
    sg("volumes", "--vm", VM_NAME)

    step("Take a snapshot group of the running VM (guest frozen, one atomic libvirt call)")
    created = json.loads(
        sg(
            "--json",
            "create",
            "--vm",
            VM_NAME,
            "--name",
            "before-upgrade",
            "--description",
            "demo group",
            "--consistency",
            "auto",
            capture=True,
        )
    )
    inventory = created["inventory"]
    group = inventory["uuid"]
    frozen = ", ".join(inventory["frozenFilesystems"]) or "nothing"
    print(
        f"consistency: {inventory['consistencyType']}; froze {frozen} for "
        f"{inventory['freezeMillis']} ms; note: {inventory['consistencyNote'] or '-'}"
    )
    show("virsh", "domblklist", VM_NAME)
    top = _top_of(VM_NAME, "vda")
    show("qemu-img", "info", "-U", "--backing-chain", top)

    step("List and show it")
    sg("list", "--vm", VM_NAME)
    sg("show", group)
    sg("update", group, "--name", "before-upgrade-v2")

    step("A second restore point, and what each group can restore")
    sg("create", "--vm", VM_NAME, "--name", "after-upgrade")
    second = _group_uuids()[-1]
    sg("check", group, second)
    sg("tree", "--vm", VM_NAME)

    step("Revert to the first group (a safety group keeps the current state)")
    sg("revert", group, "--stop")
    show("virsh", "start", VM_NAME)
    sg("tree", "--vm", VM_NAME)
    sg("verify", "--vm", VM_NAME)

    step("Before deleting: the plan, and a protected group")
    sg("delete", group, "--dry-run")
    sg_fields("protect", group, key="inventory", fields=("name", "protected"))
    sg_refused("delete", group)
    sg_fields("unprotect", group, key="inventory", fields=("name", "protected"))

    step("Back up to a repository: the first export is full, the next carry only changes")
    backups = str(BACKUP_DIR)
    sg("export", group, "--to", backups)
    newer = sg_fields(
        "create", "--vm", VM_NAME, "--name", "nightly", key="inventory", fields=("uuid", "name")
    )
    sg("export", str(newer["uuid"]), "--to", backups)
    sg("backups", "--at", backups, "--vm", VM_NAME)
    sg("verify-backup", "--at", backups)

    step("Restore the newest backup's disks as standalone images: the group's content")
    show("mkdir", "-p", str(RESTORE_DIR))
    sg("restore", "--from", backups, _backup_ids()[-1], "--to-dir", str(RESTORE_DIR))
    vda = next(r for r in newer["volumeSnapshotRefs"] if r["deviceId"] == 0)
    restored = RESTORE_DIR / f"{vda['volumeUuid']}.qcow2"
    show("qemu-img", "compare", "-U", str(restored), vda["volumeSnapshotInstallPath"])

    step("A policy: groups taken and pruned by slot (the systemd timer runs autosnap)")
    sg("policy", "set", POLICY, "--vm", VM_NAME, "--hourly", "2", "--daily", "1")
    sg("autosnap", "--dry-run")
    sg("autosnap")
    sg("policy", "status")
    sg("policy", "remove", POLICY)

    step("Delete the groups: snapshots are merged out, the VM keeps its data")
    for uuid in _group_uuids():
        sg("delete", uuid)
    show("virsh", "domblklist", VM_NAME)
    sg("list", "--vm", VM_NAME)
    sg("verify", "--vm", VM_NAME)

    step("Done")
    print(f"The demo VM {VM_NAME} is left running; `virsh destroy {VM_NAME}` stops it.")
    print(f"Its backups stay in {BACKUP_DIR}, the restored images in {RESTORE_DIR}.")


if __name__ == "__main__":
    main()
