"""The vhost-user session and back end, driven as QEMU drives them, over a socketpair.

The test plays QEMU: it negotiates features, hands over the guest's memory
(a memfd, ``vhost_fixtures.FakeGuest``) and eventfds with ``SCM_RIGHTS``,
sets up both queues, then moves frames through them and checks the rings,
the virtio-net headers and the call eventfds, and that malformed messages
end the session with one log line instead of a crash.
"""

from __future__ import annotations

import array
import os
import socket
import struct
from collections import Counter
from collections.abc import Iterator

import pytest

from passt.backends import vhost_user as vu
from passt.backends.vhost_backend import NET_HDR, BadMessage, VhostUserBackend
from passt.backends.vhost_user import RX, TX, Message, ProtocolError, Request, Session
from passt.backends.virtqueue import VRING_AVAIL_F_NO_INTERRUPT

from .vhost_fixtures import GPA, NUM, SIZE, UVA, FakeGuest, guest_fixture  # noqa: F401

NEGOTIATED = vu.FEATURES


class FrontEnd:
    """QEMU's end of the socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, request: int, payload: bytes = b"", fds: tuple[int, ...] = (),
             flags: int = vu.VERSION) -> None:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.sock.sendmsg([vu.HEADER.pack(request, flags, len(payload)) + payload], ancillary)

    def reply(self) -> tuple[int, int, bytes]:
        request, flags, size = vu.HEADER.unpack(self.sock.recv(vu.HEADER_SIZE))
        return request, flags, self.sock.recv(size)


@pytest.fixture
def pair() -> Iterator[tuple[FrontEnd, VhostUserBackend, Counter[str]]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    stats: Counter[str] = Counter()
    backend = VhostUserBackend(ours, stats, buffer_size=1 << 20)
    yield FrontEnd(theirs), backend, stats
    backend.close()
    theirs.close()


def start_device(front: FrontEnd, backend: VhostUserBackend, guest: FakeGuest,
                 features: int = NEGOTIATED) -> dict[str, int]:
    """The messages QEMU sends until both queues run; the test's eventfds."""
    front.send(Request.GET_FEATURES)
    backend.recv_frames()
    assert struct.unpack("<Q", front.reply()[2])[0] == vu.FEATURES
    front.send(Request.SET_FEATURES, struct.pack("<Q", features))
    front.send(Request.SET_MEM_TABLE, struct.pack("<II", 1, 0)
               + struct.pack("<QQQQ", GPA, SIZE, UVA, 0), (guest.fd,))
    fds = {}
    for q in (RX, TX):
        front.send(Request.SET_VRING_NUM, struct.pack("<II", q, NUM))
        front.send(Request.SET_VRING_BASE, struct.pack("<II", q, 0))
        desc, avail, used = guest.ring_uvas(q)
        front.send(Request.SET_VRING_ADDR, struct.pack("<IIQQQQ", q, 0, desc, used, avail, 0))
        for name, request in (("kick", Request.SET_VRING_KICK), ("call", Request.SET_VRING_CALL)):
            fd = fds[f"{name}{q}"] = os.eventfd(0, os.EFD_NONBLOCK)
            front.send(request, struct.pack("<Q", q), (fd,))
    assert backend.recv_frames() == []
    return fds


def called(fd: int) -> bool:
    try:
        return os.eventfd_read(fd) > 0
    except BlockingIOError:
        return False


def offer_tx(guest: FakeGuest, first: int, frame: bytes) -> None:
    header = bytes(NET_HDR.size)
    guest.offer(TX, guest.chain(TX, first, [(guest.buffer(header), len(header)),
                                            (guest.buffer(frame), len(frame))]))


def frame_of(size: int, fill: int = 0xAB) -> bytes:
    return b"\x52\x54\x00\x12\x34\x56" * 2 + b"\x08\x00" + bytes([fill]) * (size - 14)


