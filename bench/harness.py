"""The programs under test, each in a world of its own, all running at once.

Theory of operation
-------------------
A side-by-side benchmark is only honest if every program sees the same
workload on the same machine at the same time.  This machine is shared and
noisy (two cores, other engineers' tests), so the subjects are started once
and kept running, each in a world of its own, and the benchmark alternates
between them measurement by measurement: load that comes and goes then
falls on all of them alike.

The worlds are those of the end-to-end suite (``test/e2e/world.py``): a
"host" namespace, whose only interface is a veth to a "remote" namespace
that plays the outside world (its loopback carries the "outside" service
addresses), plus, for pasta and slirp4netns, a target namespace.  The
programs under test run in the host namespace; nothing reaches the
machine's real interfaces.  Ports are the e2e matrix's
(``test/e2e/cells.py``): services of the remote namespace on
``REMOTE_PORTS``, pasta's ``-t``/``-u`` on ``FORWARDED`` (host → namespace
loopback: the spliced path), ``-T``/``-U`` on ``NS_FORWARDED``.

Subjects:

- ``pasta`` ours, ``upstream`` (upstream's 2026_07_16 release, built into
  ``build/upstream-2026``: the reference the ratios are taken against) and
  ``upstream2023`` (Debian's 2023 package, kept for history):
  ``--config-net`` on the target namespace, with the matrix's forwarding
  options, started as the e2e harness starts them (``e2e.impl``: ``-f -e
  --runas 0``; ``e2e.daemon`` retries a start that dies at once, which
  Debian's build sometimes does); ours through the launchers an
  installation has (``installed_ours``), so that start-up and memory are
  what users get, not what the test suite's ``python -c`` costs;
- ``slirp4netns``: ``--configure --mtu=65520 --disable-host-loopback
  --enable-ipv6`` on the same kind of namespace (10.0.2.0/24 inside, the
  outside reached through slirp's sockets in the host namespace); it has
  the tap path only;
- ``passt`` ours, upstream (2026) and upstream2023: a QEMU TCG guest (``e2e.guest``) on passt's
  socket, configured by DHCP and SLAAC (``e2e.l2``) as a user's would be;
- ``passt-vu``: the same over ``--vhost-user`` (QEMU 10, see mk/qemu10.mk),
  ours and upstream's 2026 release (``upstream``; Debian's has none), next
  to ours over the stream socket (``stream``), so that one run compares all
  three.

Clients "inside" run in the target namespace (``ip netns exec``) or on the
guest's console (``Shell``), behind one ``Endpoint`` interface; servers
always run in a namespace.  Whether a port listens, or a route exists, is
read from ``/proc/thread-self/net`` by a thread that joined the namespace
(``bench_splice.NsThread``): no process per poll, so start-up times can be
measured to the millisecond.

Every namespace the benchmark makes is deleted on the way out, even on
failure (``World.destroy`` kills what runs in them first).
"""

from __future__ import annotations

import atexit
import functools
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "test"))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import installtree  # noqa: E402
from bench_splice import NsThread  # noqa: E402
from e2e import impl as e2e_impl  # noqa: E402
from e2e import l2  # noqa: E402
from e2e.cells import FORWARDED, NS_FORWARDED, REMOTE_PORTS, forward_options  # noqa: E402
from e2e.daemon import Daemon  # noqa: E402
from e2e.guest import Guest  # noqa: E402
from e2e.shell import Shell  # noqa: E402
from e2e.world import V4, World  # noqa: E402

__all__ = ["FORWARDED", "NS_FORWARDED", "REMOTE_PORTS", "World"]

