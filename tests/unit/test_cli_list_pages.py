"""`snapgroup list` pages through the store's query (--limit, --start, a default page),
and says on stderr when more groups remain."""

from __future__ import annotations

import json

from snapgroup.cli.listing import DEFAULT_PAGE
from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Lab
from tests.unit.test_cli import cli


def _names(out: str) -> list[str]:
    return [g["name"] for g in json.loads(out)["inventories"]]


def test_pages_oldest_first_with_a_note_while_more_remain(lab: Lab) -> None:
    lab_domain(lab.hv)
    for n in range(5):
        lab.engine.create(vm="vm1", name=f"g{n}")
    code, out, err = cli(lab, "--json", "list", "--limit", "2")
    assert (code, _names(out)) == (0, ["g0", "g1"])
    assert err == "2 of 5 groups shown (from 0); --start 2 for the next page, --limit for more\n"
    code, out, err = cli(lab, "--json", "list", "--limit", "2", "--start", "4")
    assert (code, _names(out), err) == (0, ["g4"], "")
    code, out, err = cli(lab, "--json", "list", "--vm", "vm1", "--start", "3")
    assert (code, _names(out), err) == (0, ["g3", "g4"], "")
    code, out, err = cli(lab, "list")
    assert code == 0 and len(out.splitlines()) == 6 and err == ""
    code, out, _ = cli(lab, "--json", "list", "--limit", "-1")
    assert code == 1 and json.loads(out)["error"]["code"] == "SYS.1007"


def test_the_default_page(lab: Lab) -> None:
    lab_domain(lab.hv, data_disks=0)
    lab_domain(lab.hv, uuid="b" * 32, name="vm2", data_disks=0)  # one disk each: fast
    for n in range(DEFAULT_PAGE + 1):  # chains stay short of MAX_CHAIN_DEPTH
        lab.engine.create(vm=("vm1", "vm2")[n % 2], name=f"g{n}")
    code, out, err = cli(lab, "--json", "list")
    assert code == 0 and len(_names(out)) == DEFAULT_PAGE
    assert err.startswith(f"{DEFAULT_PAGE} of {DEFAULT_PAGE + 1} groups shown")
