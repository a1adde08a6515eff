"""Giving up what we no longer need, once set up: identity, filesystem, capabilities, calls.

Theory of operation
-------------------
A guest or a container is untrusted.  If anything it sends ever made us run
code of its choosing, that code should find nothing to use: no privileges,
no files, no system calls beyond those a running passt or pasta makes.  So,
after start-up (``runtime``: once ready, before the event loop), as
upstream does:

1. **Identity.**  Started as root (euid 0 when the process began, see
   ``STARTED_AS``), we become ``--runas`` UID:GID, or ``nobody``:
   ``setgroups([])``, ``setgid``, ``setuid``.  glibc applies each of these
   to every thread of the process.  Started as anyone else, we stay who we
   are (a ``--runas`` naming someone else fails, as it must).
2. **A fresh user namespace** (passt): ``unshare(CLONE_NEWUSER)`` mapping
   just our own UID and GID.  Inside it we hold capabilities over nothing
   but the namespaces we create next, and none on the host.  pasta cannot:
   the kernel lets only a single-threaded process change user namespace, and
   pasta's namespace helper thread (``netns.NsRunner``) exists from set-up
   on.  pasta started unprivileged already lives in the user namespace it
   made (or joined) for its target, which is what upstream does too.
3. **An empty, read-only root** in a new mount namespace:
   ``unshare(CLONE_NEWNS)``, mounts made private, a read-only tmpfs mounted
   on ``/tmp`` (in our namespace only), ``pivot_root`` into it and the old
   root detached.  Paths lead nowhere; what the options need was opened
   before (PID file, log file, pcap file, the syslog socket, pasta's
   ``/proc/net`` files, the tap, passt's listening socket and the
   directory of its socket file).  A root that is not a mount point (a
   ``chroot``) cannot be pivoted: with ``--chroot-fallback`` (upstream
   2026's switch), ``chroot`` into the empty tmpfs instead; without it,
   that is fatal, as upstream.  Mount namespace and root directory are per thread: pasta's
   helper thread detaches too, through ``runner.call``.
4. **Capabilities**, per thread: none, with two exceptions.  pasta keeps
   ``CAP_NET_BIND_SERVICE`` when ``auto`` forwarding may bind a low port
   later (in both threads: the host side binds in the main thread, the
   namespace side in the helper).  pasta that changes identity after
   starting its command keeps ``CAP_KILL`` in the main thread: the command
   is root in a user namespace root owns, and without it neither ``kill``
   nor even the parent-death signal (which the kernel checks like a
   ``kill``) could end it.  Both survive the UID change through
   ``PR_SET_KEEPCAPS``.  Ambient capabilities are cleared.  Without
   ``CAP_SYS_RESOURCE`` a pipe made afterwards counts against the user's
   pipe quota (``fs.pipe-user-pages-soft``): past it, new pipes get two
   pages and cannot grow, which is why ``tcp_splice`` recycles the pipes
   it made before.
5. **no_new_privs**, per thread: nothing we could execute would gain any.
6. **seccomp** (``host/seccomp.py``): an allow-list of the system calls the
   running program makes, one for passt and one for pasta, installed on
   every thread at once; anything else fails with ``EPERM`` (``execve``,
   ``fork``, ``open`` among them).  The lists come from tracing our
   programs (``strace -f``, every call after the ``seccomp`` call) through
   the end-to-end tests: traffic in every direction, hostile frames,
   floods.  Seen there: passt ``accept4 bind brk close connect epoll_ctl
   epoll_wait exit_group futex getrandom getsockname getsockopt ioctl mmap
   munmap newfstatat pwrite64 recvfrom rt_sigaction rt_sigreturn sendmsg
   sendto setsockopt socket unlinkat write writev``; pasta also ``exit
   fcntl madvise pipe2 read readv rt_sigprocmask shutdown splice``.  The
   lists add a margin: close relatives (``recvmsg`` next to ``recvfrom``),
   what the interpreter may need on another path (``mremap``, ``mprotect``,
   ``clock_nanosleep``), and paths the tests reach rarely: log file
   rotation (``pread64``, ``ftruncate``), pasta's ``kill`` and ``wait4`` of
   its command, ``lseek`` and ``read`` of the ``auto`` scan, the helper
   thread's exit.  ``ioctl`` is allowed only for the requests listed in
   ``IOCTLS``.

Python specifics: nothing may be imported once the root is empty, so every
module a later code path imports lazily is imported here first
(``LATE_IMPORTS``); the rest of the package was imported at start-up.

Failures are fatal (``IsolationError``, one line), as upstream: a program
that was asked to run isolated must not carry on without it.  That holds
for an architecture without a system call table too (``seccomp`` knows
x86_64 and aarch64): the program refuses to start, naming
``PASST_NO_SECCOMP=1``, with which it runs unfiltered after a warning.

Observable result (``/proc/PID/status``): ``Uid`` not 0 when started as
root without ``--runas 0``, ``CapEff`` 0 (or ``0x400`` for pasta with
``auto``), ``NoNewPrivs: 1``, ``Seccomp: 2``, for every task.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import pwd
import threading
from typing import Any

from passt import log
from passt.host import seccomp
from passt.record import record

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAP_KILL = 5
CAP_NET_BIND_SERVICE = 10
LINUX_CAPABILITY_VERSION_3 = 0x20080522
SYS_PIVOT_ROOT = 155

EMPTY_ROOT_CANDIDATES = ("/tmp", "/run", "/mnt", "/var/tmp")
NOBODY = "nobody"
# Set to 1 to run on an architecture seccomp.py has no table for, unfiltered.
NO_SECCOMP_VARIABLE = "PASST_NO_SECCOMP"
NOBODY_ID = 65534

# Who we were when the process started: pasta may since have joined a user
# namespace (where it is root), which must not count as "started as root".
STARTED_AS = (os.geteuid(), os.getegid())

# Imported by later code paths of the standard library (none so far beyond
# what start-up imports; keep here what tracing shows).
LATE_IMPORTS: tuple[str, ...] = ("encodings.idna",)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class IsolationError(OSError):
    """A step of isolation failed; the message is one line."""

    def __str__(self) -> str:
        return str(self.strerror)


# -- system calls -------------------------------------------------------------

# What every Python program of ours does once running: memory, futexes,
# signals, time, randomness, descriptors, epoll, exit.  No new threads.
_INTERPRETER = (
    "brk mmap munmap mremap madvise mprotect futex "
    "rt_sigaction rt_sigprocmask rt_sigreturn restart_syscall "
    "clock_gettime clock_nanosleep gettimeofday getrandom getpid "
    "close fcntl fstat newfstatat lseek ioctl "
    "read write readv writev pread64 pwrite64 ftruncate "
    "epoll_wait epoll_pwait epoll_ctl exit exit_group"
)
# Sockets: flows of every protocol, listeners (``auto`` opens them later),
# the QEMU stream, syslog.
_SOCKETS = (
    "socket bind connect listen accept4 shutdown getsockname getpeername "
    "setsockopt getsockopt sendto recvfrom sendmsg recvmsg"
)
# passt: removing its socket file and PID file at exit, through the directory's
# descriptor (fsref); with --vhost-user, each front end's session gets an epoll
# instance of its own (vhost_backend), and maps the guest's memory from
# descriptors it received (mmap, recvmsg, read and write of eventfds are on the
# interpreter's list); a live migration waits, bounded, for passt-repair to
# connect and to answer (a socket timeout: poll).
PASST_SYSCALLS: tuple[str, ...] = tuple(
    f"{_INTERPRETER} {_SOCKETS} unlinkat epoll_create1 poll ppoll".split()
)
# pasta: the spliced path's pipes, ending and reaping its command, removing
# its PID file at exit.
PASTA_SYSCALLS: tuple[str, ...] = tuple(
    f"{_INTERPRETER} {_SOCKETS} splice pipe2 kill wait4 unlinkat".split()
)
# ioctl requests: SIOCOUTQ (TCP send queue, = TIOCOUTQ), SIOCINQ (= FIONREAD),
# FIONBIO (``socket.setblocking``), FIONCLEX/FIOCLEX (``os.set_inheritable``),
# SIOCGIFINDEX (``socket.if_nametoindex``: scope of IPv6 link-local peers),
# SIOCOUTQNSD (the unsent part of a send queue, dumped for a live migration).
IOCTLS = (0x5411, 0x541B, 0x5421, 0x5450, 0x5451, 0x8933, 0x894B)


# -- what to do ------------------------------------------------------------------


@record(frozen=True)
class Plan:
    """Isolation steps for one run (pure data, decided by ``plan``)."""

    mode: str
    ids: tuple[int, int] | None  # (uid, gid) to become, None: stay
    new_userns: bool
    caps: int  # capabilities the main thread keeps (bit mask)
    runner_caps: int  # those pasta's namespace helper thread keeps
    syscalls: tuple[str, ...]
    chroot_fallback: bool = False  # --chroot-fallback


def target_ids(runas: tuple[int, int] | None, started_as: tuple[int, int],
               nobody: tuple[int, int]) -> tuple[int, int] | None:
    """Who to become: ``--runas``, else ``nobody`` if started as root, else nobody new."""
    if runas is not None:
        return None if runas == started_as else runas
    if started_as[0] == 0:
        return nobody
    return None


def nobody_ids() -> tuple[int, int]:
    try:
        user = pwd.getpwnam(NOBODY)
    except KeyError:
        return (NOBODY_ID, NOBODY_ID)
    return (user.pw_uid, user.pw_gid)


def binds_later(conf: Any) -> bool:
    """Whether listeners may be opened after start-up (``auto`` forwarding)."""
    return any(getattr(conf, name).mode == "auto"
               for name in ("tcp_ports", "udp_ports", "tcp_ns", "udp_ns"))


def plan(conf: Any, mode: str, spawned: bool = False,
         started_as: tuple[int, int] = STARTED_AS,
         nobody: tuple[int, int] | None = None) -> Plan:
    """The steps for ``conf`` (see the module docstring).

    ``spawned``: pasta started its command.  If pasta then changes identity,
    the command (root in a user namespace that root owns) could no longer be
    signalled, not even by the parent-death signal, which the kernel checks
    as it checks ``kill``: the main thread keeps ``CAP_KILL`` to end it.
    """
    ids = target_ids(conf.runas, started_as, nobody or nobody_ids())
    fallback = bool(getattr(conf, "chroot_fallback", False))
    if mode == "passt":
        return Plan(mode, ids, True, 0, 0, PASST_SYSCALLS, fallback)
    bind = 1 << CAP_NET_BIND_SERVICE if binds_later(conf) else 0
    kill = 1 << CAP_KILL if spawned and ids is not None else 0
    return Plan(mode, ids, False, bind | kill, bind, PASTA_SYSCALLS, fallback)


def describe(p: Plan) -> str:
    who = f"UID {p.ids[0]}, GID {p.ids[1]}" if p.ids else "same UID"
    userns = ", new user namespace" if p.new_userns else ""
    helper = f" (helper thread {p.runner_caps:#x})" if p.mode == "pasta" else ""
    return f"{who}{userns}, capabilities {p.caps:#x}{helper}"


# -- doing it ----------------------------------------------------------------------


def _check(ret: int, what: str) -> int:
    if ret < 0:
        code = ctypes.get_errno()
        raise IsolationError(code, f"{what}: {os.strerror(code)}")
    return ret


def _prctl(option: int, arg: int, what: str) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), what)


def change_identity(uid: int, gid: int) -> None:
    """Become ``uid``:``gid`` without supplementary groups (every thread)."""
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    except OSError as e:
        raise IsolationError(e.errno, f"Can't change to UID {uid}, GID {gid}: "
                                      f"{e.strerror}") from None


def enter_new_userns(uid: int, gid: int) -> None:
    """A user namespace of our own, mapping only ``uid`` and ``gid`` (single thread).

    After a change of identity the process is not dumpable, which makes its
    ``/proc/self`` files root's: dumpable just long enough to write the maps.
    """
    _check(_libc.unshare(CLONE_NEWUSER), "Couldn't create user namespace")
    dumpable = _check(_libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), "Can't read dumpable flag")
    _prctl(PR_SET_DUMPABLE, 1, "Can't set dumpable flag")
    try:
        for path, text in (("/proc/self/uid_map", f"{uid} {uid} 1"),
                           ("/proc/self/setgroups", "deny"),
                           ("/proc/self/gid_map", f"{gid} {gid} 1")):
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
    except OSError as e:
        raise IsolationError(e.errno, f"Couldn't set up user namespace: {e.strerror}") from None
    finally:
        _prctl(PR_SET_DUMPABLE, dumpable, "Can't set dumpable flag")


def _empty_root_mountpoint() -> str:
    for path in EMPTY_ROOT_CANDIDATES:
        if os.path.isdir(path):
            return path
    raise IsolationError(0, "No directory to mount an empty root on")


def detach_filesystem(chroot_fallback: bool = False) -> None:
    """Move the calling thread into a mount namespace whose root is empty and read-only
    (``chroot_fallback``: by ``chroot`` where ``pivot_root`` fails)."""
    what = "Can't detach from the filesystem"
    _check(_libc.unshare(CLONE_NEWNS), what)
    _check(_libc.mount(b"", b"/", None, MS_REC | MS_PRIVATE, None), what)
    mountpoint = _empty_root_mountpoint().encode()
    flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    _check(_libc.mount(b"tmpfs", mountpoint, b"tmpfs", flags, b"mode=0555,nr_inodes=2"), what)
    os.chdir(mountpoint)
    if _libc.syscall(SYS_PIVOT_ROOT, b".", b".") == 0:
        _check(_libc.umount2(b".", MNT_DETACH), what)
    elif chroot_fallback:  # the root is no mount point (chroot): confine the old way
        _check(_libc.chroot(b"."), what)
    else:
        code = ctypes.get_errno()
        raise IsolationError(code, f"Failed to pivot_root(): {os.strerror(code)} "
                                   "(--chroot-fallback would chroot instead)")
    os.chdir("/")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def set_capabilities(keep: int) -> None:
    """Effective and permitted := ``keep`` (64-bit mask), inheritable and ambient empty."""
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        word = (keep >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = word
    _check(_libc.capset(ctypes.byref(header), data), "Can't drop capabilities")
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "Can't clear ambient capabilities")


def keep_caps_across_setuid() -> None:
    _prctl(PR_SET_KEEPCAPS, 1, "Can't keep capabilities")


def no_new_privs() -> None:
    """Nothing the calling thread executes from now on gains privileges."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "Can't set no_new_privs")