SLIRP4NETNS = "slirp4netns"
SLIRP_OPTIONS = ["--configure", "--mtu=65520", "--disable-host-loopback", "--enable-ipv6"]
# Ephemeral ports clear of every service port of the matrix, and TIME_WAIT
# reuse: the connection-rate cells open tens of thousands of connections.
SYSCTLS = ["net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=20000 65000"]
POLL = 0.002
# What each subject can be measured on: the tap path, the spliced path,
# Python peers inside (round trips, connections), a guest, fresh start-ups
# (attaching to a namespace; "command": starting one with a command of its own).
# "direct" is no program at all: the same traffic over the veth or the
# loopback, the ceiling of what the machine and the tools measure.
FEATURES = {
    ("pasta", "ours"): frozenset({"tap", "splice", "peer", "startup", "command"}),
    ("pasta", "upstream"): frozenset({"tap", "splice", "peer", "startup", "command"}),
    ("pasta", "upstream2023"): frozenset({"tap", "splice", "peer", "startup", "command"}),
    ("pasta", "slirp4netns"): frozenset({"tap", "peer", "startup"}),
    ("pasta", "direct"): frozenset({"tap", "splice", "peer"}),
    ("passt", "ours"): frozenset({"guest", "startup"}),
    ("passt", "upstream"): frozenset({"guest", "startup"}),
    ("passt", "upstream2023"): frozenset({"guest", "startup"}),
    ("passt-vu", "ours"): frozenset({"guest"}),
    ("passt-vu", "upstream"): frozenset({"guest"}),
    ("passt-vu", "stream"): frozenset({"guest"}),
    # pasta as on kernels without TCP SO_PEEK_OFF (before 6.9: Debian 12...):
    # ours told so by PASST_NO_PEEK_OFF=1; upstream's 2023 build never uses it
    # (its 2026 release does whenever the kernel has it, and cannot be told not to).
    ("pasta-fallback", "ours"): frozenset({"tap"}),
    ("pasta-fallback", "upstream2023"): frozenset({"tap"}),
}
NO_PEEK_OFF = ("env", "PASST_NO_PEEK_OFF=1")  # argv prefix: the path without SO_PEEK_OFF
START_TIMEOUT = 30.0
TIME = "/usr/bin/time"  # GNU time (Debian's package "time"): a child's peak RSS
UNIX_LISTENING = "00010000"  # __SO_ACCEPTCON in /proc/net/unix's Flags


class Endpoint(Protocol):
    """Somewhere a client program runs: a namespace or a guest's console."""

    name: str

    def run(self, argv: list[str], timeout: float) -> tuple[int, str]:
        """Run ``argv`` to completion; its exit status and standard output."""
        ...


class Namespace:
    """A network namespace by name: run programs in it, read its ``/proc/net``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._thread: NsThread | None = None

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: list[str], timeout: float) -> tuple[int, str]:
        done = subprocess.run(self.argv(argv), capture_output=True, text=True, timeout=timeout)
        return done.returncode, done.stdout + done.stderr if done.returncode else done.stdout

    def spawn(self, argv: list[str], log_path: str = os.devnull) -> subprocess.Popen:
        """Start ``argv`` in the background, in a process group of its own."""
        with open(log_path, "ab") as log:
            return subprocess.Popen(self.argv(argv), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def proc_net(self, name: str) -> str:
        """``/proc/net/<name>`` as seen inside the namespace."""
        if self._thread is None:
            self._thread = NsThread(f"/run/netns/{self.name}")
        return self._thread.call(_read, f"/proc/thread-self/net/{name}")

    def listening(self, proto: str, port: int) -> bool:
        state = "0A" if proto == "tcp" else "07"
        suffix = f":{port:04X}"
        return any(
            len(fields) > 3 and fields[1].endswith(suffix) and fields[3] == state
            for table in (proto, f"{proto}6")
            for fields in (line.split() for line in self.proc_net(table).splitlines()[1:])
        )

    def wait_listening(self, proto: str, port: int, proc: subprocess.Popen | None = None,
                       timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.listening(proto, port):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{self.name}: server on {proto} {port} exited")
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{self.name}: nothing listens on {proto} port {port}")
            time.sleep(POLL)

    def unix_listening(self, path: str) -> bool:
        """Whether a UNIX socket bound to ``path`` listens (``/proc/net/unix``)."""
        return any(len(fields) > 7 and fields[7] == path and fields[3] == UNIX_LISTENING
                   for fields in (line.split() for line in self.proc_net("unix").splitlines()[1:]))

    def has_default_route4(self) -> bool:
        """Whether an IPv4 default route exists (``/proc/net/route``)."""
        return any(fields[1] == "00000000" and fields[7] == "00000000"
                   for fields in (line.split() for line in self.proc_net("route").splitlines()[1:])
                   if len(fields) > 7)

    def sysctl(self, *settings: str) -> None:
        for setting in settings:
            subprocess.run(self.argv(["sysctl", "-qw", setting]), check=True, timeout=10,
                           capture_output=True)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


class GuestEndpoint:
    """Clients on a guest's serial console."""

    def __init__(self, shell: Shell) -> None:
        self.name = "guest"
        self.shell = shell

    def run(self, argv: list[str], timeout: float) -> tuple[int, str]:
        return self.shell.run(shlex.join(argv), timeout=timeout)


