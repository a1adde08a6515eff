"""Split virtqueues against hostile rings: each fault refused once, valid chains still flow.

The rings live in a memfd mapped as the vhost-user back end maps guest
memory (``GuestMemory.map_region``); the tests write the descriptor table
and the available ring themselves, as a (mis)behaving guest would.
"""

from __future__ import annotations

import mmap
import multiprocessing
import time
from collections import Counter
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event

import pytest

from passt.backends.virtqueue import (
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    GuestMemory,
    Refusals,
    SplitQueue,
)

from .vhost_fixtures import GPA, NUM, SIZE, UVA, FakeGuest, guest_fixture  # noqa: F401

LIMIT = 65535 + 12


@pytest.fixture
def stats() -> Counter[str]:
    return Counter()


@pytest.fixture
def queue(guest: FakeGuest, stats: Counter[str]) -> Iterator[SplitQueue]:
    memory = GuestMemory([GuestMemory.map_region(guest.fd, GPA, SIZE, UVA, 0)])
    q = SplitQueue(1, Refusals(stats))
    q.num = NUM
    assert q.set_rings(memory, *guest.ring_uvas(1)) is None
    yield q
    q.detach()
    memory.close()


def offer_frame(guest: FakeGuest, first: int, payload: bytes) -> int:
    head = guest.chain(1, first, [(guest.buffer(payload[:5]), 5),
                                  (guest.buffer(payload[5:]), len(payload) - 5)])
    guest.offer(1, head)
    return head


def take(queue: SplitQueue) -> bytes | None:
    chain = queue.pop(False, LIMIT)
    if chain is None:
        return None
    head, buffers = chain
    queue.push(head, 0)
    return b"".join(bytes(b) for b in buffers)


def assert_still_usable(guest: FakeGuest, queue: SplitQueue, first: int) -> None:
    offer_frame(guest, first, b"valid traffic after the fault")
    assert take(queue) == b"valid traffic after the fault"


def refusal_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "vhost-user" in line]


def test_valid_chain_is_read_and_given_back(guest: FakeGuest, queue: SplitQueue) -> None:
    head = offer_frame(guest, 0, b"hello, virtqueue")
    assert take(queue) == b"hello, virtqueue"
    assert queue.publish()
    assert guest.used_idx(1) == 1
    assert guest.used(1, 0) == (head, 0)


def test_no_interrupt_flag_is_honoured(guest: FakeGuest, queue: SplitQueue) -> None:
    guest.mem[guest.avail_offset(1)] = VRING_AVAIL_F_NO_INTERRUPT
    offer_frame(guest, 0, b"quietly")
    take(queue)
    assert not queue.publish()
    assert guest.used_idx(1) == 1


@pytest.mark.parametrize("addr,length", [
    (GPA + SIZE - 4, 8),            # runs past the end of the region
    (GPA - 0x1000, 16),             # before it
    (0xDEAD00000000, 64),           # nowhere near
    (2**64 - 8, 16),                # wraps around the address space
], ids=["past-end", "before", "unmapped", "wraps"])
def test_descriptor_outside_memory_table(guest: FakeGuest, queue: SplitQueue,
                                         stats: Counter[str], capsys, addr: int,
                                         length: int) -> None:
    guest.desc(1, 0, addr, length)
    guest.offer(1, 0)
    assert take(queue) is None
    assert stats["vhost_user.bad_addr"] == 1
    assert len(refusal_lines(capsys)) == 1
    assert queue.publish() and guest.used(1, 0) == (0, 0)  # given back, empty
    assert_still_usable(guest, queue, 2)


def test_loop_in_chain(guest: FakeGuest, queue: SplitQueue, stats: Counter[str],
                       capsys) -> None:
    buf = guest.buffer(b"x" * 8)
    guest.desc(1, 0, buf, 8, VRING_DESC_F_NEXT, 1)
    guest.desc(1, 1, buf, 8, VRING_DESC_F_NEXT, 0)  # back to the start
    guest.offer(1, 0)
    assert take(queue) is None
    assert stats["vhost_user.loop"] == 1
    assert len(refusal_lines(capsys)) == 1
    assert_still_usable(guest, queue, 4)


def test_self_loop(guest: FakeGuest, queue: SplitQueue, stats: Counter[str]) -> None:
    guest.desc(1, 3, guest.buffer(b"y"), 1, VRING_DESC_F_NEXT, 3)
    guest.offer(1, 3)
    assert take(queue) is None
    assert stats["vhost_user.loop"] == 1
    assert_still_usable(guest, queue, 5)


