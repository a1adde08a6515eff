"""The untrusted side, played by the test: a guest on passt's socket, a namespace on pasta's tap.

Theory of operation: the isolation, hostile-frame and limit tests need to
send what no well-behaved guest sends, so they cannot use a real guest.
The test itself is the guest:

- ``QemuLink`` speaks QEMU's stream protocol on passt's UNIX socket (each
  frame preceded by its 32-bit big-endian length) and can also write raw
  bytes, for a length prefix no QEMU would send.
- ``TapLink`` is a packet socket on pasta's tap inside the namespace:
  what it sends leaves through the tap, so pasta reads it as the
  namespace's frame; what pasta writes arrives on it.
- ``Guest`` pumps frames from a link, learns the MAC of the other end (ARP),
  and hands TCP segments to ``GuestTcp``, a TCP endpoint just large enough
  for bulk data in both directions (in-order delivery, cumulative ACKs, a
  bounded number of retransmissions): the "existing flow" that must keep
  working while the rest of the guest misbehaves.
- ``EchoServer`` serves TCP in a namespace of the world (sockets created by
  a short-lived thread that entered it), counting connections and their
  peers, so that tests can tell what passt really connected.
- ``Usage`` reads what the tests print and bound: descriptors, resident
  memory and its peak, per ``/proc/PID``.

The module holds no tests; pytest collects it and finds none.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import random
import select
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from passt.host import netns as netns_mod
from passt.packet import (
    ACK,
    ETH_P_ARP,
    FIN,
    IPPROTO_TCP,
    PSH,
    RST,
    SYN,
    ParseError,
    TcpSegment,
    build_frame_arp,
    build_frame_tcp,
    parse_arp,
    parse_frame,
    parse_tcp,
    tcp_options,
)

from .daemon import Daemon
from .deploy import deploy_pasta
from .impl import Impl
from .world import V4, V6, World

T = TypeVar("T")
GUEST_MAC = bytes.fromhex("525400123456")
BROADCAST = b"\xff" * 6
GUEST4 = socket.inet_pton(socket.AF_INET, V4.host)
GATEWAY4 = socket.inet_pton(socket.AF_INET, V4.gateway)
REMOTE4 = socket.inet_pton(socket.AF_INET, V4.remote)
GUEST6 = socket.inet_pton(socket.AF_INET6, V6.host)
REMOTE6 = socket.inet_pton(socket.AF_INET6, V6.remote)
CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SIOCGIFMTU = 0x8921
WINDOW = 65535
MSS = 1400
RETRIES = 8
TIMEOUT = 10.0
ECHO_PORT = 7777  # the remote namespace's echo service
ETH_HLEN = 14
FRAME_MAX = 65535  # the largest frame on passt's socket


def wait_for(condition: Callable[[], object], timeout: float, what: str,
             interval: float = 0.05) -> None:
    """Poll ``condition`` until true; ``AssertionError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# -- links ----------------------------------------------------------------------


