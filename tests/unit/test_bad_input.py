"""Bad input and unsafe states: a clear error with a stable code, and nothing changed."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from snapgroup.domain.errors import OperationError, StoreError
from snapgroup.store.db import Database
from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Lab

VM = "a" * 32


def test_corrupt_database_file_is_a_store_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a sqlite database" * 100)
    with pytest.raises(StoreError) as err:
        Database(f"sqlite:///{bad}")
    assert err.value.code == "SYS.1010"
    assert bad.read_bytes().startswith(b"this is not")  # left as it was


def test_locked_database_is_a_store_error_not_a_hang(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    Database(f"sqlite:///{path}").dispose()
    holder = sqlite3.connect(path)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        db = Database(f"sqlite:///{path}", busy_timeout=0.2)
        with pytest.raises(StoreError, match="locked"), db.transaction() as session:
            session.exec(
                __import__("sqlmodel").text(
                    "INSERT INTO volume_snapshot_group "
                    "(uuid, name, vm_uuid, create_date, last_op_date) "
                    "VALUES ('x', 'x', 'x', '2026-01-01', '2026-01-01')"
                )
            )
    except StoreError as exc:  # refused already while opening: just as good
        assert "locked" in exc.details
    finally:
        holder.rollback()
        holder.close()


def test_database_file_and_directory_are_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "snapgroup.db"
    Database(f"sqlite:///{path}").dispose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_an_overlay_path_that_exists_is_refused_and_left_alone(lab: Lab) -> None:
    paths = lab_domain(lab.hv)
    taken = f"{'c' * 32}"
    lab.images.add(f"/lab/{taken}.qcow2", data={0: "precious"})
    lab.engine.volumes("vm1")  # volumes get their UUIDs before the clash is staged
    lab.engine.new_uuid = lambda: taken
    with pytest.raises(OperationError, match="already exists"):
        lab.engine.create(vm="vm1", name="g")
    assert lab.images.read(f"/lab/{taken}.qcow2") == {0: "precious"}
    assert [d.path for d in lab.hv.domains[VM].disks] == paths
    assert lab.engine.list_groups() == []


def test_missing_backing_file_is_a_clear_operation_error(lab: Lab) -> None:
    paths = lab_domain(lab.hv)
    lab.images.images[paths[1]].backing = "/lab/gone.qcow2"
    with pytest.raises(OperationError) as err:
        lab.engine.create(vm="vm1", name="g")
    assert err.value.code == "SYS.1006" and "vdb" in err.value.details
    assert err.value.cause is not None and err.value.cause.code == "HOST.1003"
    assert [d.path for d in lab.hv.domains[VM].disks] == paths
    assert lab.images.called("create_overlay") == []


def test_vm_lock_held_elsewhere_fails_fast_with_busy(lab: Lab) -> None:
    lab_domain(lab.hv)
    # The engine's own kind of lock: flock on SQLite, an advisory lock on PostgreSQL.
    with lab.engine.ctx.locks.vm(VM), pytest.raises(Exception) as err:
        lab.engine.create(vm="vm1", name="g")
    assert getattr(err.value, "code", None) == "SYS.1011"
    assert lab.engine.list_groups() == []


def test_a_chain_libvirt_would_refuse_is_refused_first(lab: Lab) -> None:
    from snapgroup.ops.creating import MAX_CHAIN_DEPTH

    paths = lab_domain(lab.hv, data_disks=0)
    below = paths[0]
    for n in range(MAX_CHAIN_DEPTH - 1):  # the root disk now has MAX_CHAIN_DEPTH layers
        lab.images.add(f"/lab/base{n}.qcow2")
        lab.images.images[below].backing = f"/lab/base{n}.qcow2"
        below = f"/lab/base{n}.qcow2"
    with pytest.raises(OperationError, match="libvirt refuses"):
        lab.engine.create(vm="vm1", name="g")
    assert lab.images.called("create_overlay") == []
