"""PID file and daemonizing: the parent exits 0 only once the child is ready."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from passt.host import daemon

# Runs daemonize() in a throw-away process: argv = mode, pid file, work dir.
PROGRAM = r"""
import json, os, sys, time
from passt import log
from passt.host import daemon

mode, pid_path, work = sys.argv[1:]
readiness = daemon.daemonize(daemon.PidFile.open(pid_path))
if mode == "die":
    log.die("child failed before ready: %s", "no socket")
if mode == "exit3":
    sys.exit(3)
time.sleep(0.3)
open(os.path.join(work, "initialised"), "w").close()
readiness.ready()
print("this goes to /dev/null")
state = {
    "pid": os.getpid(),
    "sid": os.getsid(0),
    "stdio": [os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)],
}
with open(os.path.join(work, "state.tmp"), "w") as f:
    json.dump(state, f)
os.rename(os.path.join(work, "state.tmp"), os.path.join(work, "state"))
time.sleep(60)
"""


def run_program(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROGRAM, mode, str(tmp_path / "passt.pid"), str(tmp_path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def wait_for(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def process_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


@pytest.fixture
def daemon_pids():
    """PIDs of daemonized children to terminate at the end, whatever happens."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 10
        while process_exists(pid) and time.monotonic() < deadline:
            time.sleep(0.02)


def test_parent_exits_0_only_after_the_child_is_ready(tmp_path, daemon_pids):
    result = run_program(tmp_path, "ready")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "initialised").exists(), "parent exited before the child was ready"
    pid = int((tmp_path / "passt.pid").read_text())
    daemon_pids.append(pid)
    assert (tmp_path / "passt.pid").read_text() == f"{pid}\n"
    assert process_exists(pid)
    wait_for(tmp_path / "state")
    state = json.loads((tmp_path / "state").read_text())
    assert state["pid"] == pid
    assert state["sid"] == pid, "child is not a session leader"
    assert state["stdio"] == ["/dev/null"] * 3
    assert result.stdout == ""


def test_child_failing_before_ready_makes_the_parent_exit_1_with_its_error(tmp_path):
    result = run_program(tmp_path, "die")
    assert result.returncode == 1
    assert result.stderr == "child failed before ready: no socket\n"
    assert (tmp_path / "passt.pid").read_text() == ""


def test_child_exit_status_is_passed_on(tmp_path):
    assert run_program(tmp_path, "exit3").returncode == 3


def test_unwritable_pid_file_is_refused_with_one_line(tmp_path):
    with pytest.raises(daemon.DaemonError, match=r"^Couldn't open PID file .*/nodir/x\.pid: "):
        daemon.PidFile.open(str(tmp_path / "nodir" / "x.pid"))


def test_foreground_readiness_writes_our_own_pid_once(tmp_path):
    path = tmp_path / "fg.pid"
    readiness = daemon.foreground(daemon.PidFile.open(str(path)))
    assert path.read_text() == ""
    readiness.ready()
    readiness.ready()
    assert path.read_text() == f"{os.getpid()}\n"
    assert path.stat().st_mode & 0o777 == 0o600


def test_foreground_without_pid_file_is_harmless():
    daemon.foreground().ready()


def test_pid_file_is_removed_at_exit_only_if_still_ours(tmp_path):
    path = tmp_path / "x.pid"
    pidfile = daemon.PidFile.open(str(path))
    pidfile.write(1234)
    pidfile.remove()
    assert not path.exists()
    other = daemon.PidFile.open(str(path))
    path.unlink()
    path.write_text("someone else's\n")
    other.remove()
    assert path.read_text() == "someone else's\n"
