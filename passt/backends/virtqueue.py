"""Guest memory and split virtqueues, as a vhost-user back end sees them.

Theory of operation
-------------------
With vhost-user, QEMU shares the guest's RAM with us: ``SET_MEM_TABLE``
hands over one file descriptor per memory region, which ``GuestMemory``
maps (``map_region``).  A region is known by three addresses: where it sits
in the guest's physical memory (descriptors carry those), where it sits in
QEMU's address space (the ring addresses of ``SET_VRING_ADDR`` are those)
and where it starts in the file (``mmap_offset``).  ``gpa(addr, length)``
and ``uva(addr, length)`` turn either kind into a ``memoryview`` of our
mapping, or ``None`` when the range is not entirely inside one region: the
guest writes the rings and descriptors, so every address is checked before
it is touched.

A split virtqueue (virtio 1.x, section 2.7) is three arrays in guest memory:

* the descriptor table, ``num`` entries of (addr, len, flags, next);
* the available ring, written by the guest: flags, ``idx``, then ``num``
  heads of descriptor chains it offers us;
* the used ring, written by us: flags, ``idx``, then ``num`` (id, len)
  pairs, the chains we are done with and how much we wrote into them.

``SplitQueue.pop()`` takes the next offered chain and walks it into a list
of buffers (memoryviews), refusing it, with one log line and a counter,
when the guest got it wrong: a head or a ``next`` outside the table, a
descriptor pointing outside the memory table, a chain longer than the
table (a loop), more bytes than a frame can have, a buffer of the wrong
direction, an indirect table (we don't offer ``VIRTIO_RING_F_INDIRECT_DESC``).
A refused chain is given back at once with length 0, so the guest gets its
descriptors back and valid traffic goes on.  An available index that
jumps further ahead than the ring is long is refused too (the chains it
would name don't exist): nothing is taken until the guest writes a sane
index again.

Used entries are written as chains are completed (``push``) and become
visible to the guest only with ``publish()``, once per batch, which also
says whether the guest wants to be interrupted (``VRING_AVAIL_F_NO_INTERRUPT``
clear): the caller then signals the call eventfd once.  Between making
the index visible and reading the flag sits a full memory barrier
(``full_barrier``): the guest clears the flag and then looks at the index,
we write the index and then look at the flag, and without the barrier
each side can miss the other's store (our store still in the CPU's store
buffer while we load), so the guest sleeps with work in its ring and no
interrupt coming: a receive queue that stays full for good, a TCP flow
that stalls (upstream's ``vring_can_notify`` has its ``smp_mb`` for the
same reason).  ``wants_interrupt()`` reads the flag again, for the back
end's nudge when it has frames and no buffers.  The indices and flags
are read and written as whole 16-bit words (``_words``), never a byte at
a time as ``struct`` would: the guest reads them while we write.
``rewind(n)`` gives back the last chains popped but not pushed (a frame
that did not fit in the buffers offered).  Every loop here is bounded by
the ring size.

During a live migration QEMU copies the guest's memory while the guest
runs, and asks us (``VHOST_F_LOG_ALL``) to mark in a shared bitmap
(``DirtyLog``: one bit per 4 KiB page of guest-physical memory) every page
we write, so that it copies those again.  A queue given a log marks the
buffers of each chain it pushes (as far as ``length`` bytes were written,
walking the descriptors again: only while migrating) and the used ring
entries and index it writes.  The bits are set with a plain
read-modify-write: QEMU only ever clears them (an atomic exchange with
zero), so a race can only leave a bit set that QEMU had just collected,
and the page is copied once more.
"""

from __future__ import annotations

import mmap
import struct
import threading
from collections import Counter
from collections.abc import Callable

from passt import log
from passt.record import record

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_AVAIL_F_NO_INTERRUPT = 1
QUEUE_SIZE_MAX = 32768  # virtio's limit for split rings
DESC_SIZE = 16
LOG_LIMIT = 10  # warnings per kind of refusal; further ones at debug level

