"""bench/timing.py: the order of a round rotates, samples stay paired, ratios and stats
are computed round by round (no timing is asserted)."""

from __future__ import annotations

from bench.timing import Row, Stats, Target, compare, ratios, rounds


def test_rounds_rotate_the_order_and_keep_samples_paired() -> None:
    calls: list[str] = []
    before: list[int] = []

    def side(name: str, value: float) -> float:
        calls.append(name)
        return value + len(calls)

    samples = rounds(
        3,
        {
            "a": lambda: side("a", 0.0),
            "b": lambda: {"x": side("b", 100.0), "y": 7.0},
            "c": lambda: side("c", 200.0),
        },
        warmup=1,
        before=lambda: before.append(len(calls)),
    )
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert before == [0, 3, 6, 9]
    assert samples == {  # the warm-up round is dropped
        "b.x": [104.0, 109.0, 111.0],
        "b.y": [7.0, 7.0, 7.0],
        "c": [205.0, 207.0, 212.0],
        "a": [6.0, 8.0, 10.0],
    }


def test_ratios_stats_and_targets() -> None:
    assert ratios([2.0, 3.0], [4.0, 3.0]) == [0.5, 1.0]
    stats = Stats.of([3.0, 1.0, 2.0, 10.0])
    assert (stats.median, stats.min, stats.max, stats.n) == (2.5, 1.0, 10.0, 4)
    row = compare(
        "b", "c", {"us": [0.1, 0.2, 0.3], "them": [0.2, 0.2, 0.2]}, "us", "them",
        target=Target("<=", 0.6),
    )  # fmt: skip
    assert row.ratio is not None and row.ratio.median == 1.0 and row.met is False
    assert row.ours.median == 200.0 and row.unit == "ms"
    absolute = Row("m", "get", "ms", Stats.of([4.0, 6.0, 3.0]), target=Target("<=", 5, "ours"))
    assert absolute.met is True
    assert absolute.to_json()["target"] == "<= 5" and str(Target(">=", 0.9)) == ">= 0.9x"