@dataclass
class Subject:
    """One program under test, running in its world."""

    label: str  # "ours", "upstream", "upstream2023", "slirp4netns", "direct"
    program: str  # "pasta" or "passt": which cells apply
    world: World
    daemon: Daemon | None  # None: "direct", no program in between
    inside: Endpoint  # where clients inside the namespace or guest run
    features: frozenset[str]  # see FEATURES
    respawn: Callable[[str], list[str]] | None  # argv of a fresh instance (namespace/socket)
    inner: Namespace | None = None  # pasta's or slirp4netns's namespace
    guest: Guest | None = None
    impl: Impl | None = None  # the implementation it runs (None: slirp4netns, direct)
    notes: list[str] = field(default_factory=list)

    @property
    def host(self) -> Namespace:
        return Namespace(self.world.host_ns)

    @property
    def remote(self) -> Namespace:
        return Namespace(self.world.remote_ns)

    @property
    def remote_address(self) -> str:
        """The outside service address, as clients inside dial it."""
        return V4.remote

    def alive(self) -> bool:
        guest_alive = self.guest is None or (self.guest.child is not None
                                             and self.guest.child.isalive())
        return (self.daemon is None or self.daemon.alive()) and guest_alive

    def memory_kib(self) -> dict[str, int] | None:
        """VmRSS (now) and VmHWM (peak so far) of the program, in KiB, if it runs."""
        if self.daemon is None or self.daemon.proc is None or not self.daemon.alive():
            return None
        return proc_memory(self.daemon.proc.pid)

    def cpu_seconds(self) -> float | None:
        """User and system CPU time of the program so far, if it runs."""
        if self.daemon is None or self.daemon.proc is None or not self.daemon.alive():
            return None
        return proc_cpu_seconds(self.daemon.proc.pid)

    def stop(self) -> str | None:
        """Guest, program, world, each step whatever the one before did; what went wrong."""
        problem = None
        try:
            if self.guest is not None:
                self.guest.shutdown()
        except Exception as e:  # noqa: BLE001 - QEMU is killed anyway; the rest must run
            problem = f"guest shutdown: {type(e).__name__}: {e}"
        finally:
            try:
                if self.daemon is not None:
                    self.daemon.stop()
            finally:
                self.world.destroy()
        return problem


def exit_on_sigterm() -> None:
    """SIGTERM (``timeout``, a killed make) unwinds like SystemExit, so worlds get deleted."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from ``/proc/PID/stat``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_memory(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


# -- implementations -----------------------------------------------------------


Impl = e2e_impl.Impl
# The e2e harness's name (``PASST_IMPL``) of the implementation behind each label.
IMPL_NAMES = {"ours": "ours", "upstream": "upstream2026", "upstream2023": "upstream"}


def implementation(label: str) -> Impl:
    """The e2e harness's ``Impl`` for ``upstream`` (2026) or ``upstream2023``; for
    ``ours``, ours as installed (``installed_ours``)."""
    if label == "ours":
        return installed_ours()
    return e2e_impl.named(IMPL_NAMES[label])


@functools.cache
def installed_ours() -> Impl:
    """Ours as installed programs run it, the package from this tree: the launchers
    tools/installtree.py writes (``python3 -IS``, the site directories written in, the
    collector off during start-up), with this interpreter, which has NumPy, and the
    package byte-compiled first.  The test suite's ``python -c`` instead pays for
    ``site`` and the venv's ``.pth`` files, which installed programs do not.  The
    launchers name this tree, so they go to a directory of this run's, not to the
    shared build/: several checkouts' benchmarks may run at once."""
    launchers = tempfile.mkdtemp(prefix="bench-launchers-")
    atexit.register(shutil.rmtree, launchers, True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(ROOT, "passt")],
                   check=True, timeout=300)
    site_path = installtree.site_dirs(sys.executable)
    argv = {}
    for program, function in installtree.PROGRAMS.items():
        path = os.path.join(launchers, program)
        with open(path, "wb") as f:
            f.write(installtree.launcher(sys.executable, ROOT, f"from passt.cli import {function}",
                                         f"{function}()", site_path))
        os.chmod(path, 0o755)
        argv[program] = (path,)
    return Impl("ours", argv["passt"], argv["pasta"])