def test_frames_from_the_guest(pair, guest: FakeGuest) -> None:
    front, backend, _ = pair
    fds = start_device(front, backend, guest)
    frames = [frame_of(60, 1), frame_of(1500, 2), frame_of(65535, 3)]
    first = 0
    for frame in frames:
        offer_tx(guest, first, frame)
        first += 2
    os.eventfd_write(fds["kick1"], 1)
    assert [bytes(f) for f in backend.recv_frames()] == frames
    assert guest.used_idx(TX) == 3
    assert called(fds["call1"])


def test_frames_to_the_guest_span_mergeable_buffers(pair, guest: FakeGuest) -> None:
    front, backend, _ = pair
    fds = start_device(front, backend, guest)
    buffers = []
    for i in range(4):
        buffers.append(guest.buffer(size=2048))
        guest.offer(RX, guest.chain(RX, i, [(buffers[-1], 2048)], writable=True))
    frame = frame_of(5000)
    assert backend.send_frames([frame]) == 1
    assert called(fds["call0"])
    assert guest.used_idx(RX) == 3
    lengths = [guest.used(RX, i)[1] for i in range(3)]
    assert lengths == [2048, 2048, NET_HDR.size + 5000 - 4096]
    flags, _, _, _, _, _, num_buffers = NET_HDR.unpack(guest.read(buffers[0], NET_HDR.size))
    assert num_buffers == 3 and flags == 2  # DATA_VALID: GUEST_CSUM negotiated
    got = b"".join(guest.read(b, n) for b, n in zip(buffers[:3], lengths, strict=True))[NET_HDR.size:]
    assert got == frame


def test_frames_wait_for_receive_buffers(pair, guest: FakeGuest) -> None:
    front, backend, _ = pair
    fds = start_device(front, backend, guest)
    assert backend.send_frames([frame_of(100, 7)]) == 1  # queued: no buffer yet
    assert guest.used_idx(RX) == 0
    buf = guest.buffer(size=2048)
    guest.offer(RX, guest.chain(RX, 0, [(buf, 2048)], writable=True))
    os.eventfd_write(fds["kick0"], 1)
    backend.recv_frames()
    assert guest.used_idx(RX) == 1
    assert guest.read(buf + NET_HDR.size, 100) == frame_of(100, 7)


def test_hostile_chain_does_not_stop_the_device(pair, guest: FakeGuest) -> None:
    front, backend, stats = pair
    fds = start_device(front, backend, guest)
    guest.desc(TX, 0, 0xDEAD00000000, 100)
    guest.offer(TX, 0)
    offer_tx(guest, 1, frame_of(80))
    os.eventfd_write(fds["kick1"], 1)
    assert [bytes(f) for f in backend.recv_frames()] == [frame_of(80)]
    assert stats["vhost_user.bad_addr"] == 1
    assert guest.used_idx(TX) == 2


def test_get_vring_base_stops_the_queue(pair, guest: FakeGuest) -> None:
    front, backend, _ = pair
    fds = start_device(front, backend, guest)
    offer_tx(guest, 0, frame_of(60))
    os.eventfd_write(fds["kick1"], 1)
    backend.recv_frames()
    front.send(Request.GET_VRING_BASE, struct.pack("<II", TX, 0))
    backend.recv_frames()
    assert front.reply()[2] == struct.pack("<II", TX, 1)
    offer_tx(guest, 2, frame_of(60))
    assert backend.recv_frames() == []  # stopped: nothing taken


def test_need_reply_is_acknowledged(pair, guest: FakeGuest) -> None:
    front, backend, _ = pair
    front.send(Request.SET_PROTOCOL_FEATURES, struct.pack("<Q", vu.PROTOCOL_FEATURES))
    front.send(Request.SET_OWNER, flags=vu.VERSION | vu.FLAG_NEED_REPLY)
    backend.recv_frames()
    request, flags, payload = front.reply()
    assert (request, flags & vu.FLAG_REPLY, payload) == (Request.SET_OWNER, vu.FLAG_REPLY,
                                                         struct.pack("<Q", 0))


