"""passt's QEMU side: Ethernet frames over a UNIX stream socket.

Theory of operation
-------------------
QEMU (``-netdev stream`` since 7.2, or ``-netdev socket,fd=N`` through
``contrib/qrap``) and passt exchange Ethernet frames over one UNIX stream
socket, each frame preceded by its length as a 32-bit big-endian integer.
A stream has no message boundaries: one read may end anywhere, in a length
prefix or in the middle of a frame, and one write may be cut short anywhere
too.  Both directions are built so that Python pays per system call and per
frame, never per byte, and so that the framing survives every cut.

Receiving (``QemuStream.recv_frames``)
    One ``recv_into`` takes everything the socket holds, up to a large buffer
    (``RECV_BUFFER``, allocated once), and the frames in it are returned as
    views into that buffer: no copies.  An incomplete frame at the end stays
    where it is and is moved to the start of the buffer by the next call,
    before its remainder is read behind it.  So the returned views are valid
    until the next call, which is the ``TapBackend`` contract.  A length
    prefix below an Ethernet header (14) or above the largest frame
    (``FRAME_MAX``, 65535) cannot come from QEMU: the stream is corrupt and
    cannot be resynchronised, so, as upstream does, the error is logged and
    counted and the client is dropped (``CorruptStream``, an ``OSError``, which
    the tap dispatcher turns into a hang-up).  End of file raises ``EOFError``,
    with the same effect.

Sending (``QemuStream.send_frames``)
    Frames go out in batches with ``sendmsg`` and a scatter-gather list
    ``[prefix, frame, prefix, frame, ...]`` (``IOV_MAX`` buffers per call),
    never blocking.  Prefixes are 4-byte ``bytes`` cached by length, since
    frame lengths repeat.  When the socket takes only part of a batch, the
    frame that was cut must still be finished, or QEMU would read the next
    frame's bytes as the end of this one: its unsent tail is copied to a send
    queue, and so are the following frames while the queue stays below
    ``SEND_QUEUE_MAX`` bytes.  Whole frames beyond that are dropped, as a NIC
    drops what it cannot send (TCP retransmits); ``send_frames`` returns how
    many frames were sent or queued, so callers can tell.  While the queue is
    not empty, new frames go behind it (order is kept) and the descriptor is
    also watched for ``EPOLLOUT``; the dispatcher's callback reads the
    backend on every event, so ``recv_frames`` first pushes the queue out.

Listening (``QemuListener``)
    ``listen(conf)`` binds the socket before anything else starts, so that an
    error is one line and exit status 1, and so that passt daemonizes (and
    libvirt starts QEMU) only once the socket listens.  Without ``--socket``
    the first free path of ``/tmp/passt_1.socket`` ... ``/tmp/passt_64.socket``
    is taken: a path is free if nothing accepts connections on it; a stale
    socket file there is removed, anything that is not a socket is left alone.
    A given ``--socket`` path that something listens on is refused ("already
    in use").  With ``--vhost-user`` the socket carries the vhost-user
    protocol instead, and each client is a ``vhost_backend.VhostUserBackend``.  One client is served at a time, as upstream: a connection
    arriving while one is served is accepted and closed at once (QEMU's
    ``reconnect`` option retries).  When the client goes, the caller either
    stops (``--one-off``) or calls ``resume`` to wait for the next one; a
    connected socket passed by the parent (``--fd``) has no next one, so
    ``resume`` stops the event loop with status 0 there.  The socket file is
    removed on ``close`` through a directory descriptor opened at bind time,
    which keeps working after the process has lost its view of the
    filesystem (isolation), and only if the path still names our socket.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from collections import deque
from collections.abc import Callable, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Protocol, Union

from passt import buffers, log
from passt.backends.vhost_backend import DeviceStateHandler, VhostUserBackend
from passt.errors import StartupError
from passt.fsref import FileRef
from passt.loop import ERR, HUP, IN, OUT, RDHUP

if TYPE_CHECKING:
    from collections import Counter

    from passt.loop import EventLoop

Buffer = bytes | bytearray | memoryview

FRAME_MIN = 14  # an Ethernet header
FRAME_MAX = 65535  # ETH_MAX_MTU: the largest frame QEMU's stream backends carry
PREFIX_LEN = 4
RECV_BUFFER = 8 << 20
SEND_QUEUE_MAX = 4 << 20
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
FRAMES_PER_CALL = IOV_MAX // 2
SOCKET_BUFFER = (2**31 - 1) // 2  # INT_MAX / 2, as upstream: the kernel caps it
SOCKET_PATH_TEMPLATE = "/tmp/passt_{}.socket"
SOCKET_PATH_PROBES = range(1, 65)
LISTEN_BACKLOG = 1

_SEND_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
_READ_EVENTS = IN | RDHUP  # what dispatch.Dispatcher.attach watches a backend for
_FREE_PATH_ERRNOS = frozenset((errno.ENOENT, errno.ECONNREFUSED, errno.EACCES))
_unpack_length = struct.Struct("!I").unpack_from
_pack_length = struct.Struct("!I").pack
_ucred = struct.Struct("3i")
_prefixes: dict[int, bytes] = {}


Client = Union["QemuStream", VhostUserBackend]


class QemuError(StartupError):
    """The QEMU socket can't be set up; one-line message."""


