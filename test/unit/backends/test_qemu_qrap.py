"""contrib/qrap: command-line rewriting, probing passt, handing QEMU the socket.

The QEMU that qrap runs here is a stand-in script that reports what it got
(its arguments, the descriptor) and exchanges frames with passt through
that descriptor; passt is our listener with an ARP stand-in that answers
qrap's probe.  The real QEMU runs in test/e2e/test_passt_qrap.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType

import pytest

from passt.backends import qemu
from passt.backends.dispatch import Dispatcher
from passt.context import Ctx
from passt.loop import EventLoop

QRAP = Path(__file__).resolve().parents[3] / "contrib" / "qrap"
REPLY = b"\x02" * 6 + b"\xfe" * 6 + b"\x08\x06" + bytes(28)
QEMU_HELLO = b"\xff" * 6 + b"\x52\x54\x00\x12\x34\x56" + b"\x08\x06" + bytes(28)


def load_qrap() -> ModuleType:
    loader = SourceFileLoader("qrap", str(QRAP))
    spec = importlib.util.spec_from_loader("qrap", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


qrap = load_qrap()

# -- the command line ----------------------------------------------------------

STREAM = "stream,id=n0,server=off,addr.type=unix,addr.path=/tmp/p.sock"
STREAM_JSON = json.dumps(
    {"type": "stream", "addr": {"type": "unix", "path": "/tmp/p.sock"}, "server": False,
     "id": "hostnet0"}
)
APPENDED = ["-device", "virtio-net-pci,netdev=hostnet0", "-netdev", "socket,fd=5,id=hostnet0"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-m", "512", "-netdev", STREAM, "-device", "virtio-net-pci,netdev=n0"],
         ["-m", "512", "-netdev", "socket,id=n0,fd=5", "-device", "virtio-net-pci,netdev=n0"]),
        (["--netdev", STREAM], ["-netdev", "socket,id=n0,fd=5"]),
        (["-netdev", STREAM_JSON], ["-netdev", "socket,id=hostnet0,fd=5"]),
        (["-net", "socket,fd=5", "-net", "nic,model=virtio"],
         ["-net", "socket,fd=5", "-net", "nic,model=virtio"]),
        (["-netdev", "socket,id=x,fd=5", "-device", "e1000,netdev=x"],
         ["-netdev", "socket,id=x,fd=5", "-device", "e1000,netdev=x"]),
        (["-m", "512"], ["-m", "512", *APPENDED]),
        (["-netdev", "user,id=u"], ["-netdev", "user,id=u", *APPENDED]),
        (["-M", "s390-ccw-virtio"],
         ["-M", "s390-ccw-virtio", "-device", "virtio-net-ccw,netdev=hostnet0",
          "-netdev", "socket,fd=5,id=hostnet0"]),
    ],
    ids=["substituted", "double-dash", "json", "legacy-net", "socket-netdev", "appended",
         "other-backend", "s390"],
)
def test_netdev_is_substituted_or_appended(args: list[str], expected: list[str]) -> None:
    assert qrap.with_socket_netdev(args, 5) == expected


def test_the_stream_netdev_names_the_socket() -> None:
    assert qrap.stream_socket_path(["-m", "1", "-netdev", STREAM]) == "/tmp/p.sock"
    assert qrap.stream_socket_path(["-netdev", STREAM_JSON]) == "/tmp/p.sock"
    assert qrap.stream_socket_path(["-netdev", "user,id=u"]) is None


def test_patch_mode_drops_every_other_network_option() -> None:
    args = ["disk.qcow2", "-net", "user", "-netdev", "tap,id=t", "-device", "e1000,netdev=t",
            "-device", "virtio-blk-pci,drive=d", "-m", "1024"]
    assert qrap.without_network(args) == [
        "disk.qcow2", "-device", "virtio-blk-pci,drive=d", "-m", "1024"
    ]


@pytest.mark.parametrize(
    ("argv", "explicit"),
    [
        (["5", "true", "-m", "1"], True),
        (["2", "true"], False),  # stdio is not a descriptor number for QEMU
        (["5", "no-such-qemu-command"], False),
        (["disk.img", "-m", "1"], False),
        (["5"], False),
    ],
)
def test_explicit_command_needs_a_number_and_a_program(argv: list[str], explicit: bool) -> None:
    assert (qrap.explicit_command(argv) is not None) == explicit


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--socket", "/x.sock", "5", "kvm"], ("/x.sock", ["5", "kvm"])),
        (["--socket=/x.sock", "-m", "1"], ("/x.sock", ["-m", "1"])),
        (["5", "kvm", "--socket", "/x"], (None, ["5", "kvm", "--socket", "/x"])),
    ],
)
def test_socket_option_comes_first(argv: list[str], expected: tuple) -> None:
    assert qrap.split_socket_option(argv) == expected


# -- with passt ------------------------------------------------------------------


class ArpStub:
    """passt's ARP handler, reduced to: keep every frame, answer the first one."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def from_tap(self, ctx: Ctx, pkt) -> None:
        self.frames.append(bytes(pkt.frame))
        if len(self.frames) == 1:
            ctx.tap.send_frames([REPLY])


