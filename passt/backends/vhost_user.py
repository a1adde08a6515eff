"""The vhost-user protocol: messages and the session state machine, without I/O.

Theory of operation
-------------------
QEMU (the front end) drives a vhost-user back end over a UNIX stream
socket (QEMU's docs/interop/vhost-user.rst).  Each message is a 12-byte
header, ``request``, ``flags`` and ``size`` (32-bit little-endian), then
``size`` bytes of payload; file descriptors ride along as ``SCM_RIGHTS``.
Replies carry the same request number with the ``REPLY`` flag.  Which
messages want one: the ``GET_*`` requests always; any other only when it
sets ``NEED_REPLY`` and ``REPLY_ACK`` was negotiated, in which case the
answer is a u64, 0 for success.

``Session.handle(message)`` checks a message (payload size, queue index,
descriptors), applies it to a ``Device`` (the back end's side: features,
memory table, rings, kick and call descriptors) and returns the reply
bytes, or ``None``.  It does no I/O of its own: the back end reads and
writes the socket, maps memory and watches eventfds, so the session can be
tested message by message.  A message it cannot accept raises
``ProtocolError`` (one line): the back end logs it, counts it and drops
the connection, as QEMU would see a back end that cannot follow it.
Descriptors that arrive with a message are owned by the session from then
on: passed to the device, or closed.

What we offer: ``VIRTIO_F_VERSION_1``, ``VIRTIO_NET_F_MRG_RXBUF`` (so that a
64 KiB frame can span the guest's receive buffers), ``VIRTIO_NET_F_GUEST_CSUM``
(our frames carry valid checksums: the guest may skip checking them),
``VIRTIO_NET_F_CSUM`` (the guest may leave its TCP and UDP checksums
partial, the pseudo-header sum only: we end every TCP connection and send
UDP payloads through sockets, so no handler reads those checksums, and a
TCG guest no longer sums every byte it sends) and
``VHOST_USER_F_PROTOCOL_FEATURES``, with the protocol features ``REPLY_ACK``,
``LOG_SHMFD`` and ``DEVICE_STATE``.
A net device has two queues: 0 receives (we write), 1 transmits (we read).

Live migration: QEMU refuses to migrate a guest whose back end lacks
``VHOST_F_LOG_ALL``.  While migrating, it sets that feature and hands over
a dirty page bitmap (``SET_LOG_BASE``, a shared memory descriptor; the
reply is an empty u64) and the used rings' guest-physical addresses
(``SET_VRING_ADDR`` with ``VHOST_VRING_F_LOG``): the device marks the pages
it writes.  Once the guest is stopped, ``SET_DEVICE_STATE_FD`` (direction
save on the source, load on the target, phase "stopped") gives a pipe to
write the device state to or read it from; the reply says we return no
descriptor of our own (``VRING_NOFD``).  The device moves the state after
the reply is sent (``Device.device_state``); ``CHECK_DEVICE_STATE`` then
asks how that went (0: success).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from enum import IntEnum
from typing import Protocol

from passt import log
from passt.record import field, record

HEADER = struct.Struct("<III")
HEADER_SIZE = HEADER.size
PAYLOAD_MAX = 8 + 8 * 32 * 4  # the largest payload we accept: a memory table of 8 regions
MAX_FDS = 8
VERSION = 0x1
FLAG_VERSION_MASK = 0x3
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
VRING_NOFD = 0x100
VRING_INDEX_MASK = 0xFF
QUEUES = 2
RX, TX = 0, 1
MEM_REGIONS_MAX = 8

VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_GUEST_CSUM = 1
VIRTIO_NET_F_MRG_RXBUF = 15
VHOST_F_LOG_ALL = 26
VHOST_USER_F_PROTOCOL_FEATURES = 30
VIRTIO_F_VERSION_1 = 32
PROTOCOL_F_LOG_SHMFD = 1
PROTOCOL_F_REPLY_ACK = 3
PROTOCOL_F_DEVICE_STATE = 19
VHOST_VRING_F_LOG = 1
TRANSFER_STATE_SAVE, TRANSFER_STATE_LOAD = 0, 1
TRANSFER_STATE_PHASE_STOPPED = 0

FEATURES = (1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MRG_RXBUF | 1 << VIRTIO_NET_F_CSUM
            | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VHOST_USER_F_PROTOCOL_FEATURES
            | 1 << VHOST_F_LOG_ALL)
PROTOCOL_FEATURES = (1 << PROTOCOL_F_REPLY_ACK | 1 << PROTOCOL_F_LOG_SHMFD
                     | 1 << PROTOCOL_F_DEVICE_STATE)

_u64 = struct.Struct("<Q")
_state = struct.Struct("<II")
_addr = struct.Struct("<IIQQQQ")
_mem_header = struct.Struct("<II")
_region = struct.Struct("<QQQQ")
_log = struct.Struct("<QQ")
_transfer = struct.Struct("<II")


class Request(IntEnum):
    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SET_DEVICE_STATE_FD = 42
    CHECK_DEVICE_STATE = 43


class ProtocolError(Exception):
    """A message the session cannot follow; one line."""


@record
class Message:
    request: int
    flags: int
    payload: bytes
    fds: list[int] = field(default_factory=list)


@record(frozen=True)
class RegionInfo:
    gpa: int
    size: int
    uva: int
    mmap_offset: int


@record(frozen=True)
class RingAddresses:
    desc: int
    used: int
    avail: int
    log_used: int | None = None  # guest-physical address of the used ring, if logged


class Device(Protocol):
    """What the session drives: the back end's state of the device."""

    def set_features(self, features: int) -> None: ...

    def set_mem_table(self, regions: list[tuple[RegionInfo, int]]) -> None: ...

    def set_vring_num(self, index: int, num: int) -> None: ...

    def set_vring_addr(self, index: int, addresses: RingAddresses) -> None: ...

    def set_vring_base(self, index: int, base: int) -> None: ...

    def get_vring_base(self, index: int) -> int: ...

    def set_vring_kick(self, index: int, fd: int | None) -> None: ...

    def set_vring_call(self, index: int, fd: int | None) -> None: ...

    def set_vring_enable(self, index: int, enable: bool) -> None: ...

    def set_log_base(self, fd: int, size: int, offset: int) -> None: ...

    def set_log_fd(self, fd: int) -> None: ...

    def device_state(self, fd: int, load: bool) -> None: ...

    def device_state_result(self) -> int: ...

    def reset(self) -> None: ...


