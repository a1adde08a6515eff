"""The TCP core driven by a model socket and a model guest that loses frames.

A stream of random bytes goes from the "socket" to the "guest" (and another
the other way) through ``TcpConn`` only: the model driver carries out the
actions literally (peek offset, discard, frames cut by MSS), the model guest
is an in-order receiver that acknowledges every frame and drops frames and
ACKs at random.  Whatever the losses, the guest must end up with exactly the
socket's bytes, every byte must be discarded from the socket once, and the
connection must close cleanly.  Sequence numbers start near 2**32 so that
every run wraps around.

The second set of runs adds what kernels without ``SO_PEEK_OFF`` and slow
readers bring: the model driver peeks from the first unacknowledged byte
(as ``tcp._peek_frames_from_start``), the core bounds what is in flight
(``inflight_segments``), and the guest's reader pauses, shutting its window for
many timer rounds; the connection must neither lose a byte nor be reset.
"""

from __future__ import annotations

import random
from collections import deque

import pytest

from passt.packet import ACK, FIN, SYN, TcpSegment
from passt.tcp.core import (
    ESTABLISHED,
    ArmTimer,
    Clamp,
    Close,
    Discard,
    Peek,
    Rewind,
    SendData,
    ShutWr,
    SockSend,
    TcpConn,
    ToGuest,
    WantOut,
)  # fmt: skip

M = 1 << 32


