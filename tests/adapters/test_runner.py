"""snapgroup.adapters.runner against real processes (the Python interpreter as the tool)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snapgroup.adapters.runner import run
from snapgroup.domain.errors import HypervisorError, ImageToolError

PY = sys.executable


def script(code: str) -> list[str]:
    return [PY, "-c", code]


def test_returns_stdout() -> None:
    assert run(script("print('hello')")) == "hello\n"


def test_no_shell_metacharacters_stay_literal(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = f"x; touch {marker} && echo $(touch {marker}) `touch {marker}` | cat > {marker}"
    out = run(["printf", "%s", payload])
    assert out == payload  # one argv element, printed back verbatim
    assert not marker.exists()  # nothing interpreted it


def test_nonzero_exit_raises_with_tool_code_and_stderr() -> None:
    with pytest.raises(ImageToolError) as info:
        run(script("import sys; print('ok out'); sys.stderr.write('bad thing\\n'); sys.exit(3)"))
    err = info.value
    assert err.code == "HOST.1003"
    assert Path(PY).name in err.details
    assert "exit code 3" in err.details
    assert "bad thing" in err.details


def test_caller_chooses_the_error_class() -> None:
    with pytest.raises(HypervisorError) as info:
        run(script("raise SystemExit(2)"), error=HypervisorError)
    assert info.value.code == "HOST.1002"
    assert "(no stderr)" in info.value.details


def test_long_stderr_is_trimmed_to_its_end() -> None:
    with pytest.raises(ImageToolError) as info:
        run(script("import sys; sys.stderr.write('x' * 100000 + 'THE END'); sys.exit(1)"))
    assert len(info.value.details) < 5000
    assert "THE END" in info.value.details


def test_missing_binary_raises_the_chosen_error() -> None:
    with pytest.raises(ImageToolError) as info:
        run(["/nonexistent/qemu-img", "info"])
    assert "qemu-img" in info.value.details
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_empty_argv_is_refused() -> None:
    with pytest.raises(ImageToolError):
        run([])


def test_timeout_kills_the_tool() -> None:
    started = time.monotonic()
    with pytest.raises(ImageToolError, match="timed out"):
        run(script("import time; time.sleep(60)"), timeout=0.5)
    assert time.monotonic() - started < 10


def test_big_stdout_and_stderr_do_not_deadlock() -> None:
    code = "import sys; sys.stderr.write('e' * 1_000_000); sys.stdout.write('o' * 1_000_000)"
    assert run(script(code)) == "o" * 1_000_000


def test_on_line_splits_on_cr_and_lf_across_partial_writes() -> None:
    # qemu-img -p redraws one line with \r; pieces arrive split at arbitrary points.
    code = (
        "import sys, time\n"
        "for piece in ['    (0.0', '0/100%)\\r', '    (50.00/100%)\\r    (100', '.00/100%)\\r\\n',"
        " 'Image committed.\\n', 'tail without newline']:\n"
        "    sys.stdout.write(piece); sys.stdout.flush(); time.sleep(0.02)\n"
    )
    lines: list[str] = []
    out = run(script(code), on_line=lines.append)
    assert lines == [
        "(0.00/100%)",
        "(50.00/100%)",
        "(100.00/100%)",
        "Image committed.",
        "tail without newline",
    ]
    assert out.endswith("tail without newline")


def test_on_line_streams_while_the_tool_runs(tmp_path: Path) -> None:
    # The tool waits for the callback's file before it exits: if lines were only
    # delivered at the end, this would hang until the timeout.
    go = tmp_path / "go"
    code = (
        "import os, sys, time\n"
        "sys.stdout.write('    (10.00/100%)\\r'); sys.stdout.flush()\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
    )
    seen: list[str] = []

    def on_line(line: str) -> None:
        seen.append(line)
        go.touch()

    run(script(code), on_line=on_line, timeout=20)
    assert seen == ["(10.00/100%)"]


def test_on_line_failure_does_not_abort_the_tool() -> None:
    calls: list[str] = []

    def on_line(line: str) -> None:
        calls.append(line)
        raise RuntimeError("callback bug")

    out = run(script("print('a'); print('b')"), on_line=on_line)
    assert out == "a\nb\n"  # the tool ran to completion
    assert calls == ["a"]  # and the broken callback was not called again


def test_argv_is_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="snapgroup.adapters.runner"):
        run(["printf", "%s", "two words"])
    assert "printf %s 'two words'" in caplog.text


def test_a_tool_dies_with_the_process_that_ran_it(tmp_path: Path) -> None:
    """kill -9 of snapgroup mid-copy: its qemu-img must not write on behind the next
    command's recovery. Here a parent running a long tool is killed; the tool follows."""
    pidfile = tmp_path / "tool.pid"
    tool = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from snapgroup.adapters.runner import run; run(sys.argv[1:])",
            sys.executable,
            "-c",
            tool,
        ]
    )
    try:
        deadline = time.monotonic() + 20
        while not pidfile.exists() or not pidfile.read_text():
            assert time.monotonic() < deadline, "the tool never started"
            time.sleep(0.05)
        pid = int(pidfile.read_text())
        os.kill(pid, 0)  # running
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while _alive(pid):
        assert time.monotonic() < deadline, "the tool outlived the process that ran it"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # a zombie (orphan, unreaped) is dead
    except FileNotFoundError:
        return False