def test_oversized_chain(guest: FakeGuest, queue: SplitQueue, stats: Counter[str],
                         capsys) -> None:
    big = guest.buffer(size=40000)
    guest.chain(1, 0, [(big, 40000), (big, 40000)])  # 80000 bytes: no frame is that long
    guest.offer(1, 0)
    assert take(queue) is None
    assert stats["vhost_user.oversized"] == 1
    assert len(refusal_lines(capsys)) == 1
    assert_still_usable(guest, queue, 2)


def test_available_index_jumping_ahead(guest: FakeGuest, queue: SplitQueue,
                                       stats: Counter[str], capsys) -> None:
    offer_frame(guest, 0, b"before the jump")
    assert take(queue) == b"before the jump"
    guest.set_avail_idx(1, 1 + NUM + 5)  # more chains than the ring holds
    for _ in range(3):  # asked again and again: refused, logged once
        assert queue.pop(False, LIMIT) is None
    assert stats["vhost_user.avail_jump"] == 1
    assert len(refusal_lines(capsys)) == 1
    guest.set_avail_idx(1, 1)  # the guest comes back to its senses
    assert_still_usable(guest, queue, 2)


def test_head_and_next_outside_the_table(guest: FakeGuest, queue: SplitQueue,
                                         stats: Counter[str]) -> None:
    guest.offer(1, NUM + 3)
    guest.desc(1, 0, guest.buffer(b"z" * 8), 8, VRING_DESC_F_NEXT, NUM)
    guest.offer(1, 0)
    assert take(queue) is None  # both refused in one call, bounded
    assert stats["vhost_user.bad_head"] == 1
    assert stats["vhost_user.bad_next"] == 1
    assert_still_usable(guest, queue, 2)


def test_indirect_and_wrong_direction(guest: FakeGuest, queue: SplitQueue,
                                      stats: Counter[str]) -> None:
    buf = guest.buffer(b"w" * 16)
    guest.desc(1, 0, buf, 16, VRING_DESC_F_INDIRECT)
    guest.offer(1, 0)
    guest.chain(1, 1, [(buf, 16)], writable=True)  # the device must not read a write buffer
    guest.offer(1, 1)
    assert take(queue) is None
    assert stats["vhost_user.indirect"] == 1
    assert stats["vhost_user.direction"] == 1
    assert_still_usable(guest, queue, 2)


def test_rings_outside_memory_are_refused(guest: FakeGuest, stats: Counter[str]) -> None:
    memory = GuestMemory([GuestMemory.map_region(guest.fd, GPA, SIZE, UVA, 0)])
    q = SplitQueue(0, Refusals(stats))
    q.num = NUM
    assert "outside" in (q.set_rings(memory, UVA + SIZE, UVA, UVA) or "")
    q.num = 12
    assert "size" in (q.set_rings(memory, *guest.ring_uvas(0)) or "")
    assert not q.ready
    memory.close()


def test_refusal_log_is_bounded(guest: FakeGuest, queue: SplitQueue, stats: Counter[str],
                                capsys) -> None:
    for _ in range(30):
        guest.desc(1, 0, 0xDEAD00000000, 8)
        guest.offer(1, 0)
        assert take(queue) is None
    assert stats["vhost_user.bad_addr"] == 30
    assert len(refusal_lines(capsys)) == 10  # LOG_LIMIT; the rest at debug level


def _watch_used_index(fd: int, offset: int, seen: Queue[set[int]], stop: Event) -> None:
    """In another process, as the guest's CPU: every value the used index takes."""
    with mmap.mmap(fd, SIZE) as mem:
        words = memoryview(mem)[offset:offset + 4].cast("H")
        values = set()
        while not stop.is_set():
            for _ in range(10_000):
                values.add(words[1])
        words.release()
    seen.put(values)


def test_the_used_index_changes_in_one_store(guest: FakeGuest, queue: SplitQueue) -> None:
    """Across a byte boundary (0x00ff <-> 0x0100) a guest reading concurrently
    sees one index or the other, never half of each (0x0000, 0x01ff): a torn
    index makes a Linux guest break the queue for good."""
    queue.used_idx = 0x00FF
    queue.publish()
    ctx = multiprocessing.get_context("fork")
    seen: Queue[set[int]] = ctx.Queue()
    stop = ctx.Event()
    watcher = ctx.Process(target=_watch_used_index,
                          args=(guest.fd, guest.used_offset(1), seen, stop))
    watcher.start()
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            for index in (0x00FF, 0x0100) * 1000:
                queue.used_idx = index
                queue.publish()
    finally:
        stop.set()
        values = seen.get(timeout=10)
        watcher.join(10)
    assert values <= {0x00FF, 0x0100}, [hex(v) for v in sorted(values - {0x00FF, 0x0100})[:10]]