class CorruptStream(ConnectionError):
    """A length prefix no QEMU would send: the stream can't be followed any more."""


class QemuOptions(Protocol):
    """The subset of ``conf.Conf`` that ``listen`` reads."""

    socket: str | None
    fd: int | None
    vhost_user: bool


def frame_prefix(size: int) -> bytes:
    """The 4-byte big-endian length prefix of a frame of ``size`` bytes (cached)."""
    prefix = _prefixes.get(size)
    if prefix is None:
        prefix = _prefixes[size] = _pack_length(size)
    return prefix


class QemuStream:
    """The ``TapBackend`` of passt: one connected QEMU stream socket."""

    def __init__(
        self,
        sock: socket.socket,
        loop: EventLoop | None = None,
        stats: Counter[str] | None = None,
        buffer_size: int = RECV_BUFFER,
    ) -> None:
        if buffer_size < FRAME_MAX + PREFIX_LEN:
            raise ValueError(f"receive buffer of {buffer_size} bytes can't hold a frame")
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = loop
        self._stats = stats
        self._buf = buffers.zeroed(buffer_size)
        self._tail_start = 0  # an incomplete frame kept from the last read
        self._tail_len = 0
        self._queue: deque[Buffer] = deque()  # prefixes and frames still to send
        self._queued = 0  # bytes in the queue
        self._watching_out = False

    def fileno(self) -> int:
        return self._fd

    @property
    def queued_bytes(self) -> int:
        """Bytes accepted by ``send_frames`` but not yet taken by the socket."""
        return self._queued

    # -- receiving ---------------------------------------------------------

    def recv_frames(self) -> list[memoryview]:
        """Every complete frame readable now; views valid until the next call.

        Raises ``EOFError`` when QEMU closed the connection and
        ``CorruptStream`` on a length prefix out of bounds.
        """
        if self._queue:
            self._flush()
        view = self._buf
        kept = self._tail_len
        if kept and self._tail_start:
            view[:kept] = view[self._tail_start : self._tail_start + kept]
        self._tail_start = 0
        try:
            size = self._sock.recv_into(view[kept:])
        except BlockingIOError:
            return []
        if not size:
            raise EOFError("QEMU closed the connection")
        return self._split_frames(kept + size)

    def _split_frames(self, end: int) -> list[memoryview]:
        """Frames in ``buf[:end]``; remembers where an incomplete one starts."""
        buf = self._buf
        frames = []
        offset = 0
        while end - offset >= PREFIX_LEN:
            (size,) = _unpack_length(buf, offset)
            if size < FRAME_MIN or size > FRAME_MAX:
                self._corrupt(size)
            start = offset + PREFIX_LEN
            if start + size > end:
                break
            offset = start + size
            frames.append(buf[start:offset])
        self._tail_start = offset
        self._tail_len = end - offset
        return frames

    def _corrupt(self, size: int) -> None:
        log.err("Bad frame size %d from guest, resetting connection", size)
        if self._stats is not None:
            self._stats["tap.stream_corrupt"] += 1
        self._tail_len = 0
        raise CorruptStream(f"bad frame size {size} in the stream from QEMU")

    # -- sending -----------------------------------------------------------

    def send_frames(self, frames: Sequence[Buffer]) -> int:
        """Send or queue ``frames`` in order without blocking; how many were taken."""
        if self._queue:
            self._flush()
            if self._queue:
                return self._enqueue(frames, 0)
        sendmsg = self._sock.sendmsg
        total_frames = len(frames)
        sent = 0
        while sent < total_frames:
            batch = frames[sent : sent + FRAMES_PER_CALL]
            iov: list[Buffer] = []
            length = 0
            for frame in batch:
                size = len(frame)
                prefix = _prefixes.get(size) or frame_prefix(size)
                iov.append(prefix)
                iov.append(frame)
                length += size + PREFIX_LEN
            try:
                written = sendmsg(iov, (), _SEND_FLAGS)
            except BlockingIOError:
                written = 0
            except OSError as e:
                log.debug("tap: send to QEMU failed: %s", e.strerror)
                return sent
            if written == length:
                sent += len(batch)
                continue
            sent += self._keep_cut_frame(batch, written)
            return sent + self._enqueue(frames, sent)
        return sent

    def _keep_cut_frame(self, batch: Sequence[Buffer], written: int) -> int:
        """After a short write: frames of ``batch`` done, the cut one counted as queued."""
        done = 0
        for frame in batch:
            size = len(frame) + PREFIX_LEN
            if written < size:
                break
            written -= size
            done += 1
        if not written:
            return done
        frame = batch[done]
        if written < PREFIX_LEN:
            self._queue.append(frame_prefix(len(frame))[written:])
            self._queue.append(bytes(frame))
        else:
            self._queue.append(bytes(memoryview(frame)[written - PREFIX_LEN :]))
        self._queued += len(frame) + PREFIX_LEN - written
        self._watch_writable(True)
        return done + 1

    def _enqueue(self, frames: Sequence[Buffer], start: int) -> int:
        """Copy whole frames from ``frames[start:]`` while the queue has room."""
        taken = 0
        queue = self._queue
        for frame in islice(frames, start, None):
            size = len(frame)
            if self._queued + size + PREFIX_LEN > SEND_QUEUE_MAX:
                break
            queue.append(frame_prefix(size))
            queue.append(bytes(frame))
            self._queued += size + PREFIX_LEN
            taken += 1
        if queue:
            self._watch_writable(True)
        return taken

    def _flush(self) -> None:
        """Push the send queue out as far as the socket takes it."""
        queue = self._queue
        while queue:
            iov = list(islice(queue, IOV_MAX))
            try:
                written = self._sock.sendmsg(iov, (), _SEND_FLAGS)
            except BlockingIOError:
                break
            except OSError as e:
                log.debug("tap: send to QEMU failed, dropping queue: %s", e.strerror)
                queue.clear()
                self._queued = 0
                break
            self._queued -= written
            full = written == sum(len(buf) for buf in iov)
            while written:
                head = queue[0]
                if written >= len(head):
                    written -= len(head)
                    queue.popleft()
                else:
                    queue[0] = memoryview(head)[written:]
                    written = 0
            if not full:
                break
        self._watch_writable(bool(queue))

    def _watch_writable(self, wanted: bool) -> None:
        if wanted == self._watching_out:
            return
        loop = self._loop
        if loop is None or not loop.watching(self._fd):
            return
        loop.modify(self._fd, _READ_EVENTS | OUT if wanted else _READ_EVENTS)
        self._watching_out = wanted

    def close(self) -> None:
        self._queue.clear()
        self._queued = 0
        self._sock.close()