def pasta_argv(impl: Impl, netns_path: str) -> list[str]:
    return impl.argv("pasta", ["--config-net", *forward_options("pasta"), "--netns", netns_path])


def slirp_argv(netns_path: str) -> list[str]:
    return [SLIRP4NETNS, *SLIRP_OPTIONS, "--netns-type=path", netns_path, "tap0"]


def passt_argv(impl: Impl, socket_path: str, backend: str = "stream") -> list[str]:
    vhost_user = ["--vhost-user"] if backend == "vhost-user" else []
    return impl.argv("passt", ["-s", socket_path, "-1", *vhost_user, "-t", "none", "-u", "none"])


def _tune(*namespaces: str) -> None:
    for name in namespaces:
        Namespace(name).sysctl(*SYSCTLS)


def new_world(tag: str, workdir: str, extra: tuple[str, ...]) -> World:
    world = World(tag, workdir, extra=extra).create()
    try:
        _tune(world.host_ns, world.remote_ns, *world.extra_ns)
    except BaseException:
        world.destroy()
        raise
    return world


def start_pasta(label: str, workdir: str, impl: Impl | None = None,
                program: str = "pasta") -> Subject:
    """Our or upstream pasta (or ``impl``), ``--config-net`` with the matrix's forwards;
    ``program`` "pasta-fallback": as on a kernel without TCP ``SO_PEEK_OFF``."""
    impl = impl or implementation(label)
    prefix = list(NO_PEEK_OFF) if program == "pasta-fallback" else []
    return _start_namespace_subject(
        label, workdir, lambda path: [*prefix, *pasta_argv(impl, path)],
        lambda world, inner: (inner.has_default_route4()
                              and Namespace(world.host_ns).listening("tcp", FORWARDED.iperf)
                              and inner.listening("tcp", NS_FORWARDED.iperf)), program, impl)


def start_slirp(workdir: str) -> Subject:
    """slirp4netns on a namespace of its world: the tap path only."""
    return _start_namespace_subject(
        "slirp4netns", workdir, slirp_argv,
        lambda _world, inner: inner.has_default_route4())


def _start_namespace_subject(label: str, workdir: str, argv: Callable[[str], list[str]],
                             ready: Callable[[World, Namespace], bool],
                             program: str = "pasta", impl: Impl | None = None) -> Subject:
    os.makedirs(workdir, exist_ok=True)
    tag = f"bench-{label}" if program == "pasta" else f"bench-fb-{label}"
    world = new_world(tag, workdir, extra=("ns",))
    inner = Namespace(world.extra_ns[0])
    daemon = Daemon(argv(f"/run/netns/{inner.name}"), world.host_ns,
                    os.path.join(workdir, "program.log"))
    try:
        daemon.start(lambda: ready(world, inner), timeout=START_TIMEOUT)
    except BaseException:
        world.destroy()
        raise
    return Subject(label, program, world, daemon, inner, FEATURES[program, label], argv,
                   inner=inner, impl=impl)


def start_direct(workdir: str) -> Subject:
    """No program: clients in the host namespace, straight to the remote one or loopback."""
    os.makedirs(workdir, exist_ok=True)
    world = new_world("bench-direct", workdir, extra=())
    host = Namespace(world.host_ns)
    return Subject("direct", "pasta", world, None, host, FEATURES["pasta", "direct"], None,
                   inner=host)


def missing(_program: str, label: str) -> str | None:
    """Why subject ``program`` ``label`` can't run here, or None."""
    if label in IMPL_NAMES:
        binary = implementation(label).passt[0]
        if not os.path.exists(binary):
            return f"no {binary} (make upstream-2026 / apt-get install passt)"
    return None


def start_passt_vu(label: str, workdir: str) -> Subject:
    """A ``passt-vu`` subject: ours or upstream's 2026 release over vhost-user, or
    ours over the stream socket (``stream``)."""
    impl = implementation("upstream" if label == "upstream" else "ours")
    backend = "stream" if label == "stream" else "vhost-user"
    return start_passt(label, workdir, impl, backend, "passt-vu")