def restrict_thread(keep: int) -> None:
    """The calling thread's capabilities down to ``keep``, then ``no_new_privs``."""
    set_capabilities(keep)
    no_new_privs()


def thread_ids() -> set[int]:
    return {int(tid) for tid in os.listdir("/proc/self/task")}


def _check_threads(runner: Any) -> None:
    """Per-thread steps reach the main thread and the runner: refuse if there are others."""
    known = {threading.get_native_id()}
    if runner is not None:
        known.add(runner.native_id)
    others = thread_ids() - known
    if others:
        raise IsolationError(0, f"Unexpected threads {sorted(others)}: can't isolate them")


def _isolate_single_thread(p: Plan) -> None:
    """passt: identity, then a user namespace of our own, then the empty root."""
    if p.ids is not None:
        change_identity(*p.ids)
    enter_new_userns(os.geteuid(), os.getegid())
    detach_filesystem(p.chroot_fallback)
    restrict_thread(p.caps)


def _isolate_with_runner(p: Plan, runner: Any) -> None:
    """pasta: each per-thread step in the main thread and in the runner's."""
    detach_filesystem(p.chroot_fallback)
    if runner is not None:
        runner.call(detach_filesystem, p.chroot_fallback)
    if p.ids is not None:
        if p.caps:
            keep_caps_across_setuid()
        if p.runner_caps and runner is not None:
            runner.call(keep_caps_across_setuid)
        change_identity(*p.ids)
    restrict_thread(p.caps)
    if runner is not None:
        runner.call(restrict_thread, p.runner_caps)