class QemuLink:
    """The guest's end of passt's socket, framed as QEMU frames it."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._buffer = bytearray()

    def send_frames(self, frames: list[bytes]) -> None:
        self.send_raw(b"".join(struct.pack("!I", len(f)) + f for f in frames))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_frames(self, timeout: float) -> list[bytes]:
        """Frames readable within ``timeout``; ``EOFError`` if passt closed the socket."""
        readable, _, _ = select.select([self.sock], [], [], timeout)
        if readable:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("passt closed the socket")
            self._buffer += chunk
        frames = []
        while len(self._buffer) >= 4:
            (size,) = struct.unpack_from("!I", self._buffer)
            if len(self._buffer) < 4 + size:
                break
            frames.append(bytes(self._buffer[4 : 4 + size]))
            del self._buffer[: 4 + size]
        return frames

    def close(self) -> None:
        self.sock.close()


def in_netns(netns: str, fn: Callable[[], T]) -> T:
    """``fn()`` on a short-lived thread inside network namespace ``netns`` (a name or path)."""
    path = netns if "/" in netns else f"/run/netns/{netns}"
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            netns_mod.setns(fd, CLONE_NEWNET)
            result.append(fn())
        except BaseException as e:  # handed to the caller
            errors.append(e)
        finally:
            os.close(fd)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


class TapLink:
    """A packet socket on pasta's tap in the namespace: we play the namespace's frames."""

    def __init__(self, netns: str, ifname: str) -> None:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.bind((ifname, 0))
            return s

        self.sock = in_netns(netns, make)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setblocking(False)
        request = struct.pack("16si12x", ifname.encode(), 0)
        self.mtu = struct.unpack_from("16si", fcntl.ioctl(self.sock, SIOCGIFMTU, request))[1]
        self.mac: bytes = self.sock.getsockname()[4]

    def send_frames(self, frames: list[bytes]) -> None:
        for frame in frames:
            with contextlib.suppress(OSError):  # the kernel refuses what no tap could carry
                self.sock.send(frame)

    def recv_frames(self, timeout: float) -> list[bytes]:
        """Frames pasta wrote to the tap (not those the namespace sent) within ``timeout``."""
        select.select([self.sock], [], [], timeout)
        frames = []
        for _ in range(1024):
            try:
                frame, address = self.sock.recvfrom(65536)
            except BlockingIOError:
                break
            if address[2] != PACKET_OUTGOING:
                frames.append(frame)
        return frames

    def close(self) -> None:
        self.sock.close()


# -- the guest ------------------------------------------------------------------------


@dataclass
class Guest:
    """Frames to and from the other end; TCP segments go to their ``GuestTcp``."""

    link: QemuLink | TapLink
    mac: bytes = GUEST_MAC
    peer_mac: bytes = BROADCAST
    conns: dict[tuple[bytes, int, bytes, int], GuestTcp] = field(default_factory=dict)
    others: list[bytes] = field(default_factory=list)  # frames no connection took

    def send(self, frames: list[bytes]) -> None:
        self.link.send_frames(frames)

    def pump(self, timeout: float) -> int:
        """Read what arrives within ``timeout`` and dispatch it; the number of frames."""
        frames = self.link.recv_frames(timeout)
        for frame in frames:
            self._dispatch(frame)
        return len(frames)

    def _dispatch(self, frame: bytes) -> None:
        try:
            pkt = parse_frame(frame)
            if pkt.src is not None and pkt.dst is not None and pkt.proto == IPPROTO_TCP:
                seg = parse_tcp(pkt.l4)
                conn = self.conns.get((pkt.dst, seg.dport, pkt.src, seg.sport))
                if conn is not None:
                    conn.on_segment(seg)
                    return
        except ParseError:
            pass
        if len(self.others) < 100_000:
            self.others.append(frame)

    def resolve(self, address: bytes = GATEWAY4, timeout: float = TIMEOUT) -> bytes:
        """The other end's MAC, from its answer to an ARP request for ``address``."""
        request = build_frame_arp(BROADCAST, self.mac, 1, self.mac, GUEST4, bytes(6), address)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.send([request])
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                self.pump(0.1)
                for frame in self.take(lambda f: f[12:14] == struct.pack("!H", ETH_P_ARP)):
                    arp = parse_arp(memoryview(frame)[14:])
                    if arp.op == 2 and arp.sender_ip == address:
                        self.peer_mac = arp.sender_mac
                        return self.peer_mac
        raise AssertionError("no ARP reply")

    def take(self, wanted: Callable[[bytes], bool]) -> list[bytes]:
        """Remove and return the unclaimed frames ``wanted`` accepts."""
        taken = [f for f in self.others if wanted(f)]
        if taken:
            self.others = [f for f in self.others if not wanted(f)]
        return taken

    def tcp(self, src: bytes, dst: bytes, sport: int, dport: int) -> GuestTcp:
        conn = GuestTcp(self, src, dst, sport, dport)
        self.conns[(src, sport, dst, dport)] = conn
        return conn

    def accept(self, port: int, timeout: float = TIMEOUT) -> GuestTcp:
        """The next connection the other end opens to our ``port``, established."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump(0.05)
            for frame in self.others:
                syn = _syn_to(frame, port)
                if syn is None:
                    continue
                self.others.remove(frame)
                pkt, seg = syn
                conn = self.tcp(pkt.dst, pkt.src, port, seg.sport)
                conn.rcv_nxt = (seg.seq + 1) & 0xFFFFFFFF
                synack = conn._frame(conn.snd_nxt, SYN | ACK, options=tcp_options(mss=MSS))
                conn.snd_nxt += 1
                conn._until(conn.handshake_done, [synack], deadline - time.monotonic())
                conn.established = conn.snd_una == conn.snd_nxt
                if conn.established:
                    return conn
        raise AssertionError(f"no connection to guest port {port}")


class GuestTcp:
    """One TCP connection of the guest: enough TCP for an echo exchange, no more."""

    def __init__(self, guest: Guest, src: bytes, dst: bytes, sport: int, dport: int) -> None:
        self.guest = guest
        self.src, self.dst, self.sport, self.dport = src, dst, sport, dport
        self.snd_una = self.snd_nxt = random.getrandbits(32)
        self.rcv_nxt = 0
        self.received = bytearray()
        self.established = False
        self.reset = False
        self.peer_fin = False

    def _frame(self, seq: int, flags: int, payload: bytes = b"", options: bytes = b"") -> bytes:
        return build_frame_tcp(self.guest.peer_mac, self.guest.mac, self.src, self.dst,
                               self.sport, self.dport, seq & 0xFFFFFFFF, self.rcv_nxt, flags,
                               WINDOW, payload, options=options)

    def on_segment(self, seg: TcpSegment) -> None:
        flags = seg.flags
        if flags & RST:
            self.reset = True
            return
        if flags & SYN and flags & ACK:
            self.rcv_nxt = (seg.seq + 1) & 0xFFFFFFFF
            self.snd_una = seg.ack
            self.established = True
            self.guest.send([self._frame(self.snd_nxt, ACK)])
            return
        if flags & ACK and _after(seg.ack, self.snd_una):
            self.snd_una = seg.ack
        payload = bytes(seg.payload)
        if payload or flags & FIN:
            if seg.seq == self.rcv_nxt:
                self.received += payload
                self.rcv_nxt = (self.rcv_nxt + len(payload) + (1 if flags & FIN else 0)) \
                    & 0xFFFFFFFF
                self.peer_fin |= bool(flags & FIN)
            self.guest.send([self._frame(self.snd_nxt, ACK)])  # (duplicate) ACK

    def handshake_done(self) -> bool:
        """Our SYN (or SYN-ACK) is acknowledged, or the peer reset."""
        return self.snd_una == self.snd_nxt or self.reset

    def connect(self, timeout: float = TIMEOUT, wscale: int | None = None) -> None:
        """Open the connection; with ``wscale`` our window is ``WINDOW << wscale``."""
        syn = self._frame(self.snd_nxt, SYN, options=tcp_options(mss=MSS, wscale=wscale))
        self.snd_nxt += 1
        self._until(lambda: self.established or self.reset, [syn], timeout)
        if not self.established:
            raise ConnectionRefusedError(f"connection to port {self.dport} reset")

    def send(self, data: bytes, timeout: float = TIMEOUT) -> None:
        """Send ``data`` and wait until all of it is acknowledged."""
        segments = []
        for offset in range(0, len(data), MSS):
            chunk = data[offset : offset + MSS]
            segments.append(self._frame(self.snd_nxt, ACK | PSH, chunk))
            self.snd_nxt = (self.snd_nxt + len(chunk)) & 0xFFFFFFFF
        target = self.snd_nxt
        self._until(lambda: self.snd_una == target or self.reset, segments, timeout)
        if self.snd_una != target:
            raise ConnectionError("data not acknowledged")

    def recv(self, size: int, timeout: float = TIMEOUT) -> bytes:
        """``size`` bytes of in-order data (or what came before a FIN or reset)."""
        deadline = time.monotonic() + timeout
        while len(self.received) < size and not (self.peer_fin or self.reset):
            if time.monotonic() > deadline:
                break
            self.guest.pump(0.05)
        data, self.received = bytes(self.received[:size]), self.received[size:]
        return data

    def echo(self, data: bytes, timeout: float = TIMEOUT) -> bytes:
        self.send(data, timeout)
        return self.recv(len(data), timeout)

    def abort(self) -> None:
        self.guest.send([self._frame(self.snd_nxt, RST | ACK)])
        self.guest.conns.pop((self.src, self.sport, self.dst, self.dport), None)

    def _until(self, done: Callable[[], bool], frames: list[bytes], timeout: float) -> None:
        """Send ``frames``; resend them (bounded) until ``done()`` or ``timeout``."""
        deadline = time.monotonic() + timeout
        for attempt in range(RETRIES):
            self.guest.send(frames)
            resend = time.monotonic() + 0.5 * (attempt + 1)
            while time.monotonic() < min(resend, deadline):
                self.guest.pump(0.05)
                if done():
                    return
            if time.monotonic() >= deadline:
                return


def echo_check(conn: GuestTcp) -> Callable[[], None]:
    """A check that ``conn`` still echoes 4 KiB."""
    def check() -> None:
        data = os.urandom(4096)
        assert conn.echo(data) == data, "the established flow no longer echoes"
    return check


def connected_guest(path: str, sport: int, dport: int = ECHO_PORT) -> tuple[QemuLink, GuestTcp]:
    """A new guest on passt's socket with a connection to the remote echo service."""
    link = QemuLink(path)
    try:
        guest = Guest(link)
        guest.resolve()
        conn = guest.tcp(GUEST4, REMOTE4, sport, dport)
        conn.connect()
    except BaseException:
        link.close()
        raise
    return link, conn


