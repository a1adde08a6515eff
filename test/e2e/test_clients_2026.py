"""The command lines of today's clients, against ours and upstream 2026_07_16.

Theory of operation: podman 5 and rootlesskit 2 start pasta with fixed
command lines (DESIGN.md, "The interface as it is in 2026").  This harness
runs exactly those argv (plus ``--runas 0``: started as root, upstream would
drop to ``nobody``), in the world's "host" namespace (world.py), attached to
a namespace the test made (``--netns /run/netns/NAME``, as podman does), and
checks from the outside what a container would see: addresses, routes, MTU,
DNS through the forwarded address, the host through ``--map-guest-addr``,
outbound TCP (SHA-256 of an echoed stream) and UDP, published ports through
the host's loopback and external addresses, and pasta's exit once the
namespace is gone.  ``peers.py`` serves and asks inside the namespaces, and
reports the peer address each server saw, so that the address mapping is
checked too.

Every case runs against ours and against upstream 2026 (built by
``make deps`` into ``build/upstream-2026``), with the same expectations:
where the two differ, a test says so.

rootlesskit 2 runs for real too (``mk/clients.mk`` fetches Debian trixie's
2.0.2, which runs on bookworm): as an unprivileged user with subordinate
IDs, in a private mount namespace where ``/dev/net/tun`` is a 0666 node of
the test's (this machine's is 0600; rootlesskit creates ``tap0`` itself),
with a ``pasta`` wrapper that logs the argv rootlesskit passes.  podman 5
cannot run here (trixie's needs libc6 >= 2.38; bookworm has 2.36), so its
command line is replayed by the harness above.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

from .test_pasta_ns import SYSTEM_PYTHON, as_user, process_gone, user, wait_until  # noqa: F401
from .world import IFNAME, V4, V6, World

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers.py")
UPSTREAM = os.path.join(REPO, "build", "upstream-2026", "pasta")
ROOTLESSKIT = os.path.join(REPO, "build", "clients", "rootlesskit")
TIMEOUT = 20.0
IMPLS = ["ours", "upstream"]

HOST_PORT_TCP, HOST_PORT_UDP = 25233, 25234
CTR_PORT_TCP, CTR_PORT_UDP = 7001, 7002
HOST_SERVICE = 7100           # on the host, reached through host.containers.internal
DNS_FORWARD, GUEST_ADDR = "169.254.1.1", "169.254.1.2"
RESOLVER = "203.0.113.53"     # the world's resolver (world.RESOLVERS), served in "remote"


def podman_argv(netns: str) -> list[str]:
    """podman 5's rootless ``--network pasta`` command line, one TCP and one UDP port."""
    return ["--config-net",
            "-t", f"{HOST_PORT_TCP}-{HOST_PORT_TCP}:{CTR_PORT_TCP}-{CTR_PORT_TCP}",
            "-u", f"{HOST_PORT_UDP}-{HOST_PORT_UDP}:{CTR_PORT_UDP}-{CTR_PORT_UDP}",
            "--dns-forward", DNS_FORWARD, "-T", "none", "-U", "none", "--no-map-gw", "--quiet",
            "--netns", netns, "--map-guest-addr", GUEST_ADDR]


def rootlesskit_argv(netns: str) -> list[str]:
    """rootlesskit 2's pasta network driver (its defaults)."""
    return ["--stderr", "--ns-ifname=tap0", "--mtu=65520", "--config-net",
            "--address", "10.0.2.100", "--netmask", "24", "--gateway", "10.0.2.2",
            "--dns-forward", "10.0.2.3", "--tcp-ports", "none", "--udp-ports", "none",
            "--netns", netns]


def program(impl: str) -> list[str]:
    if impl == "ours":
        return [sys.executable, "-c", "from passt.cli import main_pasta; main_pasta()"]
    if not os.path.exists(UPSTREAM):
        pytest.skip("upstream 2026 not built (make deps builds it)")
    return [UPSTREAM]


