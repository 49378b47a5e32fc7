"""Snapshot-policy retention (snapgroup.domain.retention) on a fake clock.

The year-long simulation checks the module against a reference written differently:
buckets from calendar fields (date, hour, ISO week, month) instead of epoch arithmetic,
and the kept set from the whole history of groups ever taken (never pruned) instead of
from what is left, so a prune that drifted from the keep counts would show."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from snapgroup.domain.errors import InvalidArgument
from snapgroup.domain.retention import (
    CRIT,
    OK,
    WARN,
    AutoGroup,
    Policy,
    Retention,
    SlotKind,
    Take,
    combined_counts,
    group_name,
    period_length,
    period_start,
    plan_prune,
    plan_take,
    slot_status,
    validate_policy,
    vm_status,
)

BERLIN = ZoneInfo("Europe/Berlin")
F15, F30 = SlotKind("frequent", 15), SlotKind("frequent", 30)
H, D, W, M = SlotKind("hourly"), SlotKind("daily"), SlotKind("weekly"), SlotKind("monthly")


@pytest.fixture
def berlin_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The host's local zone has DST; UTC logic must not notice."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    assert time.localtime(datetime(2026, 7, 1, tzinfo=UTC).timestamp()).tm_isdst == 1
    yield
    monkeypatch.undo()
    time.tzset()


def _ref_key(kind: SlotKind, t: datetime) -> tuple[int, ...]:
    u = t.astimezone(UTC) if t.tzinfo else t  # naive: UTC, as the store gives it
    if kind.label == "frequent":
        return (u.year, u.month, u.day, u.hour, u.minute // kind.every)
    if kind.label == "hourly":
        return (u.year, u.month, u.day, u.hour)
    if kind.label == "daily":
        return (u.year, u.month, u.day)
    if kind.label == "weekly":
        iso = u.isocalendar()
        return (iso.year, iso.week)
    return (u.year, u.month)


A = Policy("a", Retention(frequent=4, hourly=24, daily=7, weekly=4, monthly=12, every=15))
B = Policy("b", Retention(frequent=3, hourly=6, daily=30, every=30), vms=("vm1", "vm9"))
C = Policy("c", Retention(monthly=3), exclude=("vm2",))
COUNTS = {F15: 4, F30: 3, H: 24, D: 30, W: 4, M: 12}  # by hand: the largest of each


@dataclass
class Sim:
    """A VM's groups as the store would hold them (naive UTC times, as SQLite gives)."""

    groups: dict[str, AutoGroup] = field(default_factory=dict)
    history: list[AutoGroup] = field(default_factory=list)  # policy-made, never pruned
    taken_slots: dict[SlotKind, set[tuple[int, ...]]] = field(default_factory=dict)
    # per kind: the buckets ever filled, oldest first, and each one's first group
    buckets: dict[SlotKind, list[tuple[int, ...]]] = field(default_factory=dict)
    firsts: dict[SlotKind, dict[tuple[int, ...], str]] = field(default_factory=dict)
    newest: datetime | None = None
    seq: int = 0

    def add(self, when: datetime, policies: frozenset[str] = frozenset()) -> AutoGroup:
        self.seq += 1
        g = AutoGroup(f"{self.seq:08d}", when.astimezone(UTC).replace(tzinfo=None), policies)
        self.groups[g.uuid] = g
        return g