@dataclass
class Passt:
    path: str
    listener: qemu.QemuListener
    loop: EventLoop
    arp: ArpStub

    def run_until_exit(self, proc: subprocess.Popen, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise AssertionError("qrap or the QEMU stand-in did not finish")
            self.loop.run_once(0.02)
        for _ in range(20):  # whatever is still in flight
            self.loop.run_once(0.01)
        return proc.returncode


@pytest.fixture
def passt(tmp_path: Path) -> Iterator[Passt]:
    loop = EventLoop()
    path = str(tmp_path / "passt.sock")
    listener = qemu.listen(SimpleOpts(path))
    arp = ArpStub()
    dispatcher = Dispatcher(Ctx(loop=loop), {"arp": arp})
    listener.start(loop, lambda s: dispatcher.attach(s, listener.resume))
    yield Passt(path, listener, loop, arp)
    dispatcher.detach()
    listener.close()
    loop.close()


@dataclass
class SimpleOpts:
    socket: str | None
    fd: int | None = None
    one_off: bool = False
    vhost_user: bool = False


FAKE_QEMU = textwrap.dedent(
    """\
    #!{python}
    # Stand-in for QEMU: finds the socket descriptor in its arguments, reads
    # what passt sent, sends one frame, reports as JSON.
    import json, os, re, select, socket, stat, struct, sys
    args = sys.argv[1:]
    fds = [int(m) for a in args for m in re.findall(r"socket,(?:.*,)?fd=(\\d+)", a)]
    report = {{"argv": args, "fd": fds[0] if fds else None}}
    if fds:
        sock = socket.socket(fileno=fds[0])
        report["is_socket"] = stat.S_ISSOCK(os.fstat(fds[0]).st_mode)
        received = b""
        if select.select([sock], [], [], 5)[0]:
            received = sock.recv(65536)
        report["received"] = received.hex()
        hello = bytes.fromhex("{hello}")
        sock.sendall(struct.pack("!I", len(hello)) + hello)
    with open(os.environ["FAKE_QEMU_REPORT"], "w") as f:
        json.dump(report, f)
    """
)


@pytest.fixture
def fake_qemu(tmp_path: Path) -> Path:
    """A directory holding the stand-in as qemu-system-<arch>, kvm and fake-qemu."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = FAKE_QEMU.format(python=sys.executable, hello=QEMU_HELLO.hex())
    for name in ("fake-qemu", "kvm"):
        (bindir / name).write_text(script)
        (bindir / name).chmod(0o755)
    return bindir


def run_qrap(args: list[str], bindir: Path, tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{bindir}:/usr/bin:/bin",
           "FAKE_QEMU_REPORT": str(tmp_path / "report.json")}
    return subprocess.Popen([sys.executable, str(QRAP), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def report(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "report.json").read_text())


def framed(frame: bytes) -> bytes:
    return struct.pack("!I", len(frame)) + frame


def test_qemu_gets_the_connected_socket_and_talks_to_passt(
    passt: Passt, fake_qemu: Path, tmp_path: Path
) -> None:
    netdev = f"stream,id=net0,server=off,addr.type=unix,addr.path={passt.path}"
    proc = run_qrap(["7", "fake-qemu", "-m", "64", "-netdev", netdev,
                     "-device", "virtio-net-pci,netdev=net0"], fake_qemu, tmp_path)
    assert passt.run_until_exit(proc) == 0, proc.stderr.read().decode()
    got = report(tmp_path)
    assert got["argv"] == ["-m", "64", "-netdev", "socket,id=net0,fd=7",
                           "-device", "virtio-net-pci,netdev=net0"]
    assert got["fd"] == 7 and got["is_socket"]
    assert bytes.fromhex(got["received"]) == framed(REPLY)  # passt's answer to the probe
    assert passt.arp.frames == [qrap.ARP_PROBE[4:], QEMU_HELLO]
    assert f"Connected to {passt.path}" in proc.stderr.read().decode()


def test_patch_mode_finds_qemu_and_uses_descriptor_five(
    passt: Passt, fake_qemu: Path, tmp_path: Path
) -> None:
    proc = run_qrap(["--socket", passt.path, "disk.img", "-netdev", "user,id=u",
                     "-device", "e1000,netdev=u"], fake_qemu, tmp_path)
    assert passt.run_until_exit(proc) == 0, proc.stderr.read().decode()
    got = report(tmp_path)
    assert got["argv"] == ["disk.img", *APPENDED]
    assert got["fd"] == 5 and got["is_socket"]


def test_a_busy_passt_is_retried_until_its_client_leaves(
    passt: Passt, fake_qemu: Path, tmp_path: Path
) -> None:
    previous = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous.connect(passt.path)
    for _ in range(50):
        passt.loop.run_once(0.02)
        if passt.listener.client is not None:
            break
    proc = run_qrap(["--socket", passt.path, "5", "fake-qemu"], fake_qemu, tmp_path)
    leave_at = time.monotonic() + 0.4
    while time.monotonic() < leave_at:
        passt.loop.run_once(0.02)
    previous.close()  # the previous QEMU goes away
    assert passt.run_until_exit(proc) == 0, proc.stderr.read().decode()
    assert report(tmp_path)["is_socket"]
    assert "passt serves another client" not in proc.stderr.read().decode()


def test_no_passt_is_one_line_and_exit_status_one(fake_qemu: Path, tmp_path: Path) -> None:
    missing = str(tmp_path / "nobody.sock")
    proc = run_qrap(["--socket", missing, "5", "fake-qemu"], fake_qemu, tmp_path)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert err.decode().splitlines()[-1] == f"Couldn't connect to passt at {missing}"
    assert not (tmp_path / "report.json").exists()


def test_probing_takes_the_first_path_where_passt_answers(
    passt: Passt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/tmp/passt_N.socket probing, in a directory of the test's own."""
    probes = tmp_path / "probes"
    probes.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(probes / "passt_1.socket"))
    stale.close()  # refuses connections
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(probes / "passt_2.socket"))
    silent.listen(4)  # accepts, never answers
    os.symlink(passt.path, probes / "passt_3.socket")
    monkeypatch.setattr(qrap, "SOCKET_PATH_TEMPLATE", str(probes / "passt_{}.socket"))
    monkeypatch.setattr(qrap, "SOCKET_PATH_PROBES", range(1, 5))

    done = threading.Event()
    thread = threading.Thread(target=lambda: [passt.loop.run_once(0.02)
                                              for _ in iter(done.is_set, True)])
    thread.start()
    try:
        sock = qrap.connect(None)
    finally:
        done.set()
        thread.join(10)
        silent.close()
    with sock:
        assert sock.getpeername() == passt.path  # reached through passt_3.socket
        assert sock.recv(4 + len(REPLY)) == framed(REPLY)
