"""`snapgroup serve` and `snapgroup account`: the listen address, loopback unless told
otherwise, and accounts made from the command line."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from snapgroup.cli.context import Context
from snapgroup.cli.main import main
from snapgroup.cli.serve import is_loopback, parse_listen
from snapgroup.domain.errors import InvalidArgument, InvalidSession
from snapgroup.rest.auth import Accounts, sha512_hex
from snapgroup.store.db import Database
from tests.rest.conftest import Clock, fake_engine

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def db(fast_dir: Path) -> Iterator[Database]:
    store = Database(f"sqlite:///{fast_dir / 'cli.db'}")
    yield store
    store.dispose()


@pytest.fixture
def cli(db: Database, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """Runs the CLI on the fakes and `db`: (exit status, stdout, stderr)."""
    engine, _, _ = fake_engine(db, Clock())

    def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))

        def context(args: Any) -> Context:
            return Context(make_engine=lambda: engine, as_json=args.json)

        code = main(list(argv), out=out, err=err, context_factory=context)
        return code, out.getvalue(), err.getvalue()

    return run


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:9000", ("::1", 9000)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_listen_addresses(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["8080", ":8080", "host:", "host:http", "h:0", "h:65536"])
def test_bad_listen_addresses(listen: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_listen(listen)


def test_loopback() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.9.9.9", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "example.org"]))


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "[::]:8080", "192.0.2.1:8080", "h:8080"])
def test_serve_refuses_a_non_loopback_address_unless_told(cli: Cli, listen: str) -> None:
    code, out, _ = cli("--json", "serve", "--listen", listen)
    assert code == 1
    error = json.loads(out)["error"]
    assert error["code"] == "SYS.1007" and "--allow-remote" in error["details"]


def test_account_set_password_list_delete(cli: Cli, db: Database) -> None:
    code, out, _ = cli("account", "set-password", "ops", "--password-stdin", stdin="pw\n")
    assert (code, out) == (0, "account ops: created\n")
    session = Accounts(db).login("ops", sha512_hex("pw"))
    code, out, _ = cli("account", "set-password", "ops", "--password-stdin", stdin="new\n")
    assert (code, out) == (0, "account ops: password changed; its sessions ended\n")
    with pytest.raises(InvalidSession):
        Accounts(db).validate(session.uuid)
    assert cli("account", "list") == (0, "admin\nops\n", "")
    code, out, _ = cli("--json", "account", "list")
    assert json.loads(out) == {"inventories": [{"name": "admin"}, {"name": "ops"}]}
    assert cli("account", "delete", "ops")[:2] == (0, "account ops: deleted\n")
    code, _, err = cli("account", "delete", "ops")
    assert code == 1 and "SYS.1003" in err


def test_an_empty_password_is_refused(cli: Cli) -> None:
    code, _, err = cli("account", "set-password", "ops", "--password-stdin", stdin="\n")
    assert code == 1 and "SYS.1007" in err