def peer_pid(sock: socket.socket) -> int:
    """PID of the process at the other end of a UNIX socket (0 if unknown)."""
    try:
        pid: int
        pid, _, _ = _ucred.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _ucred.size)
        )
    except OSError:
        return 0
    return pid


def _enlarge_buffers(sock: socket.socket) -> None:
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        except OSError as e:
            log.debug("tap: can't enlarge socket buffer: %s", e.strerror)


class QemuListener:
    """The listening socket (or the ``--fd`` socket) and the one client it serves."""

    def __init__(
        self, sock: socket.socket, path: str | None, bound: FileRef | None = None,
        vhost_user: bool = False,
    ) -> None:
        """``sock`` listens on ``path``, or is already connected (``path`` None);
        clients speak vhost-user (``vhost_backend``) or the stream protocol."""
        self._sock: socket.socket | None = sock
        self.path = path
        self._bound = bound
        self._vhost_user = vhost_user
        self._loop: EventLoop | None = None
        self._on_client: Callable[[Client], None] | None = None
        self._stats: Counter[str] | None = None
        self.client: Client | None = None
        self.migration: DeviceStateHandler | None = None  # given to vhost-user clients

    def start(
        self,
        loop: EventLoop,
        on_client: Callable[[Client], None],
        stats: Counter[str] | None = None,
    ) -> None:
        """Serve clients from ``loop``: ``on_client(backend)`` for each accepted one.

        The caller attaches the stream (``Dispatcher.attach``) and calls
        ``resume`` (or stops, with ``--one-off``) when it hangs up.  With
        ``--fd``, the one client is handed over at once.  Corrupt streams are
        counted in ``stats``.
        """
        assert self._sock is not None
        self._loop, self._on_client, self._stats = loop, on_client, stats
        if self.path is None:
            sock, self._sock = self._sock, None
            self._serve(sock)
            return
        self._sock.setblocking(False)
        loop.add(self._sock.fileno(), IN, self._on_listen_event)

    def _on_listen_event(self, events: int) -> None:
        if events & (ERR | HUP):
            log.die("Error on listening UNIX socket, exiting")
        assert self._sock is not None
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        if self.client is not None:
            log.info("discarding connection from PID %d", peer_pid(conn))
            conn.close()
            return
        log.info("accepted connection from PID %d", peer_pid(conn))
        self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        assert self._on_client is not None
        if self._vhost_user:
            self.client = VhostUserBackend(conn, self._stats, migration=self.migration)
        else:
            _enlarge_buffers(conn)
            self.client = QemuStream(conn, self._loop, self._stats)
        self._on_client(self.client)

    def resume(self) -> None:
        """The client went: accept the next one.  A ``--fd`` socket has no next
        one (it implies ``--one-off``): the loop stops with status 0."""
        self.client = None
        if self.path is not None:
            log.info("Client connection closed")
            return
        log.info("Client connection closed, exiting")
        if self._loop is not None:
            self._loop.stop(0)

    def close(self) -> None:
        """Stop listening and remove the socket file (if it is still ours)."""
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._bound is not None:
            self._bound.remove()
            self._bound = None


