"""Receive buffers whose memory is taken when data lands in it, not when made.

Theory of operation
-------------------
Every path reads into buffers made once at start-up: the tap's batch of 64
frames, TCP's peek pool, UDP's frame slots, the QEMU socket's 8 MiB
receive area.  A ``bytearray`` of that size is zero-filled at once, so each
of its pages is resident from the start: about 15 MiB for an idle pasta
that may never see a 64 KiB frame.  An anonymous private mapping is zero
too, but the kernel gives it pages only as they are written: a datagram of
100 bytes makes one page resident, not sixteen.  Resident memory then
follows what the traffic used (``VmHWM``, the peak, still counts a burst
of large frames once it happened), and start-up saves the zero-filling.

``zeroed(size)`` is one such buffer, ``pool(count, size)`` is ``count`` of
them cut from one mapping (one system call, one kernel mapping).  Both are
writable ``memoryview``s: ``recv_into``, ``readv`` and slice assignment take
them as they take a ``bytearray``.
"""

from __future__ import annotations

import mmap


def zeroed(size: int) -> memoryview:
    """A writable, zeroed buffer of ``size`` bytes; pages become resident when written."""
    return memoryview(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))


def pool(count: int, size: int) -> list[memoryview]:
    """``count`` buffers of ``size`` bytes from one lazily backed mapping."""
    area = zeroed(count * size)
    return [area[i * size:(i + 1) * size] for i in range(count)]
