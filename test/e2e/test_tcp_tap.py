"""TCP over a real tap device: the driver (passt.tcp.tap) in namespaces of its own.

Theory of operation
-------------------
These tests drive ``passt.tcp.tap`` without the rest of the program: a small
runner (``serve`` below, run as ``python3 test_tcp_tap.py serve ...``) builds
a ``Ctx`` with an event loop, a tap dispatcher that routes TCP only, the
forwarded-port listeners of ``passt.flow.fwd`` and the TCP handler, and opens a
tap device inside a "guest" namespace, as pasta does.  The topology follows
``world.py`` (documentation prefixes only):

    guest  tap0  198.51.100.1/24  2001:db8:1::1/64  default via the gateway
    host   ext0  198.51.100.1/24  2001:db8:1::1/64  default via remote  (driver here)
    remote ext0  198.51.100.2/24  2001:db8:1::2/64  (the gateway)
           lo    203.0.113.1      2001:db8:2::1     (the "outside" service)

The guest's neighbour entries for the gateway point at the driver's MAC (no
ARP/NDP handler runs here).  Peers are small Python programs (``PEER``) run
with ``ip netns exec``: they move seeded random data and report SHA-256
digests, so every transfer is verified end to end.  The driver answers
``stats`` on a UNIX socket with its flow table and the number of flow
objects still alive (``live``: in the table or held by anything else, such
as a timer), so tests check that nothing is left behind.  The same world serves ``bench/bench_tcp_tap.py``, which
also runs upstream pasta on it for comparison.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER_MAC = "9a:55:9a:55:9a:55"
GUEST_MAC = "02:00:00:00:00:02"
MIB = 1 << 20
FORWARD_PORT, GUEST_PORT = 10080, 10081  # -t 10080:10081
SERVICE_PORT = 10090


@dataclass(frozen=True)
class Family:
    version: int
    addr: str  # host's and guest's address
    gateway: str
    remote: str  # the outside service address
    loopback: str
    plen: int

    @property
    def any(self) -> str:
        return "::" if self.version == 6 else "0.0.0.0"


V4 = Family(4, "198.51.100.1", "198.51.100.2", "203.0.113.1", "127.0.0.1", 24)
V6 = Family(6, "2001:db8:1::1", "2001:db8:1::2", "2001:db8:2::1", "::1", 64)
FAMILIES = {4: V4, 6: V6}


# ---------------------------------------------------------------- peers

PEER = r'''
import hashlib, random, socket, sys, time
mode, args = sys.argv[1], sys.argv[2:]
CHUNK = 1 << 20

def stream(size, seed):
    rng = random.Random(seed)
    left = size
    while left:
        n = min(CHUNK, left)
        yield rng.randbytes(n)
        left -= n

def listen(family, port):
    s = socket.socket(socket.AF_INET6 if family == "6" else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::" if family == "6" else "0.0.0.0", int(port)))
    s.listen(128)
    s.settimeout(60)
    print("listening", flush=True)
    return s

def connect(addr, port, bind=None):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    c = socket.socket(family)
    c.settimeout(60)
    if bind:
        c.bind((bind, 0))
    c.connect((addr, int(port)))
    return c

def drain(c):
    h = hashlib.sha256()
    n = 0
    while True:
        b = c.recv(CHUNK)
        if not b:
            return h.hexdigest(), n
        h.update(b)
        n += len(b)

def send(c, size, seed):
    h = hashlib.sha256()
    for block in stream(size, seed):
        h.update(block)
        c.sendall(block)
    return h.hexdigest()

if mode == "sink":            # family port: read to EOF, answer the digest (half-close)
    s = listen(*args)
    c, _ = s.accept()
    c.settimeout(60)
    digest, n = drain(c)
    c.sendall(f"{digest} {n}\n".encode())
    c.close()
    print(digest, n, flush=True)
elif mode == "source":        # family port size seed: send, then close
    s = listen(args[0], args[1])
    c, _ = s.accept()
    print(send(c, int(args[2]), int(args[3])), flush=True)
    c.close()
elif mode == "echo":          # family port count: echo each connection, close
    s = listen(args[0], args[1])
    for _ in range(int(args[2])):
        c, _ = s.accept()
        c.settimeout(60)
        c.sendall(drain(c)[0].encode())
        c.close()
    print("done", flush=True)
elif mode == "reset":         # family port: read a little, then abort with RST
    s = listen(*args)
    c, _ = s.accept()
    c.recv(100)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    c.close()
    print("reset sent", flush=True)
elif mode == "upload":        # addr port size seed [bind]: send, half-close, read digest
    c = connect(args[0], args[1], *args[4:])
    t = time.monotonic()
    mine = send(c, int(args[2]), int(args[3]))
    c.shutdown(socket.SHUT_WR)
    answer = c.recv(200).decode().split()
    t = time.monotonic() - t
    print(mine, answer[0], answer[1], f"{t:.3f}", flush=True)
elif mode == "download":      # addr port [bind]: read to EOF
    c = connect(args[0], args[1], *args[2:])
    t = time.monotonic()
    digest, n = drain(c)
    print(digest, n, f"{time.monotonic() - t:.3f}", flush=True)
elif mode == "many":          # addr port count: short connections in a row
    ok = 0
    expected = hashlib.sha256(b"ping").hexdigest().encode()
    for i in range(int(args[2])):
        c = connect(args[0], args[1])
        c.sendall(b"ping")
        c.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := c.recv(100):
            answer += chunk
        ok += answer == expected
        c.close()
    print(ok, flush=True)
elif mode == "expect_reset":  # addr port
    c = connect(args[0], args[1])
    c.sendall(b"hello")
    try:
        while c.recv(100):
            pass
        print("eof", flush=True)
    except ConnectionResetError:
        print("reset", flush=True)
'''


# A stand-in for QEMU: run in the guest namespace, it bridges passt's stream
# socket (frames behind 32-bit big-endian lengths) and a tap device there.
BRIDGE = r'''
import fcntl, os, select, socket, struct, sys
path = sys.argv[1]
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", b"tap0", 0x0002 | 0x1000))
s = socket.socket(socket.AF_UNIX)
s.connect(path)
print("bridged", flush=True)
buf = b""
while True:
    ready, _, _ = select.select([fd, s], [], [])
    if fd in ready:
        frame = os.read(fd, 65536)
        s.sendall(struct.pack("!I", len(frame)) + frame)
    if s in ready:
        data = s.recv(1 << 20)
        if not data:
            break
        buf += data
        while len(buf) >= 4 and len(buf) >= 4 + struct.unpack_from("!I", buf)[0]:
            n = struct.unpack_from("!I", buf)[0]
            os.write(fd, buf[4:4 + n])
            buf = buf[4 + n:]
'''


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=60)


class Peer:
    """One peer program in a namespace; servers print 'listening' when ready."""

    def __init__(self, netns: str, *args: object) -> None:
        cmd = ["ip", "netns", "exec", netns, sys.executable, "-c", PEER, *map(str, args)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)

    def wait_listening(self) -> Peer:
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "listening":
            raise RuntimeError(f"peer did not start: {line!r} {self.result(5)}")
        return self

    def result(self, timeout: float = 120) -> list[str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise RuntimeError(f"peer timed out: {out!r} {err!r}") from None
        if self.proc.returncode:
            raise RuntimeError(f"peer failed ({self.proc.returncode}): {err.strip()[-800:]}")
        return out.split()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


# ---------------------------------------------------------------- the world


def listening(netns: str, port: int) -> bool:
    out = sh("ip", "netns", "exec", netns, "ss", "-Htln", f"sport = :{port}", check=False).stdout
    return bool(out.strip())


class TapWorld:
    """guest, host and remote namespaces; our driver (or upstream pasta) in host."""

    def __init__(self, tag: str) -> None:
        suffix = f"{os.getpid() % 100000}{tag}"
        self.guest, self.host, self.remote = (f"tt{suffix}g", f"tt{suffix}h", f"tt{suffix}r")
        self.workdir = tempfile.mkdtemp(prefix="tcptap-")
        self.control = os.path.join(self.workdir, "control")
        self.driver: subprocess.Popen | None = None
        self.bridge: subprocess.Popen | None = None

    def create(self) -> TapWorld:
        try:
            self._create()
        except BaseException:
            self.destroy()
            raise
        return self

    def _create(self) -> None:
        for ns in (self.guest, self.host, self.remote):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", "tth" + self.host[-8:], "netns", self.host, "type", "veth",
           "peer", "name", "ttr" + self.host[-8:], "netns", self.remote)
        for ns, dev in ((self.host, "tth"), (self.remote, "ttr")):
            sh("ip", "-n", ns, "link", "set", dev + self.host[-8:], "name", "ext0")
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.ext0.accept_dad=0")
            sh("ip", "-n", ns, "link", "set", "ext0", "up")
        for fam in (V4, V6):
            sh("ip", "-n", self.host, "addr", "add", f"{fam.addr}/{fam.plen}", "dev", "ext0",
               *(["nodad"] if fam.version == 6 else []))
            sh("ip", "-n", self.host, "route", "add", "default", "via", fam.gateway)
            sh("ip", "-n", self.remote, "addr", "add", f"{fam.gateway}/{fam.plen}", "dev", "ext0",
               *(["nodad"] if fam.version == 6 else []))
            sh("ip", "-n", self.remote, "addr", "add", fam.remote, "dev", "lo")

    def start_ours(self) -> None:
        """Our driver in host, its tap in guest, configured like pasta --config-net."""
        cmd = ["ip", "netns", "exec", self.host, sys.executable, os.path.abspath(__file__),
               "serve", f"/run/netns/{self.guest}", self.control]
        self.driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, cwd=ROOT)
        line = self.driver.stdout.readline() if self.driver.stdout else ""
        if line.strip() != "ready":
            self.driver.kill()
            raise RuntimeError(f"driver did not start: {line!r} {self.driver.communicate()}")
        self._configure_guest()

    def start_upstream(self) -> None:
        """Upstream pasta on the same world (its own ARP/NDP, --config-net)."""
        cmd = ["ip", "netns", "exec", self.host, "/usr/bin/pasta", "--runas", "0", "-f", "-q",
               "--config-net", "-I", "tap0", "-t", f"{FORWARD_PORT}:{GUEST_PORT}",
               "-u", "none", "-T", "none", "-U", "none", "--netns", f"/run/netns/{self.guest}"]
        for _attempt in range(5):  # the Debian build sometimes dies at start-up
            self.driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
            for _ in range(50):
                time.sleep(0.1)
                if self.driver.poll() is not None:
                    break
                if "tap0" in sh("ip", "-n", self.guest, "-o", "addr", check=False).stdout:
                    sh("ip", "-n", self.guest, "link", "set", "tap0", "mtu", "65520")
                    time.sleep(1)  # IPv6 address and routes settle
                    return
            self.driver.kill()
            self.driver.wait()
        raise RuntimeError("upstream pasta did not start")

    def start_program(self, program: str) -> None:
        """Our real passt (behind a QEMU stand-in) or pasta, with -t forwarding."""
        forward = ["-t", f"{FORWARD_PORT}:{GUEST_PORT}", "-u", "none"]
        common = ["-f", "-e", "--runas", "0", *forward]
        if program == "pasta":
            entry = "from passt.cli import main_pasta; main_pasta()"
            args = [*common, "--config-net", "-I", "tap0", "-T", "none", "-U", "none",
                    "--netns", f"/run/netns/{self.guest}"]
        else:
            entry = "from passt.cli import main_passt; main_passt()"
            sock = os.path.join(self.workdir, "passt.sock")
            args = [*common, "-s", sock, "-1"]
        cmd = ["ip", "netns", "exec", self.host, sys.executable, "-c", entry, *args]
        self.driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                       stderr=open(os.path.join(self.workdir, "log"), "w"))
        deadline = time.monotonic() + 30
        while program == "passt" and not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.1)
        if program == "passt":
            self.bridge = subprocess.Popen(
                ["ip", "netns", "exec", self.guest, sys.executable, "-c", BRIDGE, sock],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            assert self.bridge.stdout is not None and self.bridge.stdout.readline()
            self._configure_guest(static_neighbours=False)
        while time.monotonic() < deadline:
            routes = sh("ip", "-n", self.guest, "-6", "route", check=False).stdout
            if "default" in routes and listening(self.host, FORWARD_PORT):
                time.sleep(0.5)
                return
            time.sleep(0.2)
        raise RuntimeError(f"{program} did not start: {self.log()}")

    def log(self) -> str:
        try:
            with open(os.path.join(self.workdir, "log")) as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def _configure_guest(self, static_neighbours: bool = True) -> None:
        g = self.guest
        sh("ip", "netns", "exec", g, "sysctl", "-qw", "net.ipv6.conf.tap0.accept_dad=0")
        sh("ip", "-n", g, "link", "set", "tap0", "address", GUEST_MAC, "mtu", "65520", "up")
        for fam in (V4, V6):
            sh("ip", "-n", g, "addr", "add", f"{fam.addr}/{fam.plen}", "dev", "tap0",
               *(["nodad"] if fam.version == 6 else []))
            if static_neighbours:  # no ARP or NDP in the bare driver
                sh("ip", "-n", g, "neigh", "replace", fam.gateway, "lladdr", DRIVER_MAC,
                   "dev", "tap0", "nud", "permanent")
            sh("ip", "-n", g, "route", "replace", "default", "via", fam.gateway)
        # Let the driver learn the guest's MAC before anything comes inbound.
        poke = f"import socket; socket.socket().connect_ex(('{V4.gateway}', 9))"
        sh("ip", "netns", "exec", g, sys.executable, "-c", poke, check=False)

    def stats(self) -> dict:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(self.control)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return json.loads(data)

    def tcp_flows(self) -> int:
        return self.stats()["flows"].get("tcp", 0)

    def wait_no_flows(self, timeout: float = 10) -> int:
        deadline = time.monotonic() + timeout
        while (count := self.tcp_flows()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return count

    def held_connections(self) -> int:
        """Connected TCP sockets a process holds in the host namespace."""
        out = sh("ip", "netns", "exec", self.host, "ss", "-Htanp", "state", "connected").stdout
        return sum(1 for line in out.splitlines() if "users:" in line)

    def wait_no_held_connections(self, timeout: float = 10) -> int:
        deadline = time.monotonic() + timeout
        while (count := self.held_connections()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return count

    def stop_driver(self) -> str:
        if self.bridge is not None:
            self.bridge.kill()
            self.bridge.wait()
            self.bridge = None
        driver, self.driver = self.driver, None
        if driver is None:
            return ""
        if driver.poll() is None:
            driver.send_signal(signal.SIGTERM)
            try:
                driver.wait(10)
            except subprocess.TimeoutExpired:
                driver.kill()
        _out, err = driver.communicate() if driver.stdout else ("", "")
        return err or ""

    def destroy(self) -> None:
        self.stop_driver()
        for ns in (self.guest, self.host, self.remote):
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


# ---------------------------------------------------------------- transfers


def cell_endpoints(world: TapWorld, route: str, fam: Family) -> dict:
    """Who connects where, for one route: out, out to the host (gateway), in."""
    if route == "out":
        return {"client": world.guest, "server": world.remote, "addr": fam.remote,
                "port": SERVICE_PORT, "server_port": SERVICE_PORT, "bind": None}
    if route == "host":  # the gateway address reaches the host's loopback
        return {"client": world.guest, "server": world.host, "addr": fam.gateway,
                "port": SERVICE_PORT, "server_port": SERVICE_PORT, "bind": None}
    return {"client": world.remote, "server": world.guest, "addr": fam.addr,
            "port": FORWARD_PORT, "server_port": GUEST_PORT, "bind": fam.remote}


def transfer(ep: dict, family: str, size: int, seed: int, upload: bool) -> float:
    """`size` bytes from client to server (upload, then the server answers the
    digest through the half-closed connection) or back; returns seconds."""
    bind = [ep["bind"]] if ep["bind"] else []
    if upload:
        server = Peer(ep["server"], "sink", family, ep["server_port"])
        client = ("upload", ep["addr"], ep["port"], size, seed, *bind)
    else:
        server = Peer(ep["server"], "source", family, ep["server_port"], size, seed)
        client = ("download", ep["addr"], ep["port"], *bind)
    server.wait_listening()
    try:
        client_out = Peer(ep["client"], *client).result()
        server_out = server.result()
    finally:
        server.stop()
    if upload:
        sent, received, count, seconds = client_out
    else:
        received, count, seconds = client_out
        (sent,) = server_out
    assert int(count) == size
    assert received == sent, "SHA-256 mismatch"
    return float(seconds)


def run_cell(world: TapWorld, route: str, fam: Family, size: int) -> tuple[float, float]:
    """Upload and download `size` bytes through one route; returns both durations."""
    ep = cell_endpoints(world, route, fam)
    family = str(fam.version)
    return (transfer(ep, family, size, 1, upload=True),
            transfer(ep, family, size, 2, upload=False))


def check_transfers(world: TapWorld, route: str, version: int) -> None:
    size = 64 * MIB
    up, down = run_cell(world, route, FAMILIES[version], size)
    print(f"\n{route} v{version}: upload {size * 8 / up / 1e9:.2f} Gbit/s, "
          f"download {size * 8 / down / 1e9:.2f} Gbit/s")


def check_reset(world: TapWorld, version: int) -> None:
    """The remote peer aborts: the guest's connection is reset."""
    fam = FAMILIES[version]
    server = Peer(world.remote, "reset", str(version), SERVICE_PORT).wait_listening()
    try:
        (outcome,) = Peer(world.guest, "expect_reset", fam.remote, SERVICE_PORT).result()
        server.result()
    finally:
        server.stop()
    assert outcome == "reset"