def listen(opts: QemuOptions) -> QemuListener:
    """Bind and listen on the QEMU socket (or adopt ``--fd``); raises ``QemuError``."""
    if opts.fd is not None:
        return QemuListener(_adopt_fd(opts.fd), None, vhost_user=opts.vhost_user)
    sock, path = bind_socket(opts.socket)
    try:
        sock.listen(LISTEN_BACKLOG)
        bound = FileRef(path)
    except OSError as e:
        sock.close()
        _unlink_quietly(path)
        raise QemuError(f"Failed to listen on UNIX domain socket {path}: {e.strerror}") from None
    log.info("UNIX domain socket bound at %s", path)
    for line in startup_hint(path, opts.vhost_user):
        log.info("%s", line)
    return QemuListener(sock, path, bound, opts.vhost_user)


def startup_hint(path: str, vhost_user: bool = False) -> list[str]:
    """How to start QEMU against ``path``, as upstream prints it."""
    if vhost_user:
        return [
            "",
            "You can start qemu with:",
            f"    kvm ... -chardev socket,id=chr0,path={path} "
            "-netdev vhost-user,id=netdev0,chardev=chr0 "
            "-device virtio-net,netdev=netdev0 -object memory-backend-memfd,id=memfd0,"
            "share=on,size=$RAMSIZE -numa node,memdev=memfd0",
        ]
    return [
        "",
        "You can now start qemu (>= 7.2):",
        "    kvm ... -device virtio-net-pci,netdev=s "
        f"-netdev stream,id=s,server=off,addr.type=unix,addr.path={path}",
        "or qrap (contrib/qrap), for earlier qemu versions:",
        "    qrap 5 kvm ... -netdev socket,fd=5,id=s -device virtio-net-pci,netdev=s",
    ]


def _adopt_fd(fd: int) -> socket.socket:
    """``--fd``: a connected stream socket inherited from the parent."""
    try:
        is_socket = stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError as e:
        raise QemuError(f"Invalid --fd {fd}: {e.strerror}") from None
    if not is_socket:
        raise QemuError(f"--fd {fd} is not a socket")
    sock = socket.socket(fileno=fd)
    problem = None
    if sock.type != socket.SOCK_STREAM:
        problem = "is not a stream socket"
    else:
        try:
            sock.getpeername()
        except OSError:
            problem = "is not a connected socket"
    if problem:
        sock.detach()
        raise QemuError(f"--fd {fd} {problem}")
    sock.set_inheritable(False)
    return sock


def bind_socket(path: str | None) -> tuple[socket.socket, str]:
    """A UNIX stream socket bound to ``path``, or to the first free probed path."""
    if path:
        problem = path_problem(path)
        if problem:
            raise QemuError(f"Socket path {path} {problem}")
        try:
            return _bind(path), path
        except OSError as e:
            raise QemuError(f"Failed to bind UNIX domain socket {path}: {e.strerror}") from None
    for n in SOCKET_PATH_PROBES:
        candidate = SOCKET_PATH_TEMPLATE.format(n)
        if path_problem(candidate):
            continue
        try:
            return _bind(candidate), candidate
        except OSError:
            continue
    first, last = (SOCKET_PATH_TEMPLATE.format(n) for n in (1, SOCKET_PATH_PROBES[-1]))
    raise QemuError(f"No free UNIX domain socket path from {first} to {last}")


def path_problem(path: str) -> str | None:
    """Why ``path`` can't be ours (something accepts connections there, or it
    is no socket), or None: free, or a stale socket file that may be replaced."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None  # absent, or unreachable: binding will tell
    if not stat.S_ISSOCK(mode):
        return "exists and is not a socket"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        probe.connect(path)
    except OSError as e:
        return None if e.errno in _FREE_PATH_ERRNOS else "already in use"
    finally:
        probe.close()
    return "already in use"


def _bind(path: str) -> socket.socket:
    """Bind a new socket to ``path``, replacing a stale socket file there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        _unlink_quietly(path)
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    return sock


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