def at_eof(link: QemuLink) -> bool:
    """Whether passt closed (or reset) ``link`` within a tenth of a second."""
    try:
        link.recv_frames(0.1)
    except (EOFError, ConnectionResetError):
        return True
    return False


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from a kernel socket, or fewer if it ends first."""
    got = bytearray()
    while len(got) < size:
        chunk = sock.recv(size - len(got))
        if not chunk:
            break
        got += chunk
    return bytes(got)


def ns_connect(netns: str, address: str, port: int) -> socket.socket:
    """A TCP connection made from inside namespace ``netns``."""
    return in_netns(netns, lambda: socket.create_connection((address, port), timeout=TIMEOUT))


def _syn_to(frame: bytes, port: int) -> tuple | None:
    """(packet, segment) if ``frame`` is a SYN (without ACK) to TCP ``port``."""
    try:
        pkt = parse_frame(frame)
        if pkt.proto != IPPROTO_TCP:
            return None
        seg = parse_tcp(pkt.l4)
    except ParseError:
        return None
    if seg.dport != port or seg.flags & (SYN | ACK) != SYN:
        return None
    return pkt, seg


def _after(a: int, b: int) -> bool:
    return 0 < (a - b) & 0xFFFFFFFF < 1 << 31


# -- the world's side ------------------------------------------------------------------


def listen_in(netns: str, address: str, port: int) -> socket.socket:
    """A non-blocking TCP listener on ``address``:``port`` in namespace ``netns``."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET

    def make() -> socket.socket:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port))
        s.listen(1024)
        return s

    listener = in_netns(netns, make)
    listener.setblocking(False)
    return listener