def _tick(sim: Sim, now: datetime) -> Take | None:
    policies = [A, B, C]
    # a reference for due-ness: a slot is due when now's calendar bucket is past the
    # newest policy group's (never when the clock went back behind it)
    expected_due = sorted(
        (k for k in COUNTS if sim.newest is None or _ref_key(k, now) > _ref_key(k, sim.newest)),
        key=str,
    )
    take = plan_take(now, policies, list(sim.groups.values()))
    assert sorted(take.slots if take else (), key=str) == expected_due, now
    if take is not None:
        assert take.name == group_name(take.label, now)
        assert take.policies == tuple(
            p.name for p in policies if set(p.retention.counts) & set(take.slots)
        )
        g = sim.add(now, frozenset(take.policies))
        sim.history.append(g)
        for kind in COUNTS:
            key, seen = _ref_key(kind, now), sim.buckets.setdefault(kind, [])
            if key not in sim.firsts.setdefault(kind, {}):
                assert not seen or key > seen[-1]  # groups are taken in time order
                seen.append(key)
                sim.firsts[kind][key] = g.uuid
        sim.newest = now
        for kind in take.slots:
            taken = sim.taken_slots.setdefault(kind, set())
            key = _ref_key(kind, now)
            assert key not in taken, f"{kind} slot {key} taken twice"
            taken.add(key)
    for g in plan_prune(policies, list(sim.groups.values())):
        assert g.policies and not g.protected and not g.pinned
        del sim.groups[g.uuid]
    return take


def _expected_kept(sim: Sim, others: set[str]) -> set[str]:
    """From the whole history: per kind the first group of each of the newest N buckets;
    plus whatever may never be pruned."""
    keep = set(others)
    for kind, n in COUNTS.items():
        keep.update(sim.firsts[kind][key] for key in sim.buckets.get(kind, [])[-n:])
    return keep


def test_a_year_of_ticks(berlin_host: None) -> None:
    sim = Sim()
    # groups no covering policy made: by hand, and by a policy since removed
    start = datetime(2026, 1, 1, 0, 0, 7, tzinfo=UTC)
    never_pruned = {
        sim.add(start - timedelta(days=3)).uuid,
        sim.add(start - timedelta(days=2), frozenset({"removed"})).uuid,
    }
    down = (datetime(2026, 6, 10, 5, 0, tzinfo=UTC), datetime(2026, 6, 13, 5, 0, tzinfo=UTC))
    # Berlin falls back at 01:00 UTC on 25 Oct; the host's clock also steps back an hour
    step_back_at = datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    t, ticks, created, stepped, caught_up = start, 0, 0, False, None
    replay_takes = 0
    end = start + timedelta(days=365)
    while t < end:
        if down[0] <= t < down[1]:
            t += timedelta(minutes=15)
            continue
        # the clock is sometimes handed over in the host's zone: the same instant
        take = _tick(sim, t.astimezone(BERLIN) if ticks % 3 == 0 else t)
        ticks += 1
        created += take is not None
        if caught_up is None and t >= down[1]:
            caught_up = take
            assert _tick(sim, t + timedelta(seconds=30)) is None  # a second pass: nothing
        if stepped and t < step_back_at:
            replay_takes += take is not None
        if ticks % 2999 == 0 and take is not None:  # a person protects this one
            g = sim.groups[f"{sim.seq:08d}"]
            sim.groups[g.uuid] = replace(g, protected=True)
            never_pruned.add(g.uuid)
        if ticks % 4001 == 0 and take is not None:  # a clone reads this one
            g = sim.groups[f"{sim.seq:08d}"]
            sim.groups[g.uuid] = replace(g, pinned=True)
            never_pruned.add(g.uuid)
        if ticks % 1999 == 0:
            never_pruned.add(sim.add(t + timedelta(minutes=3)).uuid)  # by hand
        assert set(sim.groups) == _expected_kept(sim, never_pruned), t
        if not stepped and t >= step_back_at:
            stepped, t = True, t - timedelta(hours=1)
        t += timedelta(minutes=15)

    assert stepped and replay_takes == 0  # the replayed hour took nothing
    assert ticks > 34_000 and created == len(sim.history)
    # catch-up after 3 days down: one group filling every slot kind
    assert caught_up is not None and set(caught_up.slots) == {F15, F30, H, D}
    assert caught_up.label == "daily" and caught_up.name == "auto-daily-2026-06-13T05:00Z"
    # every hourly bucket the host was up for was taken exactly once
    up_hours = 365 * 24 - 3 * 24
    assert len(sim.taken_slots[H]) == up_hours
    assert len(sim.taken_slots[M]) == 12
    # what is left: the keep counts plus what may never be pruned
    policy_left = [g for g in sim.groups.values() if g.uuid not in never_pruned]
    assert len(policy_left) <= sum(COUNTS.values())


