"""The `snapgroup` command through a daemon (snapgroup.cli.launch + command_server):
same output and effect as in-process, and a clean decline for whatever it cannot run
exactly as the client would."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapgroup.api import Engine
from snapgroup.cli.command_server import CommandServer, Declined, listen
from snapgroup.cli.context import Context
from snapgroup.cli.launch import forward
from snapgroup.cli.launch import main as launch_main
from snapgroup.cli.main import main
from snapgroup.cli.wire import Frames, encode, relevant_env, request_line
from snapgroup.domain.errors import OperationError
from snapgroup.store.db import Database
from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool, lab_domain

CONNECT = "test:///fake"


class Daemon:
    def __init__(self, directory: Path) -> None:
        self.socket = directory / "cli.sock"
        self.db_url = f"sqlite:///{directory / 'store.db'}"
        self.images = FakeImageTool()
        self.hv = FakeHypervisor(self.images)
        self.db = Database(self.db_url)
        self.waits: list[float] = []
        self.server = CommandServer(
            listen(self.socket), connect=CONNECT, db=self.db_url, engine_for=self.engine_for
        )

    def engine_for(self, wait: float) -> Engine:
        self.waits.append(wait)
        return Engine(hypervisor=self.hv, images=self.images, db=self.db, lock_wait=wait)

    def argv(self, *argv: str) -> list[str]:
        return ["--connect", CONNECT, "--db", self.db_url, *argv]

    def run(self, *argv: str, env: dict[str, str] | None = None) -> tuple[int | None, str, str]:
        """Through the daemon: (status or None if declined, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        environ = dict(os.environ) if env is None else env
        code = forward(self.argv(*argv), out=out, err=err, path=str(self.socket), environ=environ)
        return code, out.getvalue(), err.getvalue()

    def run_here(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()

        def context(args: object) -> Context:
            return Context(make_engine=lambda: self.engine_for(0.0), as_json="--json" in argv)

        code = main(self.argv(*argv), out=out, err=err, context_factory=context)
        return code, out.getvalue(), err.getvalue()

    def groups(self) -> int:
        return len(self.engine_for(0.0).list_groups())


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    directory = Path(tempfile.mkdtemp(prefix="sgd-", dir="/tmp"))  # a socket path is short
    d = Daemon(directory)
    lab_domain(d.hv)
    thread = threading.Thread(target=d.server.serve_forever, daemon=True)
    thread.start()
    yield d
    d.server.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()
    d.db.dispose()
    shutil.rmtree(directory)


def test_a_command_through_the_daemon_prints_what_it_prints_here(daemon: Daemon) -> None:
    code, out, err = daemon.run("--json", "create", "--vm", "vm1", "--name", "g1")
    assert (code, err) == (0, "")
    created = json.loads(out)["inventory"]
    assert created["name"] == "g1" and created["snapshotCount"] == 3
    assert daemon.groups() == 1

    for argv in (("--json", "list"), ("list",), ("show", created["uuid"])):
        assert daemon.run(*argv) == daemon.run_here(*argv)


def test_errors_keep_their_shape_and_status(daemon: Daemon) -> None:
    code, out, _ = daemon.run("--json", "show", "f" * 32)
    assert code == 1
    assert json.loads(out)["error"]["code"] == "SYS.1003"
    assert daemon.run("--json", "show", "f" * 32) == daemon.run_here("--json", "show", "f" * 32)


def test_wait_travels_with_each_command(daemon: Daemon) -> None:
    daemon.run("--wait", "2.5", "list")
    daemon.run("list")
    assert daemon.waits == [2.5, 0.0]


@pytest.mark.parametrize(
    "argv",
    [
        ("list", "--bogus"),  # argparse's own error, on the client's terminal
        ("--help",),
        ("-v", "list"),
        ("account", "list"),
        ("install-units", "--dry-run"),  # --root/--source are the client's cwd's
        ("daemon",),
    ],
)
def test_what_argparse_or_the_terminal_answers_runs_in_the_client(
    daemon: Daemon, argv: tuple[str, ...]
) -> None:
    assert daemon.run(*argv) == (None, "", "")


def test_another_store_or_uri_is_declined_before_anything_runs(daemon: Daemon) -> None:
    out, err = io.StringIO(), io.StringIO()
    for argv in (
        ["--connect", CONNECT, "--db", "sqlite:////elsewhere.db", "create", "--vm", "vm1"],
        ["--connect", "qemu:///system", "--db", daemon.db_url, "create", "--vm", "vm1"],
    ):
        assert forward(argv, out=out, err=err, path=str(daemon.socket), environ={}) is None
    assert daemon.groups() == 0


def test_the_store_url_may_come_from_the_environment(daemon: Daemon) -> None:
    env = {**os.environ, "SNAPGROUP_DB": daemon.db_url, "LIBVIRT_DEFAULT_URI": CONNECT}
    out, err = io.StringIO(), io.StringIO()
    code = forward(["--json", "list"], out=out, err=err, path=str(daemon.socket), environ=env)
    assert code == 0 and json.loads(out.getvalue()) == {"inventories": []}


def test_another_environment_is_declined(daemon: Daemon) -> None:
    env = {**os.environ, "SNAPGROUP_FAULT_STEP": "create:switched"}
    assert daemon.run("create", "--vm", "vm1", env=env) == (None, "", "")
    assert daemon.groups() == 0


def test_no_daemon_or_opted_out_runs_here(daemon: Daemon, tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    missing = str(tmp_path / "none.sock")
    assert forward(["list"], out=out, err=err, path=missing, environ={}) is None
    opted_out = {"SNAPGROUP_NO_DAEMON": "1"}
    assert forward(["list"], out=out, err=err, path=str(daemon.socket), environ=opted_out) is None


def _request(daemon: Daemon, *argv: str) -> bytes:
    request = {
        "argv": daemon.argv(*argv),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("SNAPGROUP_", "LIBVIRT_"))},
        "tty": [False, False],
    }
    return json.dumps(request).encode() + b"\n"


def test_output_travels_buffered_not_a_frame_per_write(daemon: Daemon) -> None:
    for i in range(3):
        assert daemon.run("create", "--vm", "vm1", "--name", f"g{i}")[0] == 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(daemon.socket))
        sock.sendall(_request(daemon, "--json", "list"))
        reader, frames = Frames(), []
        while data := sock.recv(1 << 16):
            frames += reader.feed(data)
    # json.dump writes this document in hundreds of pieces: one frame, then the status.
    assert [kind for kind, _ in frames] == ["out", "exit"]
    assert len(json.loads(frames[0][1])["inventories"]) == 3


