"""passt as libvirt and users start it: daemon, PID file, --runas, log file, bad input.

Theory of operation: libvirt runs passt, waits for the command to exit 0
and then starts QEMU on the socket, and stops passt by the PID in its PID
file.  So exit status 0 must mean "the socket listens", the PID file must
name the daemon (not the parent that exited), and bad input must be exit
status 1 with one clear line, before anything starts.  These checks run
the program under test as a process, in the world's host namespace (it
reads the host's addresses), with no guest: a connection to the socket is
all QEMU would do first.

Files live in a sticky, world-writable directory of the test's own, since
passt started as root gives up root (``--runas nobody``) once ready.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from passt import packet

from . import impl
from .cells import Cell, cell_id
from .world import IFNAME, V4, World

pytestmark = pytest.mark.e2e

NOBODY_UID = 65534
RUN_TIMEOUT = 15.0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    created = World("cli", str(tmp_path_factory.mktemp("cli"))).create()
    yield created
    created.destroy()


@pytest.fixture
def filedir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="e2e-passt-cli-")
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_passt(world: World, options: list[str]) -> subprocess.CompletedProcess[str]:
    """passt with exactly ``options`` (daemonizing unless told otherwise), to its exit."""
    argv = [*impl.current().passt, *options]
    return subprocess.run(["ip", "netns", "exec", world.host_ns, *argv], capture_output=True,
                          text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)


def errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr lines, without upstream's complaints about the absent syslog."""
    return [line for line in result.stderr.splitlines() if "to syslog" not in line]


def uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Uid:"))


def wait_for_uid(pid: int, uid: int, timeout: float = 5.0) -> bool:
    """Whether ``pid`` runs as ``uid`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while uid_of(pid) != uid:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def stop(pid: int, timeout: float = 10.0) -> bool:
    """SIGTERM, as libvirt does; whether the process went within ``timeout``."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    gone = not os.path.exists(f"/proc/{pid}")
    if not gone:
        os.kill(pid, signal.SIGKILL)
    return gone


@pytest.mark.parametrize("cell", [Cell("passt", "daemon_ready_pid_runas_log")], ids=cell_id)
def test_exit_status_zero_means_the_socket_listens(cell: Cell, world: World, filedir: str) -> None:
    sock_path, pid_path, log_path = (os.path.join(filedir, n) for n in ("s", "pid", "log"))
    result = run_passt(world, ["-s", sock_path, "-P", pid_path, "-l", log_path,
                               "--runas", "nobody"])
    assert result.returncode == 0, "\n".join(errors(result))
    with open(pid_path) as f:
        pid = int(f.read())
    try:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(sock_path)  # at once: no retry, as libvirt's QEMU doesn't retry
        client.close()
        # Our passt releases its parent once the socket listens, then drops
        # privileges before its first event (upstream drops them before
        # daemonizing): allow that moment, bounded.
        assert wait_for_uid(pid, NOBODY_UID), "--runas nobody not honoured"
        with open(log_path, errors="replace") as f:
            logged = f.read()
        assert sock_path in logged, f"--log-file has no start-up lines:\n{logged}"
    finally:
        assert stop(pid), "passt ignored SIGTERM"


# What libvirt 9.x runs (libvirt 11 dropped --mac-addr); the values are ours.
LIBVIRT9_MAC = "9a:55:9a:55:9a:55"
LIBVIRT9_GUEST = "198.51.100.77"
GUEST_MAC = bytes.fromhex("525400123456")


def libvirt9_argv(filedir: str) -> list[str]:
    return [
        "--one-off", "--socket", f"{filedir}/s", "--mac-addr", LIBVIRT9_MAC,
        "--pid", f"{filedir}/pid", "--mtu", "9000", "--interface", IFNAME,
        "--log-file", f"{filedir}/log", "--address", LIBVIRT9_GUEST, "--netmask", "24",
        "--tcp-ports", "5201", "--udp-ports", "5201",
    ]


