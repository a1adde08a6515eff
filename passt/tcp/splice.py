"""pasta's spliced path: loopback-to-loopback TCP without translation.

Theory of operation
-------------------
A connection accepted on a forwarded port whose peer is a loopback address
never needs the tap: both ends are ordinary local sockets, one in the host's
network namespace and one in pasta's target namespace.  We connect a second
socket on the other side (to the mapped port of the loopback address of the
same family; in the namespace, as upstream 2026, of the namespace's own
address unless ``--host-lo-to-ns-lo``: see ``fwd.splice_targets``) and let the kernel move the bytes: ``splice(2)`` from the
reading socket into a pipe, and from the pipe into the writing socket.  The
data never reaches user space, so the cost per byte is the kernel's; what
Python pays is a fixed cost per system call, which is why everything here is
arranged to make few, large calls:

* **Pipes as large as the system allows.**  ``probe_pipe_size()`` finds once
  at start-up the largest size ``F_SETPIPE_SZ`` accepts, from 8 MiB down,
  halving: with ``CAP_SYS_RESOURCE`` (root, before isolation) that is above
  ``/proc/sys/fs/pipe-max-size``, as upstream's pipes are.  The pool's pipes
  get it; a pipe opened after isolation gets it if it can, else
  ``pipe-max-size``, else the default.  Every ``splice`` asks for as much as
  its pipe holds.  One pipe per direction.
* **Edge-triggered epoll, registered once.**  Both sockets are watched for
  ``IN | OUT | RDHUP`` with ``EPOLLET`` from the start and never modified.
  An ``IN`` edge means "new data or FIN on this socket", an ``OUT`` edge
  "room again in this socket's send buffer" (the kernel only reports it
  after a write found the buffer full).  Each handler therefore moves data
  until a definite stopping point: the source said ``EAGAIN`` with the pipe
  empty (wait for the next ``IN`` edge), or the destination said ``EAGAIN``
  (wait for its ``OUT`` edge).  No ``epoll_ctl`` happens on the data path.
  Nor do we spin: a partial write (the destination is full) also ends the
  turn, since the kernel raises a new ``OUT`` edge once there is room (see
  ``move``).
* **Back-pressure for free.**  When the destination is full the pipe fills,
  the source's receive buffer fills, and the sender's window closes: we
  simply stop calling ``splice`` in that direction.  Nothing is buffered
  beyond one pipe, and as the kernel reports no new edges while nothing
  changes, a stalled reader costs no CPU at all.
* **``SO_RCVLOWAT``** during bulk transfers: once a read moves a large part
  of a pipe, the source's low-water mark is raised to a quarter of the
  pipe so that the kernel wakes us for big chunks only.  A short per
  connection timer lowers it back to 1 as soon as a tick passes without a
  large read (traffic turned interactive); lowering it makes the kernel
  signal any data already waiting, so nothing is delayed by more than a tick.
* **Pools.**  Accepting a connection takes a ready-made pipe pair and, for
  connections into the namespace, a socket created there beforehand (a
  socket belongs to the namespace of the thread that creates it; creating
  one means a round trip to the namespace helper thread).  The socket
  pools are refilled from a zero-delay timer, after the current batch of
  events.  Pipes are opened at start-up and *recycled*: a pipe's size is
  counted against its user's pipe quota (``pipe-user-pages-soft``, shared
  by every process of that user), and once isolated we lack the
  capabilities that exempt us from it; over the quota a new pipe gets two
  pages and ``F_SETPIPE_SZ`` is refused, and a 4 KiB pipe costs a
  ``splice`` pair per page (265,000 calls per GiB were seen in ``make
  bench``, with upstream's pools counted against root too).  A connection
  closed cleanly returns its two empty pipes to the pool.

Closing follows the observed events rather than TCP states: end of file on
one side becomes ``shutdown(SHUT_WR)`` on the other only once every byte read
from it was written (the pipe is empty); when both directions have carried
their FIN the connection is closed.  An error or reset on either side
(``EPOLLERR``, ``ECONNRESET``/``EPIPE`` from ``splice``, a refused connect)
resets the other side (``SO_LINGER`` zero) and closes everything at once.
Pipes go back to the pool when a connection closes cleanly (both are empty
then); after a reset they may still hold bytes and are closed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from typing import Any

from passt import loop as ev
from passt.flow.fwd import HOST, LOOPBACK, NsCall, families_of, splice_targets
from passt.flow.table import FlowKey, FlowTable, FlowTableFull, SockAddr
from passt.host.hostnet import read_sysctl_int

"""``ns_call(fn, *args)``: run ``fn(*args)`` in the target namespace, return its result."""

MAX_PIPE_SIZE = 8 << 20
MIN_PIPE_SIZE = 64 << 10
PIPE_POOL_SIZE = 16
SOCK_POOL_SIZE = 16
LOWAT_TICK = 0.01
"""Seconds without a large read after which SO_RCVLOWAT goes back to 1."""

_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_WATCH = ev.IN | ev.OUT | ev.RDHUP | ev.ET
_LINGER_RESET = struct.pack("ii", 1, 0)
_PIPE_MAX_SIZE_FILE = "/proc/sys/fs/pipe-max-size"


def unprivileged_pipe_size(limit_file: str = _PIPE_MAX_SIZE_FILE) -> int:
    """``pipe-max-size``: the largest pipe a process without ``CAP_SYS_RESOURCE``
    may ask for (bounded by ``MAX_PIPE_SIZE``)."""
    return min(max(read_sysctl_int(limit_file), MIN_PIPE_SIZE), MAX_PIPE_SIZE)


def probe_pipe_size() -> int:
    """Largest pipe size ``F_SETPIPE_SZ`` grants us now, probed on a scratch pipe."""
    size = MAX_PIPE_SIZE
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        while size > MIN_PIPE_SIZE:
            try:
                return fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, size)
            except OSError:
                size //= 2
        return fcntl.fcntl(r, fcntl.F_GETPIPE_SZ)
    finally:
        os.close(r)
        os.close(w)


Pipe = tuple[int, int, int]
"""A pipe's read end, write end and capacity in bytes."""