def run_in(netns: str, *argv: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": REPO})


def ask(netns: str, *targets: str) -> dict[str, str]:
    """What ``peers.py ask`` got for each target, from ``netns``."""
    result = run_in(netns, sys.executable, PEERS, "ask", *targets)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@contextlib.contextmanager
def serving(netns: str, tcp: str, udp: str) -> Iterator[None]:
    """``peers.py serve`` in ``netns`` (TCP port 7 echoes) for the block."""
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, PEERS, "serve", "60",
                             tcp, udp], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield
    finally:
        proc.kill()
        proc.wait(TIMEOUT)


def ip_json(netns: str, *args: str) -> list[dict]:
    out = subprocess.run(["ip", "-n", netns, "-j", *args], capture_output=True, text=True,
                         check=True, timeout=TIMEOUT).stdout
    return json.loads(out) if out.strip() else []


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World("cl26", str(tmp_path_factory.mktemp("clients-2026")))
    w.create()
    subprocess.run(["ip", "-n", w.remote_ns, "addr", "add", f"{RESOLVER}/32", "dev", "lo"],
                   check=True, timeout=TIMEOUT)
    try:
        with serving(w.remote_ns, "7,7001", f"53@{RESOLVER},7,7002"):   # echo, who, DNS
            yield w
    finally:
        w.destroy()


class Container:
    """A namespace named as podman names its own, and the pasta attached to it."""

    def __init__(self, world: World, impl: str, argv: Callable[[str], list[str]]) -> None:
        self.name = f"ctr26-{impl}-{os.getpid()}"
        self.path = f"/run/netns/{self.name}"
        subprocess.run(["ip", "netns", "add", self.name], check=True, timeout=TIMEOUT)
        self.pid_file = os.path.join(world.workdir, f"{self.name}.pid")
        started = time.monotonic()
        result = run_in(world.host_ns, *program(impl), "--runas", "0", *argv(self.path),
                        "--pid", self.pid_file)
        self.startup = time.monotonic() - started
        assert result.returncode == 0, result.stderr   # podman waits for this exit status
        with open(self.pid_file) as f:
            self.pid = int(f.read())

    def stop(self) -> None:
        """As podman does when the container stops: the namespace goes away."""
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=TIMEOUT)

    def close(self) -> None:
        self.stop()
        if not process_gone(self.pid):
            os.kill(self.pid, signal.SIGKILL)


@pytest.fixture(params=IMPLS)
def podman(request, world) -> Iterator[Container]:
    program(request.param)   # skip early if upstream is missing
    container = Container(world, request.param, podman_argv)
    try:
        with serving(container.name, f"{CTR_PORT_TCP}", f"{CTR_PORT_UDP}"):
            yield container
    finally:
        container.close()


@pytest.fixture(params=IMPLS)
def rootlesskit(request, world) -> Iterator[Container]:
    program(request.param)
    container = Container(world, request.param, rootlesskit_argv)
    try:
        yield container
    finally:
        container.close()


def global_addresses(netns: str, ifname: str) -> set[tuple[str, int]]:
    links = {link["ifname"]: link for link in ip_json(netns, "addr", "show")}
    return {(a["local"], a["prefixlen"]) for a in links[ifname]["addr_info"]
            if a["scope"] == "global"}


def default_gateways(netns: str) -> set[str]:
    return {r.get("gateway", "") for v in ("-4", "-6") for r in ip_json(netns, v, "route")
            if r["dst"] == "default"}


def mtu(netns: str, ifname: str) -> int:
    return next(link["mtu"] for link in ip_json(netns, "link", "show") if link["ifname"] == ifname)


# -- podman 5 ---------------------------------------------------------------------------


def test_podman_container_gets_the_host_s_addresses_routes_and_mtu(podman) -> None:
    assert global_addresses(podman.name, IFNAME) == {(V4.host, V4.prefix), (V6.host, V6.prefix)}
    assert default_gateways(podman.name) == {V4.gateway, V6.gateway}
    assert mtu(podman.name, IFNAME) == 65520
    print(f"start-up to exit 0: {podman.startup:.3f} s")