_desc = struct.Struct("<QIHH")
_used_elem = struct.Struct("<II")
_FENCE = threading.Lock()


def _words(view: memoryview) -> memoryview:
    """``view`` as 16-bit words in the machine's byte order (virtio's: little-endian).

    A word read or written through it is one 16-bit load or store, which the
    guest, running on another CPU, sees whole.  ``struct`` would move it a byte
    at a time, low byte first: a guest reading the used index between our
    two bytes sees it 255 entries back, reads used entries it already took
    and marks the queue broken ("id N is not a head!"): its network is gone
    until it reboots.
    """
    return view.cast("H")


def full_barrier() -> None:
    """Order every store before it with every load after it, as ``smp_mb()`` does.

    Python has no fence of its own, but CPython's lock is a word changed
    with an atomic compare-and-swap, which on x86_64 is ``lock cmpxchg``, a
    full barrier; taken and given back here in about 70 ns (nobody else
    ever holds this lock).  On weaker architectures (arm64) the acquire
    and release it does are not one: there the back end's nudge recovers a
    missed receive interrupt, and nothing yet a missed transmit one.
    """
    _FENCE.acquire()
    _FENCE.release()


@record
class Region:
    """One memory region: guest-physical and QEMU-virtual start, size, our view."""

    gpa: int
    size: int
    uva: int
    view: memoryview
    mapping: mmap.mmap | None = None

    def release(self) -> None:
        self.view.release()
        if self.mapping is not None:
            try:
                self.mapping.close()
            except BufferError:  # a view still lives somewhere: the collector unmaps it
                log.debug("vhost-user: region at %#x still in use, unmapped later", self.gpa)


class GuestMemory:
    """The regions of the memory table, with checked address translation."""

    def __init__(self, regions: list[Region] | None = None) -> None:
        self.regions: list[Region] = regions or []

    @classmethod
    def map_region(cls, fd: int, gpa: int, size: int, uva: int, offset: int) -> Region:
        """Map ``size`` bytes of ``fd`` from ``offset`` (raises ``OSError``/``ValueError``)."""
        if size <= 0 or offset < 0:
            raise ValueError(f"bad region size {size} or offset {offset}")
        mapping = mmap.mmap(fd, offset + size, mmap.MAP_SHARED,
                            mmap.PROT_READ | mmap.PROT_WRITE)
        view = memoryview(mapping)[offset:offset + size]
        return Region(gpa, size, uva, view, mapping)

    def gpa(self, addr: int, length: int) -> memoryview | None:
        """``length`` bytes at guest-physical ``addr``, or ``None`` if not all mapped."""
        return self._find(addr, length, guest=True)

    def uva(self, addr: int, length: int) -> memoryview | None:
        """``length`` bytes at QEMU's virtual ``addr``, or ``None`` if not all mapped."""
        return self._find(addr, length, guest=False)

    def _find(self, addr: int, length: int, guest: bool) -> memoryview | None:
        for r in self.regions:
            start = addr - (r.gpa if guest else r.uva)
            if 0 <= start and start + length <= r.size:
                return r.view[start:start + length]
        return None

    def close(self) -> None:
        regions, self.regions = self.regions, []
        for r in regions:
            r.release()


