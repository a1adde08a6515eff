"""passt's QEMU stream backend: framing both ways, short writes, the send queue."""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passt.backends import qemu
from passt.backends.dispatch import Dispatcher
from passt.backends.qemu import FRAME_MAX, CorruptStream, QemuStream, frame_prefix
from passt.context import Ctx
from passt.loop import EventLoop

SMALL_BUFFER = FRAME_MAX + 4 + 100  # any cut in a few frames, without 8 MiB per test


def frame(size: int, seed: int = 0) -> bytes:
    """A recognisable frame of ``size`` bytes (an Ethernet header's worth at least)."""
    pattern = bytes((seed + i) & 0xFF for i in range(256))
    return (pattern * (size // 256 + 1))[:size]


def framed(frames: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("!I", len(f)) + f for f in frames)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(passt's end, QEMU's end) of a connected UNIX stream socket pair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield ours, theirs
    for sock in (ours, theirs):
        sock.close()


def drain(stream: QemuStream) -> list[bytes]:
    """Everything ``recv_frames`` returns until the socket is empty, copied."""
    frames: list[bytes] = []
    for _ in range(1000):
        got = stream.recv_frames()
        if not got:
            return frames
        frames += [bytes(f) for f in got]
    raise AssertionError("recv_frames never ran dry")


def read_exactly(sock: socket.socket, size: int, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"peer closed after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


# -- receiving -------------------------------------------------------------

FEW_FRAMES = [frame(14, 1), frame(60, 2), frame(1514, 3), frame(98, 4)]


def test_several_frames_arrive_in_one_call(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    stream = QemuStream(ours, buffer_size=SMALL_BUFFER)
    theirs.sendall(framed(FEW_FRAMES))
    got = stream.recv_frames()
    assert [bytes(f) for f in got] == FEW_FRAMES
    assert all(isinstance(f, memoryview) for f in got)


def test_a_cut_at_every_byte_boundary_loses_nothing(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    stream = QemuStream(ours, buffer_size=SMALL_BUFFER)
    data = framed(FEW_FRAMES)
    for cut in range(1, len(data)):
        theirs.sendall(data[:cut])
        first = drain(stream)
        theirs.sendall(data[cut:])
        assert first + drain(stream) == FEW_FRAMES, f"cut after byte {cut}"


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(14, 3000), min_size=1, max_size=12),
    cuts=st.lists(st.integers(1, 5000), min_size=1, max_size=20),
)
def test_any_chunking_gives_the_frames_back_in_order(sizes: list[int], cuts: list[int]) -> None:
    frames = [frame(size, seed) for seed, size in enumerate(sizes)]
    data = framed(frames)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        stream = QemuStream(ours, buffer_size=SMALL_BUFFER)
        got: list[bytes] = []
        offset = 0
        for cut in [*cuts, len(data)]:
            theirs.sendall(data[offset : offset + cut])
            offset += cut
            got += drain(stream)
        assert got == frames


def test_largest_frame_fills_the_whole_length_range(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    stream = QemuStream(ours, buffer_size=SMALL_BUFFER)
    big = frame(FRAME_MAX, 9)
    theirs.sendall(framed([big, FEW_FRAMES[0]]))
    assert drain(stream) == [big, FEW_FRAMES[0]]


def test_views_point_into_one_reused_buffer(pair: tuple[socket.socket, socket.socket]) -> None:
    """No copy per frame: the views share the receive buffer."""
    ours, theirs = pair
    stream = QemuStream(ours, buffer_size=SMALL_BUFFER)
    theirs.sendall(framed(FEW_FRAMES))
    got = stream.recv_frames()
    assert {id(f.obj) for f in got} == {id(stream._buf.obj)}


@pytest.mark.parametrize("length", [0, 1, 13, FRAME_MAX + 1, 0xFFFFFFFF])
def test_impossible_length_is_a_corrupt_stream(
    pair: tuple[socket.socket, socket.socket], length: int
) -> None:
    ours, theirs = pair
    stats: Counter[str] = Counter()
    stream = QemuStream(ours, stats=stats, buffer_size=SMALL_BUFFER)
    theirs.sendall(framed(FEW_FRAMES[:1]) + struct.pack("!I", length) + bytes(20))
    with pytest.raises(CorruptStream, match=f"bad frame size {length}"):
        stream.recv_frames()
    assert stats["tap.stream_corrupt"] == 1
    assert isinstance(CorruptStream("x"), OSError)  # the dispatcher's hang-up path


def test_end_of_file_raises_eof(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    stream = QemuStream(ours, buffer_size=SMALL_BUFFER)
    theirs.sendall(framed(FEW_FRAMES[:2]) + framed(FEW_FRAMES[2:3])[:10])
    theirs.close()
    assert [bytes(f) for f in stream.recv_frames()] == FEW_FRAMES[:2]
    with pytest.raises(EOFError):
        stream.recv_frames()


def test_nothing_to_read_is_an_empty_batch(pair: tuple[socket.socket, socket.socket]) -> None:
    stream = QemuStream(pair[0], buffer_size=SMALL_BUFFER)
    assert stream.recv_frames() == []


def test_receive_buffer_must_hold_the_largest_frame(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    with pytest.raises(ValueError):
        QemuStream(pair[0], buffer_size=FRAME_MAX)


# -- sending ---------------------------------------------------------------


class ShortWriter:
    """A socket stand-in whose ``sendmsg`` takes at most ``room`` bytes per call.

    ``room`` 0 means the socket is full (``BlockingIOError``); every byte
    taken is kept in ``wire``, so tests can check the framing of the result.
    """

    def __init__(self, room: int) -> None:
        self.room = room
        self.wire = bytearray()
        self.calls = 0

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def sendmsg(self, buffers: Sequence[bytes], ancdata: object = (), flags: int = 0) -> int:
        self.calls += 1
        if not self.room:
            raise BlockingIOError(errno.EAGAIN, "full")
        data = b"".join(bytes(b) for b in buffers)[: self.room]
        self.wire += data
        self.room -= len(data)
        return len(data)

    def close(self) -> None:
        pass


def backend(writer: ShortWriter) -> QemuStream:
    return QemuStream(writer, buffer_size=SMALL_BUFFER)  # type: ignore[arg-type]


def test_many_frames_go_in_one_system_call() -> None:
    writer = ShortWriter(1 << 30)
    frames = [frame(1514, n) for n in range(200)]
    assert backend(writer).send_frames(frames) == 200
    assert writer.calls == 1
    assert bytes(writer.wire) == framed(frames)


def test_batches_are_bounded_by_iov_max() -> None:
    writer = ShortWriter(1 << 30)
    frames = [frame(60, n) for n in range(qemu.FRAMES_PER_CALL * 2 + 3)]
    assert backend(writer).send_frames(frames) == len(frames)
    assert writer.calls == 3
    assert bytes(writer.wire) == framed(frames)


def test_a_short_write_at_every_byte_boundary_keeps_the_framing() -> None:
    frames = [frame(14, 1), frame(70, 2), frame(300, 3)]
    expected = framed(frames)
    for room in range(len(expected) + 1):
        writer = ShortWriter(room)
        stream = backend(writer)
        taken = stream.send_frames(frames)
        assert taken == len(frames), f"room {room}: frames dropped below the queue limit"
        writer.room = 1 << 30
        stream._flush()
        assert bytes(writer.wire) == expected, f"short write of {room} bytes"
        assert stream.queued_bytes == 0


def test_frames_sent_later_go_behind_the_queue() -> None:
    writer = ShortWriter(10)
    stream = backend(writer)
    first = [frame(100, 1), frame(100, 2)]
    second = [frame(50, 3)]
    assert stream.send_frames(first) == 2
    writer.room = 30  # some room again: must not let the new frame jump ahead
    assert stream.send_frames(second) == 1
    writer.room = 1 << 30
    stream._flush()
    assert bytes(writer.wire) == framed(first + second)


def test_a_full_queue_drops_whole_frames_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu, "SEND_QUEUE_MAX", 10_000)
    writer = ShortWriter(1000)  # cuts the first frame
    stream = backend(writer)
    frames = [frame(1500, n) for n in range(20)]
    taken = stream.send_frames(frames)
    # the cut frame is finished whatever the limit; then whole frames while they fit
    assert taken == 1 + (10_000 - (1504 - 1000)) // 1504
    assert stream.queued_bytes <= 10_000 + 1504
    writer.room = 1 << 30
    stream._flush()
    assert bytes(writer.wire) == framed(frames[:taken])


def test_send_to_a_closed_peer_reports_nothing_sent(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    theirs.close()
    stream = QemuStream(ours, buffer_size=SMALL_BUFFER)
    assert stream.send_frames([frame(60)]) == 0  # EPIPE, no SIGPIPE


def test_prefix_is_big_endian_and_cached() -> None:
    assert frame_prefix(0x0102) == b"\x00\x00\x01\x02"
    assert frame_prefix(1514) is frame_prefix(1514)


# -- with the loop and the dispatcher ----------------------------------------


class Sink:
    """A handler table entry that keeps what it is given (copied)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def from_tap(self, ctx: Ctx, pkt: object) -> None:
        self.frames.append(bytes(pkt.frame))  # type: ignore[attr-defined]


def test_backlog_drains_on_writability_through_the_dispatcher(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """QEMU stops reading; our frames wait in the queue and leave when it reads again."""
    ours, theirs = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    loop = EventLoop()
    ctx = Ctx(loop=loop)
    dispatcher = Dispatcher(ctx, {})
    stream = QemuStream(ours, loop, ctx.stats, buffer_size=SMALL_BUFFER)
    dispatcher.attach(stream)
    try:
        frames = [frame(9000, n) for n in range(200)]
        taken = ctx.tap.send_frames(frames)  # type: ignore[union-attr]
        assert stream.queued_bytes > 0, "the socket took 1.8 MB at once: raise the test's load"
        expected = framed(frames[:taken])
        received = bytearray()
        theirs.setblocking(False)
        deadline = time.monotonic() + 10
        while len(received) < len(expected) and time.monotonic() < deadline:
            try:
                received += theirs.recv(1 << 20)
            except BlockingIOError:
                loop.run_once(0.05)
        assert bytes(received) == expected
        assert stream.queued_bytes == 0
        print(f"{taken} of {len(frames)} frames of 9000 bytes taken, queue drained by EPOLLOUT")
    finally:
        dispatcher.detach()
        loop.close()


def test_dispatcher_hangs_up_on_a_corrupt_stream(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    loop = EventLoop()
    ctx = Ctx(loop=loop)
    hangups: list[bool] = []
    dispatcher = Dispatcher(ctx, {})
    dispatcher.attach(QemuStream(ours, loop, ctx.stats, SMALL_BUFFER), lambda: hangups.append(1))
    try:
        theirs.sendall(struct.pack("!I", 0) + bytes(16))
        loop.run_once(1)
        assert hangups == [1]
        assert ctx.tap is None
        assert ctx.stats["tap.stream_corrupt"] == 1
    finally:
        loop.close()


def test_measure_frames_per_second(pair: tuple[socket.socket, socket.socket]) -> None:
    """Figures only: both directions over a socket pair, large and small frames."""
    ours, theirs = pair
    for size, count in ((65520, 2000), (66, 20000)):
        sender = QemuStream(theirs, buffer_size=SMALL_BUFFER * 4)
        receiver = QemuStream(ours)
        frames = [frame(size)] * 64
        began = time.perf_counter()
        moved = 0
        while moved < count:
            sent = sender.send_frames(frames)
            sender._flush()
            got = _count_frames(receiver)
            moved += got
            assert sent or got
        seconds = time.perf_counter() - began
        print(
            f"{size}-byte frames: {moved / seconds:,.0f} frames/s, "
            f"{moved * size * 8 / seconds / 1e9:.2f} Gbit/s (send + receive, one core)"
        )


def _count_frames(stream: QemuStream) -> int:
    total = 0
    for _ in range(1000):
        got = stream.recv_frames()
        if not got:
            return total
        total += len(got)
    return total