def check_short_connections(world: TapWorld, count: int = 1000) -> None:
    server = Peer(world.remote, "echo", "4", SERVICE_PORT, count).wait_listening()
    try:
        t = time.monotonic()
        (ok,) = Peer(world.guest, "many", V4.remote, SERVICE_PORT, count).result(300)
        elapsed = time.monotonic() - t
        server.result()
    finally:
        server.stop()
    print(f"\n{count} connections in {elapsed:.1f} s")
    assert int(ok) == count


# ---------------------------------------------------------------- tests


def _root_with_tools() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


needs_root = pytest.mark.skipif(not _root_with_tools(), reason="needs root and iproute2")


@contextlib.contextmanager
def driven(tag: str) -> Iterator[TapWorld]:
    """A world of its own with our driver running in it."""
    w = TapWorld(tag).create()
    try:
        w.start_ours()
        yield w
    finally:
        err = w.stop_driver()
        w.destroy()
        if err.strip():
            print("driver stderr:", err[-3000:])


@pytest.fixture(scope="module")
def world() -> Iterator[TapWorld]:
    with driven("a") as w:
        yield w


ROUTES = [(route, version) for route in ("out", "host", "in") for version in (4, 6)]


@needs_root
@pytest.mark.parametrize(("route", "version"), ROUTES, ids=[f"{r}-v{v}" for r, v in ROUTES])
def test_transfer_64mib_each_way(world: TapWorld, route: str, version: int):
    check_transfers(world, route, version)
    assert world.wait_no_flows() == 0