def apply(p: Plan, runner: Any = None) -> None:
    """Carry out ``p`` on this process (and ``runner``'s thread); raises ``IsolationError``."""
    for name in LATE_IMPORTS:
        importlib.import_module(name)
    _check_threads(runner)
    if p.new_userns:
        if runner is not None:
            raise IsolationError(0, "A new user namespace needs a single-threaded process")
        _isolate_single_thread(p)
    else:
        _isolate_with_runner(p, runner)
    try:
        size = seccomp.install(p.syscalls, only={"ioctl": (1, IOCTLS)})
    except seccomp.SeccompUnsupported as e:
        if os.environ.get(NO_SECCOMP_VARIABLE) != "1":
            raise IsolationError(0, f"{e.strerror}: refusing to start without one; "
                                    f"{NO_SECCOMP_VARIABLE}=1 runs without the filter") from None
        log.warn("No seccomp filter (%s=1): %s", NO_SECCOMP_VARIABLE, e.strerror)
        return
    except seccomp.SeccompError as e:
        raise IsolationError(e.errno, e.strerror) from None
    log.debug("isolated: %s, seccomp filter of %d instructions for %d calls",
              describe(p), size, len(set(p.syscalls)))


def isolate(conf: Any, mode: str, runner: Any = None, spawned: bool = False) -> None:
    """Isolate passt (``runner`` None) or pasta (its ``NsRunner``; ``spawned``: it
    started its command) as ``conf`` says."""
    apply(plan(conf, mode, spawned), runner)