class ServerThread:
    """Sockets served by a thread of the test until ``close``; subclasses ``serve`` a turn."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        self.sockets = sockets
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.serve()
        self.finish()

    def serve(self) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Close what ``serve`` opened (on the thread, once stopped)."""

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self.sockets:
            s.close()


class TcpServer(ServerThread):
    """A TCP listener in a namespace of the world and the connections it accepted."""

    def __init__(self, netns: str, address: str, port: int) -> None:
        self.listener = listen_in(netns, address, port)
        self.conns: list[socket.socket] = []
        super().__init__([self.listener])

    def finish(self) -> None:
        for s in self.conns:
            s.close()


class EchoServer(TcpServer):
    """A TCP echo server; ``peers`` is who connected."""

    def __init__(self, netns: str, address: str, port: int) -> None:
        self.peers: list[tuple] = []
        super().__init__(netns, address, port)

    def serve(self) -> None:
        readable, _, _ = select.select([self.listener, *self.conns], [], [], 0.1)
        for s in readable:
            if s is self.listener:
                with contextlib.suppress(BlockingIOError):
                    conn, peer = s.accept()
                    self.peers.append(peer)
                    self.conns.append(conn)
                continue
            try:
                data = s.recv(65536)
                if data:
                    s.sendall(data)
                    continue
            except OSError:
                pass
            self.conns.remove(s)
            s.close()


