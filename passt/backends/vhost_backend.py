"""passt as a vhost-user back end: frames through virtqueues in guest memory.

Theory of operation
-------------------
With ``--vhost-user``, QEMU connects to passt's UNIX socket as with the
stream back end, but the socket only carries the vhost-user protocol
(``vhost_user.Session``); frames travel through the guest's virtqueues
(``virtqueue.SplitQueue``) in memory QEMU shares with us, and the guest
and we tell each other about new work with eventfds: a *kick* descriptor
per queue (the guest added buffers) and a *call* descriptor per queue (we
used some: interrupt the guest).

``VhostUserBackend`` is a ``TapBackend`` like ``qemu.QemuStream``, so the
dispatcher and every protocol handler are the same.  It has several
descriptors to watch (the socket, two kick eventfds), but the dispatcher
watches one: the back end keeps an epoll instance of its own, whose
descriptor is what ``fileno()`` returns, readable whenever one of them is.
``recv_frames`` asks it what is ready, without waiting, and:

* on the socket, handles every message there (``SET_MEM_TABLE`` maps the
  regions, ring addresses and eventfds go to the queues); end of file is
  ``EOFError``, a message the session refuses ``BadMessage`` (an
  ``OSError``): both a hang-up for the dispatcher;
* on the transmit queue's kick, takes every chain the guest offers, copies
  each frame (without its virtio-net header) into a receive buffer
  allocated once, gives the chains back and signals the call eventfd once
  for the batch.  Copying costs little next to Python's per-frame work, and
  the frames can't change under the parser while the guest runs.  The
  frames returned are views into that buffer, valid until the next call;
  chains left over when it is full are picked up at once (we kick
  ourselves);
* on the receive queue's kick (the guest added receive buffers), writes
  out frames that waited for buffers.

``send_frames`` writes each frame behind a virtio-net header
(``num_buffers``: with ``VIRTIO_NET_F_MRG_RXBUF`` a 64 KiB frame spans as
many of the guest's receive buffers as it needs; ``DATA_VALID`` when the
guest took ``VIRTIO_NET_F_GUEST_CSUM``: our checksums are right), publishes
the used entries and signals once per batch.  A frame the guest has no
buffers for now waits in a bounded queue (``PENDING_MAX`` bytes, counted
as sent, as the stream back end does); beyond it frames are dropped, and
TCP retransmits.  While frames wait, the guest is *nudged*: its receive
queue interrupt is signalled again (at most every ``NUDGE_INTERVAL``) if
it has interrupts on.  A guest with a full receive ring and interrupts on
is asleep while it should be emptying the ring: an interrupt it missed
(see ``virtqueue.full_barrier``) would otherwise stall every flow to it
for good; a spare one costs it an empty poll.  Chains taken that a frame
did not need are kept for the next one.

Live migration (see ``vhost_user``): while ``VHOST_F_LOG_ALL`` is on and
QEMU gave a bitmap, the queues mark what they write (``virtqueue.DirtyLog``).
A device state request is carried out once its reply is on the socket,
by the ``DeviceStateHandler`` passt gave us (``migrate.device``): it
writes the state to QEMU's pipe or reads it from there, blocking, while
the guest is stopped.

When QEMU stops a queue (``GET_VRING_BASE``), we stop using it and answer
the index of the next chain we would have taken.  Everything the session
held (mappings, eventfds) is released when QEMU goes; the listener then
waits for the next QEMU, or passt stops with ``--one-off``.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import NoReturn, Protocol

from passt import log
from passt.backends.vhost_user import (
    HEADER_SIZE,
    MAX_FDS,
    QUEUES,
    RX,
    TX,
    VHOST_F_LOG_ALL,
    VIRTIO_F_VERSION_1,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_MRG_RXBUF,
    Message,
    ProtocolError,
    RegionInfo,
    RingAddresses,
    Session,
    parse_header,
)
from passt.backends.virtqueue import DirtyLog, GuestMemory, Refusals, Region, SplitQueue
from passt.buffers import zeroed
from passt.scm import FD_SIZE, received_fds

Buffer = bytes | bytearray | memoryview

FRAME_MIN = 14
FRAME_MAX = 65535
NET_HDR = struct.Struct("<BBHHHHH")  # virtio_net_hdr_mrg_rxbuf
NET_HDR_LEGACY = 10  # without VERSION_1 or MRG_RXBUF: no num_buffers
VIRTIO_NET_HDR_F_DATA_VALID = 2
RECV_BUFFER = 16 << 20
PENDING_MAX = 4 << 20
MESSAGES_PER_WAKEUP = 64
RX_CHAIN_MAX = 1 << 20  # no receive chain of a sane guest is larger
NUDGE_INTERVAL = 0.01  # seconds between repeated interrupts while frames wait
_EVENTFD_ONE = (1).to_bytes(8, "little")
_ANCILLARY = socket.CMSG_SPACE(MAX_FDS * FD_SIZE)


class DeviceStateHandler(Protocol):
    """What moves the device state (``migrate.device.Migration``)."""

    def transfer(self, fd: int, load: bool) -> int:
        """Write (save) or read (load) the state through ``fd``, then close it; 0 or an errno."""
        ...

    def checked(self, result: int, load: bool) -> None:
        """QEMU asked for the result (``CHECK_DEVICE_STATE``), and it was ``result``."""
        ...


class BadMessage(ConnectionError):
    """The front end sent something we can't follow: the session ends."""


