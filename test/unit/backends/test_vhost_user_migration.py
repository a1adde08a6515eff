"""vhost-user's part in a live migration: dirty page logging and the device state.

The test plays QEMU, as test_vhost_user.py does: it hands over a dirty page
bitmap (``SET_LOG_BASE``) and checks that the pages we write are marked,
and asks for the device state (``SET_DEVICE_STATE_FD``, ``CHECK_DEVICE_STATE``),
checking that the handler runs once the reply is out, with the pipe.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
from collections import Counter
from collections.abc import Iterator

import pytest

from passt.backends import vhost_user as vu
from passt.backends.vhost_backend import BadMessage, VhostUserBackend
from passt.backends.vhost_user import RX, Request

from .test_vhost_user import FrontEnd, frame_of, start_device
from .vhost_fixtures import GPA, SIZE, FakeGuest, guest_fixture  # noqa: F401

PAGE = 4096


class Handler:
    """A DeviceStateHandler that records what it is asked to do."""

    def __init__(self, front: FrontEnd) -> None:
        self.front = front
        self.transfers: list[tuple[bytes, bool]] = []
        self.checks: list[tuple[int, bool]] = []

    def transfer(self, fd: int, load: bool) -> int:
        self.front.sock.setblocking(False)  # the reply must be out already
        try:
            assert self.front.reply()[0] == Request.SET_DEVICE_STATE_FD
        finally:
            self.front.sock.setblocking(True)
        if load:
            data = os.read(fd, 100)
        else:
            data = b""
            os.write(fd, b"state")
        os.close(fd)
        self.transfers.append((data, load))
        return 0

    def checked(self, result: int, load: bool) -> None:
        self.checks.append((result, load))


@pytest.fixture
def migrating() -> Iterator[tuple[FrontEnd, VhostUserBackend, Handler]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    front = FrontEnd(theirs)
    handler = Handler(front)
    backend = VhostUserBackend(ours, Counter(), buffer_size=1 << 20, migration=handler)
    yield front, backend, handler
    backend.close()
    theirs.close()


def test_features_allow_migration() -> None:
    assert vu.FEATURES & 1 << vu.VHOST_F_LOG_ALL
    assert vu.PROTOCOL_FEATURES & 1 << vu.PROTOCOL_F_DEVICE_STATE
    assert vu.PROTOCOL_FEATURES & 1 << vu.PROTOCOL_F_LOG_SHMFD


def _log_base(front: FrontEnd, backend: VhostUserBackend) -> mmap.mmap:
    size = SIZE // PAGE // 8 + (GPA // PAGE // 8) + 64
    fd = os.memfd_create("log", 0)
    os.ftruncate(fd, size)
    bitmap = mmap.mmap(fd, size)
    front.send(Request.SET_LOG_BASE, struct.pack("<QQ", size, 0), (fd,))
    os.close(fd)
    backend.recv_frames()
    request, _, payload = front.reply()
    assert request == Request.SET_LOG_BASE and payload == bytes(8)
    return bitmap


def _dirty(bitmap: mmap.mmap, gpa: int) -> bool:
    page = gpa // PAGE
    return bool(bitmap[page // 8] & 1 << page % 8)


def test_written_pages_are_logged(migrating, guest: FakeGuest) -> None:
    front, backend, _ = migrating
    start_device(front, backend, guest)
    bitmap = _log_base(front, backend)
    desc, avail, used = guest.ring_uvas(RX)
    used_gpa = GPA + guest.used_offset(RX)
    front.send(Request.SET_VRING_ADDR, struct.pack("<IIQQQQ", RX, vu.VHOST_VRING_F_LOG, desc,
                                                   used, avail, used_gpa))
    backend.recv_frames()
    buffer = guest.buffer(size=3 * PAGE)
    guest.offer(RX, guest.chain(RX, 0, [(buffer, 3 * PAGE)], writable=True))
    assert backend.send_frames([frame_of(PAGE + 100)]) == 1
    assert _dirty(bitmap, buffer) and _dirty(bitmap, buffer + PAGE)
    assert not _dirty(bitmap, buffer + 2 * PAGE)  # nothing written there
    assert _dirty(bitmap, used_gpa)


def test_nothing_logged_without_log_all(migrating, guest: FakeGuest) -> None:
    front, backend, _ = migrating
    start_device(front, backend, guest, features=vu.FEATURES & ~(1 << vu.VHOST_F_LOG_ALL))
    bitmap = _log_base(front, backend)
    buffer = guest.buffer(size=PAGE)
    guest.offer(RX, guest.chain(RX, 0, [(buffer, PAGE)], writable=True))
    assert backend.send_frames([frame_of(100)]) == 1
    assert not any(bitmap[:])


@pytest.mark.parametrize("load", [False, True])
def test_device_state_moves_after_the_reply(migrating, load: bool) -> None:
    front, backend, handler = migrating
    read_end, write_end = os.pipe()
    if load:
        os.write(write_end, b"incoming")
        os.close(write_end)
    front.send(Request.SET_DEVICE_STATE_FD, struct.pack("<II", int(load), 0),
               (read_end if load else write_end,))
    backend.recv_frames()
    assert handler.transfers == [(b"incoming" if load else b"", load)]
    if not load:
        assert os.read(read_end, 100) == b"state"
        os.close(read_end)
    front.send(Request.CHECK_DEVICE_STATE)
    backend.recv_frames()
    request, _, payload = front.reply()
    assert request == Request.CHECK_DEVICE_STATE and payload == bytes(8)
    assert handler.checks == [(0, load)]


def test_device_state_in_a_running_phase_is_refused(migrating) -> None:
    front, backend, handler = migrating
    read_end, write_end = os.pipe()
    front.send(Request.SET_DEVICE_STATE_FD, struct.pack("<II", 0, 1), (write_end,))
    with pytest.raises(BadMessage, match="phase"):
        backend.recv_frames()
    assert handler.transfers == []
    os.close(read_end)