def test_catch_up_after_downtime_takes_one_group() -> None:
    p = Policy("p", Retention(frequent=4, hourly=24, daily=7, weekly=4, monthly=12))
    last = AutoGroup("g1", datetime(2026, 11, 27, 23, 45, tzinfo=UTC), frozenset({"p"}))
    now = datetime(2026, 12, 1, 14, 3, tzinfo=UTC)  # three days down, a new week and month
    take = plan_take(now, [p], [last])
    assert take is not None
    assert take.slots == (F15, H, D, W, M)
    assert take.name == "auto-monthly-2026-12-01T14:03Z" and take.policies == ("p",)
    new = AutoGroup("g2", now, frozenset({"p"}))
    assert plan_take(now + timedelta(minutes=10), [p], [last, new]) is None
    assert plan_take(now + timedelta(minutes=12), [p], [last, new]) == Take(
        (F15,), "frequent", "auto-frequent-2026-12-01T14:15Z", ("p",)
    )


def test_boundaries_are_utc_whatever_the_host_zone(berlin_host: None) -> None:
    t = datetime(2026, 3, 29, 3, 30, tzinfo=BERLIN)  # just after Berlin's spring-forward
    assert t.utcoffset() == timedelta(hours=2)
    assert period_start(H, t) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert period_start(D, t) == datetime(2026, 3, 29, tzinfo=UTC)
    assert period_start(W, t) == datetime(2026, 3, 23, tzinfo=UTC)  # a Monday
    assert period_start(M, t) == datetime(2026, 3, 1, tzinfo=UTC)
    assert period_start(F15, datetime(2026, 3, 29, 1, 29)) == datetime(
        2026, 3, 29, 1, 15, tzinfo=UTC
    )
    assert group_name("hourly", t) == "auto-hourly-2026-03-29T01:30Z"
    assert period_length(M, datetime(2026, 2, 10, tzinfo=UTC)) == timedelta(days=28)
    assert period_length(M, datetime(2026, 12, 10, tzinfo=UTC)) == timedelta(days=31)
    assert period_length(W, t) == timedelta(days=7)
    # a naive time is UTC: the newest group at 00:30 naive is in today's daily bucket
    p = Policy("p", Retention(daily=2))
    g = AutoGroup("g", datetime(2026, 3, 29, 0, 30), frozenset({"p"}))
    assert plan_take(datetime(2026, 3, 29, 23, 50, tzinfo=UTC), [p], [g]) is None
    assert plan_take(datetime(2026, 3, 30, 0, 5, tzinfo=UTC), [p], [g]) is not None


def test_prune_spares_hand_made_protected_pinned_and_other_policies() -> None:
    p = Policy("p", Retention(hourly=2))
    base = datetime(2026, 12, 1, tzinfo=UTC)

    def g(uuid: str, hour: int, marks: set[str], **kw: bool) -> AutoGroup:
        return AutoGroup(uuid, base + timedelta(hours=hour), frozenset(marks), **kw)

    groups = [
        g("hand", 0, set()),
        g("prot", 1, {"p"}, protected=True),
        g("pin", 2, {"p"}, pinned=True),
        g("gone", 3, {"removed"}),
        g("old", 4, {"p"}),
        g("both", 5, {"p", "removed"}),
        g("h6", 6, {"p"}),
        g("h6b", 6, {"p"}),  # same hour: not the bucket's first
        g("h7", 7, {"p"}),
    ]
    doomed = [x.uuid for x in plan_prune([p], groups)]
    assert doomed == ["old", "both", "h6b"]
    # the VM under no policy: nothing is anyone's to prune
    assert plan_prune([], groups) == []


def test_several_policies_combine_by_the_largest_count() -> None:
    assert combined_counts([A.retention, B.retention, C.retention]) == COUNTS
    # hourly groups of one policy fill the other's daily slots
    hourly = Policy("h", Retention(hourly=1))
    daily = Policy("d", Retention(daily=3))
    base = datetime(2026, 12, 1, tzinfo=UTC)
    groups = [
        AutoGroup(f"{d}-{h}", base + timedelta(days=d, hours=h), frozenset({"h"}))
        for d in range(5)
        for h in (0, 12)
    ]
    left = {g.uuid for g in groups} - {g.uuid for g in plan_prune([hourly, daily], groups)}
    assert left == {"2-0", "3-0", "4-0", "4-12"}