@needs_root
@pytest.mark.parametrize("version", (4, 6))
def test_reset_from_world_reaches_guest(world: TapWorld, version: int):
    check_reset(world, version)
    assert world.wait_no_flows() == 0


@needs_root
def test_refused_connection_is_reset():
    """Nobody listens: the guest's connect() fails at once with 'refused'."""
    w = TapWorld("r").create()
    try:
        w.start_ours()
        code = ("import socket\ntry:\n    socket.create_connection(('203.0.113.1', 9), 10)\n"
                "except ConnectionRefusedError:\n    print('refused')")
        out = sh("ip", "netns", "exec", w.guest, sys.executable, "-c", code).stdout.strip()
        assert out == "refused"
        assert w.wait_no_flows() == 0
    finally:
        w.destroy()


@needs_root
def test_1000_short_connections_leave_no_flow(world: TapWorld):
    check_short_connections(world)
    assert world.wait_no_flows() == 0
    assert world.stats()["stats"].get("tcp.conns_out", 0) >= 1000


# ------------------------------------------- the same through our real programs


@pytest.fixture(scope="module", params=["pasta", "passt"])
def program(request) -> Iterator[TapWorld]:
    """Our pasta, or our passt behind a stand-in for QEMU, in a world of its own."""
    w = TapWorld("p" + request.param[-1]).create()
    try:
        w.start_program(request.param)
        yield w
    finally:
        log = w.log()
        w.destroy()
        if log.strip():
            print(f"{request.param} log:", log)


