"""pasta's namespaces: the target, the helper thread inside it, the tap device.

Theory of operation
-------------------
pasta connects a network namespace to the host.  The namespace is either
created for a command pasta starts (``pasta [options] [-- COMMAND]``, default
the user's login shell) or an existing one: a process's (``pasta PID``) or a
file's (``--netns PATH``, or ``--netns NAME`` for ``/run/netns/NAME``).

**Who may enter a network namespace.**  ``setns(CLONE_NEWNET)`` needs
``CAP_SYS_ADMIN`` in the user namespace that owns the network namespace.
root has it everywhere; an unprivileged user has it only in a user namespace
it created.  So, as upstream does, a command is started in a new user *and*
network namespace (the user mapped to root inside, ``setgroups`` denied),
and an unprivileged pasta first joins the owning user namespace itself
(the target PID's, ``--userns PATH``, or the one it created; ``--netns-only``
and a ``--netns`` without ``--userns`` mean "don't").  With ``--userns`` and a
command, the command joins that user namespace instead of creating one, as
upstream.  The kernel lets only a
single-threaded process join a user namespace, so this happens in the main
thread, before any other thread exists: discovery (``hostnet``) leaves no
thread behind, and daemonizing (``daemon.daemonize``, which forks) must come
*before* ``setup_pasta`` (see ``daemonizes``).  root skips the join: it keeps
its privileges on the host (binding low ports) and needs none in the target.

**The helper thread.**  A socket belongs to the network namespace of the
thread that creates it, and so does a tap device (the namespace of whoever
opened ``/dev/net/tun``) and a netlink socket.  ``NsRunner`` is one
long-lived thread that ``setns()``-ed into the target network namespace and
runs callables on request::

    runner.call(fn, *args, **kwargs)   # runs fn inside, returns or raises

The main thread never changes namespace: everything pasta does on the host
stays there, and modules that need a namespace-side socket (the spliced
path's socket pools, loopback UDP forwarding) get ``runner.call`` and use it
as ``runner.call(socket.socket, AF_INET, SOCK_STREAM)``.  A call costs a
thread round trip (tens of microseconds): batch, and keep pools.  The
namespace's ``/proc/net/tcp`` & co. are ``/proc/thread-self/net/...`` read
*through* the runner (``/proc/self/net`` is the main thread's namespace).
What is per thread stays per thread: a mount namespace, root directory or
seccomp filter set up later in the main thread does not reach the runner;
isolation must apply them there too (``runner.call``, or seccomp's TSYNC).

**Setting up the namespace** happens in the runner: ``/dev/net/tun`` opened
non-blocking, ``TUNSETIFF`` with ``IFF_TAP | IFF_NO_PI`` named after the
host's template interface (or ``-I``), MAC from ``--ns-mac-addr`` (else the
kernel's random, locally administered one), loopback up; with
``--config-net`` also MTU, link up, the IPv4 address and prefix, the IPv6
address (``nodad``) and default routes via the gateways, then, as upstream
2026, the template interface's other global addresses and its other routes
(``hostnet``: not with ``-a``/``-g`` of that family, nor with the deprecated
``--no-copy-addrs``/``--no-copy-routes``), all through netlink (``rtnl``).  Without it, the tap stays down for the namespace's own DHCP or
SLAAC client, as upstream.  The tap descriptor is handed to the main thread.

**The command** is forked before anything else and waits on a pipe: it
unshares its namespaces, writes its ID maps, says so, and is released
(``PastaNamespace.start_command``) only once the tap is configured, so that
it never sees a half-made network.  It dies with pasta (``PR_SET_PDEATHSIG``)
and pasta exits with its status (``128 + signal`` if killed, the shell's
convention and newer upstream's), through ``SIGCHLD`` on the event loop.

**Quitting.**  A namespace bound to a path goes away when the path is
deleted (``ip netns del``): an inotify watch on the directory stops the loop.
A PID target stops it when the process exits (a pidfd).  ``--no-netns-quit``
keeps running in both cases.  A path under ``/proc`` (``/proc/PID/ns/net``)
cannot be watched with inotify: it stands for its process, watched with a
pidfd as a PID target is.  Signals (``runtime.STOP_SIGNALS``) stop it too; then
``PastaNamespace.teardown`` stops the helper thread, closes the tap (the
device disappears with its last descriptor), terminates the command and reaps
it, so no namespace, device or process of ours survives pasta (processes the
command left running in the background keep its namespace, as upstream).

Every failure a user can cause (no such PID or path, a busy interface name,
no ``/dev/net/tun``) raises ``NetnsError`` with one line for the user.

Use from the command line driver::

    net = hostnet.discover(conf)
    ready = daemon.daemonize(pidfile) if netns.daemonizes(conf) else daemon.foreground(pidfile)
    ns = netns.setup_pasta(conf, net, loop)     # tap_fd, runner, child_pid...
    ...                                         # tap backend, forwarding via ns.runner.call
    ready.ready()
    ns.start_command()
    status = loop.run()
    ns.teardown()
"""