def test_podman_dns_and_host_containers_internal(podman, world) -> None:
    with serving(world.host_ns, f"{HOST_SERVICE}", f"{HOST_SERVICE}"):
        got = ask(podman.name, f"udp:{DNS_FORWARD}:53",
                  f"tcp:{GUEST_ADDR}:{HOST_SERVICE}", f"udp:{GUEST_ADDR}:{HOST_SERVICE}")
    # the resolver in "remote" saw the host; the host's own service saw the host itself
    assert got == {f"udp:{DNS_FORWARD}:53": V4.host,
                   f"tcp:{GUEST_ADDR}:{HOST_SERVICE}": V4.host,
                   f"udp:{GUEST_ADDR}:{HOST_SERVICE}": V4.host}


def test_podman_outbound_tcp_and_udp(podman) -> None:
    result = run_in(podman.name, sys.executable, PEERS, "sha256", V4.remote, "7", str(4 << 20))
    assert result.returncode == 0, result.stderr
    digests = json.loads(result.stdout)
    assert digests["sent"] == digests["back"]
    for remote in (V4.remote, V6.remote):
        result = run_in(podman.name, sys.executable, PEERS, "udpsha256", remote, "7", "200")
        assert result.returncode == 0, result.stderr
        digests = json.loads(result.stdout)
        assert digests["sent"] == digests["back"]
    got = ask(podman.name, f"udp:{V4.remote}:7002", f"udp:[{V6.remote}]:7002",
              f"tcp:[{V6.remote}]:7001")
    assert got == {f"udp:{V4.remote}:7002": V4.host, f"udp:[{V6.remote}]:7002": V6.host,
                   f"tcp:[{V6.remote}]:7001": V6.host}


def published(*hosts: str) -> list[str]:
    return [f"{proto}:{host}:{port}" for host in hosts
            for proto, port in (("tcp", HOST_PORT_TCP), ("udp", HOST_PORT_UDP))]


def test_podman_published_ports_from_the_host(podman, world) -> None:
    """Through the host's loopback and its own external addresses, TCP and UDP: the
    container's server names the source it saw (upstream 2026's mapping)."""
    got = ask(world.host_ns, *published("127.0.0.1", "[::1]", V4.host, f"[{V6.host}]"))
    print(json.dumps(got, indent=1))
    assert not [t for t, answer in got.items() if answer.startswith("error")], got
    for proto in ("tcp", "udp"):
        port = HOST_PORT_TCP if proto == "tcp" else HOST_PORT_UDP
        # spliced: to the container's own address, from it (not its loopback)
        assert got[f"{proto}:127.0.0.1:{port}"] == V4.host
        assert got[f"{proto}:[::1]:{port}"] == V6.host
        # through the tap: the host's own address is --map-guest-addr
        assert got[f"{proto}:{V4.host}:{port}"] == GUEST_ADDR
        assert got[f"{proto}:[{V6.host}]:{port}"].startswith("fe80::")


def test_podman_published_ports_from_outside(podman, world) -> None:
    got = ask(world.remote_ns, *published(V4.host, f"[{V6.host}]"))
    assert got == {f"tcp:{V4.host}:{HOST_PORT_TCP}": V4.remote,
                   f"udp:{V4.host}:{HOST_PORT_UDP}": V4.remote,
                   f"tcp:[{V6.host}]:{HOST_PORT_TCP}": V6.remote,
                   f"udp:[{V6.host}]:{HOST_PORT_UDP}": V6.remote}


def test_podman_pasta_is_gone_after_the_container(podman) -> None:
    podman.stop()
    wait_until(lambda: process_gone(podman.pid), "pasta to quit with its namespace")


# -- rootlesskit 2 ------------------------------------------------------------------------


def test_rootlesskit_probe_exits_0() -> None:
    for impl in IMPLS:
        result = subprocess.run([*program(impl), "--host-lo-to-ns-lo", "--version"],
                                capture_output=True, text=True, timeout=TIMEOUT,
                                env={**os.environ, "PYTHONPATH": REPO})
        assert result.returncode == 0 and result.stdout.startswith("pasta "), impl


