"""passt-repair (repair_helper.py) and passt's end of its channel (migrate/repair.py),
together over a real UNIX socket: the helper is a child process, with its seccomp
filter, as passt would see it.  TCP_REPAIR needs CAP_NET_ADMIN: skipped without it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from passt.migrate.repair import REPAIR_OFF, REPAIR_ON, RepairChannel, RepairError

from .test_tcp_repair import TCP_REPAIR, _can_repair

HELPER = [sys.executable, "-m", "passt.repair_helper"]


@contextlib.contextmanager
def _running(path: str) -> Iterator[subprocess.Popen[str]]:
    """passt-repair on ``path``, killed at the end if still there."""
    helper = subprocess.Popen([*HELPER, path], stderr=subprocess.PIPE, text=True)
    try:
        yield helper
    finally:
        helper.kill()
        helper.wait()


@pytest.fixture
def channel(tmp_path) -> Iterator[tuple[RepairChannel, str]]:
    path = str(tmp_path / "passt.socket.repair")
    chan = RepairChannel.listen(path)
    yield chan, path
    chan.close()


@pytest.mark.skipif(not _can_repair(), reason="needs CAP_NET_ADMIN")
def test_helper_sets_and_clears_repair_mode(channel) -> None:
    chan, path = channel
    with _running(path) as helper:
        assert chan.wait(10.0)
        socks = [socket.socket() for _ in range(3)]
        chan.set([s.fileno() for s in socks], REPAIR_ON)
        assert [s.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR) for s in socks] == [1, 1, 1]
        chan.set([socks[0].fileno()], REPAIR_OFF)
        assert socks[0].getsockopt(socket.IPPROTO_TCP, TCP_REPAIR) == 0
        chan.close()
        assert helper.wait(10) == 0


def test_helper_waits_in_a_directory(tmp_path) -> None:
    with _running(str(tmp_path)) as helper:
        chan = RepairChannel.listen(str(tmp_path / "x.socket.repair"))
        assert chan.wait(10.0)
        chan.close()
        assert helper.wait(10) == 0


def test_unknown_command_ends_the_helper(channel) -> None:
    chan, path = channel
    with _running(path) as helper:
        assert chan.wait(10.0)
        with socket.socket() as s, pytest.raises(RepairError):
            chan.set([s.fileno()], 7)
        assert helper.wait(10) == 1
        assert "Unsupported command" in helper.stderr.read()


@pytest.mark.parametrize("argv,status", [([], 2), (["/nonexistent/x.repair"], 1)])
def test_usage_errors(argv: list[str], status: int) -> None:
    result = subprocess.run([*HELPER, *argv], capture_output=True, text=True, timeout=30)
    assert result.returncode == status
    assert len(result.stderr.splitlines()) == 1


def test_without_helper_setting_fails_cleanly(channel) -> None:
    chan, _ = channel
    assert not chan.wait(0.01)
    with socket.socket() as s, pytest.raises(RepairError, match="no passt-repair"):
        chan.set([s.fileno()], REPAIR_ON)


def test_path_none_means_no_channel() -> None:
    chan = RepairChannel.listen("none")
    assert not chan.wait(0.01)
    assert not os.path.exists("none")


def test_socket_file_removed_on_close(tmp_path) -> None:
    path = tmp_path / "passt.socket.repair"
    chan = RepairChannel.listen(str(path))
    assert path.exists()
    chan.close()
    assert not path.exists()
