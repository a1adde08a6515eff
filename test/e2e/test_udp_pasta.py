"""UDP through pasta's tap, for real: echo, gateway, DNS forwarding, -u, iperf3, limits.

Theory of operation
-------------------
The test builds its own small world (documentation prefixes only) and runs
pasta (ours, or upstream's with ``PASST_IMPL=upstream``, to compare) in the
"host" namespace, exactly as a user would: ``--config-net`` and a command,
here a ``sleep`` that writes its PID so that the test can reach pasta's
namespace::

    pasta's ns  (tap, configured by pasta: the host's addresses and routes)
    host   ext0  198.51.100.1/24  2001:db8:1::1/64  default via remote  (pasta here)
           lo    127.0.0.1, ::1   (the host's own services, via the gateway)
    remote ext0  198.51.100.2/24  2001:db8:1::2/64  (the gateway)
           lo    203.0.113.1  2001:db8:2::1   (the "outside" services)
                 203.0.113.53 2001:db8:2::53  (the resolvers of host's resolv.conf)

Sockets on every side are opened by the test itself through
``netns.NsRunner`` threads that joined each namespace, so peers are a few
lines of Python with content checks; socat and iperf3 run with ``nsenter``
and ``ip netns exec``.  Everything is torn down at the end, even on
failure; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from passt.host.netns import NsRunner

pytestmark = pytest.mark.e2e

FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
HOST = {4: "198.51.100.1", 6: "2001:db8:1::1"}
GATEWAY = {4: "198.51.100.2", 6: "2001:db8:1::2"}
REMOTE = {4: "203.0.113.1", 6: "2001:db8:2::1"}
RESOLVER = {4: "203.0.113.53", 6: "2001:db8:2::53"}
DNS_FORWARD = {4: "10.9.9.9", 6: "fd00::53"}
LOOPBACK = {4: "127.0.0.1", 6: "::1"}
PLEN = {4: 24, 6: 64}
FORWARDED = 10201  # -u: from the world into pasta's namespace
VERSIONS = [pytest.param(4, id="v4"), pytest.param(6, id="v6")]
IPERF_LEN = 16000
START_TIMEOUT = 30.0
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=timeout)


def program_argv(program: str, options: list[str]) -> list[str]:
    """Ours (default) or upstream's ``program`` (``PASST_IMPL=upstream``), in the foreground."""
    if os.environ.get("PASST_IMPL", "ours") == "upstream":
        prefix = [f"/usr/bin/{program}"]
    else:
        entry = f"main_{program}"
        prefix = [sys.executable, "-c", f"from passt.cli import {entry}; {entry}()"]
    return [*prefix, "-f", "-e", "--runas", "0", *options]


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# ---------------------------------------------------------------- the world