class VhostUserBackend:
    """The ``TapBackend`` of ``passt --vhost-user``: one front end's session."""

    def __init__(self, sock: socket.socket, stats: Counter[str] | None = None,
                 buffer_size: int = RECV_BUFFER,
                 migration: DeviceStateHandler | None = None) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._stats: Counter[str] = stats if stats is not None else Counter()
        self._epoll = select.epoll()
        self._epoll.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
        self._refusals = Refusals(self._stats)
        self._memory = GuestMemory()
        self._queues = [SplitQueue(i, self._refusals) for i in range(QUEUES)]
        self._addresses: list[RingAddresses | None] = [None] * QUEUES
        self._kick: list[int | None] = [None] * QUEUES
        self._call: list[int | None] = [None] * QUEUES
        self._enabled = [True] * QUEUES
        self._hdr_len = NET_HDR.size
        self._mergeable = True
        self._hdr_flags = 0
        self._buf = zeroed(buffer_size)
        self._spare: deque[tuple[int, list[memoryview]]] = deque()  # receive chains taken
        self._pending: deque[bytes] = deque()  # frames waiting for receive buffers
        self._pending_bytes = 0
        self._nudged = 0.0  # when we last signalled a guest that had frames waiting
        self._log: DirtyLog | None = None
        self._log_all = False
        self._log_kick: int | None = None
        self._migration = migration
        self._state_request: tuple[int, bool] | None = None  # (fd, load) once replied to
        self._state_result = -1  # of the last transfer: 0 success, an errno, -1 none
        self._state_load = False
        self._session = Session(self)

    def fileno(self) -> int:
        return self._epoll.fileno()

    # -- TapBackend -----------------------------------------------------------

    def recv_frames(self) -> list[memoryview]:
        """Frames the guest sent; control messages and receive kicks handled on the way."""
        transmit = False
        for fd, _events in self._epoll.poll(0):
            if fd == self._sock.fileno():
                self._control()
                transmit = True
            elif fd == self._kick[TX]:
                _drain(fd)
                transmit = True
            elif fd == self._kick[RX]:
                _drain(fd)
                self._flush()
        return self._transmitted() if transmit else []

    def send_frames(self, frames: Sequence[Buffer]) -> int:
        """Write frames into the guest's receive buffers, or queue them; how many taken."""
        if self._pending:
            self._flush()
        written = 0 if self._pending else self._write_frames(frames)
        taken = written + self._enqueue(frames, written)
        if self._pending:
            self._nudge()
        return taken

    def close(self) -> None:
        self.reset()
        self._epoll.close()
        self._sock.close()

    # -- the control socket ----------------------------------------------------

    def _control(self) -> None:
        for _ in range(MESSAGES_PER_WAKEUP):
            message = self._read_message()
            if message is None:
                return
            try:
                reply = self._session.handle(message)
            except ProtocolError as e:
                self._bad_message(str(e))
            if reply is not None:
                self._sock.sendmsg([reply], (), socket.MSG_NOSIGNAL)
            if self._state_request is not None:
                self._transfer_state(*self._state_request)

    def _read_message(self) -> Message | None:
        try:
            header, ancillary, _flags, _ = self._sock.recvmsg(
                HEADER_SIZE, _ANCILLARY, socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            return None
        fds = received_fds(ancillary)
        if not header:
            _close_all(fds)
            raise EOFError("QEMU closed the vhost-user connection")
        try:
            request, flags, size = parse_header(header)
            payload = self._sock.recv(size, socket.MSG_DONTWAIT) if size else b""
        except (ProtocolError, BlockingIOError) as e:
            _close_all(fds)
            self._bad_message(str(e) or "payload missing")
        if len(payload) != size:
            _close_all(fds)
            self._bad_message(f"payload of {len(payload)} bytes, header said {size}")
        return Message(request, flags, payload, fds)

    def _bad_message(self, problem: str) -> NoReturn:
        self._stats["vhost_user.bad_message"] += 1
        log.err("vhost-user: %s, closing the connection", problem)
        raise BadMessage(problem)

    # -- Device: what the session applies ------------------------------------------

    def set_features(self, features: int) -> None:
        self._mergeable = bool(features & 1 << VIRTIO_NET_F_MRG_RXBUF)
        modern = self._mergeable or features & 1 << VIRTIO_F_VERSION_1
        self._hdr_len = NET_HDR.size if modern else NET_HDR_LEGACY
        guest_csum = features & 1 << VIRTIO_NET_F_GUEST_CSUM
        self._hdr_flags = VIRTIO_NET_HDR_F_DATA_VALID if guest_csum else 0
        self._log_all = bool(features & 1 << VHOST_F_LOG_ALL)
        self._apply_log()

    def set_log_base(self, fd: int, size: int, offset: int) -> None:
        try:
            log_map = DirtyLog(fd, size, offset)
        except (OSError, ValueError) as e:
            raise ProtocolError(f"SET_LOG_BASE: can't map the log: {e}") from None
        if self._log is not None:
            self._log.close()
        self._log = log_map
        log_map.kick = self._kick_log
        self._apply_log()

    def set_log_fd(self, fd: int) -> None:
        if self._log_kick is not None:
            os.close(self._log_kick)
        self._log_kick = fd

    def _kick_log(self) -> None:
        if self._log_kick is not None:
            try:
                os.write(self._log_kick, _EVENTFD_ONE)
            except BlockingIOError:
                pass

    def _apply_log(self) -> None:
        log_map = self._log if self._log_all else None
        for index, queue in enumerate(self._queues):
            addresses = self._addresses[index]
            logged = addresses is not None and addresses.log_used is not None
            queue.log = log_map if logged else None
            if addresses is not None and addresses.log_used is not None:
                queue.used_gpa = addresses.log_used

    def device_state(self, fd: int, load: bool) -> None:
        if self._migration is None:
            os.close(fd)
            raise ProtocolError("SET_DEVICE_STATE_FD: migration not set up")
        self._state_request = (fd, load)

    def device_state_result(self) -> int:
        result = self._state_result
        if self._migration is not None:
            self._migration.checked(result, self._state_load)
        return result & 0xFFFFFFFFFFFFFFFF

    def _transfer_state(self, fd: int, load: bool) -> None:
        self._state_request = None
        self._state_load = load
        assert self._migration is not None
        self._state_result = self._migration.transfer(fd, load)

    def set_mem_table(self, regions: list[tuple[RegionInfo, int]]) -> None:
        mapped: list[Region] = []
        try:
            for info, fd in regions:
                mapped.append(GuestMemory.map_region(fd, info.gpa, info.size, info.uva,
                                                     info.mmap_offset))
        except (OSError, ValueError) as e:
            for region in mapped:
                region.release()
            raise ProtocolError(f"SET_MEM_TABLE: can't map region: {e}") from None
        finally:
            _close_all([fd for _, fd in regions])
        self._drop_rings()
        self._memory.close()
        self._memory = GuestMemory(mapped)
        for index in range(QUEUES):
            self._locate(index)

    def set_vring_num(self, index: int, num: int) -> None:
        self._queues[index].num = num

    def set_vring_addr(self, index: int, addresses: RingAddresses) -> None:
        self._addresses[index] = addresses
        self._locate(index)

    def _locate(self, index: int) -> None:
        addresses = self._addresses[index]
        if addresses is None or not self._memory.regions:
            return
        error = self._queues[index].set_rings(self._memory, addresses.desc, addresses.avail,
                                              addresses.used)
        if error:
            raise ProtocolError(error)
        self._apply_log()

    def set_vring_base(self, index: int, base: int) -> None:
        self._queues[index].last_avail = base

    def get_vring_base(self, index: int) -> int:
        """Stop queue ``index``: the next chain we would take."""
        if index == RX:
            self._return_spare()
        queue = self._queues[index]
        queue.detach()
        self._addresses[index] = None
        self._set_fd(self._kick, index, None)
        return queue.last_avail

    def set_vring_kick(self, index: int, fd: int | None) -> None:
        self._set_fd(self._kick, index, fd)

    def set_vring_call(self, index: int, fd: int | None) -> None:
        self._set_fd(self._call, index, fd)

    def set_vring_enable(self, index: int, enable: bool) -> None:
        self._enabled[index] = enable

    def reset(self) -> None:
        """Forget the session's state: rings, mappings, eventfds."""
        self._drop_rings()
        for index in range(QUEUES):
            self._addresses[index] = None
            self._set_fd(self._kick, index, None)
            self._set_fd(self._call, index, None)
        self._memory.close()
        self._pending.clear()
        self._pending_bytes = 0
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._log_kick is not None:
            os.close(self._log_kick)
            self._log_kick = None

    def _drop_rings(self) -> None:
        self._return_spare()
        for queue in self._queues:
            queue.detach()

    def _return_spare(self) -> None:
        self._queues[RX].rewind(len(self._spare))
        self._spare.clear()

    def _set_fd(self, table: list[int | None], index: int, fd: int | None) -> None:
        old, table[index] = table[index], fd
        if old is not None:
            if table is self._kick:
                self._epoll.unregister(old)
            os.close(old)
        if fd is not None and table is self._kick:
            self._epoll.register(fd, select.EPOLLIN)

    # -- guest → us ---------------------------------------------------------------

    def _transmitted(self) -> list[memoryview]:
        """Every frame the guest offers, up to a full buffer; chains given back."""
        queue = self._queues[TX]
        if not queue.ready or not self._enabled[TX]:
            return []
        hdr_len, buf = self._hdr_len, self._buf
        limit = hdr_len + FRAME_MAX
        frames = []
        pos = 0
        for _ in range(queue.num):
            if len(buf) - pos < limit:
                self._kick_ourselves()
                break
            chain = queue.pop(False, limit)
            if chain is None:
                break
            head, buffers = chain
            end = _gather(buffers, hdr_len, buf, pos)
            queue.push(head, 0)
            if end - pos < FRAME_MIN:
                self._refusals.refuse("short_frame", "queue %d: chain %d holds no frame",
                                      TX, head)
                continue
            frames.append(buf[pos:end])
            pos = end
        if queue.publish():
            self._signal(TX)
        return frames

    def _kick_ourselves(self) -> None:
        fd = self._kick[TX]
        if fd is not None:
            os.write(fd, _EVENTFD_ONE)

    def _signal(self, index: int) -> None:
        fd = self._call[index]
        if fd is not None:
            try:
                os.write(fd, _EVENTFD_ONE)
            except BlockingIOError:
                pass  # the counter is full: the guest has an interrupt coming anyway

    # -- us → guest -----------------------------------------------------------------

    def _nudge(self) -> None:
        """Frames wait for receive buffers: interrupt the guest again if it takes them."""
        now = time.monotonic()
        if now - self._nudged < NUDGE_INTERVAL or not self._queues[RX].wants_interrupt():
            return
        self._nudged = now
        self._stats["vhost_user.rx_nudge"] += 1
        self._signal(RX)

    def _write_frames(self, frames: Sequence[Buffer]) -> int:
        queue = self._queues[RX]
        if not queue.ready or not self._enabled[RX]:
            return 0
        written = 0
        for frame in frames:
            if not self._write_frame(queue, frame):
                break
            written += 1
        if written and queue.publish():
            self._signal(RX)
        return written

    def _write_frame(self, queue: SplitQueue, frame: Buffer) -> bool:
        """One frame into as many receive chains as it needs; False: not enough offered."""
        need = self._hdr_len + len(frame)
        chains = self._take_chains(queue, need)
        if chains is None:
            return False
        if len(chains) > 1 and not self._mergeable:
            self._refusals.refuse("rx_small", "queue %d: %d-byte frame, buffers too small "
                                  "without mergeable buffers", RX, len(frame))
            self._spare.extend(chains)
            return True  # dropped: no buffer the guest gives will ever hold it
        header = NET_HDR.pack(self._hdr_flags, 0, 0, 0, 0, 0, len(chains))[: self._hdr_len]
        pieces = [memoryview(header), memoryview(frame)]
        for head, buffers in chains:
            queue.push(head, _scatter(pieces, buffers))
        return True

    def _take_chains(self, queue: SplitQueue, need: int
                     ) -> list[tuple[int, list[memoryview]]] | None:
        """Receive chains holding ``need`` bytes, spare ones first; None if too few."""
        chains: list[tuple[int, list[memoryview]]] = []
        room = 0
        spare = self._spare
        for _ in range(len(spare) + queue.num):
            if room >= need:
                return chains
            chain = spare.popleft() if spare else queue.pop(True, RX_CHAIN_MAX)
            if chain is None:
                break
            chains.append(chain)
            room += sum(len(b) for b in chain[1])
        if room >= need:
            return chains
        spare.extendleft(reversed(chains))
        return None

    def _enqueue(self, frames: Sequence[Buffer], start: int) -> int:
        """Copy frames from ``start`` into the pending queue while it has room."""
        taken = 0
        for frame in frames[start:]:
            if self._pending_bytes + len(frame) > PENDING_MAX:
                break
            self._pending.append(bytes(frame))
            self._pending_bytes += len(frame)
            taken += 1
        return taken

    def _flush(self) -> None:
        """Frames that waited for receive buffers, as far as the guest offers them."""
        pending = self._pending
        written = self._write_frames(pending)
        for _ in range(written):
            self._pending_bytes -= len(pending.popleft())


def _gather(buffers: list[memoryview], skip: int, buf: memoryview, pos: int) -> int:
    """Copy ``buffers`` without their first ``skip`` bytes to ``buf[pos:]``; the end."""
    for b in buffers:
        size = len(b)
        if skip >= size:
            skip -= size
            continue
        if skip:
            b = b[skip:]
            size -= skip
            skip = 0
        buf[pos:pos + size] = b
        pos += size
    return pos


def _scatter(pieces: list[memoryview], buffers: list[memoryview]) -> int:
    """Fill ``buffers`` from the front of ``pieces`` (consumed as they go); bytes written."""
    written = 0
    for b in buffers:
        offset = 0
        while pieces and offset < len(b):
            piece = pieces[0]
            n = min(len(b) - offset, len(piece))
            b[offset:offset + n] = piece[:n]
            offset += n
            if n == len(piece):
                pieces.pop(0)
            else:
                pieces[0] = piece[n:]
        written += offset
        if not pieces:
            break
    return written


def _drain(fd: int) -> None:
    """Reset an eventfd's counter."""
    try:
        os.read(fd, 8)
    except BlockingIOError:
        pass


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
