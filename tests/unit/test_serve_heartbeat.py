"""`serve` keeps its host's lease and address in the registry while it runs
(rest/heartbeat.py), and erases the address when it stops."""

from __future__ import annotations

from snapgroup.cli.serve import advertised
from snapgroup.rest.heartbeat import Heartbeat
from tests.unit.conftest import Lab

URL = "http://host-a.example:8080/zstack"


def _address(lab: Lab) -> object:
    (view,) = [v for v in lab.engine.hosts() if v.name == lab.engine.host]
    return view.to_dict()["address"]


def test_a_serving_host_registers_its_address_until_it_stops(lab: Lab) -> None:
    with Heartbeat(lab.engine, URL):
        assert _address(lab) == URL
        lab.engine.recover()  # a command beside the server keeps it
        assert _address(lab) == URL
    assert _address(lab) is None


def test_the_advertised_address() -> None:
    assert advertised("10.0.0.5", 8080, "/zstack") == "http://10.0.0.5:8080/zstack"
    assert advertised("::1", 8080, "zstack/") == "http://[::1]:8080/zstack"
    assert not advertised("0.0.0.0", 80, "/").startswith("http://0.0.0.0")
