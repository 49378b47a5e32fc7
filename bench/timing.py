"""The shared timing helper: rounds of paired measurements, median/min/max, ratios.

The machine is shared and noisy, so absolute times alone mean little: every comparison
is a ratio taken round by round (ours and the baseline measured back to back, their
order rotated each round so neither always runs first), and summarised like any figure.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stats:
    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        if not values:
            raise ValueError("no values")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def scaled(self, factor: float) -> Stats:
        return Stats(self.median * factor, self.min * factor, self.max * factor, self.n)

    def to_json(self) -> dict[str, float | int]:
        return {"median": self.median, "min": self.min, "max": self.max, "n": self.n}


class Stopwatch:
    """`with clock() as sw: ...` then sw.seconds."""

    def __init__(self) -> None:
        self.seconds = 0.0


@contextmanager
def clock() -> Iterator[Stopwatch]:
    sw = Stopwatch()
    start = time.perf_counter()
    try:
        yield sw
    finally:
        sw.seconds = time.perf_counter() - start


def timed(fn: Callable[[], Any]) -> float:
    """Seconds `fn` took."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# One side of a comparison: runs once, returns the seconds of the part that counts (its
# own untimed set-up and clean-up stay outside that figure), or several named figures.
Side = Callable[[], float | Mapping[str, float]]


def rounds(
    runs: int,
    sides: Mapping[str, Side],
    *,
    warmup: int = 1,
    before: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Run every side once per round, `runs` rounds, rotating the order each round
    (A B C, B C A, C A B, ...); `before` (untimed) starts each round, e.g. to lay out
    the files both sides work on. Returns each figure's samples in round order, so that
    sample i of two sides were taken back to back: a side's float is filed under its
    name, a mapping's figures under "name.key". `warmup` rounds are run and dropped."""
    names = list(sides)
    samples: dict[str, list[float]] = {}
    for i in range(warmup + runs):
        if before is not None:
            before()
        k = i % len(names)
        for name in names[k:] + names[:k]:
            value = sides[name]()
            if i < warmup:
                continue
            figures = value.items() if isinstance(value, Mapping) else [("", value)]
            for key, seconds in figures:
                samples.setdefault(f"{name}.{key}" if key else name, []).append(seconds)
    return samples


def ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """Round-by-round ratios num[i] / den[i]."""
    if len(num) != len(den):
        raise ValueError("ratios need paired samples")
    return [a / b for a, b in zip(num, den, strict=True)]


@dataclass(frozen=True)
class Target:
    """`value` compared with `op` ('<=' or '>=') against the ratio's median (or, when
    `on` is 'ours', against our own median in the row's unit)."""

    op: str
    value: float
    on: str = "ratio"

    def met(self, figure: float) -> bool:
        return figure <= self.value if self.op == "<=" else figure >= self.value

    def __str__(self) -> str:
        what = "x" if self.on == "ratio" else ""
        return f"{self.op} {self.value:g}{what}"


@dataclass
class Row:
    """One line of the table: our figure, the baseline's and the paired ratio."""

    bench: str
    case: str
    unit: str  # the unit of ours/baseline: "ms", "s", "MiB/s", "MiB"
    ours: Stats
    ours_label: str = "snapgroup"
    baseline: Stats | None = None
    baseline_label: str = ""
    ratio: Stats | None = None  # ours / baseline, round by round
    target: Target | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        if self.target.on == "ratio":
            return None if self.ratio is None else self.target.met(self.ratio.median)
        return self.target.met(self.ours.median)

    def to_json(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "case": self.case,
            "unit": self.unit,
            "ours": {"label": self.ours_label, **self.ours.to_json()},
            "baseline": (
                None
                if self.baseline is None
                else {"label": self.baseline_label, **self.baseline.to_json()}
            ),
            "ratio": None if self.ratio is None else self.ratio.to_json(),
            "target": None if self.target is None else str(self.target),
            "met": self.met,
            "note": self.note,
            **({"extra": self.extra} if self.extra else {}),
        }


def ms(samples: Sequence[float]) -> Stats:
    """Seconds in, milliseconds out."""
    return Stats.of(samples).scaled(1000.0)


def compare(
    bench: str,
    case: str,
    samples: Mapping[str, Sequence[float]],
    ours: str,
    baseline: str,
    *,
    unit: str = "ms",
    target: Target | None = None,
    note: str = "",
    to_unit: Callable[[Sequence[float]], Stats] = ms,
) -> Row:
    """A row comparing two sides of `rounds()` output (ratio = ours / baseline)."""
    return Row(
        bench=bench,
        case=case,
        unit=unit,
        ours=to_unit(samples[ours]),
        ours_label=ours,
        baseline=to_unit(samples[baseline]),
        baseline_label=baseline,
        ratio=Stats.of(ratios(samples[ours], samples[baseline])),
        target=target,
        note=note,
    )