from __future__ import annotations

import ctypes
import os
import queue
import re
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any, TypeVar

from passt import log
from passt.backends import tap
from passt.errors import StartupError
from passt.host import inotify, rtnl
from passt.host.hostnet import IPAddress, NetInfo
from passt.host.inotify import IN_DELETE, IN_MOVED_FROM
from passt.loop import IN, EventLoop
from passt.record import field, record

T = TypeVar("T")

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
IFA_F_NODAD = 0x02
RTNH_F_ONLINK = 0x04
RTPROT_BOOT = 3
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

SYNC_TIMEOUT = 10.0        # how long we wait for the child to unshare
CHILD_TERM_TIMEOUT = 2.0   # between SIGTERM and SIGKILL at teardown

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(StartupError):
    """A namespace problem the user can fix; the message is one line."""


# -- system calls Python 3.11 lacks -------------------------------------------


def _check(ret: int) -> int:
    if ret == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return ret


def setns(fd: int, nstype: int) -> None:
    """Move the calling thread into the namespace ``fd`` refers to."""
    _check(_libc.setns(fd, nstype))


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags))


def _set_parent_death_signal(signum: int) -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0))


# -- the helper thread ----------------------------------------------------------


class NsRunner:
    """A thread inside a network namespace that runs callables for other threads.

    Each call hands the thread a reply queue of its own and waits on it for
    ``(True, result)`` or ``(False, exception)``: a ``SimpleQueue`` is one C
    object, where ``concurrent.futures`` would bring ``logging`` into every
    start-up (2-3 ms of imports) and a condition variable into every call.
    """

    def __init__(self, netns_fd: int, name: str = "pasta-ns") -> None:
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        started: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, args=(netns_fd, started),
                                        name=name, daemon=True)
        self._thread.start()
        entered, error = started.get()
        if not entered:
            self._thread.join()
            raise NetnsError(f"Couldn't enter network namespace: {error.strerror}") from None

    @property
    def native_id(self) -> int | None:
        """The kernel's thread ID of the runner (known without a call: a wake-up of
        the thread costs 0.1-5 ms on a busy machine)."""
        return self._thread.native_id

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` inside the namespace; return its result or raise."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        if not self._thread.is_alive():
            raise RuntimeError("namespace runner is closed")
        reply: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        self._requests.put((fn, args, kwargs, reply))
        ok, value = reply.get()
        if ok:
            return value  # type: ignore[no-any-return]
        try:
            raise value
        finally:
            del value  # no cycle through this frame and the exception's traceback

    def close(self) -> None:
        """Stop the thread (after any call in progress); idempotent."""
        if self._thread.is_alive():
            self._requests.put(None)
            self._thread.join()

    def _serve(self, netns_fd: int, started: queue.SimpleQueue[tuple[bool, Any]]) -> None:
        try:
            setns(netns_fd, CLONE_NEWNET)
        except OSError as e:
            started.put((False, e))
            return
        started.put((True, None))
        while (request := self._requests.get()) is not None:
            fn, args, kwargs, reply = request
            try:
                reply.put((True, fn(*args, **kwargs)))
            except BaseException as e:  # handed to the caller, who decides
                reply.put((False, e))
            del request, fn, args, kwargs, reply  # nothing of the call outlives it


# -- what the options ask for ---------------------------------------------------


@record(frozen=True)
class Target:
    """Where pasta connects to: a new namespace for ``command``, or an existing one.

    ``program`` is executed with ``argv`` in new namespaces, unless
    ``netns_path`` names an existing one.  ``userns_path`` is the user
    namespace to join (``None``: none, or, for a command, the one it creates
    if ``create_userns``).  ``quit_path``/``quit_pid`` end pasta when they go.
    """

    program: str = ""
    argv: tuple[str, ...] = ()
    pid: int | None = None
    netns_path: str | None = None
    userns_path: str | None = None
    create_userns: bool = True
    quit_path: str | None = None
    quit_pid: int | None = None

    @property
    def spawns(self) -> bool:
        return self.pid is None and self.netns_path is None


def default_command(env: Mapping[str, str]) -> tuple[str, tuple[str, ...]]:
    """The user's shell as a login shell (``argv[0]`` prefixed with ``-``), as upstream."""
    shell = env.get("SHELL") or "/bin/sh"
    return shell, ("-" + shell,)


_PROC_NETNS = re.compile(r"/proc/([0-9]+)/(?:task/[0-9]+/)?ns/net")


def make_target(command: Sequence[str], pid: int | None, netns_path: str | None,
                userns: str | None, netns_only: bool, no_netns_quit: bool,
                env: Mapping[str, str]) -> Target:
    """The ``Target`` for these options (pure; the options were validated by ``conf``)."""
    if netns_path is not None:
        holder = _PROC_NETNS.fullmatch(netns_path)
        quit_pid = int(holder.group(1)) if holder and not no_netns_quit else None
        quit_path = None if no_netns_quit or holder else netns_path
        return Target(netns_path=netns_path, userns_path=None if netns_only else userns,
                      quit_path=quit_path, quit_pid=quit_pid)
    if pid is not None:
        if netns_only:
            userns = None
        elif userns is None:
            userns = f"/proc/{pid}/ns/user"
        return Target(pid=pid, netns_path=f"/proc/{pid}/ns/net", userns_path=userns,
                      quit_pid=None if no_netns_quit else pid)
    program, argv = (command[0], tuple(command)) if command else default_command(env)
    return Target(program=program, argv=argv, userns_path=userns,
                  create_userns=not netns_only and userns is None)


def target_from_conf(conf: Any, env: Mapping[str, str] = os.environ) -> Target:
    return make_target(conf.command, conf.target_pid, conf.netns_path, conf.userns,
                       conf.netns_only, conf.no_netns_quit, env)


def daemonizes(conf: Any) -> bool:
    """pasta goes to the background when attaching to a namespace, unless ``-f``.

    With a command it stays: it is that command's parent and exits with it.
    """
    return not conf.foreground and not target_from_conf(conf).spawns


# -- the command in its new namespaces ------------------------------------------


def id_map(outer: int) -> str:
    """``/proc/PID/{uid,gid}_map`` line mapping ``outer`` to root inside."""
    return f"0 {outer} 1\n"


def exit_status(wait_status: int) -> int:
    """Our exit status for the command's ``waitpid`` status: its own, or 128 + signal."""
    code = os.waitstatus_to_exitcode(wait_status)
    return code if code >= 0 else 128 - code


@record
class _Child:
    pid: int
    go_fd: int


def _spawn(target: Target, userns_fd: int | None) -> _Child:
    """Fork the command into new namespaces; it waits for ``_Child.go_fd`` to exec.

    With ``userns_fd`` (``--userns``), the command joins that user namespace
    instead of creating one.
    """
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(go_w)
            _child(target, userns_fd, parent, ready_w, go_r)
        finally:
            os._exit(1)
    os.close(ready_w)
    os.close(go_r)
    try:
        _wait_child_ready(ready_r, pid)
    except BaseException:
        os.close(go_w)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(ready_r)
    return _Child(pid, go_w)


def _wait_child_ready(ready_r: int, pid: int) -> None:
    """Wait for the child's "R"; it sends "E<reason>" or dies if it can't unshare."""
    readable, _, _ = select.select([ready_r], [], [], SYNC_TIMEOUT)
    if not readable:
        os.kill(pid, signal.SIGKILL)
        raise NetnsError("Couldn't create namespaces for the command: timed out")
    message = os.read(ready_r, 512)
    if message != b"R":
        reason = message[1:].decode(errors="replace") or "child exited"
        raise NetnsError(f"Couldn't create namespaces for the command: {reason}")


def _child(target: Target, userns_fd: int | None, parent: int, ready_w: int,
           go_r: int) -> None:
    """In the forked child: unshare, map IDs, report, wait for the go, exec."""
    uid, gid = os.geteuid(), os.getegid()
    try:
        if userns_fd is not None:
            setns(userns_fd, CLONE_NEWUSER)
        unshare(CLONE_NEWNET | (CLONE_NEWUSER if target.create_userns else 0))
        if target.create_userns:
            _write_file("/proc/self/uid_map", id_map(uid))
            _write_file("/proc/self/setgroups", "deny")
            _write_file("/proc/self/gid_map", id_map(gid))
        _set_parent_death_signal(signal.SIGTERM)
    except OSError as e:
        os.write(ready_w, b"E" + (e.strerror or str(e)).encode())
        return
    if os.getppid() != parent:
        return
    os.write(ready_w, b"R")
    os.close(ready_w)
    if os.read(go_r, 1) != b"G":
        return
    for signum in (signal.SIGPIPE, signal.SIGXFSZ):  # ignored by Python, not by programs
        signal.signal(signum, signal.SIG_DFL)
    try:
        os.execvp(target.program, target.argv)
    except OSError as e:
        os.write(2, f"Failed to run {target.program}: {e.strerror}\n".encode())


def _write_file(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


# -- entering the target ----------------------------------------------------------


def _open_ns(path: str, kind: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise NetnsError(f"Couldn't open {kind} namespace {path}: {e.strerror}") from None


def _join_userns(fd: int) -> None:
    """Join the user namespace ``fd`` (main thread, single-threaded), unless already in it."""
    mine = os.stat("/proc/self/ns/user")
    theirs = os.fstat(fd)
    if (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino):
        return
    try:
        setns(fd, CLONE_NEWUSER)
    except OSError as e:
        raise NetnsError(f"Couldn't join user namespace: {e.strerror}") from None


# -- inside the namespace (run through NsRunner) ----------------------------------


@record(frozen=True)
class TapSpec:
    """What the tap device in the namespace should look like."""

    ifname: str
    mac: bytes | None
    config_net: bool
    net: NetInfo


def _open_tap(name: str) -> int:
    """``tap.open_tap`` in the calling thread's namespace, with our error."""
    try:
        fd, _ = tap.open_tap(name, vnet_hdr=tap.PASTA_VNET_HDR)
    except tap.TapError as e:
        taken = os.path.exists(tap.TUN_DEVICE) and _interface_exists(name)
        raise NetnsError(f"{e} (interface name in use)" if taken else str(e)) from None
    return fd


def _interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def set_up_inside(spec: TapSpec) -> tuple[int, bytes]:
    """Create and configure the tap (in the runner thread): returns (fd, its MAC)."""
    fd = _open_tap(spec.ifname)
    try:
        with rtnl.Rtnl() as nl:
            mac = _configure(nl, spec)
    except OSError as e:
        os.close(fd)
        raise NetnsError(f"Couldn't configure {spec.ifname} in namespace: {e.strerror}") from None
    return fd, mac


def _configure(nl: rtnl.Rtnl, spec: TapSpec) -> bytes:
    """Loopback up; the tap's MAC; with ``--config-net`` the rest.  Returns the tap's MAC."""
    nl.set_link(nl.link("lo").ifindex, up=True)
    index = nl.link(spec.ifname).ifindex
    if spec.mac:
        nl.set_link(index, mac=spec.mac)
    if spec.config_net:
        net = spec.net
        if net.mtu:
            nl.set_link(index, mtu=net.mtu)
        nl.set_link(index, up=True)
        if net.addr4 is not None:
            nl.add_addr(index, net.addr4, net.prefix4)
            _add_default_route(nl, index, net.gw4, ip_network((net.addr4, net.prefix4), False))
        if net.addr6 is not None:
            nl.add_addr(index, net.addr6, net.prefix6, IFA_F_NODAD)
            _add_default_route(nl, index, net.gw6, ip_network((net.addr6, net.prefix6), False))
        _copy_extras(nl, index, net)
    return nl.link(spec.ifname).mac


def _copy_extras(nl: rtnl.Rtnl, index: int, net: NetInfo) -> None:
    """The template interface's other addresses and routes (upstream 2026 copies
    them all); one that cannot be added is a warning, as upstream."""
    for address, prefix in net.extra_addrs:
        try:
            nl.add_addr(index, address, prefix, IFA_F_NODAD if address.version == 6 else 0)
        except rtnl.RtnlError as e:
            log.warn("Couldn't copy address %s/%d: %s", address, prefix, e.strerror)
    for route in net.extra_routes:
        try:
            nl.add_route(index, route.dst, route.gateway, RTPROT_BOOT, route.metric)
        except rtnl.RtnlError as e:
            log.warn("Couldn't copy route to %s: %s", route.dst, e.strerror)


def _add_default_route(nl: rtnl.Rtnl, index: int, gateway: IPAddress | None,
                       subnet: IPv4Network | IPv6Network) -> None:
    """Default route via ``gateway``, marked on-link if it is outside our subnet."""
    if gateway is None:
        return
    reachable = gateway.is_link_local or gateway in subnet
    default = ip_network("0.0.0.0/0" if gateway.version == 4 else "::/0")
    nl.add_route(index, default, gateway, RTPROT_BOOT, flags=0 if reachable else RTNH_F_ONLINK)


# -- quitting when the target goes away ---------------------------------------------


def _watch_path_deletion(path: str) -> int:
    fd = _check(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
    directory = os.path.dirname(path) or "."
    if _libc.inotify_add_watch(fd, directory.encode(), IN_DELETE | IN_MOVED_FROM) < 0:
        code = ctypes.get_errno()
        os.close(fd)
        raise NetnsError(f"Couldn't watch {directory}: {os.strerror(code)}")
    return fd


# -- the whole of it ------------------------------------------------------------------


@record
class PastaNamespace:
    """pasta's side of the namespace: the tap, the runner, the command, the watches.

    ``teardown()`` owns and closes ``tap_fd``: a tap backend wrapping it must not
    close it itself.
    """

    loop: EventLoop
    tap_fd: int
    ifname: str
    ns_mac: bytes
    runner: NsRunner
    child_pid: int | None = None
    _go_fd: int | None = None
    _fds: list[int] = field(default_factory=list)
    _closed: bool = False

    def start_command(self) -> None:
        """Let the command run (it waits until now); harmless without a command."""
        if self._go_fd is not None:
            try:
                os.write(self._go_fd, b"G")
            except OSError:
                pass
            os.close(self._go_fd)
            self._go_fd = None

    def teardown(self) -> None:
        """Stop the runner, close the tap and watches, end the command; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.runner.close()
        for fd in self._fds:
            self.loop.remove(fd)
            os.close(fd)
        self._fds.clear()
        self.loop.remove(self.tap_fd)
        os.close(self.tap_fd)
        if self._go_fd is not None:
            os.close(self._go_fd)
            self._go_fd = None
        if self.child_pid is not None:
            _terminate(self.child_pid)
            self.child_pid = None

    def _watch(self, fd: int, callback: Callable[[int], None]) -> None:
        self._fds.append(fd)
        self.loop.add(fd, IN, callback)

    def _on_sigchld(self) -> None:
        if self.child_pid is None:
            return
        pid, status = os.waitpid(self.child_pid, os.WNOHANG)
        if pid:
            self.child_pid = None
            log.debug("command exited, status %d", exit_status(status))
            self.loop.stop(exit_status(status))


def _terminate(pid: int) -> None:
    """SIGTERM ``pid``, SIGKILL it if it lingers, reap it."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + CHILD_TERM_TIMEOUT
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def setup_pasta(conf: Any, net: NetInfo, loop: EventLoop) -> PastaNamespace:
    """Create or join the namespace, set up the tap, arm the exit conditions.

    Call in the main thread, before any other thread exists (and after
    daemonizing, see ``daemonizes``).  Raises ``NetnsError``.
    """
    return setup_target(target_from_conf(conf), tap_spec_from_conf(conf, net), loop)


def tap_spec_from_conf(conf: Any, net: NetInfo) -> TapSpec:
    return TapSpec(conf.ns_ifname or net.template_ifname or "tap0", conf.ns_mac_addr,
                   conf.config_net, net)


def setup_target(target: Target, spec: TapSpec, loop: EventLoop) -> PastaNamespace:
    """``setup_pasta`` for an explicit ``Target`` and ``TapSpec``."""
    child: _Child | None = None
    ns_fds: list[int] = []
    try:
        if target.spawns:
            given = _open_ns(target.userns_path, "user") if target.userns_path else None
            if given is not None:
                ns_fds.append(given)
            child = _spawn(target, given)
            netns_file = f"/proc/{child.pid}/ns/net"
            userns_file: str | None = f"/proc/{child.pid}/ns/user"
        else:
            netns_file, userns_file = str(target.netns_path), target.userns_path
        netns_fd = _open_ns(netns_file, "network")
        ns_fds.append(netns_fd)
        if userns_file is not None:
            ns_fds.append(_open_ns(userns_file, "user"))
            if os.geteuid() != 0:
                _join_userns(ns_fds[-1])
        runner = NsRunner(netns_fd)
        try:
            tap_fd, ns_mac = runner.call(set_up_inside, spec)
        except BaseException:
            runner.close()
            raise
    except BaseException:
        if child is not None:
            os.close(child.go_fd)
            _terminate(child.pid)
        raise
    finally:
        for fd in ns_fds:
            os.close(fd)
    ns = PastaNamespace(loop, tap_fd, spec.ifname, ns_mac, runner,
                        child.pid if child else None, child.go_fd if child else None)
    _arm_exits(ns, target)
    return ns


def _arm_exits(ns: PastaNamespace, target: Target) -> None:
    loop = ns.loop
    if ns.child_pid is not None:
        loop.add_signal(signal.SIGCHLD, ns._on_sigchld)
        loop.call_later(0, ns._on_sigchld)  # an exit before the handler was there
    if target.quit_pid is not None:
        try:
            pidfd = os.pidfd_open(target.quit_pid)
        except OSError:
            ns.teardown()
            raise NetnsError(f"Process {target.quit_pid} is gone") from None
        ns._watch(pidfd, lambda _ev: _quit(loop, f"Process {target.quit_pid} exited"))
    if target.quit_path is not None:
        path = target.quit_path
        try:
            fd = _watch_path_deletion(path)
        except NetnsError:
            ns.teardown()
            raise
        ns._watch(fd, lambda _ev: _on_inotify(loop, fd, path))


def _on_inotify(loop: EventLoop, fd: int, path: str) -> None:
    try:
        buf = os.read(fd, 4096)
    except BlockingIOError:
        return
    if os.path.basename(path) in inotify.names(buf, IN_DELETE | IN_MOVED_FROM):
        _quit(loop, f"Namespace {path} is gone")


def _quit(loop: EventLoop, reason: str) -> None:
    log.info("%s, exiting", reason)
    loop.stop(0)
