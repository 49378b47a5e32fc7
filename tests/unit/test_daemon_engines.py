"""The daemon's engines (cli/daemon.py shared_engines): one per --wait, kept across the
commands it serves, so that what an engine remembers is not redone by each command."""

from __future__ import annotations

from pathlib import Path

from pytest_mock import MockerFixture

from snapgroup.api import Engine
from snapgroup.cli.daemon import MAX_ENGINES, shared_engines
from snapgroup.ops import host_lease
from snapgroup.store.db import Database
from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool


def _base(tmp_path: Path) -> Engine:
    images = FakeImageTool()
    db = Database(f"sqlite:///{tmp_path / 'store.db'}")
    return Engine(
        hypervisor=FakeHypervisor(images), images=images, db=db, freeze_timeout=7, host="h1"
    )


def test_one_engine_per_wait_on_the_daemons_ports(tmp_path: Path) -> None:
    base = _base(tmp_path)
    engine_for = shared_engines(base)
    assert engine_for(0.0) is base
    five = engine_for(5.0)
    assert five is engine_for(5.0) and five is not base
    assert (five.lock_wait, five.freeze_timeout, five.host) == (5.0, 7, "h1")
    assert (five.hv, five.images, five.db) == (base.hv, base.images, base.db)
    for wait in range(1, 2 * MAX_ENGINES):  # past the bound: made for the command alone
        assert engine_for(float(wait)).lock_wait == float(wait)


def test_the_lease_is_not_read_again_by_every_command(
    tmp_path: Path, mocker: MockerFixture
) -> None:
    """Each command starts with recover(), which renews this host's lease when a third of
    it has passed: a second command served soon after reads nothing for it."""
    renew = mocker.patch.object(host_lease, "renew", autospec=True, wraps=host_lease.renew)
    engine_for = shared_engines(_base(tmp_path))
    engine_for(0.0).recover()
    engine_for(0.0).recover()
    engine_for(2.0).recover()
    engine_for(2.0).recover()
    assert renew.call_count == 2  # once for each engine


def test_a_json_document_reaches_the_stream_in_one_write() -> None:
    """print_json: the text json.dump would write, in one write (a daemon's client stream
    pays a call per write: ~1,000 for a 16-disk group's document before)."""
    import io
    import json

    from snapgroup.cli.output import print_json

    class Counting(io.StringIO):
        writes = 0

        def write(self, s: str) -> int:
            self.writes += 1
            return super().write(s)

    document = {"inventory": {"name": "g\u00e9", "refs": [{"i": i, "x": None} for i in range(16)]}}
    out = Counting()
    print_json(document, out)
    expected = io.StringIO()
    json.dump(document, expected, indent=2, ensure_ascii=False)
    assert out.getvalue() == expected.getvalue() + "\n"
    assert out.writes == 1
