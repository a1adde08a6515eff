"""A guest's side of vhost-user for unit tests: memory in a memfd, rings built by hand.

``FakeGuest`` owns a memfd (its "RAM"), lays out one split virtqueue per
queue index in it and offers descriptor chains the way a virtio driver
would, or the way a hostile one would: the tests write whatever they want
into the descriptor table and the available ring.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator

import pytest

from passt.backends.virtqueue import VRING_DESC_F_NEXT, VRING_DESC_F_WRITE

GPA = 0x100000  # where the region sits in guest-physical memory
UVA = 0x7F0000000000  # and in the front end's address space
SIZE = 1 << 20
NUM = 16
RING_STRIDE = 0x4000  # each queue's rings: desc, avail, used, 0x4000 apart per queue
DATA = 0x20000  # buffers from here on

_desc = struct.Struct("<QIHH")
_u16 = struct.Struct("<H")
_used = struct.Struct("<II")


class FakeGuest:
    """Guest memory (a memfd) with hand-built virtqueues."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("fake-guest", 0)
        os.ftruncate(self.fd, SIZE)
        self.mem = mmap.mmap(self.fd, SIZE)
        self.avail_idx = [0, 0]
        self.next_data = DATA

    def close(self) -> None:
        self.mem.close()
        os.close(self.fd)

    # -- layout --

    @staticmethod
    def desc_offset(queue: int) -> int:
        return queue * 3 * RING_STRIDE

    def avail_offset(self, queue: int) -> int:
        return self.desc_offset(queue) + RING_STRIDE

    def used_offset(self, queue: int) -> int:
        return self.desc_offset(queue) + 2 * RING_STRIDE

    def ring_uvas(self, queue: int) -> tuple[int, int, int]:
        """(desc, avail, used) as the front end's virtual addresses."""
        return (UVA + self.desc_offset(queue), UVA + self.avail_offset(queue),
                UVA + self.used_offset(queue))

    # -- writing the rings --

    def buffer(self, data: bytes = b"", size: int = 0) -> int:
        """Room for ``size`` bytes (or ``data``) in guest memory: its guest-physical address."""
        offset = self.next_data
        size = max(size, len(data))
        self.mem[offset:offset + len(data)] = data
        self.next_data += (size + 63) & ~63
        return GPA + offset

    def desc(self, queue: int, index: int, addr: int, length: int, flags: int = 0,
             nxt: int = 0) -> None:
        _desc.pack_into(self.mem, self.desc_offset(queue) + 16 * index, addr, length, flags, nxt)

    def chain(self, queue: int, first: int, pieces: list[tuple[int, int]],
              writable: bool = False) -> int:
        """Descriptors ``first``, ``first + 1``... for (address, length) pieces; the head."""
        flags = VRING_DESC_F_WRITE if writable else 0
        for i, (addr, length) in enumerate(pieces):
            last = i == len(pieces) - 1
            self.desc(queue, first + i, addr, length,
                      flags | (0 if last else VRING_DESC_F_NEXT), first + i + 1)
        return first

    def offer(self, queue: int, head: int) -> None:
        """Put ``head`` in the available ring and move its index on."""
        idx = self.avail_idx[queue]
        _u16.pack_into(self.mem, self.avail_offset(queue) + 4 + 2 * (idx % NUM), head)
        self.set_avail_idx(queue, idx + 1)

    def set_avail_idx(self, queue: int, idx: int) -> None:
        self.avail_idx[queue] = idx & 0xFFFF
        _u16.pack_into(self.mem, self.avail_offset(queue) + 2, idx & 0xFFFF)

    # -- reading what the device did --

    def used_idx(self, queue: int) -> int:
        return _u16.unpack_from(self.mem, self.used_offset(queue) + 2)[0]

    def used(self, queue: int, slot: int) -> tuple[int, int]:
        """(id, len) of used entry ``slot``."""
        return _used.unpack_from(self.mem, self.used_offset(queue) + 4 + 8 * (slot % NUM))

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.mem[gpa - GPA:gpa - GPA + length])


@pytest.fixture(name="guest")
def guest_fixture() -> Iterator[FakeGuest]:
    """A fresh ``FakeGuest``, closed after the test (import it to use it)."""
    g = FakeGuest()
    yield g
    g.close()