class Model:
    """Model driver, socket and guest around one TcpConn."""

    def __init__(
        self, rng: random.Random, to_guest: bytes, to_socket: bytes, loss: float,
        slow_kernel: bool = False,
    ) -> None:  # fmt: skip
        self.rng = rng
        self.loss = loss
        self.from_start = slow_kernel  # peek from the first unacknowledged byte
        self.pauses = rng.randrange(1, 4) if slow_kernel else 0  # reader pauses to come
        self.paused = 0  # steps left in this pause
        self.stream = to_guest  # what the socket's peer sends
        self.to_socket = to_socket  # what the guest sends
        self.consumed = 0  # discarded from the socket's receive buffer
        self.peek_off = 0
        self.eof = False
        self.written = bytearray()  # what reached the socket
        self.sock_space = rng.choice([3000, 20000, 1 << 20])
        self.shut_wr = False
        self.closed: bool | None = None  # rst flag once closed
        self.timer_armed = False
        self.g_rcv = bytearray()
        self.g_window = rng.choice([1000, 8000, 65535])
        self.g_fin = False
        self.g_isn = M - rng.randrange(1, 5000)
        self.g_snd_nxt = (self.g_isn + 1) % M
        self.g_snd_una = self.g_snd_nxt
        self.g_fin_sent = False
        self.to_guest: deque = deque()
        self.to_core: deque = deque()
        isn = M - rng.randrange(1, 5000)
        syn = self.segment(self.g_isn, 0, SYN, 65535, mss=rng.choice([536, 1400, 9000]), ws=0)
        self.conn, acts = TcpConn.outbound(syn, isn, 65480)
        if slow_kernel:
            self.conn.inflight_segments = rng.choice([0, 1, 4, 64])
        self.run(acts)
        self.run(self.conn.on_connected())
        self.deliver_to_guest()
        self.deliver_to_core()

    @staticmethod
    def segment(seq, ack, flags, window, payload=b"", mss=None, ws=None):
        return TcpSegment(1, 2, seq % M, ack % M, flags, window, mss, ws, False, None, None,
                          memoryview(payload))

    # -- the driver --------------------------------------------------------

    def run(self, acts):
        for act in acts:
            match act:
                case ToGuest(flags, seq, ack, _wnd, _opts):
                    self.to_guest.append((flags, seq, ack, b""))
                case SendData(seq, length):
                    self.send_data(seq, length)
                case Peek():
                    self.read_socket()
                case Rewind():
                    self.peek_off = 0
                case Discard(n):
                    assert n <= len(self.stream) - self.consumed
                    self.consumed += n
                    self.peek_off = max(self.peek_off - n, 0)
                case SockSend(data):
                    payload = bytes(data)
                    n = min(len(payload), self.sock_space)
                    self.written += payload[:n]
                    self.sock_space -= n
                    self.run(self.conn.on_sock_accepted(n, len(payload)))
                case ShutWr():
                    assert not self.shut_wr
                    self.shut_wr = True
                case ArmTimer(seconds):
                    self.timer_armed = seconds is not None
                case Close(rst):
                    self.closed = rst
                case _:
                    assert isinstance(act, Clamp | WantOut)

    def send_data(self, seq, length):
        start = self.consumed + self.peek_off - length
        mss = self.conn.mss
        for off in range(0, length, mss):
            chunk = self.stream[start + off:start + min(off + mss, length)]
            self.to_guest.append((ACK, (seq + off) % M, self.conn.rcv_nxt, chunk))

    def read_socket(self):
        for _ in range(100):
            if self.from_start:  # the peek counts from the head of the buffer
                in_flight = (self.conn.snd_nxt - self.conn.snd_una) % M
                self.peek_off = min(in_flight, len(self.stream) - self.consumed)
            budget = self.conn.on_sock_readable()
            available = len(self.stream) - self.consumed - self.peek_off
            if not budget and available:
                return
            if available:
                n = min(budget, available, self.rng.choice([700, 5000, 100000]))
                self.peek_off += n
                self.run(self.conn.on_sock_data(n))
                continue
            if self.eof:
                self.run(self.conn.on_sock_eof())
            else:
                self.conn.on_sock_drained()
            return

    # -- the guest ---------------------------------------------------------

    def deliver_to_guest(self):
        while self.to_guest:
            flags, seq, _ack, data = self.to_guest.popleft()
            if not flags & SYN and self.rng.random() < self.loss:
                continue  # (the handshake is not what this test is about)
            expected = (self.conn.isn + 1 + len(self.g_rcv)) % M
            if data and seq == expected and not self.g_fin:
                self.g_rcv += data
            elif flags & FIN and seq == expected:
                self.g_fin = True
            self.guest_ack()

    def guest_ack(self):
        ack = self.conn.isn + 1 + len(self.g_rcv) + (1 if self.g_fin else 0)
        flags = ACK
        payload = b""
        sent = (self.g_snd_nxt - self.g_isn - 1) % M
        if sent < len(self.to_socket):
            payload = self.to_socket[sent:sent + self.rng.choice([1, 1000, 3000])]
        elif self.g_fin and not self.g_fin_sent:
            flags |= FIN
            self.g_fin_sent = True
        window = 0 if self.paused else self.g_window
        self.to_core.append(self.segment(self.g_snd_nxt, ack, flags, window, payload))
        self.g_snd_nxt = (self.g_snd_nxt + len(payload) + (1 if flags & FIN else 0)) % M

    def deliver_to_core(self):
        while self.to_core and self.closed is None:
            seg = self.to_core.popleft()
            if self.conn.events & ESTABLISHED and self.rng.random() < self.loss:
                continue
            self.run(self.conn.on_segment(seg))
            self.run(self.conn.flush_ack(self.sock_space))

    def guest_timeout(self):
        """The guest's retransmission timer: send again from what we acknowledged."""
        self.g_snd_nxt = self.conn.rcv_nxt
        if self.g_fin_sent and not self.shut_wr:
            self.g_fin_sent = False
        self.guest_ack()

    def reader_pauses(self):
        """Now and then the guest's reader stops (window 0) for many timer rounds,
        then reads on and says so (a window update)."""
        if self.paused:
            self.paused -= 1
            if not self.paused:
                self.guest_ack()
        elif self.pauses and self.rng.random() < 0.02:
            self.pauses -= 1
            self.paused = self.rng.randrange(20, 200)

    def step(self):
        self.reader_pauses()
        if self.rng.random() < 0.3:
            self.sock_space += 5000
            self.run(self.conn.on_sock_writable(self.sock_space))
            self.run(self.conn.flush_ack(self.sock_space))
        unacked = len(self.written) < len(self.to_socket) or self.g_fin_sent != self.shut_wr
        if unacked and self.rng.random() < 0.5:
            self.guest_timeout()
        self.deliver_to_core()
        self.deliver_to_guest()
        if not self.to_guest and not self.to_core and self.closed is None:
            if self.consumed + self.peek_off == len(self.stream):
                self.eof = True
            self.read_socket()
            if not self.to_guest and self.timer_armed:
                self.run(self.conn.on_timer())


@pytest.mark.parametrize("slow_kernel", [False, True], ids=["peek-offset", "from-start-pauses"])
@pytest.mark.parametrize("seed", range(40))
def test_streams_survive_random_loss(seed, slow_kernel):
    rng = random.Random(seed)
    to_guest = rng.randbytes(rng.choice([0, 1, 5000, 200000]))
    to_socket = rng.randbytes(rng.choice([0, 1, 30000]))
    model = Model(rng, to_guest, to_socket, rng.choice([0.0, 0.05, 0.1]), slow_kernel)
    for _ in range(40000):
        if model.closed is not None:
            break
        model.step()
    assert model.closed is False, model.conn.state_name()
    assert bytes(model.g_rcv) == to_guest
    assert model.consumed == len(to_guest)
    assert bytes(model.written) == to_socket
    assert model.shut_wr
