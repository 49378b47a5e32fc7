"""The command line's usage: global options on either side of the command, usage errors
as the seed's error document under --json, and a reader that goes away (`| head`).
Through the daemon: tests/unit/test_command_server.py."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from snapgroup.api import Engine
from snapgroup.cli.context import Context
from snapgroup.cli.main import build_parser, main
from snapgroup.store.db import Database
from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool, lab_domain
from tests.unit.conftest import Lab

G = "e" * 32


def usage_document(details: str) -> str:
    error = {
        "code": "SYS.1007",
        "description": "invalid argument",
        "details": details,
        "elaboration": None,
        "opaque": None,
        "cause": None,
    }
    return json.dumps({"error": error}, indent=2) + "\n"


def cli(lab: Lab, *argv: str, seen: list[argparse.Namespace] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def context(args: argparse.Namespace) -> Context:
        if seen is not None:
            seen.append(args)
        return Context(make_engine=lambda: lab.engine, as_json=args.json)

    code = main(list(argv), out=out, err=err, context_factory=context)
    return code, out.getvalue(), err.getvalue()


MODE = "argument --mode: invalid choice: 'banana' (choose from 'Permissive', 'Enforcing')"
WAIT = "argument --wait: invalid float value: 'banana'"


@pytest.mark.parametrize(
    ("argv", "details"),
    [
        (("--json", "delete", G, "--mode", "banana"), MODE),
        (("delete", G, "--mode", "banana", "--json"), MODE),
        (("--json", "--wait", "banana", "delete", G), WAIT),
        (("delete", G, "--json", "--wait", "banana"), WAIT),
        (("--wait", "banana", "delete", G, "--json"), WAIT),
        (("--json",), "the following arguments are required: COMMAND"),
        (("--json", "list", "--bogus"), "unrecognized arguments: --bogus"),
        (("--json", "show"), "the following arguments are required: GROUP_UUID"),
        (("--json", "account", "list", "extra"), "unrecognized arguments: extra"),
    ],
)
def test_a_usage_error_under_json_is_the_error_document_with_status_2(
    lab: Lab, argv: tuple[str, ...], details: str
) -> None:
    assert cli(lab, *argv) == (2, usage_document(details), "")


@pytest.mark.parametrize(
    ("argv", "expected_err"),
    [
        (
            ("delete", G, "--mode", "banana"),
            f"snapgroup delete: error: {MODE}\n",
        ),
        (
            ("delete", G, "--wait", "banana"),  # the option after the command, its own error
            f"snapgroup delete: error: {WAIT}\n",
        ),
        (("--wait", "banana", "delete", G), f"snapgroup: error: {WAIT}\n"),
    ],
)
def test_without_json_a_usage_error_is_argparses(
    lab: Lab, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], expected_err: str
) -> None:
    with pytest.raises(SystemExit) as stop:
        cli(lab, *argv)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: snapgroup")
    assert captured.err.endswith(expected_err)


def test_help_is_still_help_and_lists_the_global_options(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (("--json", "delete", "--help"), ("delete", "--json", "--help")):
        with pytest.raises(SystemExit) as stop:
            cli(lab, *argv)
        assert stop.value.code == 0
        captured = capsys.readouterr()
        assert captured.out.startswith("usage: snapgroup delete")
        for option in ("--json", "--wait SECONDS", "--db URL", "--connect URI", "--verbose"):
            assert option in captured.out
        assert captured.err == ""


GLOBALS = ("--connect", "test:///x", "--db", "sqlite:////tmp/x.db", "--wait", "30", "--json", "-v")


def _globals(args: argparse.Namespace) -> tuple[Any, ...]:
    return (args.connect, args.db, args.wait, args.json, args.verbose)


@pytest.mark.parametrize(
    "command",
    [
        ("list",),
        ("delete", G, "--mode", "Enforcing"),
        ("show", G),
        ("snapshots", "--vm", "vm1"),
        ("account", "list"),
    ],
)
def test_global_options_mean_the_same_before_or_after_the_command(
    command: tuple[str, ...],
) -> None:
    parser = build_parser()
    before = parser.parse_args([*GLOBALS, *command])
    after = parser.parse_args([*command, *GLOBALS])
    split = parser.parse_args([*GLOBALS[:4], *command, *GLOBALS[4:]])
    assert vars(before) == vars(after) == vars(split)
    assert _globals(after) == ("test:///x", "sqlite:////tmp/x.db", 30.0, True, True)
    # Given before the command only, the command's parser does not reset them.
    assert _globals(parser.parse_args(["--wait", "5", *command])) == (None, None, 5.0, False, False)
    assert _globals(parser.parse_args(list(command))) == (None, None, 0.0, False, False)
    # Given on both sides, the later one counts.
    assert parser.parse_args(["--wait", "5", *command, "--wait", "3"]).wait == 3.0


def test_json_and_wait_after_the_command_run_as_before_it(lab: Lab) -> None:
    lab_domain(lab.hv)
    code, out, _ = cli(lab, "create", "--vm", "vm1", "--name", "g1", "--json")
    assert code == 0
    group = json.loads(out)["inventory"]["uuid"]
    for before, after in (
        (("--json", "list"), ("list", "--json")),
        (("--json", "show", group), ("show", group, "--json")),
        (("--json", "snapshots", "--vm", "vm1"), ("snapshots", "--vm", "vm1", "--json")),
    ):
        result = cli(lab, *after)
        assert result[0] == 0 and json.loads(result[1])
        assert result == cli(lab, *before)
    seen: list[argparse.Namespace] = []
    code, out, err = cli(lab, "delete", group, "--wait", "30", "--json", seen=seen)
    assert (code, err) == (0, "")
    assert [r["success"] for r in json.loads(out)["results"]] == [True] * 3
    assert [(a.wait, a.json) for a in seen] == [(30.0, True)]


# A reader that goes away: no traceback, killed by SIGPIPE as coreutils are (141 in a shell).

PYTHON = [sys.executable, "-m", "snapgroup"]


def _run_into_closed_pipe(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """argv with stdout a pipe whose reader has gone before the first write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            argv, stdout=write_end, stderr=subprocess.PIPE, text=True, env=env, timeout=120
        )
    finally:
        os.close(write_end)