@needs_root
@pytest.mark.parametrize(("route", "version"), ROUTES, ids=[f"{r}-v{v}" for r, v in ROUTES])
def test_program_transfer_64mib_each_way(program: TapWorld, route: str, version: int):
    check_transfers(program, route, version)
    assert program.wait_no_held_connections() == 0


@needs_root
def test_program_reset_and_1000_short_connections(program: TapWorld):
    check_reset(program, 6)
    check_short_connections(program)
    assert program.wait_no_held_connections() == 0


# ---------------------------------------------------------------- the runner


def serve(guest_netns: str, control: str) -> None:
    """Run the TCP driver: tap in ``guest_netns``, sockets here, stats on ``control``."""
    import ctypes
    import gc
    import ipaddress
    import threading
    from types import SimpleNamespace

    from passt.backends.dispatch import Dispatcher
    from passt.backends.tap import TunTap, open_tap
    from passt.context import Ctx
    from passt.flow.fwd import HOST, TCP, Forwarder, Listen
    from passt.loop import IN, EventLoop
    from passt.tcp import tap as tcp

    loop = EventLoop()
    net = SimpleNamespace(
        mac=bytes.fromhex(DRIVER_MAC.replace(":", "")), mtu=65520,
        addr4=ipaddress.ip_address(V4.addr), gw4=ipaddress.ip_address(V4.gateway),
        addr6=ipaddress.ip_address(V6.addr), gw6=ipaddress.ip_address(V6.gateway),
        ll6=None, ifname6="ext0",
    )
    ctx = Ctx(conf=SimpleNamespace(no_map_gw=False), net=net, loop=loop)
    ctx.fwd = Forwarder(loop)
    tcp.init(ctx)
    for family in (socket.AF_INET, socket.AF_INET6):
        any_addr = "::" if family == socket.AF_INET6 else "0.0.0.0"
        ctx.fwd.open(Listen(TCP, HOST, family, any_addr, FORWARD_PORT), GUEST_PORT)

    opened: list = []

    def open_in_guest() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(guest_netns, os.O_RDONLY)
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), "setns")
        os.close(fd)
        opened.append(open_tap("tap0"))

    thread = threading.Thread(target=open_in_guest)
    thread.start()
    thread.join()
    dispatcher = Dispatcher(ctx, {"tcp": tcp})
    dispatcher.attach(TunTap(opened[0][0]))

    server = socket.socket(socket.AF_UNIX)
    server.bind(control)
    server.listen(8)

    def answer(_events: int) -> None:
        conn, _ = server.accept()
        detail = [
            {"flow": repr(flow), "mask": flow.epoll_mask, "deadline": flow.deadline,
             **{name: getattr(flow.core, name) for name in flow.core.__slots__}}
            for key, flow in ctx.flows.items() if key[0] == "tcp"
        ]
        # Flows still alive as objects, in the table or not (held by a timer, say):
        # what is still reachable once the garbage collector has run.
        gc.collect()
        live = sum(1 for o in gc.get_objects() if isinstance(o, tcp.TcpFlow))
        report = {"flows": ctx.flows.stats(), "stats": dict(ctx.stats), "detail": detail,
                  "live": live}
        conn.sendall(json.dumps(report, default=repr).encode())
        conn.close()

    loop.add(server.fileno(), IN, answer)
    loop.add_signal(signal.SIGTERM, lambda: loop.stop(0))
    print("ready", flush=True)
    profile = os.environ.get("TCPTAP_PROFILE")
    if profile:  # a cProfile dump of the whole run, for performance work
        import cProfile
        import time as _time

        profiler = cProfile.Profile(_time.process_time)  # CPU time, not waiting
        profiler.runcall(loop.run)
        profiler.dump_stats(profile)
    else:
        loop.run()
    tcp.close(ctx)
    dispatcher.detach()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