def start_passt(label: str, workdir: str, impl: Impl | None = None, backend: str = "stream",
                program: str = "passt") -> Subject:
    """Our or upstream passt (or ``impl``) with a TCG guest, configured by DHCP/SLAAC."""
    impl = impl or implementation(label)
    os.makedirs(workdir, exist_ok=True)
    world = new_world(f"bench-{label}-{program}", workdir, extra=())
    socket_path = os.path.join(workdir, "passt.sock")
    daemon = Daemon(passt_argv(impl, socket_path, backend), world.host_ns,
                    os.path.join(workdir, "program.log"))
    subject = Subject(label, program, world, daemon, Namespace(world.host_ns),
                      FEATURES[program, label], lambda path: passt_argv(impl, path, backend),
                      impl=impl)
    try:
        daemon.start(lambda: os.path.exists(socket_path), timeout=START_TIMEOUT)
        subject.guest = Guest(socket_path, workdir, backend)
        shell = subject.guest.boot().shell
        subject.notes.append(f"guest booted in {subject.guest.report.boot_seconds:.1f} s")
        shell.check(f"cp /usr/share/udhcpc/default.script {shell.path(l2.UDHCPC_SCRIPT)}")
        l2.configure(shell)
        subject.inside = GuestEndpoint(shell)
    except BaseException:
        subject.stop()
        raise
    return subject


# -- fresh instances, for start-up times ----------------------------------------


def time_to_ready(host: Namespace, argv: list[str], ready: Callable[[], bool],
                  log_path: str, timeout: float = START_TIMEOUT) -> float:
    """Seconds from spawning ``argv`` in ``host`` until ``ready()``; the process is stopped."""
    began = time.monotonic()
    proc = host.spawn(argv, log_path)
    try:
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited {proc.returncode} before it was ready")
            if time.monotonic() - began > timeout:
                raise RuntimeError(f"{argv[0]} not ready after {timeout:.0f} s")
            time.sleep(POLL)
        return time.monotonic() - began
    finally:
        stop_group(proc)


def time_to_exit(host: Namespace, argv: list[str], log_path: str,
                 timeout: float = START_TIMEOUT) -> tuple[float, int]:
    """Seconds from spawning ``argv`` in ``host`` until it exits 0, and its peak RSS
    in KiB (with the children it waited for), as ``/usr/bin/time`` reports it: our
    own ``wait4`` would count the memory of this Python process, which the child
    was forked from, and which its ``exec`` does not reset."""
    rss_path = f"{log_path}.maxrss"
    began = time.monotonic()
    proc = host.spawn([TIME, "-f", "%M", "-o", rss_path, *argv], log_path)
    try:
        status = wait_exit(proc, timeout)
        elapsed = time.monotonic() - began
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{argv[0]} still running after {timeout:.0f} s") from None
    finally:
        stop_group(proc)
    if status != 0:
        raise RuntimeError(f"{argv[0]} exited {status}")
    with open(rss_path) as f:
        return elapsed, int(f.read().split()[-1])


def wait_exit(proc: subprocess.Popen, timeout: float) -> int:
    """``proc``'s exit status, the moment it exits (``TimeoutExpired`` after ``timeout``).

    Not ``proc.wait(timeout)``: with a timeout, ``Popen.wait`` polls, sleeping
    1, 2, 4... ms and then 50 ms at a time, so it sees an exit up to 50 ms late
    and reads only 1, 3, 7... 63, 113, 163, 213 ms: every ``pasta -- /bin/true``
    between 113 and 163 ms, ours and upstream's alike, was timed as 165 ms.  A
    pidfd becomes readable when the process exits."""
    pidfd = os.pidfd_open(proc.pid)
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(pidfd)
    return proc.wait()


def stop_group(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM to the process group, SIGKILL if it lingers."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def scratch_namespace(tag: str) -> Namespace:
    """A fresh, empty namespace (loopback up); delete it with ``delete_namespace``."""
    name = f"bench-{tag}-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=20)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True,
                   capture_output=True, timeout=20)
    return Namespace(name)


def delete_namespace(ns: Namespace) -> None:
    subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=20)