def test_take_marks_only_the_policies_whose_slots_it_fills() -> None:
    hourly = Policy("h", Retention(hourly=1))
    daily = Policy("d", Retention(daily=3))
    g = AutoGroup("g", datetime(2026, 12, 1, 0, 0, tzinfo=UTC), frozenset({"d", "h"}))
    take = plan_take(datetime(2026, 12, 1, 1, 0, tzinfo=UTC), [hourly, daily], [g])
    assert take is not None and take.policies == ("h",) and take.label == "hourly"
    take = plan_take(datetime(2026, 12, 2, 0, 0, tzinfo=UTC), [hourly, daily], [g])
    assert take is not None and take.policies == ("d", "h") and take.label == "daily"


def test_policy_covers() -> None:
    assert A.covers("u1", "vm1") and A.covers("u2", "vm2")
    assert B.covers("u1", "vm1") and not B.covers("u2", "vm2") and B.covers("vm9", "x")
    assert C.covers("u1", "vm1") and not C.covers("u2", "vm2")


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (Policy("bad name", Retention(hourly=1)), "policy name 'bad name'"),
        (Policy("p", Retention()), "keeps nothing"),
        (Policy("p", Retention(hourly=-1)), "--hourly must be >= 0"),
        (Policy("p", Retention(frequent=2, every=7)), "--every 7"),
        (Policy("p", Retention(hourly=1), consistency="best"), "consistency 'best'"),
        (Policy("p", Retention(hourly=1), min_free_percent=100), "--min-free-percent 100"),
        (Policy("p", Retention(hourly=1), vms=("a",), exclude=("b",)), "--exclude goes with"),
        (Policy("p", Retention(hourly=1), vms=()), "at least one VM"),
    ],
)
def test_bad_policies_are_refused(policy: Policy, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as info:
        validate_policy(policy)
    assert info.value.code == "SYS.1007"


def test_good_policies_pass() -> None:
    for p in (A, B, C, Policy("x.y_z-1", Retention(frequent=1, every=1440))):
        validate_policy(p)


def test_status_goes_warn_then_crit() -> None:
    g = AutoGroup("g", datetime(2026, 12, 1, 14, 0, tzinfo=UTC), frozenset({"p"}))
    at = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
    assert slot_status(at + timedelta(minutes=89), H, [g]).state == OK
    assert slot_status(at + timedelta(minutes=91), H, [g]).state == WARN
    s = slot_status(at + timedelta(minutes=121), H, [g])
    assert (s.state, s.exit_code, s.age) == (CRIT, 2, timedelta(minutes=121))
    assert slot_status(at, D, []).state == CRIT
    # the clock went back: a group from the future holds every slot until it passes
    assert slot_status(at - timedelta(minutes=59), H, [g]).state == OK
    ahead = slot_status(at - timedelta(minutes=61), H, [g])
    assert ahead.state == WARN and ahead.age == -timedelta(minutes=61)


def test_vm_status_per_slot_kind() -> None:
    at = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
    groups = [
        AutoGroup("p", at - timedelta(minutes=100), frozenset({"b"})),
        AutoGroup("hand", at - timedelta(minutes=1)),  # fills no slot
        AutoGroup("other", at - timedelta(minutes=2), frozenset({"removed"})),
    ]
    states = [(str(s.kind), s.state) for s in vm_status(at, [A, B], groups)]
    assert states == [
        ("frequent/15m", CRIT),
        ("frequent/30m", CRIT),
        ("hourly", WARN),
        ("daily", OK),
        ("weekly", OK),
        ("monthly", OK),
    ]
    assert max(s.exit_code for s in vm_status(at, [A, B], groups)) == 2
    assert [s.state for s in vm_status(at, [C], [])] == [CRIT]
