"""QEMU's way into a backup repository, for disks restored thin (--keep-chain) as a VM.

A thin restore's disks are overlays whose backing files are the repository's, so the
QEMU of the restored VM opens those files as the user libvirt runs it as (libvirt-qemu on
Debian), not as root. The repository is closed (its directories 0700: the manifests hold
domain XML), so that user is let through, and no one else:

- search (x, not r: it cannot list) on the repository's directories from its root down
  to each backup the chain reads, read (r) on each file of the chain, by POSIX ACL
  entries naming that user (setfacl, Debian package `acl`), each only where the mode
  bits do not already allow it. Manifests and holds stay 0600 with no entry; every
  other user's access is what it was.
- the chain's files lose their write bits. libvirt 9.0's DAC labelling chowns every
  file of a starting domain's backing chain to QEMU's user and gives back the owner of
  the top image only (found by experiment: the repository's files stay libvirt-qemu's
  after the VM stops), so QEMU's user comes to own them; read-only, a commit into them
  (a `virsh blockcommit` of the restored VM) fails instead of writing into a backup.
  libvirt's labelling cannot replace the grant: it runs after its check that QEMU's user
  can open each backing file, and never touches directories.

On a read-only repository nothing can change: the restore goes on when QEMU's user can
read the files already, and fails naming the file otherwise. Who QEMU runs as: libvirt's
qemu.conf (`user`, `group`), else Debian's build default; nothing to do when that is root
or when snapgroup itself is not (qemu:///session runs QEMU as its caller).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from snapgroup.adapters.runner import run
from snapgroup.domain.errors import OperationError

QEMU_CONF = "/etc/libvirt/qemu.conf"
DEFAULT_USER = DEFAULT_GROUP = "libvirt-qemu"  # Debian's --with-qemu-user / -group
_SETTING = re.compile(r'\s*(user|group)\s*=\s*"([^"]*)"\s*(?:#.*)?')


@dataclass(frozen=True)
class QemuUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary, as libvirt sets them for QEMU

    def __str__(self) -> str:
        return f"{self.name} (uid {self.uid})" if self.name else f"uid {self.uid}"


def qemu_user(conf: str = QEMU_CONF) -> QemuUser | None:
    """The user libvirt's system instance runs QEMU as; None when that is root or when
    this process is not root (nothing to grant, or nothing it could)."""
    if os.geteuid() != 0:
        return None
    settings = {"user": DEFAULT_USER, "group": DEFAULT_GROUP}
    with contextlib.suppress(FileNotFoundError), open(conf, encoding="utf-8") as f:
        for line in f:
            if match := _SETTING.fullmatch(line.rstrip("\n")):
                settings[match[1]] = match[2]
    user, gid = _user(settings["user"]), _gid(settings["group"])
    if isinstance(user, int):  # a number without a passwd entry: no other groups
        return None if user == 0 else QemuUser("", user, gid, ())
    if user.pw_uid == 0:
        return None
    # libvirt gives QEMU the groups of the user's passwd entry (its own group included)
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid)) - {gid}
    return QemuUser(user.pw_name, user.pw_uid, gid, tuple(sorted(groups)))


# libvirt reads a user or group setting as a name, else a number; `+N` is the number N.
def _user(value: str) -> pwd.struct_passwd | int:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(value) if not value.startswith("+") else pwd.getpwuid(_number(value))
    return _number(value)


def _gid(value: str) -> int:
    with contextlib.suppress(KeyError):
        if not value.startswith("+"):
            return grp.getgrnam(value).gr_gid
    return _number(value)


def _number(value: str) -> int:
    if not value.removeprefix("+").isdigit():
        raise OperationError(f"{QEMU_CONF}: no user or group {value!r} on this host")
    return int(value.removeprefix("+"))


def open_to(root: str, files: Sequence[str], user: QemuUser) -> None:
    """Let `user` read `files` (inside the repository at `root`) as described above;
    OperationError (SYS.1006) naming a file it still cannot read."""
    root = os.path.abspath(root)
    files = sorted({os.path.abspath(f) for f in files})
    read_only = bool(os.statvfs(root).f_flag & os.ST_RDONLY)
    if not read_only:
        for path in files:  # best effort: a file we may not chmod keeps its mode
            with contextlib.suppress(PermissionError):
                os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) & ~0o222)
    unreadable = _unreadable(files, user)
    if unreadable and not read_only:
        directories = sorted({d for f in unreadable for d in _on_the_way(root, f)})
        _grant(user, "--x", [d for d in directories if not _allows(d, user, stat.S_IXOTH)])
        _grant(user, "r--", [f for f in unreadable if not _allows(f, user, stat.S_IROTH)])
        unreadable = _unreadable(files, user)
    if unreadable:
        why = (
            "the repository is read-only: restore without --keep-chain, or make its files "
            "readable by that user where it is written"
            if read_only
            else f"the repository's own directories were opened to it: a directory above "
            f"{root} must let it through (search permission)"
        )
        raise OperationError(
            f"QEMU's user {user} cannot read {unreadable[0]}, which the restored disks read: {why}"
        )


def _on_the_way(root: str, path: str) -> list[str]:
    """The directories from `root` (included) down to `path`'s own."""
    rel = os.path.relpath(os.path.dirname(path), root)
    if rel.startswith(os.pardir):
        raise OperationError(f"{path} is not in the repository {root}")
    parts = [] if rel == os.curdir else rel.split(os.sep)
    return [os.path.join(root, *parts[:n]) for n in range(len(parts) + 1)]


def _allows(path: str, user: QemuUser, other_bit: int) -> bool:
    """Do the mode bits alone give `user` this permission (other_bit: S_IXOTH or
    S_IROTH, shifted to the owner's or group's class as it applies)?"""
    st = os.stat(path)
    if st.st_uid == user.uid:
        return bool(st.st_mode & (other_bit << 6))
    if st.st_gid == user.gid or st.st_gid in user.groups:
        return bool(st.st_mode & (other_bit << 3))
    return bool(st.st_mode & other_bit)


def _grant(user: QemuUser, perms: str, paths: Sequence[str]) -> None:
    if paths:
        run(["setfacl", "-m", f"u:{user.uid}:{perms}", "--", *paths], error=OperationError)


def _unreadable(files: Sequence[str], user: QemuUser) -> list[str]:
    """The files `user` cannot open for reading (access(2) as that user, ACLs included:
    what libvirt checks before it starts QEMU), in order."""
    if not files:
        return []
    as_user = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}"]
    as_user.append(
        f"--groups={','.join(map(str, user.groups))}" if user.groups else "--clear-groups"
    )
    # find exits 1 for a start point it cannot reach; its stdout says which it can read.
    out = run(
        [*as_user, "--", "find", *files, "-maxdepth", "0", "-readable", "-print0"],
        error=OperationError,
        ok_codes=(0, 1),
    )
    readable = set(out.split("\0"))
    return [f for f in files if f not in readable]