def open_pipe(*sizes: int) -> Pipe:
    """A non-blocking pipe of the first of ``sizes`` granted (the default size if
    none is: over the user's pipe quota, a smaller pipe still works)."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    for size in sizes:
        try:
            return r, w, fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, size)
        except OSError:
            continue
    return r, w, fcntl.fcntl(r, fcntl.F_GETPIPE_SZ)


def new_stream_socket(family: int) -> socket.socket:
    """A non-blocking TCP socket, ready to connect (called in either namespace)."""
    s = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    return s


def new_stream_sockets(family: int, count: int) -> list[socket.socket]:
    """``count`` fresh sockets; made in one namespace round trip to refill a pool."""
    return [new_stream_socket(family) for _ in range(count)]


def reset_and_close(sock: socket.socket) -> None:
    """Close with ``SO_LINGER`` zero, so that the peer sees a reset."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    sock.close()


class SplicePools:
    """Pre-opened pipes and namespace sockets, refilled off the hot path."""

    def __init__(self, loop: ev.EventLoop, ns_call: NsCall, pipe_size: int,
                 families: tuple[int, ...]) -> None:
        self.loop = loop
        self.ns_call = ns_call
        self.pipe_size = pipe_size
        self.fallback_pipe_size = unprivileged_pipe_size()
        self.families = families
        self.pipes: list[Pipe] = []
        self.ns_socks: dict[int, list[socket.socket]] = {f: [] for f in families}
        self._refill_timer: ev.Timer | None = None
        self.fill_pipes()
        self.refill()

    def take_pipe(self) -> Pipe:
        if self.pipes:
            return self.pipes.pop()
        return open_pipe(self.pipe_size, self.fallback_pipe_size)

    def give_back_pipe(self, pipe: Pipe) -> None:
        """Keep an *empty* pipe for the next connection (or close it if the pool is full)."""
        if len(self.pipes) < PIPE_POOL_SIZE:
            self.pipes.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def take_ns_socket(self, family: int) -> socket.socket:
        pool = self.ns_socks.setdefault(family, [])
        if not pool:
            pool.extend(self.ns_call(new_stream_sockets, family, SOCK_POOL_SIZE))
        self._schedule_refill()
        return pool.pop()

    def _schedule_refill(self) -> None:
        if self._refill_timer is None:
            self._refill_timer = self.loop.call_later(0.0, self.refill)

    def fill_pipes(self) -> None:
        while len(self.pipes) < PIPE_POOL_SIZE:
            self.pipes.append(open_pipe(self.pipe_size))

    def refill(self) -> None:
        """Top the socket pools up: one namespace round trip per family at most."""
        self._refill_timer = None
        for family in self.families:
            pool = self.ns_socks[family]
            if len(pool) < SOCK_POOL_SIZE // 2:
                pool.extend(self.ns_call(new_stream_sockets, family, SOCK_POOL_SIZE - len(pool)))

    def open_fds(self) -> int:
        """Descriptors held by the pools (for leak accounting)."""
        return 2 * len(self.pipes) + sum(len(pool) for pool in self.ns_socks.values())

    def close(self) -> None:
        if self._refill_timer is not None:
            self._refill_timer.cancel()
            self._refill_timer = None
        for r, w, _ in self.pipes:
            os.close(r)
            os.close(w)
        self.pipes.clear()
        for pool in self.ns_socks.values():
            for s in pool:
                s.close()
            pool.clear()


