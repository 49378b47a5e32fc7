from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from snapgroup.domain.inventory import date_memo, zstack_date


def test_dates_use_the_seed_format() -> None:
    assert (
        zstack_date(datetime(2017, 11, 14, 22, 20, 57).astimezone()) == "Nov 14, 2017 10:20:57 PM"
    )
    assert zstack_date(datetime(2017, 1, 4, 0, 5, 7).astimezone()) == "Jan 4, 2017 12:05:07 AM"


def _reference(moment: datetime) -> str:
    """The format spelled out through datetime.astimezone (the seed's way)."""
    local = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone()
    return (
        local.strftime("%b ")
        + f"{local.day}, {local.year} "
        + local.strftime("%I:%M:%S %p").lstrip("0")
    )


@pytest.fixture
def zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Sets the process's zone (TZ + time.tzset()); the original one comes back."""

    def set_zone(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


def test_dates_follow_a_zone_changed_by_tzset(zone: Callable[[str], None]) -> None:
    moment = datetime(2024, 7, 1, 12, 0, 0)  # UTC wall time, as the store keeps it
    zone("UTC")
    assert zstack_date(moment) == "Jul 1, 2024 12:00:00 PM"
    zone("Asia/Tokyo")  # the cached text of the same instant must not be reused
    assert zstack_date(moment) == "Jul 1, 2024 9:00:00 PM"
    zone("America/New_York")
    assert zstack_date(moment) == "Jul 1, 2024 8:00:00 AM"
    assert zstack_date(moment.replace(tzinfo=UTC)) == "Jul 1, 2024 8:00:00 AM"


def test_dates_match_the_reference_across_dst_and_zones(zone: Callable[[str], None]) -> None:
    # Every 37 minutes over both of 2024's Berlin DST changes, fractions of a second and
    # aware times of other offsets included, in three zones one after the other.
    start = datetime(2024, 3, 30, 0, 0, 0, 999_999)
    moments = [start + timedelta(minutes=37 * i) for i in range(200)]
    moments += [datetime(2024, 10, 26, 23, 30, tzinfo=timezone(timedelta(hours=5, minutes=30)))]
    moments += [datetime(1969, 12, 31, 23, 59, 59, 500_000), datetime(2038, 1, 19, 3, 14, 8)]
    for name in ("Europe/Berlin", "UTC", "Australia/Lord_Howe"):
        zone(name)
        for moment in moments:
            assert zstack_date(moment) == _reference(moment), (name, moment)


def test_a_date_memo_answers_as_zstack_date() -> None:
    date = date_memo()
    moments = [datetime(2025, 1, 1, h, 30) for h in range(24)] * 2
    assert [date(m) for m in moments] == [zstack_date(m) for m in moments]