class FloodServer(TcpServer):
    """Sends to whoever connects as fast as they take it, until closed: a bulk source."""

    CHUNK = bytes(1 << 16)

    def __init__(self, netns: str, address: str, port: int) -> None:
        self.sent = 0
        super().__init__(netns, address, port)

    def serve(self) -> None:
        readable, writable, _ = select.select([self.listener], self.conns, [], 0.1)
        if readable:
            with contextlib.suppress(BlockingIOError):
                conn, _ = self.listener.accept()
                conn.setblocking(False)
                self.conns.append(conn)
        for conn in writable:
            try:
                self.sent += conn.send(self.CHUNK)
            except BlockingIOError:
                continue
            except OSError:
                self.conns.remove(conn)
                conn.close()


class UdpEchoServer(ServerThread):
    """A UDP echo server on ``addresses``:``port`` in a namespace of the world."""

    def __init__(self, netns: str, addresses: list[str], port: int) -> None:
        super().__init__([in_netns(netns, functools.partial(_bound_udp, a, port))
                          for a in addresses])

    def serve(self) -> None:
        readable, _, _ = select.select(self.sockets, [], [], 0.1)
        for s in readable:
            data, peer = s.recvfrom(65536)
            s.sendto(data, peer)


def _bound_udp(address: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, port))
    return s


def blackhole(world: World, address: str) -> None:
    """Make the remote namespace drop everything sent to ``address``, silently."""
    subprocess.run(["ip", "-n", world.remote_ns, "route", "add", "blackhole", address],
                   check=True, capture_output=True, timeout=10)


# -- the program under test -------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Descriptors (by kind) and memory of a process, from ``/proc``."""

    fds: int
    kinds: Counter[str]
    rss_kib: int
    peak_kib: int

    @classmethod
    def of(cls, pid: int) -> Usage:
        fields = status(pid)
        kinds = descriptor_kinds(pid)
        return cls(sum(kinds.values()), kinds, int(fields["VmRSS"].split()[0]),
                   int(fields["VmHWM"].split()[0]))

    def __str__(self) -> str:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.kinds.items()))
        return (f"{self.fds} descriptors ({kinds}), RSS {self.rss_kib} KiB, "
                f"peak RSS {self.peak_kib} KiB")


_SOCKET_TABLES = {"tcp": "tcp", "tcp6": "tcp", "udp": "udp", "udp6": "udp", "icmp": "icmp",
                  "icmp6": "icmp", "raw": "raw", "raw6": "raw", "unix": "unix"}


def descriptor_kinds(pid: int) -> Counter[str]:
    """``pid``'s descriptors by kind: sockets by protocol (from its namespace's
    ``/proc/net`` tables), pipes, epoll and so on."""
    by_inode: dict[str, str] = {}
    for table, kind in _SOCKET_TABLES.items():
        column = 6 if table == "unix" else 9
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                lines = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > column:
                by_inode[fields[column]] = kind
    kinds: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            kinds[by_inode.get(target[8:-1], "socket")] += 1
        elif target.startswith(("pipe:", "anon_inode:")):
            kinds[target.split(":")[0 if target.startswith("pipe") else 1].strip("[]")] += 1
        else:
            kinds["file"] += 1
    return kinds