class World:
    """Host and remote namespaces joined by a veth pair; removed by ``destroy``."""

    def __init__(self) -> None:
        tag = f"{os.getpid()}-{random.randrange(1 << 16):04x}"
        self.host = f"udp-host-{tag}"
        self.remote = f"udp-remote-{tag}"
        self.etc = f"/etc/netns/{self.host}"
        self.runners: list[NsRunner] = []

    def create(self) -> World:
        try:
            for ns in (self.host, self.remote):
                run("ip", "netns", "add", ns)
                run("ip", "-n", ns, "link", "set", "lo", "up")
            os.makedirs(self.etc, exist_ok=True)
            with open(f"{self.etc}/resolv.conf", "w") as f:
                f.writelines(f"nameserver {RESOLVER[v]}\n" for v in (4, 6))
            run("ip", "link", "add", "ext0", "netns", self.host, "type", "veth",
                "peer", "name", "ext0", "netns", self.remote)
            for v in (4, 6):
                run("ip", "-n", self.host, "addr", "add", f"{HOST[v]}/{PLEN[v]}", "dev", "ext0",
                    *(["nodad"] if v == 6 else []))
                run("ip", "-n", self.remote, "addr", "add", f"{GATEWAY[v]}/{PLEN[v]}", "dev",
                    "ext0", *(["nodad"] if v == 6 else []))
                for address in (REMOTE[v], RESOLVER[v]):
                    run("ip", "-n", self.remote, "addr", "add", address, "dev", "lo")
            for ns in (self.host, self.remote):
                run("ip", "-n", ns, "link", "set", "ext0", "up")
            for v in (4, 6):
                run("ip", "-n", self.host, f"-{v}", "route", "add", "default", "via", GATEWAY[v])
        except BaseException:
            self.destroy()
            raise
        return self

    def runner(self, path: str) -> NsRunner:
        """A thread inside the namespace at ``path`` that makes sockets there."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            runner = NsRunner(fd, "udp-e2e")
        finally:
            os.close(fd)
        self.runners.append(runner)
        return runner

    def destroy(self) -> None:
        for runner in self.runners:
            runner.close()
        for ns in (self.host, self.remote):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                                  timeout=10).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        shutil.rmtree(self.etc, ignore_errors=True)


@dataclass
class Pasta:
    """One pasta process in the world's host namespace, and its namespace's PID."""

    proc: subprocess.Popen
    pid: int
    log: str

    @classmethod
    def start(cls, world: World, options: list[str], limit_fds: int = 0) -> Pasta:
        """Start pasta; return once its command runs in a configured namespace."""
        log = tempfile.mktemp(prefix="udp-e2e-pasta-")
        argv = program_argv("pasta", [*options, "--config-net", "--", "sleep", "600"])
        if limit_fds:
            argv = ["sh", "-c", f'ulimit -n {limit_fds} && exec "$@"', "pasta", *argv]
        with open(log, "w") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", world.host, *argv],
                                    stdout=out, stderr=subprocess.STDOUT,
                                    env={"PATH": PATH, "LC_ALL": "C"})
        pasta = cls(proc, 0, log)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            pasta.pid = next(iter(_descendants(proc.pid, "sleep")), 0)
            if pasta.pid and pasta.configured():
                return pasta
            time.sleep(0.1)
        pytest.fail(f"pasta did not start: {pasta.stop()[-2000:]}")

    def configured(self) -> bool:
        """Whether pasta's namespace has the host's address and default route yet."""
        routes = subprocess.run(self.nsenter("ip", "-4", "route", "show", "default"),
                                capture_output=True, text=True, timeout=10)
        return routes.returncode == 0 and GATEWAY[4] in routes.stdout

    def stop(self) -> str:
        """Stop pasta; its log."""
        stop_process(self.proc)
        with open(self.log) as f:
            return f.read()

    def nsenter(self, *args: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-n", "--", *args]


def _descendants(pid: int, comm: str) -> list[int]:
    """PIDs of the processes named ``comm`` below ``pid`` (pasta's command)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            with open(f"/proc/{parent}/comm") as f:
                if f.read().strip() == comm:
                    found.append(parent)
            for task in os.listdir(f"/proc/{parent}/task"):
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


@dataclass
class Setup:
    world: World
    pasta: Pasta
    inside: NsRunner  # pasta's namespace: the guest
    host: NsRunner
    remote: NsRunner


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    world = World().create()
    pasta = None
    try:
        options = ["-t", "none", "-T", "none", "-U", "none", "-u", str(FORWARDED),
                   "--dns-forward", DNS_FORWARD[4], "--dns-forward", DNS_FORWARD[6]]
        pasta = Pasta.start(world, options)
        yield Setup(world, pasta, world.runner(f"/proc/{pasta.pid}/ns/net"),
                    world.runner(f"/run/netns/{world.host}"),
                    world.runner(f"/run/netns/{world.remote}"))
    finally:
        if pasta is not None:
            print(pasta.stop()[-3000:])
        world.destroy()


# ---------------------------------------------------------------- helpers


def udp_socket(side: NsRunner, version: int, address: str = "", port: int = 0) -> socket.socket:
    """A UDP socket made in ``side``'s namespace, bound if ``address`` is given.

    ``SO_REUSEADDR`` only for a fixed port: on sockets that all have it, the
    kernel's automatic binding may give two of them one port (it only avoids
    ports held by sockets without it), and answers then reach the wrong one.
    """
    s = side.call(socket.socket, FAMILY[version], socket.SOCK_DGRAM)
    if port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if address:
        if version == 6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((address, port))
    s.settimeout(5)
    return s


def echo_round_trips(client: socket.socket, server: socket.socket, to: tuple[str, int],
                     sizes: list[int]) -> tuple[str, int]:
    """Datagrams of ``sizes`` there and reversed back, checked; the source the server saw."""
    source: tuple = ("", 0)
    for size in sizes:
        payload = os.urandom(size)
        client.sendto(payload, to)
        data, source = server.recvfrom(65536)
        assert data == payload, f"{size} bytes changed on the way out"
        server.sendto(data[::-1], source)
        reply, origin = client.recvfrom(65536)
        assert reply == payload[::-1], f"{size} bytes changed on the way back"
        assert origin[:2] == to, "the answer must come from where the guest sent"
    return source[0], source[1]


SIZES = [1, 100, 1400, 1500, 9000, 32768, 65000]


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("version", VERSIONS)
def test_echo_to_the_remote_world_keeps_the_guests_address_and_port(setup: Setup,
                                                                    version: int) -> None:
    server = udp_socket(setup.remote, version, REMOTE[version])
    client = udp_socket(setup.inside, version, "::" if version == 6 else "0.0.0.0")
    port = server.getsockname()[1]
    address, sport = echo_round_trips(client, server, (REMOTE[version], port), SIZES)
    assert (address, sport) == (HOST[version], client.getsockname()[1])


def test_pasta_leaves_ipv6_checksums_to_the_namespace_and_loads_no_numpy(setup: Setup) -> None:
    """With partial checksums (the tap's NEEDS_CSUM) pasta sums no payload: large
    IPv6 datagrams go both ways, and NumPy is never mapped."""
    server = udp_socket(setup.remote, 6, REMOTE[6])
    client = udp_socket(setup.inside, 6)
    echo_round_trips(client, server, (REMOTE[6], server.getsockname()[1]), SIZES)
    with open(f"/proc/{setup.pasta.proc.pid}/maps") as maps:
        mapped = maps.read()
    assert "python" in mapped and "numpy" not in mapped


@pytest.mark.parametrize("version", VERSIONS)
def test_the_gateway_reaches_the_hosts_loopback(setup: Setup, version: int) -> None:
    server = udp_socket(setup.host, version, LOOPBACK[version])
    client = udp_socket(setup.inside, version)
    port = server.getsockname()[1]
    address, _ = echo_round_trips(client, server, (GATEWAY[version], port), SIZES)
    assert address == LOOPBACK[version]


@pytest.mark.parametrize("version", VERSIONS)
def test_a_closed_port_is_refused_at_once(setup: Setup, version: int) -> None:
    """The remote's port unreachable reaches the namespace's socket as ECONNREFUSED."""
    closed = udp_socket(setup.remote, version, REMOTE[version])
    port = closed.getsockname()[1]
    closed.close()
    client = udp_socket(setup.inside, version)
    client.connect((REMOTE[version], port))
    client.send(b"anyone there?")
    with pytest.raises(ConnectionRefusedError):
        client.recv(100)  # a TimeoutError after 5 s if the error never came


@pytest.mark.parametrize("version", VERSIONS)
def test_socat_datagram_echo(setup: Setup, version: int) -> None:
    """socat on both ends: what the remote received and what came back, byte for byte."""
    port = 10300 + version
    workdir = tempfile.mkdtemp(prefix="udp-socat-")
    received = f"{workdir}/received"
    target = f"[{REMOTE[version]}]" if version == 6 else REMOTE[version]
    payload = os.urandom(6000).hex().encode()  # 12000 bytes: two datagrams of socat's 8192
    server = subprocess.Popen(
        ["ip", "netns", "exec", setup.world.remote, "socat", "-T", "10",
         f"UDP{version}-LISTEN:{port},bind={target}",
         f"SYSTEM:tee -a {received}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.3)
        client = subprocess.run(
            setup.pasta.nsenter("socat", "-t", "3", "-T", "5", "-",
                                f"UDP{version}:{target}:{port}"),
            input=payload, capture_output=True, timeout=30)
        assert client.returncode == 0, client.stderr
        with open(received, "rb") as f:
            assert f.read() == payload
        assert client.stdout == payload
    finally:
        server.kill()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def dns_query(name: str, ident: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", 1, 1)


def dns_answer(query: bytes, address: str) -> bytes:
    """A one-record A answer to ``query`` (the tiny resolver of this test)."""
    header = struct.pack("!HHHHHH", int.from_bytes(query[:2], "big"), 0x8180, 1, 1, 0, 0)
    record = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address)
    return header + query[12:] + record


def serve_dns(sock: socket.socket, answers: int, address: str) -> threading.Thread:
    def serve() -> None:
        for _ in range(answers):
            try:
                query, peer = sock.recvfrom(512)
            except OSError:
                return
            sock.sendto(dns_answer(query, address), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("version", VERSIONS)
def test_dns_forward_reaches_the_hosts_resolver(setup: Setup, version: int) -> None:
    resolver = udp_socket(setup.remote, version, RESOLVER[version], 53)
    serve_dns(resolver, 3, "198.51.100.77")
    client = udp_socket(setup.inside, version)
    try:
        for ident in (0x1234, 0x1235, 0x1236):
            client.sendto(dns_query("service.example.test", ident), (DNS_FORWARD[version], 53))
            answer, origin = client.recvfrom(512)
            assert origin[:2] == (DNS_FORWARD[version], 53)
            assert int.from_bytes(answer[:2], "big") == ident
            assert answer[-4:] == socket.inet_aton("198.51.100.77")
    finally:
        resolver.close()


def test_the_gateway_as_resolver_reaches_a_resolver_on_the_hosts_loopback(setup: Setup) -> None:
    """resolv.conf names 127.0.0.53 (systemd-resolved): the namespace asks the gateway."""
    world = setup.world
    resolv = f"{world.etc}/resolv.conf"
    with open(resolv) as f:
        saved = f.read()
    with open(resolv, "w") as f:
        f.write("nameserver 127.0.0.53\n")
    try:
        pasta = Pasta.start(world, ["-t", "none", "-T", "none", "-u", "none", "-U", "none"])
    finally:
        with open(resolv, "w") as f:
            f.write(saved)
    resolver = udp_socket(setup.host, 4, "127.0.0.53", 53)
    try:
        serve_dns(resolver, 1, "198.51.100.78")
        client = udp_socket(world.runner(f"/proc/{pasta.pid}/ns/net"), 4)
        client.sendto(dns_query("host.example.test", 0x4321), (GATEWAY[4], 53))
        answer, origin = client.recvfrom(512)
        assert origin[:2] == (GATEWAY[4], 53)
        assert answer[:2] == b"\x43\x21" and answer[-4:] == socket.inet_aton("198.51.100.78")
    finally:
        resolver.close()
        pasta.stop()


@pytest.mark.parametrize("version", VERSIONS)
def test_forwarded_port_keeps_the_senders_address(setup: Setup, version: int) -> None:
    """-u: the world sends to the host's port, the namespace's service sees the sender."""
    server = udp_socket(setup.inside, version, "::" if version == 6 else "0.0.0.0", FORWARDED)
    client = udp_socket(setup.remote, version, REMOTE[version])
    try:
        address, sport = echo_round_trips(client, server, (HOST[version], FORWARDED), SIZES)
        assert (address, sport) == (REMOTE[version], client.getsockname()[1])
    finally:
        server.close()


def iperf3(setup: Setup, version: int, reverse: bool) -> dict:
    port = 10400 + version + (10 if reverse else 0)
    server = subprocess.Popen(["ip", "netns", "exec", setup.world.remote, "iperf3", "-s", "-1",
                               "-p", str(port), "-B", REMOTE[version]],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        client = subprocess.run(
            setup.pasta.nsenter("iperf3", "-u", "-c", REMOTE[version], "-p", str(port),
                                "-b", "4G", "-l", str(IPERF_LEN), "-t", "3", "-J",
                                *(["-R"] if reverse else [])),
            capture_output=True, text=True, timeout=60)
        assert client.returncode == 0, client.stdout[-2000:] + client.stderr[-2000:]
        return json.loads(client.stdout)["end"]["sum"]
    finally:
        server.kill()
        server.wait(10)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("reverse", [pytest.param(False, id="ns-to-remote"),
                                     pytest.param(True, id="remote-to-ns")])
def test_iperf3_udp(setup: Setup, version: int, reverse: bool) -> None:
    result = iperf3(setup, version, reverse)
    delivered = result["packets"] - result["lost_packets"]
    rate = delivered * IPERF_LEN * 8 / result["seconds"] / 1e9
    print(f"iperf3 -u IPv{version} {'remote -> ns' if reverse else 'ns -> remote'}: "
          f"{rate:.2f} Gbit/s delivered ({result['bits_per_second'] / 1e9:.2f} offered), "
          f"{result['lost_percent']:.1f}% of {result['packets']} datagrams of "
          f"{IPERF_LEN} bytes lost")
    assert result["packets"] > 0 and result["lost_packets"] < result["packets"]


def test_no_udp_drops_the_namespaces_datagrams(setup: Setup) -> None:
    world = setup.world
    pasta = Pasta.start(world, ["-t", "none", "-T", "none", "-u", "none", "-U", "none",
                                "--no-udp"])
    try:
        inside = world.runner(f"/proc/{pasta.pid}/ns/net")
        server = udp_socket(setup.remote, 4, REMOTE[4])
        client = udp_socket(inside, 4)
        server.settimeout(1.0)
        for _ in range(3):
            client.sendto(b"should not pass", server.getsockname())
        with pytest.raises(TimeoutError):
            server.recvfrom(100)
    finally:
        pasta.stop()


def test_a_full_flow_table_refuses_new_flows_and_old_ones_go_on(setup: Setup) -> None:
    """With few descriptors, hundreds of flows: the first ones work, the rest are refused."""
    world = setup.world
    pasta = Pasta.start(world, ["-t", "none", "-T", "none", "-u", "none", "-U", "none"],
                        limit_fds=300)
    try:
        inside = world.runner(f"/proc/{pasta.pid}/ns/net")
        server = udp_socket(setup.remote, 4, REMOTE[4])
        first = udp_socket(inside, 4)
        first.sendto(b"first", server.getsockname())
        assert server.recvfrom(100)[0] == b"first"
        clients = [udp_socket(inside, 4) for _ in range(400)]
        for c in clients:
            c.sendto(b"more", server.getsockname())
        server.settimeout(1.0)
        arrived = 0
        try:
            while arrived < len(clients):
                server.recvfrom(100)
                arrived += 1
        except TimeoutError:
            pass
        print(f"{arrived} of {len(clients)} new flows got through")
        assert 0 < arrived < len(clients)
        first.sendto(b"still here", server.getsockname())
        data, source = server.recvfrom(100)
        assert data == b"still here"
        server.sendto(b"and back", source)
        assert first.recvfrom(100)[0] == b"and back"
        for c in clients:
            c.close()
        assert pasta.proc.poll() is None
    finally:
        pasta.stop()