class DirtyLog:
    """QEMU's dirty page bitmap (``SET_LOG_BASE``): one bit per ``PAGE`` of guest memory."""

    PAGE = 4096

    def __init__(self, fd: int, size: int, offset: int) -> None:
        self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                              offset=offset)
        self._bits = memoryview(self._map)
        self.kick: Callable[[], None] | None = None  # SET_LOG_FD's eventfd, if any

    def mark(self, gpa: int, length: int) -> None:
        """Pages from ``gpa`` for ``length`` bytes were written."""
        if length <= 0:
            return
        bits = self._bits
        for page in range(gpa // self.PAGE, (gpa + length - 1) // self.PAGE + 1):
            byte = page >> 3
            if byte < len(bits):
                bits[byte] |= 1 << (page & 7)
        if self.kick is not None:
            self.kick()

    def close(self) -> None:
        self._bits.release()
        self._map.close()


class Refusals:
    """Counts refused rings and chains, logging a bounded number of lines per kind."""

    def __init__(self, stats: Counter[str] | None = None) -> None:
        self.stats: Counter[str] = stats if stats is not None else Counter()

    def refuse(self, kind: str, fmt: str, *args: object) -> None:
        key = "vhost_user." + kind
        self.stats[key] += 1
        emit = log.warn if self.stats[key] <= LOG_LIMIT else log.debug
        emit("vhost-user: " + fmt, *args)


class SplitQueue:
    """One split virtqueue: descriptor walking with checks, used-ring updates."""

    def __init__(self, index: int, refusals: Refusals) -> None:
        self.index = index
        self.num = 0
        self.refusals = refusals
        self.last_avail = 0  # next available entry to take
        self.used_idx = 0  # next used entry to write
        self._published = 0
        self._mem: GuestMemory | None = None
        self._desc: memoryview | None = None
        self._avail: memoryview | None = None  # 16-bit words: flags, idx, ring[num]
        self._used: memoryview | None = None  # bytes: the (id, len) elements
        self._used16: memoryview | None = None  # the same, 16-bit words: flags, idx
        self._jumped = False
        self.log: DirtyLog | None = None  # set while QEMU migrates the guest
        self.used_gpa = 0  # the used ring's guest-physical address, for the log

    @property
    def ready(self) -> bool:
        return self._used is not None

    def set_rings(self, mem: GuestMemory, desc: int, avail: int, used: int) -> str | None:
        """Locate the three rings (QEMU virtual addresses); an error message if we can't."""
        self.detach()
        num = self.num
        if not 0 < num <= QUEUE_SIZE_MAX or num & (num - 1):
            return f"queue {self.index}: bad size {num}"
        views = (mem.uva(desc, num * DESC_SIZE), mem.uva(avail, 4 + 2 * num + 2),
                 mem.uva(used, 4 + 8 * num + 2))
        if any(v is None for v in views):
            return f"queue {self.index}: ring outside the memory table"
        desc_view, avail_view, used_view = views
        assert desc_view is not None and avail_view is not None and used_view is not None
        self._mem = mem
        self._desc, self._used = desc_view, used_view
        self._avail = _words(avail_view)
        self._used16 = _words(used_view)
        self.used_idx = self._published = self._used16[1]
        return None

    def detach(self) -> None:
        """Forget the rings (memory table replaced, ring stopped)."""
        for view in (self._avail, self._used16, self._desc, self._used):
            if view is not None:
                view.release()
        self._desc = self._avail = self._used = self._used16 = None
        self._mem = None

    # -- taking chains -----------------------------------------------------

    def available(self) -> int:
        """Chains offered and not yet taken (0 while the index is insane)."""
        avail = self._avail
        if avail is None:
            return 0
        pending = (avail[1] - self.last_avail) & 0xFFFF
        if pending > self.num:
            if not self._jumped:
                self.refusals.refuse("avail_jump", "queue %d: available index jumped %d "
                                     "entries ahead of %d, ring of %d", self.index, pending,
                                     self.last_avail, self.num)
            self._jumped = True
            return 0
        self._jumped = False
        return pending

    def pop(self, writable: bool, limit: int) -> tuple[int, list[memoryview]] | None:
        """The next chain offered: (head, buffers), or ``None`` if none is offered.

        A chain the guest got wrong is given back (length 0) and the next
        one is tried, at most ``num`` of them.
        """
        for _ in range(self.num):
            if not self.available():
                return None
            assert self._avail is not None
            head: int = self._avail[2 + self.last_avail % self.num]
            self.last_avail = (self.last_avail + 1) & 0xFFFF
            if head >= self.num:
                self.refusals.refuse("bad_head", "queue %d: chain head %d outside a ring of %d",
                                     self.index, head, self.num)
                continue  # no valid id to give back
            buffers = self._walk(head, writable, limit)
            if buffers is not None:
                return head, buffers
            self.push(head, 0)
        return None

    def _walk(self, head: int, writable: bool, limit: int) -> list[memoryview] | None:
        desc, mem, num = self._desc, self._mem, self.num
        assert desc is not None and mem is not None
        buffers = []
        total = 0
        index = head
        for _ in range(num):
            addr, length, flags, nxt = _desc.unpack_from(desc, index * DESC_SIZE)
            if flags & VRING_DESC_F_INDIRECT:
                return self._bad("indirect", "queue %d: indirect descriptor %d not negotiated",
                                 index)
            if bool(flags & VRING_DESC_F_WRITE) != writable:
                return self._bad("direction", "queue %d: descriptor %d is %s", index,
                                 "device-writable" if not writable else "device-readable")
            total += length
            if total > limit:
                return self._bad("oversized", "queue %d: chain from %d over %d bytes", head,
                                 limit)
            view = mem.gpa(addr, length)
            if view is None:
                return self._bad("bad_addr", "queue %d: descriptor %d (%#x, %d bytes) outside "
                                 "the memory table", index, addr, length)
            buffers.append(view)
            if not flags & VRING_DESC_F_NEXT:
                return buffers
            if nxt >= num:
                return self._bad("bad_next", "queue %d: descriptor %d links to %d outside the "
                                 "ring", index, nxt)
            index = nxt
        return self._bad("loop", "queue %d: chain from %d longer than the ring (a loop)", head)

    def _bad(self, kind: str, fmt: str, *args: object) -> list[memoryview] | None:
        """Refuse the chain being walked: ``None``, after one log line and a count."""
        self.refusals.refuse(kind, fmt, self.index, *args)
        return None

    def rewind(self, chains: int) -> None:
        """Give back the last ``chains`` popped and not pushed: they will be popped again."""
        self.last_avail = (self.last_avail - chains) & 0xFFFF

    # -- giving chains back --------------------------------------------------

    def push(self, head: int, length: int) -> None:
        """Chain ``head`` is done, ``length`` bytes written into it (not yet visible)."""
        used = self._used
        assert used is not None
        slot = 4 + 8 * (self.used_idx % self.num)
        _used_elem.pack_into(used, slot, head, length)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        if self.log is not None:
            self._log_chain(self.log, head, length)
            self.log.mark(self.used_gpa + slot, 8)

    def _log_chain(self, log: DirtyLog, head: int, length: int) -> None:
        """Mark the buffers of chain ``head`` that ``length`` bytes were written into."""
        desc = self._desc
        assert desc is not None
        index = head
        for _ in range(self.num):
            if length <= 0:
                return
            addr, size, flags, nxt = _desc.unpack_from(desc, index * DESC_SIZE)
            if flags & VRING_DESC_F_WRITE:
                log.mark(addr, min(size, length))
                length -= size
            if not flags & VRING_DESC_F_NEXT or nxt >= self.num:
                return
            index = nxt

    def publish(self) -> bool:
        """Make pushed entries visible; whether the guest wants an interrupt for them."""
        used16 = self._used16
        if used16 is None or self.used_idx == self._published:
            return False
        used16[1] = self.used_idx  # one 16-bit store: see the module docstring
        self._published = self.used_idx
        if self.log is not None:
            self.log.mark(self.used_gpa + 2, 2)
        full_barrier()  # the index out before the flag is read: see the module docstring
        return self.wants_interrupt()

    def wants_interrupt(self) -> bool:
        """Whether the guest has interrupts on for this queue (``NO_INTERRUPT`` clear)."""
        avail = self._avail
        return avail is not None and not avail[0] & VRING_AVAIL_F_NO_INTERRUPT