def status(pid: int, task: int | None = None) -> dict[str, str]:
    """``/proc/PID/status`` (or a task's) as a dictionary of stripped values."""
    path = f"/proc/{pid}/status" if task is None else f"/proc/{pid}/task/{task}/status"
    with open(path) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def tasks(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def start_passt(impl: Impl, world: World, workdir: str, options: list[str],
                runas: list[str] | None = None, prefix: tuple[str, ...] = ()) -> tuple[Daemon, str]:
    """passt in the world's host namespace, in the foreground; (daemon, socket path).

    ``runas`` defaults to the suite's ``--runas 0``; ``[]`` leaves it out, so
    that passt started as root drops to ``nobody``.  ``prefix`` goes before
    the program (``prlimit ...``).
    """
    path = os.path.join(workdir, "passt.sock")
    stderr = [] if "-l" in options else ["-e"]  # a log file excludes stderr
    argv = [*prefix, *impl.passt, "-f", *stderr, *(["--runas", "0"] if runas is None else runas),
            "-s", path, *options]
    daemon = Daemon(argv, world.host_ns, os.path.join(workdir, "passt.log"))
    daemon.start(lambda: os.path.exists(path))
    return daemon, path


@contextlib.contextmanager
def world_for(tag: str, workdir: str) -> Iterator[World]:
    world = World(tag, workdir).create()
    try:
        yield world
    finally:
        world.destroy()


# -- scenes: a program, its hostile side and one established flow -------------------------


@dataclass
class Scene:
    """A program under test, the hostile side facing it, and a flow that must keep working."""

    pid: int
    world: World
    guest: Guest  # the hostile side: on passt's socket, or on pasta's tap
    server: EchoServer  # the remote namespace's echo service, which sees who connects
    alive: Callable[[], bool]
    echo: Callable[[], None]  # the established flow still echoes (or raises)
    connect: Callable[[], None]  # a new connection to the echo service (raises if refused)
    frame_max: int  # the largest frame the link carries
    socket_path: str = ""  # passt's


@contextlib.contextmanager
def passt_scene(impl: Impl, workdir: str, prefix: tuple[str, ...] = (),
                blackholed: str | None = None) -> Iterator[Scene]:
    """passt in a world of its own, the test as its guest, connected to the echo service."""
    with world_for("scene-passt", workdir) as world:
        if blackholed:
            blackhole(world, blackholed)
        server = EchoServer(world.remote_ns, V4.remote, ECHO_PORT)
        daemon, path = start_passt(impl, world, workdir, [], prefix=prefix)
        link, conn = connected_guest(path, 33333)
        ports = iter(range(50000, 60000))

        def connect() -> None:
            fresh = conn.guest.tcp(GUEST4, REMOTE4, next(ports), ECHO_PORT)
            fresh.connect()
            fresh.abort()

        try:
            assert daemon.proc is not None
            yield Scene(daemon.proc.pid, world, conn.guest, server, daemon.alive,
                        echo_check(conn), connect, FRAME_MAX, path)
            assert daemon.alive(), daemon.describe()
        finally:
            link.close()
            daemon.stop()
            server.close()


@contextlib.contextmanager
def pasta_scene(impl: Impl, workdir: str, prefix: tuple[str, ...] = (),
                blackholed: str | None = None) -> Iterator[Scene]:
    """pasta attached to a namespace (``--config-net``), the test on its tap, and a
    connection from the namespace to the echo service."""
    deployment = deploy_pasta(Impl(impl.name, impl.passt, (*prefix, *impl.pasta)), workdir)
    world = deployment.world
    netns = world.extra_ns[0]
    if blackholed:
        blackhole(world, blackholed)
    server = EchoServer(world.remote_ns, V4.remote, ECHO_PORT)
    link = TapLink(netns, "ext0")
    try:
        sock = ns_connect(netns, V4.remote, ECHO_PORT)

        def echo() -> None:
            data = os.urandom(4096)
            sock.sendall(data)
            assert recv_exactly(sock, len(data)) == data, "the established flow no longer echoes"

        guest = Guest(link, mac=link.mac)
        guest.resolve()
        assert deployment.daemon.proc is not None
        yield Scene(deployment.daemon.proc.pid, world, guest, server, deployment.daemon.alive,
                    echo, lambda: ns_connect(netns, V4.remote, ECHO_PORT).close(),
                    link.mtu + ETH_HLEN)
        assert deployment.daemon.alive(), deployment.daemon.describe()
        sock.close()
    finally:
        link.close()
        server.close()
        deployment.teardown()