@pytest.fixture(scope="module")
def store_of_60_groups(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store whose `--json list` is ~150 KB, more than a pipe holds (64 KB)."""
    directory = tmp_path_factory.mktemp("store")
    url = f"sqlite:///{directory / 'store.db'}"
    db = Database(url)
    images = FakeImageTool()
    hv = FakeHypervisor(images)
    lab_domain(hv)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SNAPGROUP_LOCK_DIR", str(directory / "locks"))
        engine = Engine(hypervisor=hv, images=images, db=db)
        for i in range(60):
            engine.create(vm="vm1", name=f"g{i}")
    db.dispose()
    return url


@pytest.mark.parametrize(
    "command",
    [
        ["--json", "snapshots", "--vm", "test"],  # a small document
        ["list", "--json"],  # ~150 KB: fails while writing
        ["--json", "show", "f" * 32],  # the error document
        ["--json", "delete", G, "--mode", "banana"],  # the usage error document
    ],
)
def test_a_reader_gone_early_ends_the_command_quietly(
    store_of_60_groups: str, command: list[str]
) -> None:
    db = store_of_60_groups
    env = {**os.environ, "SNAPGROUP_NO_DAEMON": "1"}
    argv = [*PYTHON, "--connect", "test:///default", "--db", db, *command]
    # The pipe still open: the command has something to say.
    shown = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert shown.stdout.startswith("{") and shown.stderr == ""
    closed = _run_into_closed_pipe(argv, env)
    assert (closed.returncode, closed.stderr) == (-signal.SIGPIPE, "")


def test_head_reads_the_first_bytes_and_the_shell_sees_141(
    store_of_60_groups: str, tmp_path: Path
) -> None:
    db = store_of_60_groups
    env = {**os.environ, "SNAPGROUP_NO_DAEMON": "1"}
    argv = [*PYTHON, "--connect", "test:///default", "--db", db, "--json", "list"]
    # A ~150 KB document into `head -c 10`: head exits after ten bytes, mid-document.
    script = '"$@" 2>"$ERR" | head -c 10; echo " ${PIPESTATUS[0]}"'
    shell = subprocess.run(
        ["bash", "-c", script, "bash", *argv],
        capture_output=True,
        text=True,
        env={**env, "ERR": str(tmp_path / "stderr")},
        timeout=120,
    )
    assert shell.stdout == '{\n  "inven 141\n'
    assert (tmp_path / "stderr").read_text() == ""