def test_rootlesskit_network(rootlesskit, world) -> None:
    name = rootlesskit.name
    assert global_addresses(name, "tap0") >= {("10.0.2.100", 24)}
    assert "10.0.2.2" in default_gateways(name)
    assert mtu(name, "tap0") == 65520
    with serving(world.host_ns, f"{HOST_SERVICE}", ""):
        got = ask(name, "udp:10.0.2.3:53", f"udp:{V4.remote}:7002",
                  f"tcp:10.0.2.2:{HOST_SERVICE}")
    # DNS forwarded to the resolver; the gateway is the host's loopback
    assert got == {"udp:10.0.2.3:53": V4.host, f"udp:{V4.remote}:7002": V4.host,
                   f"tcp:10.0.2.2:{HOST_SERVICE}": "127.0.0.1"}
    result = run_in(name, sys.executable, PEERS, "sha256", V4.remote, "7", str(1 << 20))
    digests = json.loads(result.stdout)
    assert digests["sent"] == digests["back"]


@pytest.mark.parametrize("impl", IMPLS)
def test_all_addresses_and_routes_of_the_template_are_copied(world, impl) -> None:
    """Upstream 2026 copies every address and route of the template interface."""
    program(impl)
    extra_addr, extra_route = "198.51.100.77/24", "198.18.0.0/24"
    ip = ["ip", "-n", world.host_ns]
    subprocess.run([*ip, "addr", "add", extra_addr, "dev", IFNAME], check=True, timeout=TIMEOUT)
    subprocess.run([*ip, "route", "add", extra_route, "via", V4.gateway, "dev", IFNAME],
                   check=True, timeout=TIMEOUT)
    try:
        container = Container(world, impl, podman_argv)
        try:
            assert ("198.51.100.77", 24) in global_addresses(container.name, IFNAME)
            routes = {(r["dst"], r.get("gateway")) for r in ip_json(container.name, "-4", "route")}
            assert (extra_route, V4.gateway) in routes
        finally:
            container.close()
    finally:
        subprocess.run([*ip, "route", "del", extra_route], capture_output=True, timeout=TIMEOUT)
        subprocess.run([*ip, "addr", "del", extra_addr, "dev", IFNAME], capture_output=True,
                       timeout=TIMEOUT)


# -- rootlesskit 2, for real -------------------------------------------------------------


@pytest.fixture(scope="module")
def subids(user: pwd.struct_passwd) -> pwd.struct_passwd:  # noqa: F811 - test_pasta_ns's
    """Subordinate IDs for the test user (rootlesskit maps them with newuidmap)."""
    for path in ("/etc/subuid", "/etc/subgid"):
        with open(path, "a+") as f:
            f.seek(0)
            if not any(line.startswith(f"{user.pw_name}:") for line in f):
                f.write(f"{user.pw_name}:300000:65536\n")
    return user


CARRIER_WAIT = """
import time
start = time.monotonic()
for _ in range(200):
    with open("/sys/class/net/tap0/carrier") as f:
        if f.read().strip() == "1":
            break
    time.sleep(0.02)
print(f"carrier after {time.monotonic() - start:.3f} s")
"""


def pasta_wrapper(workdir: str, impl: str) -> str:
    """A ``pasta`` for rootlesskit's ``--pasta-binary``: logs its argv, runs ``impl``'s."""
    if impl == "ours":
        run = (f"PYTHONPATH={REPO} {SYSTEM_PYTHON} -c "
               "'from passt.cli import main_pasta; main_pasta()'")
    else:
        run = UPSTREAM
    path = os.path.join(workdir, "pasta")
    with open(path, "w") as f:
        f.write(f'#!/bin/sh\necho "$@" > {workdir}/argv\nexec env {run} "$@"\n')
    os.chmod(path, 0o755)
    return path