class SpliceConn:
    """One spliced connection: side 0 accepted, side 1 connected by us.

    Direction ``d`` carries bytes read from side ``d`` to side ``1 - d``
    through ``pipes[d]``; ``pending[d]`` is what sits in that pipe.
    """

    __slots__ = (
        "splicer", "key", "socks", "fds", "pipes", "pending", "eof", "fin_sent",
        "connecting", "closed", "lowat", "big_read", "lowat_timer", "handlers",
    )

    def __init__(self, splicer: TcpSplice, key: FlowKey, s0: socket.socket,
                 s1: socket.socket) -> None:
        self.splicer = splicer
        self.key = key
        self.socks = (s0, s1)
        self.fds = (s0.fileno(), s1.fileno())
        self.pipes: list[Pipe] = []
        self.pending = [0, 0]
        self.eof = [False, False]
        self.fin_sent = [False, False]
        self.connecting = True
        self.closed = False
        self.lowat = [False, False]
        self.big_read = [False, False]
        self.lowat_timer: ev.Timer | None = None
        self.handlers = (self._on_side0, self._on_side1)

    # -- events ------------------------------------------------------------

    def _on_side0(self, mask: int) -> None:
        self._on_event(0, mask)

    def _on_side1(self, mask: int) -> None:
        self._on_event(1, mask)

    def _on_event(self, side: int, mask: int) -> None:
        if self.closed:
            return
        if mask & ev.ERR:
            self.abort()
            return
        if self.connecting:
            if side == 0 or not mask & ev.OUT:
                return  # data from side 0 waits in its socket until we are connected
            self.established()
            return
        if mask & ev.OUT:
            self.move(1 - side)
        if not self.closed and mask & (ev.IN | ev.RDHUP | ev.HUP):
            self.move(side)

    def established(self) -> None:
        """The connect completed: take pipes and move whatever is waiting."""
        if self.socks[1].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.abort()
            return
        self.connecting = False
        pools = self.splicer.pools
        try:
            self.pipes.append(pools.take_pipe())
            self.pipes.append(pools.take_pipe())
        except OSError:  # out of descriptors: give this connection up, not others
            self.abort()
            return
        self.move(0)
        if not self.closed:
            self.move(1)

    # -- data --------------------------------------------------------------

    def move(self, d: int) -> None:
        """Move bytes in direction ``d`` until the source or destination blocks.

        Edge-triggered, so we stop only where the kernel will call us again:

        * the destination took only part of the pipe, or nothing: its send
          buffer is full, and its ``OUT`` edge comes once a third of it is
          free again;
        * the source said ``EAGAIN`` with the pipe empty: its next ``IN``.

        A read that returned little does not prove the source is drained: a
        socket splices one skb fragment per pipe slot, so a queue of many
        small segments fills the slots with a few bytes each.  Stopping there
        would wait for an edge that never comes (seen as an interactive
        connection hanging once its peer paused), so we read again until
        ``EAGAIN``.  Once the source's FIN was signalled no edge will follow
        it either: we read until the end of file.
        """
        src = self.fds[d]
        dst = self.fds[1 - d]
        pipe_r, pipe_w, size = self.pipes[d]
        pending = self.pending[d]
        eof = self.eof[d]
        splice = os.splice
        big = size >> 3
        try:
            while True:
                if not eof:
                    try:
                        n = splice(src, pipe_w, size, flags=_SPLICE_FLAGS)
                    except BlockingIOError:
                        pass
                    else:
                        if not n:
                            eof = True
                        elif n >= big:
                            self._note_big_read(d, size)
                        pending += n
                if not pending:
                    break
                try:
                    pending -= splice(pipe_r, dst, pending, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    break
                if pending or eof:
                    break
        except OSError:  # ECONNRESET, EPIPE...: one side is gone
            self.abort()
            return
        self.pending[d] = pending
        self.eof[d] = eof
        if eof and not pending and not self.fin_sent[d]:
            self.send_fin(d)

    def send_fin(self, d: int) -> None:
        """Everything read from side ``d`` was written: forward its FIN."""
        self.fin_sent[d] = True
        try:
            self.socks[1 - d].shutdown(socket.SHUT_WR)
        except OSError:
            self.abort()
            return
        if self.fin_sent[1 - d]:
            self.close()

    # -- SO_RCVLOWAT -------------------------------------------------------

    def _note_big_read(self, d: int, pipe_size: int) -> None:
        self.big_read[d] = True
        if not self.lowat[d]:
            self._set_lowat(d, pipe_size >> 2)
            if self.lowat_timer is None:
                self.lowat_timer = self.splicer.loop.call_later(LOWAT_TICK, self._lowat_tick)

    def _set_lowat(self, d: int, value: int) -> None:
        try:
            self.socks[d].setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, value)
        except OSError:
            return
        self.lowat[d] = value > 1

    def _lowat_tick(self) -> None:
        """Drop the low-water mark of a direction that saw no large read this tick."""
        self.lowat_timer = None
        if self.closed:
            return
        for d in (0, 1):
            if self.lowat[d] and not self.big_read[d]:
                self._set_lowat(d, 1)
            self.big_read[d] = False
        if self.lowat[0] or self.lowat[1]:
            self.lowat_timer = self.splicer.loop.call_later(LOWAT_TICK, self._lowat_tick)

    # -- closing -----------------------------------------------------------

    def on_fault(self, _error: Exception) -> None:
        """Handling this connection raised (a bug; the loop logged it): reset it alone."""
        self.abort()

    def abort(self) -> None:
        """An error or reset on one side: reset both and release everything."""
        if self.closed:
            return
        self._release(reset=True)

    def close(self) -> None:
        if not self.closed:
            self._release(reset=False)

    def _release(self, reset: bool) -> None:
        self.closed = True
        splicer = self.splicer
        for fd in self.fds:
            splicer.loop.remove(fd)
        for s in self.socks:
            if reset:
                reset_and_close(s)
            else:
                s.close()
        for pipe, pending in zip(self.pipes, self.pending, strict=False):
            if reset or pending:
                os.close(pipe[0])
                os.close(pipe[1])
            else:
                splicer.pools.give_back_pipe(pipe)
        self.pipes = []
        if self.lowat_timer is not None:
            self.lowat_timer.cancel()
            self.lowat_timer = None
        splicer.flows.remove(self.key)