def test_a_client_that_goes_away_does_not_stop_the_command(daemon: Daemon) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(daemon.socket))
        sock.sendall(_request(daemon, "create", "--vm", "vm1", "--name", "orphan"))
    deadline = time.monotonic() + 10
    while daemon.groups() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [g.name for g in daemon.engine_for(0).list_groups()] == ["orphan"]


def test_a_daemon_lost_mid_command_is_an_error_never_a_second_run(tmp_path: Path) -> None:
    path = Path(tempfile.mkdtemp(prefix="sgd-", dir="/tmp")) / "cli.sock"
    listener = listen(path)

    def vanish() -> None:  # reads the request, then dies without a word
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.close()

    thread = threading.Thread(target=vanish)
    thread.start()
    out, err = io.StringIO(), io.StringIO()
    code = forward(["--json", "create", "--vm", "vm1"], out=out, err=err, path=str(path))
    thread.join()
    listener.close()
    shutil.rmtree(path.parent)
    assert code == 1
    assert json.loads(out.getvalue())["error"]["code"] == "SYS.1001"


def test_the_socket_is_private_and_never_shared(tmp_path: Path) -> None:
    path = Path(tempfile.mkdtemp(prefix="sgd-", dir="/tmp")) / "d" / "cli.sock"
    try:
        first = listen(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        with pytest.raises(OperationError, match="already listens"):
            listen(path)
        first.close()  # a killed daemon's socket file stays behind: it is replaced
        listen(path).close()
    finally:
        shutil.rmtree(path.parent.parent)


def test_global_options_after_the_command_run_in_the_daemon(daemon: Daemon) -> None:
    code, out, err = daemon.run("list", "--json")
    assert (code, json.loads(out), err) == (0, {"inventories": []}, "")
    assert daemon.run("list", "--json") == daemon.run("--json", "list")
    daemon.waits.clear()
    assert daemon.run("list", "--wait", "2.5")[0] == 0
    assert daemon.waits == [2.5]
    # The store and URI after the command: the daemon's own, so it runs there.
    argv = ["create", "--vm", "vm1", "--name", "g", "--json", "--connect", CONNECT]
    argv += ["--db", daemon.db_url]
    out_io, err_io = io.StringIO(), io.StringIO()
    assert forward(argv, out=out_io, err=err_io, path=str(daemon.socket)) == 0
    assert json.loads(out_io.getvalue())["inventory"]["name"] == "g"
    assert daemon.groups() == 1


@pytest.mark.parametrize(
    ("after", "reason"),
    [
        (["--db", "sqlite:////elsewhere.db"], "another store than the daemon's"),
        (["--connect", "qemu:///system"], f"libvirt qemu:///system, not the daemon's {CONNECT}"),
        (["-v"], "--verbose logs on the client's terminal"),
    ],
)
def test_another_store_or_uri_after_the_command_is_declined_for_that_reason(
    daemon: Daemon, after: list[str], reason: str
) -> None:
    argv = daemon.argv("create", "--vm", "vm1", "--name", "g", *after)
    with pytest.raises(Declined) as declined:
        daemon.server.admit(argv, relevant_env(os.environ))
    assert str(declined.value) == reason
    out, err = io.StringIO(), io.StringIO()
    assert forward(argv, out=out, err=err, path=str(daemon.socket)) is None
    assert (out.getvalue(), err.getvalue(), daemon.groups()) == ("", "", 0)


USAGE_ERROR = {
    "code": "SYS.1007",
    "description": "invalid argument",
    "details": "argument --mode: invalid choice: 'banana' (choose from 'Permissive', 'Enforcing')",
    "elaboration": None,
    "opaque": None,
    "cause": None,
}


@pytest.mark.parametrize("with_daemon", [True, False])
@pytest.mark.parametrize(
    "argv",
    [
        ("--json", "delete", "e" * 32, "--mode", "banana"),
        ("delete", "e" * 32, "--mode", "banana", "--json"),
    ],
)
def test_the_client_prints_a_usage_error_as_json_with_or_without_a_daemon(
    daemon: Daemon,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: tuple[str, ...],
    with_daemon: bool,
) -> None:
    monkeypatch.setenv("SNAPGROUP_SOCKET", str(daemon.socket))
    if not with_daemon:
        monkeypatch.setenv("SNAPGROUP_NO_DAEMON", "1")
    assert launch_main(daemon.argv(*argv)) == 2
    captured = capsys.readouterr()
    assert captured.out == json.dumps({"error": USAGE_ERROR}, indent=2) + "\n"
    assert captured.err == ""
    assert daemon.run(*argv) == (None, "", "")  # the daemon left it to the client


def test_a_reader_gone_early_ends_the_client_quietly_and_the_command_still_runs(
    daemon: Daemon,
) -> None:
    env = {**os.environ, "SNAPGROUP_SOCKET": str(daemon.socket)}
    argv = daemon.argv("--json", "create", "--vm", "vm1", "--name", "piped")
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head` that has already exited
    try:
        client = subprocess.run(
            [sys.executable, "-m", "snapgroup", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert (client.returncode, client.stderr) == (-signal.SIGPIPE, "")
    # Only the daemon could create it (test:///fake is no URI the client can open).
    assert [g.name for g in daemon.engine_for(0).list_groups()] == ["piped"]


def test_a_backup_command_runs_in_the_daemon_when_its_paths_are_absolute(
    daemon: Daemon, tmp_path: Path
) -> None:
    """Issue 20: an export or a listing through the daemon costs no start-up; a relative
    path is the client's cwd's, so the client runs that one itself."""
    repo = tmp_path / "repo"
    repo.mkdir()
    code, out, err = daemon.run("--json", "backups", "--at", str(repo))
    assert (code, json.loads(out), err) == (0, {"backups": [], "damaged": []}, "")
    assert daemon.run("--json", "backups", "--at", str(repo)) == daemon.run_here(
        "--json", "backups", "--at", str(repo)
    )
    for argv in (
        ("backups", "--at", "repo"),
        ("export", "e" * 32, "--to", "repo"),
        ("restore", "b", "--from", str(repo), "--to-dir", "out"),
    ):
        with pytest.raises(Declined, match="a relative path is the client's"):
            daemon.server.admit(daemon.argv(*argv), relevant_env(os.environ))
        assert daemon.run(*argv) == (None, "", "")


def test_the_request_is_json_made_without_the_json_package() -> None:
    argv = ["create", "--name", 'q"uote\\ \n tab\t é 雪 \U0001f600 \x00', "--vm", "vm1"]
    env = {"SNAPGROUP_DB": "sqlite:////tmp/ü.db", "LIBVIRT_X": ""}
    line = request_line(argv, env, (True, False))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"argv": argv, "env": env, "tty": [True, False]}


def test_reply_frames_arrive_whole_however_the_bytes_are_cut() -> None:
    replies: list[dict[str, object]] = [
        {"out": "雪 \U0001f600 a:b 12:"},
        {"err": ""},
        {"err": "x" * 70000},
        {"exit": 3},
    ]
    stream = b"".join(encode(r) for r in replies)
    for cut in (1, 2, 7, 1 << 16):
        frames, got = Frames(), []
        for i in range(0, len(stream), cut):
            got += frames.feed(stream[i : i + cut])
        assert got == [(k, str(v)) for r in replies for k, v in r.items()]
    with pytest.raises(ValueError):
        Frames().feed(b'{"out": "the old protocol"}\n')