@pytest.mark.parametrize("impl", IMPLS)
def test_real_rootlesskit_2(world, subids, impl) -> None:
    program(impl)
    if not os.path.exists(ROOTLESSKIT):
        pytest.skip("rootlesskit 2 not fetched (make deps fetches it)")
    workdir = tempfile.mkdtemp(prefix="rk26-")
    os.chmod(workdir, 0o777)
    tun = os.path.join(workdir, "tun")
    os.mknod(tun, 0o666 | 0o020000, os.makedev(10, 200))
    os.chmod(tun, 0o666)
    inside = "; ".join([
        # rootlesskit 2.0.2 starts the command without waiting for pasta: wait
        # for the tap's carrier (pasta attached), and say how long it took
        f"{SYSTEM_PYTHON} -c {shlex.quote(CARRIER_WAIT)}",
        "ip -o addr show tap0", "ip route",
        f"{SYSTEM_PYTHON} {PEERS} ask udp:10.0.2.3:53 tcp:{V4.remote}:7001 "
        f"udp:{V4.remote}:7002",
        f"{SYSTEM_PYTHON} {PEERS} sha256 {V4.remote} 7 {1 << 20}",
    ])
    rootlesskit = [*as_user(subids), "env", f"HOME={workdir}", f"XDG_RUNTIME_DIR={workdir}",
                   ROOTLESSKIT, "--net=pasta", f"--pasta-binary={pasta_wrapper(workdir, impl)}",
                   "--copy-up=/etc", "--disable-host-loopback", f"--state-dir={workdir}/state",
                   "sh", "-c", inside]
    try:
        result = run_in(world.host_ns, "unshare", "-m", "sh", "-c",
                        f"mount --bind {tun} /dev/net/tun && exec {shlex.join(rootlesskit)}",
                        timeout=60)
        assert result.returncode == 0, result.stderr
        with open(os.path.join(workdir, "argv")) as f:
            print("rootlesskit ran: pasta", f.read().strip())
        lines = result.stdout.splitlines()
        print(impl, lines[0])
        assert any("inet 10.0.2.100/24" in line for line in lines)
        assert any(line.startswith("default via 10.0.2.2 dev tap0") for line in lines)
        answers = json.loads(next(line for line in lines if line.startswith("{\"udp:10.0.2.3")))
        assert answers == {"udp:10.0.2.3:53": V4.host, f"tcp:{V4.remote}:7001": V4.host,
                           f"udp:{V4.remote}:7002": V4.host}
        digests = json.loads(lines[-1])
        assert digests["sent"] == digests["back"]
        wait_until(lambda: not pids_mentioning(workdir), "pasta to go with rootlesskit")
    finally:
        for pid in pids_mentioning(workdir):    # what this test started, if left over
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", workdir], timeout=TIMEOUT)


def pids_mentioning(text: str) -> list[int]:
    """PIDs whose command line mentions ``text`` (a directory unique to one test)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(entry))
    return found


# -- the splice switches of 2026 ------------------------------------------------------------

SPLICE_CASES = {
    # extra options, where the container's server listens, what it sees (or "error")
    "default": ([], f"{CTR_PORT_TCP}@127.0.0.1", "error"),     # its loopback stays private
    "host-lo-to-ns-lo": (["--host-lo-to-ns-lo"], f"{CTR_PORT_TCP}@127.0.0.1", "127.0.0.1"),
    "no-splice": (["--no-splice"], f"{CTR_PORT_TCP}", V4.gateway),  # through the tap
}


@pytest.mark.parametrize("case", list(SPLICE_CASES))
@pytest.mark.parametrize("impl", IMPLS)
def test_host_loopback_to_a_published_port(world, impl, case) -> None:
    extra, listen, seen = SPLICE_CASES[case]
    program(impl)
    container = Container(world, impl, lambda path: [*podman_argv(path), *extra])
    try:
        with serving(container.name, listen, ""):
            got = ask(world.host_ns, f"tcp:127.0.0.1:{HOST_PORT_TCP}")
        answer = got[f"tcp:127.0.0.1:{HOST_PORT_TCP}"]
        assert answer.startswith("error") if seen == "error" else answer == seen
    finally:
        container.close()