def arp_answer(sock: socket.socket, target: str) -> packet.ArpMessage:
    """Ask passt, as the guest would, who has ``target``; its answer."""
    request = packet.build_frame_arp(
        b"\xff" * 6, GUEST_MAC, packet.ARP_REQUEST, GUEST_MAC,
        ipaddress.IPv4Address(LIBVIRT9_GUEST).packed, bytes(6),
        ipaddress.IPv4Address(target).packed,
    )
    sock.sendall(struct.pack("!I", len(request)) + request)
    sock.settimeout(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        (length,) = struct.unpack("!I", _read(sock, 4))
        frame = _read(sock, length)
        pkt = packet.parse_frame(frame)
        if pkt.ethertype == packet.ETH_P_ARP:
            answer = packet.parse_arp(pkt.l4)
            if answer.op == packet.ARP_REPLY:
                return answer
    raise AssertionError(f"no ARP reply for {target}")


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "passt closed the connection"
        data += chunk
    return data


@pytest.mark.parametrize("cell", [Cell("passt", "libvirt9_argv")], ids=cell_id)
def test_libvirt9_argv_is_honoured(cell: Cell, world: World, filedir: str) -> None:
    """libvirt 9's command line, PID file and exit-status wait; QEMU's first
    words (ARP for the gateway) answered from the --mac-addr given; passt
    gone with its client (--one-off)."""
    result = run_passt(world, libvirt9_argv(filedir))
    assert result.returncode == 0, "\n".join(errors(result))
    with open(f"{filedir}/pid") as f:
        pid = int(f.read())
    try:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(f"{filedir}/s")
        answer = arp_answer(client, V4.gateway)
        assert answer.sender_mac == bytes.fromhex(LIBVIRT9_MAC.replace(":", "")), (
            f"gateway answered as {answer.sender_mac.hex(':')}, not --mac-addr {LIBVIRT9_MAC}")
        client.close()
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{pid}"), "--one-off passt outlived its client"
    finally:
        stop(pid)


def socket_in_use(path: str) -> socket.socket:
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    busy.bind(path)
    busy.listen(1)
    return busy


BAD_INPUT = [
    ("socket_in_use", ["-s", "{dir}/busy"], r"(?i)socket path .*/busy already in use"),
    ("pid_file_unwritable", ["-s", "{dir}/s", "-P", "{dir}/no/such/dir/pid"],
     r"PID file.*No such file or directory"),
    ("bad_mac", ["-s", "{dir}/s", "--mac-addr", "52:54:00:zz:00:01"],
     r"(?i)mac.*52:54:00:zz:00:01|52:54:00:zz:00:01.*mac"),
]
UPSTREAM_ACCEPTS = {"bad_mac": "upstream accepts a malformed --mac-addr and starts"}


def bad_input_params() -> list[object]:
    params = []
    for name, options, message in BAD_INPUT:
        cell = Cell("passt", f"refuses_{name}")
        marks = []
        if name in UPSTREAM_ACCEPTS and impl.current().name == "upstream":
            marks.append(pytest.mark.xfail(reason=UPSTREAM_ACCEPTS[name], strict=True))
        params.append(pytest.param(cell, options, message, marks=marks, id=cell_id(cell)))
    return params


@pytest.mark.parametrize(("cell", "options", "message"), bad_input_params())
def test_bad_input_is_one_line_and_exit_status_one(
    cell: Cell, options: list[str], message: str, world: World, filedir: str
) -> None:
    busy = socket_in_use(os.path.join(filedir, "busy"))
    try:
        argv = ["-f", "--runas", "0", *(o.format(dir=filedir) for o in options)]
        result = run_passt(world, argv)
    finally:
        busy.close()
    lines = errors(result)
    assert result.returncode == 1, f"exit status {result.returncode}:\n" + "\n".join(lines)
    assert lines, "no error message"
    assert re.search(message, lines[-1]), f"last line is not the error: {lines[-1]!r}"
