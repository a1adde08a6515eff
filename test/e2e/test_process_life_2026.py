"""How pasta and passt end: signals, PID file, socket, namespace gone, connections.

Theory of operation: each program runs in the foreground (``-f``) in the
world's "host" namespace (world.py) so that the test is its parent and reads
its exit status; pasta is attached to a namespace the test made.  Every case
runs against ours and upstream 2026 (``build/upstream-2026``); where upstream
differs on purpose of ours, ``UPSTREAM`` holds what it does instead, and the
test checks that too, so each difference stays known:

* SIGTERM: both exit 0.  SIGINT and SIGHUP: upstream dies of the signal;
  ours exits 0 as for SIGTERM (issue 20: container engines and libvirt stop
  us with either).
* The PID file (and passt's socket): upstream leaves them behind (it cannot
  unlink once isolated); ours removes them through a directory descriptor
  kept from start-up (``fsref``).
* TCP connections of the namespace through the tap when pasta ends: upstream
  just exits, so they hang until the namespace's kernel times them out; ours
  resets them first.
* ``--netns /proc/PID/ns/net``: ours quits once that process is gone.
  Upstream, started as root with ``--runas 0`` as here, cannot even open that
  path ("Permission denied": it has given up the capabilities needed to
  look into another process's ``/proc`` entries by then), so the case only
  checks that it fails in one line; run as the namespace owner (podman,
  rootlesskit), it watches the path with a one-second timer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from .test_clients_2026 import PEERS, REPO, TIMEOUT, program, run_in
from .test_pasta_ns import process_gone, wait_until
from .world import IFNAME, V4, World

UPSTREAM_2026 = os.path.join(REPO, "build", "upstream-2026")
SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
# What upstream 2026 does where ours differs (see the module notes).
UPSTREAM = {
    "status": {signal.SIGTERM: 0, signal.SIGINT: -signal.SIGINT, signal.SIGHUP: -signal.SIGHUP},
    "files_removed": False,
    "connection": "timeout",
    "proc_netns": 1,
}
OURS = {"status": dict.fromkeys(SIGNALS, 0), "files_removed": True, "connection": "reset",
        "proc_netns": 0}
EXPECTED = {"ours": OURS, "upstream": UPSTREAM}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World("life", str(tmp_path_factory.mktemp("life-2026")))
    w.create()
    echo = subprocess.Popen(["ip", "netns", "exec", w.remote_ns, sys.executable, PEERS, "serve",
                             "120", "7", ""], stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None and echo.stdout.readline() == "ready\n"
        yield w
    finally:
        echo.kill()
        echo.wait(TIMEOUT)
        w.destroy()


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"life26-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=TIMEOUT)
    yield name
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=TIMEOUT)


def foreground(world: World, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", world.host_ns, *argv, "-f", "--runas", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": REPO})


def stop(proc: subprocess.Popen, signum: int) -> int:
    proc.send_signal(signum)
    try:
        return proc.wait(TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)


def passt_program(impl: str) -> list[str]:
    if impl == "ours":
        return [sys.executable, "-c", "from passt.cli import main_passt; main_passt()"]
    program(impl)   # skips if upstream is not built
    return [os.path.join(UPSTREAM_2026, "passt")]


@pytest.mark.parametrize("impl", ["ours", "upstream"])
@pytest.mark.parametrize("signum", SIGNALS, ids=[s.name for s in SIGNALS])
def test_pasta_signal_exit_and_pid_file(world, netns, tmp_path, impl, signum) -> None:
    pid_file = tmp_path / "pasta.pid"
    proc = foreground(world, [*program(impl), "--config-net", "--netns", f"/run/netns/{netns}",
                              "-t", "none", "-u", "none", "-T", "none", "-U", "none",
                              "--pid", str(pid_file)])
    wait_until(lambda: pid_file.exists() and pid_file.read_text().endswith("\n"), "PID file")
    assert stop(proc, signum) == EXPECTED[impl]["status"][signum], proc.stderr
    assert (not pid_file.exists()) == EXPECTED[impl]["files_removed"]


@pytest.mark.parametrize("impl", ["ours", "upstream"])
@pytest.mark.parametrize("signum", SIGNALS, ids=[s.name for s in SIGNALS])
def test_passt_signal_exit_socket_and_pid_file(world, tmp_path, impl, signum) -> None:
    sock, pid_file = tmp_path / "passt.socket", tmp_path / "passt.pid"
    proc = foreground(world, [*passt_program(impl), "--socket", str(sock), "--pid",
                              str(pid_file)])
    wait_until(lambda: sock.exists() and pid_file.exists(), "socket and PID file")
    time.sleep(0.2)      # the PID file is written once ready
    assert stop(proc, signum) == EXPECTED[impl]["status"][signum]
    removed = EXPECTED[impl]["files_removed"]
    assert (not pid_file.exists()) == removed and (not sock.exists()) == removed


@pytest.mark.parametrize("impl", ["ours", "upstream"])
def test_namespace_connections_when_pasta_ends(world, netns, tmp_path, impl) -> None:
    pid_file = tmp_path / "pasta.pid"
    proc = foreground(world, [*program(impl), "--config-net", "--netns", f"/run/netns/{netns}",
                              "-t", "none", "-u", "none", "-T", "none", "-U", "none",
                              "--pid", str(pid_file)])
    wait_until(lambda: "default" in run_in(netns, "ip", "-4", "route").stdout, "the route")
    holder = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, PEERS, "hold",
                               V4.remote, "7", "3"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "connected\n"
        assert stop(proc, signal.SIGTERM) == 0
        assert holder.stdout.readline().strip() == EXPECTED[impl]["connection"]
    finally:
        holder.kill()
        holder.wait(TIMEOUT)


@pytest.mark.parametrize("impl", ["ours", "upstream"])
def test_netns_by_proc_path_quits_with_its_process(world, impl) -> None:
    target = subprocess.Popen(["ip", "netns", "exec", world.host_ns, "unshare", "-n",
                               "sleep", "30"])
    try:
        wait_until(lambda: os.readlink(f"/proc/{target.pid}/exe").endswith("sleep"), "sleep")
        proc = foreground(world, [*program(impl), "--config-net", "--netns",
                                  f"/proc/{target.pid}/ns/net", "-t", "none", "-u", "none",
                                  "-T", "none", "-U", "none"])
        if EXPECTED[impl]["proc_netns"]:
            assert proc.wait(TIMEOUT) == 1 and "Permission denied" in proc.stderr.read()
            return
        wait_until(lambda: IFNAME in run_in(world.host_ns, "nsenter", "-t", str(target.pid),
                                            "-n", "ip", "link").stdout, "the tap")
        target.kill()
        target.wait(TIMEOUT)
        assert proc.wait(TIMEOUT) == 0
        assert process_gone(proc.pid)
    finally:
        target.kill()
        target.wait(TIMEOUT)