@pytest.mark.parametrize("request_, payload, flags", [
    (Request.GET_FEATURES, b"", 0x2),                       # wrong version
    (Request.SET_VRING_NUM, struct.pack("<II", 5, 16), 1),  # no queue 5
    (Request.SET_MEM_TABLE, struct.pack("<II", 9, 0), 1),   # 9 regions, no descriptors
    (Request.SET_FEATURES, struct.pack("<Q", 1 << 40), 1),  # features never offered
    (99, b"", 1),                                           # unknown request
], ids=["version", "queue", "mem-table", "features", "unknown"])
def test_malformed_messages_end_the_session(pair, capsys, request_: int, payload: bytes,
                                            flags: int) -> None:
    front, backend, stats = pair
    front.send(request_, payload, flags=flags)
    with pytest.raises(BadMessage):
        backend.recv_frames()
    assert stats["vhost_user.bad_message"] == 1
    assert len([ln for ln in capsys.readouterr().err.splitlines() if "vhost-user" in ln]) == 1


def test_end_of_connection(pair) -> None:
    front, backend, _ = pair
    front.sock.close()
    with pytest.raises(EOFError):
        backend.recv_frames()


def test_session_closes_descriptors_of_refused_messages() -> None:
    closed: list[int] = []
    session = Session(NotADevice(), closed.append)
    with pytest.raises(ProtocolError):
        session.handle(Message(Request.SET_VRING_KICK, vu.VERSION, struct.pack("<Q", 7), [42]))
    assert closed == [42]


class NotADevice:
    """A device nothing should reach."""

    def __getattr__(self, name: str) -> object:
        def reached(*_args: object) -> None:
            raise AssertionError(f"device.{name} reached")

        return reached



def test_waiting_frames_nudge_a_guest_that_takes_interrupts(pair, guest: FakeGuest) -> None:
    front, backend, stats = pair
    fds = start_device(front, backend, guest)
    assert backend.send_frames([frame_of(100, 1)]) == 1  # no buffers: waits, guest nudged
    assert called(fds["call0"]) and stats["vhost_user.rx_nudge"] == 1
    assert backend.send_frames([frame_of(100, 2)]) == 1  # within the interval: no second one
    assert not called(fds["call0"])
    backend._nudged -= 1.0  # the interval has passed
    guest.mem[guest.avail_offset(RX)] = VRING_AVAIL_F_NO_INTERRUPT  # the guest is polling
    assert backend.send_frames([frame_of(100, 3)]) == 1
    assert not called(fds["call0"]) and stats["vhost_user.rx_nudge"] == 1
    guest.mem[guest.avail_offset(RX)] = 0
    assert backend.send_frames([frame_of(100, 4)]) == 1
    assert called(fds["call0"]) and stats["vhost_user.rx_nudge"] == 2


def test_guest_frames_with_partial_checksums_are_taken_as_they_are(pair, guest: FakeGuest
                                                                   ) -> None:
    """VIRTIO_NET_F_CSUM: the guest may leave its TCP/UDP checksum to us
    (NEEDS_CSUM in the header); nothing here reads it, the frame goes on."""
    assert vu.FEATURES & 1 << vu.VIRTIO_NET_F_CSUM
    front, backend, _ = pair
    fds = start_device(front, backend, guest)
    header = NET_HDR.pack(1, 0, 0, 0, 34, 16, 0)  # NEEDS_CSUM, csum_start, csum_offset
    frame = frame_of(200, 9)
    guest.offer(TX, guest.chain(TX, 0, [(guest.buffer(header + frame), len(header) + len(frame))]))
    os.eventfd_write(fds["kick1"], 1)
    assert [bytes(f) for f in backend.recv_frames()] == [frame]
