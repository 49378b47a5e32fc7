from __future__ import annotations

from datetime import datetime

from snapgroup.domain.inventory import zstack_date


def test_dates_use_the_seed_format() -> None:
    assert (
        zstack_date(datetime(2017, 11, 14, 22, 20, 57).astimezone()) == "Nov 14, 2017 10:20:57 PM"
    )
    assert zstack_date(datetime(2017, 1, 4, 0, 5, 7).astimezone()) == "Jan 4, 2017 12:05:07 AM"
