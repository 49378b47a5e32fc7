"""ZStack's query language, parsed and run over Group objects (no HTTP)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from snapgroup.domain.errors import InvalidArgument
from snapgroup.domain.inventory import Group, GroupRef
from snapgroup.rest.query import parse_condition, parse_query

T0 = datetime(2017, 11, 14, 22, 20, 57, tzinfo=UTC)


def _group(n: int, name: str, description: str | None = None, refs: int = 2) -> Group:
    uuid = f"{n:032x}"
    when = T0 + timedelta(days=n)
    return Group(
        uuid=uuid,
        name=name,
        description=description,
        vm_uuid="a" * 32,
        create_date=when,
        last_op_date=when,
        refs=tuple(
            GroupRef(
                volume_snapshot_uuid=f"{n}{i}".rjust(32, "0"),
                group_uuid=uuid,
                device_id=i,
                snapshot_deleted=(n == 2 and i == 1),
                volume_uuid=f"{i:032x}",
                volume_name=f"vol{i}",
                volume_type="Root" if i == 0 else "Data",
                install_path=f"/p/{n}-{i}.qcow2",
                snapshot_name=f"{name}-vol{i}",
                volume_last_attach_date=when,
                create_date=when,
                last_op_date=when,
            )
            for i in range(refs)
        ),
    )


GROUPS = [_group(1, "Alpha", "first"), _group(2, "beta"), _group(3, "gamma", "third", refs=3)]


def names(**params: object) -> list[str]:
    reply = parse_query(**params).run(GROUPS)  # type: ignore[arg-type]
    return [inv["name"] for inv in reply["inventories"]]


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("name=beta", ["beta"]),
        ("name!=beta", ["Alpha", "gamma"]),
        ("name?=beta,gamma", ["beta", "gamma"]),
        ("name!?=beta,gamma", ["Alpha"]),
        ("name~=%a", ["Alpha", "beta", "gamma"]),
        ("name~=a%", ["Alpha"]),  # LIKE is case-insensitive, as on ZStack's MySQL
        ("name~=_eta", ["beta"]),
        ("name!~=%mm%", ["Alpha", "beta"]),
        ("snapshotCount>2", ["gamma"]),
        ("snapshotCount<=2", ["Alpha", "beta"]),
        ("description is null", ["beta"]),
        ("description not null", ["Alpha", "gamma"]),
        ("description=first", ["Alpha"]),
        ("createDate>2017-11-16", ["beta", "gamma"]),
        ("createDate<2017-11-16T00:00:00+00:00", ["Alpha"]),
        (f"createDate>={int((T0 + timedelta(days=3)).timestamp() * 1000)}", ["gamma"]),
        ("volumeSnapshotRefs.deviceId=2", ["gamma"]),
        ("volumeSnapshotRefs.snapshotDeleted=true", ["beta"]),
        ("volumeSnapshotRefs.volumeType=Root", ["Alpha", "beta", "gamma"]),
        ("volumeSnapshotRefs.volumeSnapshotName~=gamma-%", ["gamma"]),
        ("name= beta", []),  # the value is not trimmed: a space may matter
        ("uuid=" + "0" * 31 + "1", ["Alpha"]),
    ],
)
def test_conditions(condition: str, expected: list[str]) -> None:
    assert names(q=[condition]) == expected


def test_conditions_all_hold() -> None:
    assert names(q=["name~=%a", "snapshotCount=2"]) == ["Alpha", "beta"]


def test_seed_dates_are_host_time() -> None:
    shown = GROUPS[1].to_inventory()["createDate"]  # as the inventory shows it
    assert names(q=[f"createDate={shown}"]) == ["beta"]


def test_sort_page_count_fields() -> None:
    assert names(sort="-createDate") == ["gamma", "beta", "Alpha"]
    assert names(sort="+name") == ["Alpha", "beta", "gamma"]
    assert names(sort=" snapshotCount", start=2) == ["gamma"]
    assert names(sort="description") == ["Alpha", "gamma", "beta"]  # nulls last
    assert names(limit=1, start=1) == ["beta"]
    assert names(limit=0) == []
    assert parse_query(count="true").run(GROUPS) == {"total": 3}
    assert parse_query(count="yes").run(GROUPS)["inventories"]  # Boolean.valueOf
    reply = parse_query(reply_with_count="TRUE", limit=1).run(GROUPS)
    assert reply["total"] == 3 and len(reply["inventories"]) == 1
    only = parse_query(fields="uuid, name", q=["name=beta"]).run(GROUPS)
    assert only == {"inventories": [{"uuid": GROUPS[1].uuid, "name": "beta"}]}


@pytest.mark.parametrize(
    "condition",
    [
        "name",
        "=beta",
        "colour=red",
        "volumeSnapshotRefs.colour=red",
        "snapshotCount=three",
        "snapshotCount?=1,x",
        "volumeSnapshotRefs.snapshotDeleted=maybe",
        "volumeSnapshotRefs.snapshotDeleted>true",
        "createDate>yesterday",
        "createDate>99999999999999999999",
        "name is nothing",
    ],
)
def test_bad_conditions(condition: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_condition(condition)


@pytest.mark.parametrize(
    "params",
    [{"limit": -1}, {"start": -1}, {"sort": "colour"}, {"sort": "+"}, {"fields": ","}],
)
def test_bad_parameters(params: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        parse_query(**params)  # type: ignore[arg-type]