def parse_header(data: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """(request, flags, size) of a message header; ``ProtocolError`` if insane."""
    if len(data) != HEADER_SIZE:
        raise ProtocolError(f"short message header ({len(data)} bytes)")
    request, flags, size = HEADER.unpack(data)
    if flags & FLAG_VERSION_MASK != VERSION:
        raise ProtocolError(f"message version {flags & FLAG_VERSION_MASK}, expected {VERSION}")
    if size > PAYLOAD_MAX:
        raise ProtocolError(f"payload of {size} bytes for request {request}")
    return request, flags, size


def build(request: int, payload: bytes) -> bytes:
    """A message from us: a reply to ``request``."""
    return HEADER.pack(request, VERSION | FLAG_REPLY, len(payload)) + payload


def _name(request: int) -> str:
    try:
        return Request(request).name
    except ValueError:
        return f"request {request}"


class Session:
    """One front end's session: negotiated features, and the device it drives."""

    def __init__(self, device: Device, close_fd: Callable[[int], None] = os.close) -> None:
        self.device = device
        self.features = 0
        self.protocol_features = 0
        self._close = close_fd
        self._handlers: dict[int, Callable[[Message], bytes | None]] = {
            Request.GET_FEATURES: lambda m: _u64.pack(FEATURES),
            Request.SET_FEATURES: self._set_features,
            Request.SET_OWNER: lambda m: None,
            Request.RESET_OWNER: self._reset,
            Request.SET_MEM_TABLE: self._set_mem_table,
            Request.SET_VRING_NUM: self._set_vring_num,
            Request.SET_VRING_ADDR: self._set_vring_addr,
            Request.SET_VRING_BASE: self._set_vring_base,
            Request.GET_VRING_BASE: self._get_vring_base,
            Request.SET_VRING_KICK: self._vring_fd(device.set_vring_kick),
            Request.SET_VRING_CALL: self._vring_fd(device.set_vring_call),
            Request.SET_VRING_ERR: self._vring_fd(self._discard),
            Request.GET_PROTOCOL_FEATURES: lambda m: _u64.pack(PROTOCOL_FEATURES),
            Request.SET_PROTOCOL_FEATURES: self._set_protocol_features,
            Request.GET_QUEUE_NUM: lambda m: _u64.pack(QUEUES // 2),
            Request.SET_VRING_ENABLE: self._set_vring_enable,
            Request.SET_LOG_BASE: self._set_log_base,
            Request.SET_LOG_FD: self._set_log_fd,
            Request.SET_DEVICE_STATE_FD: self._set_device_state_fd,
            Request.CHECK_DEVICE_STATE: lambda m: _u64.pack(device.device_state_result()),
        }
        self._replies = {Request.GET_FEATURES, Request.GET_VRING_BASE,
                         Request.GET_PROTOCOL_FEATURES, Request.GET_QUEUE_NUM,
                         Request.SET_LOG_BASE, Request.SET_DEVICE_STATE_FD,
                         Request.CHECK_DEVICE_STATE}

    def handle(self, message: Message) -> bytes | None:
        """Apply ``message``; the reply to send, if any.  Raises ``ProtocolError``."""
        handler = self._handlers.get(message.request)
        if log.DEBUG:
            log.debug("vhost-user: %s, %d bytes, %d descriptors", _name(message.request),
                      len(message.payload), len(message.fds))
        try:
            if handler is None:
                raise ProtocolError(f"unsupported {_name(message.request)}")
            answer = handler(message)
        except ProtocolError:
            self._close_fds(message.fds)
            if not self._wants_ack(message):
                raise
            return build(message.request, _u64.pack(1))
        if message.request in self._replies:
            return build(message.request, answer or b"")
        if self._wants_ack(message):
            return build(message.request, _u64.pack(0))
        return None

    def _wants_ack(self, message: Message) -> bool:
        return bool(message.flags & FLAG_NEED_REPLY
                    and self.protocol_features & PROTOCOL_FEATURES
                    and message.request not in self._replies)

    def _discard(self, _index: int, fd: int | None) -> None:
        """``SET_VRING_ERR``: we report no errors through an eventfd."""
        if fd is not None:
            self._close(fd)

    def _close_fds(self, fds: list[int]) -> None:
        while fds:
            self._close(fds.pop())

    # -- payloads --

    def _u64(self, message: Message) -> int:
        self._no_fds(message)
        if len(message.payload) < _u64.size:
            raise ProtocolError(f"{_name(message.request)}: payload of {len(message.payload)} "
                                "bytes, expected 8")
        value: int = _u64.unpack_from(message.payload)[0]
        return value

    def _no_fds(self, message: Message) -> None:
        if message.fds:
            raise ProtocolError(f"{_name(message.request)}: unexpected file descriptors")

    def _vring_state(self, message: Message) -> tuple[int, int]:
        self._no_fds(message)
        if len(message.payload) < _state.size:
            raise ProtocolError(f"{_name(message.request)}: short vring state")
        index, num = _state.unpack_from(message.payload)
        return self._queue(message, index), num

    @staticmethod
    def _queue(message: Message, index: int) -> int:
        if index >= QUEUES:
            raise ProtocolError(f"{_name(message.request)}: no queue {index}")
        return index

    # -- requests --

    def _set_features(self, message: Message) -> None:
        features = self._u64(message)
        if features & ~FEATURES:
            raise ProtocolError(f"features {features:#x} beyond those offered {FEATURES:#x}")
        self.features = features
        self.device.set_features(features)

    def _set_protocol_features(self, message: Message) -> None:
        self.protocol_features = self._u64(message) & PROTOCOL_FEATURES

    def _reset(self, message: Message) -> None:
        self.features = 0
        self.device.reset()

    def _set_mem_table(self, message: Message) -> None:
        payload = message.payload
        if len(payload) < _mem_header.size:
            raise ProtocolError("SET_MEM_TABLE: short payload")
        count, _ = _mem_header.unpack_from(payload)
        if not 0 < count <= MEM_REGIONS_MAX or len(message.fds) != count:
            raise ProtocolError(f"SET_MEM_TABLE: {count} regions, {len(message.fds)} "
                                "descriptors")
        if len(payload) < _mem_header.size + count * _region.size:
            raise ProtocolError("SET_MEM_TABLE: payload shorter than its regions")
        regions = [RegionInfo(*_region.unpack_from(payload, _mem_header.size + i * _region.size))
                   for i in range(count)]
        fds, message.fds = message.fds, []
        self.device.set_mem_table(list(zip(regions, fds, strict=True)))

    def _set_vring_num(self, message: Message) -> None:
        self.device.set_vring_num(*self._vring_state(message))

    def _set_vring_base(self, message: Message) -> None:
        index, base = self._vring_state(message)
        self.device.set_vring_base(index, base & 0xFFFF)

    def _get_vring_base(self, message: Message) -> bytes:
        index, _ = self._vring_state(message)
        return _state.pack(index, self.device.get_vring_base(index))

    def _set_vring_enable(self, message: Message) -> None:
        index, enable = self._vring_state(message)
        self.device.set_vring_enable(index, bool(enable))

    def _set_vring_addr(self, message: Message) -> None:
        self._no_fds(message)
        if len(message.payload) < _addr.size:
            raise ProtocolError("SET_VRING_ADDR: short payload")
        index, flags, desc, used, avail, log = _addr.unpack_from(message.payload)
        logged = log if flags & VHOST_VRING_F_LOG else None
        self.device.set_vring_addr(self._queue(message, index),
                                   RingAddresses(desc, used, avail, logged))

    def _one_fd(self, message: Message) -> int:
        if len(message.fds) != 1:
            raise ProtocolError(f"{_name(message.request)}: {len(message.fds)} descriptors, "
                                "expected 1")
        return message.fds.pop()

    def _set_log_base(self, message: Message) -> bytes:
        if len(message.payload) < _log.size:
            raise ProtocolError("SET_LOG_BASE: short payload")
        size, offset = _log.unpack_from(message.payload)
        fd = self._one_fd(message)
        try:
            self.device.set_log_base(fd, size, offset)
        finally:
            self._close(fd)
        return _u64.pack(0)

    def _set_log_fd(self, message: Message) -> None:
        self.device.set_log_fd(self._one_fd(message))

    def _set_device_state_fd(self, message: Message) -> bytes:
        if len(message.payload) < _transfer.size:
            raise ProtocolError("SET_DEVICE_STATE_FD: short payload")
        direction, phase = _transfer.unpack_from(message.payload)
        if phase != TRANSFER_STATE_PHASE_STOPPED:
            raise ProtocolError(f"SET_DEVICE_STATE_FD: phase {phase} (only 'stopped')")
        if direction not in (TRANSFER_STATE_SAVE, TRANSFER_STATE_LOAD):
            raise ProtocolError(f"SET_DEVICE_STATE_FD: direction {direction}")
        self.device.device_state(self._one_fd(message), direction == TRANSFER_STATE_LOAD)
        return _u64.pack(VRING_NOFD)

    def _vring_fd(self, apply: Callable[[int, int | None], None]
                  ) -> Callable[[Message], None]:
        def handler(message: Message) -> None:
            value = self._u64(Message(message.request, message.flags, message.payload))
            index = self._queue(message, value & VRING_INDEX_MASK)
            expected = 0 if value & VRING_NOFD else 1
            if len(message.fds) != expected:
                raise ProtocolError(f"{_name(message.request)}: {len(message.fds)} descriptors, "
                                    f"expected {expected}")
            fd = message.fds.pop() if expected else None
            apply(index, fd)

        return handler