class TcpSplice:
    """Spliced TCP connections between the host's and the namespace's loopback."""

    def __init__(self, loop: ev.EventLoop, flows: FlowTable, ns_call: NsCall,
                 families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6),
                 pipe_size: int | None = None, ns_targets: dict[int, str] | None = None) -> None:
        """``ns_targets``: per family, the namespace's address ``-t`` connections
        from the host's loopback go to (``fwd.splice_targets``; default: its loopback)."""
        self.loop = loop
        self.ns_targets = ns_targets or {}
        self.flows = flows
        self.pipe_size = pipe_size or probe_pipe_size()
        self.pools = SplicePools(loop, ns_call, self.pipe_size, families)

    def accept(self, sock: socket.socket, peer: SockAddr, origin: str, target_port: int) -> None:
        """Splice ``sock``, accepted on the ``origin`` side, to the other side's loopback.

        ``origin`` is ``HOST`` (a ``-t`` listener: connect inside the
        namespace) or ``NS`` (a ``-T`` listener: connect on the host).
        Never raises: a connection we cannot serve is reset.
        """
        family = sock.family
        key = ("tcp_splice", origin, sock.fileno())
        try:
            if origin == HOST:
                s1 = self.pools.take_ns_socket(family)
            else:
                s1 = new_stream_socket(family)
        except Exception:  # out of descriptors, or the namespace helper is gone
            reset_and_close(sock)
            return
        conn = SpliceConn(self, key, sock, s1)
        try:
            self.flows.add(key, conn)
        except FlowTableFull:
            reset_and_close(sock)
            s1.close()
            return
        sock.setblocking(False)
        address = self.ns_targets.get(family) if origin == HOST else None
        rc = s1.connect_ex((address or LOOPBACK[family], target_port))
        if rc not in (0, errno.EINPROGRESS):
            conn.abort()
            return
        for fd, handler in zip(conn.fds, conn.handlers, strict=True):
            self.loop.add(fd, _WATCH, handler, conn.on_fault)

    def close(self) -> None:
        """Close every spliced connection and the pools (at exit)."""
        for key, conn in self.flows.items():
            if key[0] == "tcp_splice":
                conn.close()
        self.pools.close()


def setup(ctx: Any, ns_call: NsCall) -> None:
    """pasta: the spliced TCP path, for ``-t``/``-T`` connections between loopbacks.

    Call after ``fwd.setup``; ``fwd.close`` closes it.
    """
    ctx.tcp_splice = TcpSplice(ctx.loop, ctx.flows, ns_call, families_of(ctx.net),
                               ns_targets=splice_targets(ctx.conf, ctx.net))
    ctx.fwd.handlers.tcp_splice = ctx.tcp_splice.accept
