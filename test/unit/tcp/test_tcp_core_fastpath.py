"""Header prediction (``TcpConn._predicted``) against the general path, side by side.

Theory of operation
-------------------
The fast path is only worth having if it is invisible: for every segment it
takes, it must return the actions the general path would return and leave
the connection in the same state.  ``Twin`` holds two connections, one with
``fast_path`` on and one with it off, and forwards every call to both: it
compares what the two return and every field of the two (``__slots__``)
after each call, and counts the segments the fast path took.  It stands in
for ``TcpConn`` in three drivers:

* the simulation suite's model (test_tcp_core_sim.py: a lossy guest, a model
  socket, both directions, the slow-kernel variant), unchanged;
* a random walk that aims its segments at the predicate's edges (sequence
  one off, ACK just below ``snd_una`` or just beyond ``snd_max``, windows one
  off, every flag, zero-length, held data, partial writes, a small hold
  budget so that data is dropped and a FIN waits for the socket);
* named scenarios, each asserting also which path the segment took.

``test_a_broken_predicate_is_caught`` checks that the comparison can fail:
a fast path fed a lie about the sequence number (out-of-order data taken as
in order) must be caught by the random walk.
"""

from __future__ import annotations

import random

import pytest

from passt.packet import ACK, FIN, PSH, RST, SYN, URG, TcpSegment
from passt.tcp.core import ESTABLISHED, HOLD_BUDGET, HoldBudget, SockSend, TcpConn

from . import test_tcp_core_sim as sim

M = 1 << 32
MSS_LIMIT = 65480
ECE, CWR = 0x40, 0x80
COMPILED = hasattr(TcpConn, "__mypyc_attrs__")  # PASST_MYPYC: the mypyc build's class
FIELDS: tuple[str, ...] = TcpConn.__mypyc_attrs__ if COMPILED else TcpConn.__slots__


def predicts(conn: TcpConn, seg: TcpSegment) -> bool:
    """Whether the fast path takes ``seg``, asked of a copy of ``conn``."""
    probe = TcpConn(0, 0)
    for name in FIELDS:
        setattr(probe, name, getattr(conn, name))
    return probe._predicted(seg) is not None


def state(conn: TcpConn) -> dict[str, object]:
    """Every field of a connection, comparable across two of them."""
    fields: dict[str, object] = {}
    for name in FIELDS:
        value = getattr(conn, name)
        if name == "fast_path":
            continue
        if name == "budget":
            value = (value.limit, value.used)
        elif name == "offered" and value is not None:
            value = bytes(value)
        elif name == "held":
            value = bytes(value)
        fields[name] = value
    return fields


class Twin:
    """Two connections fed the same calls: ``fast`` predicts, ``slow`` does not."""

    def __init__(self, fast: TcpConn, slow: TcpConn) -> None:
        slow.fast_path = False
        vars(self).update(fast=fast, slow=slow, predicted=0, segments=0)
        self.check("construction")

    def check(self, what: str) -> None:
        assert state(self.fast) == state(self.slow), what

    def __getattr__(self, name: str) -> object:
        attr = getattr(self.fast, name)
        if not callable(attr):
            return attr

        def both(*args: object) -> object:
            if name == "on_segment":
                self.__dict__["segments"] += 1
                self.__dict__["predicted"] += predicts(self.fast, *args)  # type: ignore[arg-type]
            fast = attr(*args)
            slow = getattr(self.slow, name)(*args)
            assert fast == slow, f"{name}{args}: {fast} != {slow}"
            self.check(f"after {name}{args}")
            return fast

        return both

    def __setattr__(self, name: str, value: object) -> None:
        setattr(self.fast, name, value)
        setattr(self.slow, name, value)


class TwinConn:
    """``TcpConn``'s constructors, making twins (for the simulation's model)."""

    @staticmethod
    def outbound(syn: TcpSegment, isn: int, mss_limit: int) -> tuple[Twin, list]:
        fast, acts = TcpConn.outbound(syn, isn, mss_limit)
        slow, again = TcpConn.outbound(syn, isn, mss_limit)
        assert acts == again
        return Twin(fast, slow), acts


def segment(seq: int, ack: int, flags: int = ACK, window: int = 1000,
            payload: bytes = b"") -> TcpSegment:
    return TcpSegment(40000, 80, seq % M, ack % M, flags, window, None, None, False, None,
                      None, memoryview(payload))


def established(rng: random.Random, wscale: int | None = 7) -> Twin:
    """An outbound connection through its handshake, sequence numbers near the wrap."""
    guest_isn, our_isn = M - rng.randrange(1, 3000), M - rng.randrange(1, 3000)
    syn = TcpSegment(40000, 80, guest_isn, 0, SYN, 64240, 65480, wscale, False, None, None,
                     memoryview(b""))
    twin, _ = TwinConn.outbound(syn, our_isn, MSS_LIMIT)
    twin.on_connected()
    twin.on_segment(segment(guest_isn + 1, our_isn + 1, ACK, 1000))
    assert twin.events & ESTABLISHED
    return twin


# -- the simulation suite, twinned ---------------------------------------------


@pytest.mark.parametrize("slow_kernel", [False, True], ids=["peek-offset", "from-start-pauses"])
@pytest.mark.parametrize("seed", range(12))
def test_simulated_streams_agree(monkeypatch, seed, slow_kernel):
    monkeypatch.setattr(sim, "TcpConn", TwinConn)
    rng = random.Random(seed)
    to_guest = rng.randbytes(rng.choice([1, 5000, 200000]))
    to_socket = rng.randbytes(rng.choice([1, 30000]))
    model = sim.Model(rng, to_guest, to_socket, rng.choice([0.0, 0.05, 0.1]), slow_kernel)
    for _ in range(40000):
        if model.closed is not None:
            break
        model.step()
    assert model.closed is False
    assert bytes(model.g_rcv) == to_guest and bytes(model.written) == to_socket
    twin = model.conn
    assert 0 < twin.predicted < twin.segments  # both paths were taken


# -- a random walk along the predicate's edges -----------------------------------


class Walk:
    """Random events for one twin, segments aimed at the predicate's edges."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.ws = rng.choice([None, 0, 7])
        self.twin = established(rng, self.ws)
        self.space = rng.choice([0, 500, 5000, 1 << 20])
        limit = rng.choice([HOLD_BUDGET, 5000, 200])  # small: data dropped, then a FIN waits
        self.twin.fast.budget, self.twin.slow.budget = HoldBudget(limit), HoldBudget(limit)

    def run(self, acts: list) -> None:
        for act in acts:
            if isinstance(act, SockSend):
                offered = len(act.payload)
                accepted = min(offered, self.space, self.rng.choice([offered, offered // 2, 0]))
                self.space -= accepted
                self.run(self.twin.on_sock_accepted(accepted, offered))

    def guest_segment(self) -> TcpSegment:
        c, rng = self.twin.fast, self.rng
        seq = rng.choice([c.rcv_nxt] * 6 + [c.rcv_nxt + 1, c.rcv_nxt - 1, c.rcv_nxt - 100,
                                            c.rcv_nxt + len(c.held)])
        ack = rng.choice([c.snd_una, c.snd_nxt, c.snd_max] * 2 + [
            c.snd_una - 1, c.snd_max + 1, c.snd_una + rng.randrange(1, 1 << 20)])
        flags = rng.choice([ACK] * 6 + [ACK | PSH] * 4 + [
            ACK | FIN, ACK | PSH | FIN, ACK | URG, ACK | ECE, ACK | CWR, SYN | ACK, SYN, FIN, 0])
        if rng.random() < 0.003:
            flags = RST | ACK
        field = c.snd_wnd >> (self.ws or 0)
        window = rng.choice([field] * 6 + [field + 1, max(field - 1, 0), 0, 65535])
        payload = rng.randbytes(rng.choice([0, 0, 1, 100, 3000]))
        return segment(seq, ack, flags, window, payload)

    def step(self) -> None:
        twin, rng = self.twin, self.rng
        event = rng.random()
        if event < 0.6:
            self.run(twin.on_segment(self.guest_segment()))
        elif event < 0.75:
            if twin.on_sock_readable():
                self.run(twin.on_sock_data(rng.randrange(1, min(twin.peek_budget(), 9000) + 1)))
            else:
                self.run(twin.on_window_full())
        elif event < 0.85:
            self.run(twin.flush_ack(self.space, 1 << 20))
        elif event < 0.93:
            self.space += rng.choice([0, 1000, 100000])
            self.run(twin.on_sock_writable(self.space))
        elif event < 0.98:
            self.run(twin.on_timer())
        elif event < 0.99:
            twin.on_sock_drained()
        else:
            self.run(twin.on_sock_eof())


def walk(seed: int, steps: int = 3000) -> tuple[int, int]:
    """Random walks over fresh connections; (segments predicted, segments in all)."""
    rng = random.Random(seed)
    predicted = segments = 0
    done = 0
    while done < steps:
        w = Walk(rng)
        while done < steps and not w.twin.closed:
            w.step()
            done += 1
        predicted += w.twin.predicted
        segments += w.twin.segments
    return predicted, segments


@pytest.mark.parametrize("seed", range(20))
def test_random_edges_agree(seed):
    predicted, segments = walk(seed)
    assert 0 < predicted < segments


@pytest.mark.skipif(COMPILED, reason="a compiled class cannot be monkey-patched")
def test_a_broken_predicate_is_caught(monkeypatch):
    """A fast path that took out-of-order data as in order would be caught."""
    real = TcpConn._predicted

    def trusting(self: TcpConn, seg: TcpSegment) -> object:
        return real(self, seg._replace(seq=self.rcv_nxt))

    monkeypatch.setattr(TcpConn, "_predicted", trusting)
    with pytest.raises(AssertionError):
        for seed in range(20):
            walk(seed)


# -- named edges: which path, and the same outcome -------------------------------


def outstanding(twin: Twin, length: int = 3000) -> None:
    """``length`` bytes from the socket sent to the guest and not yet acknowledged."""
    twin.on_sock_readable()
    twin.on_sock_data(length)


def edge_cases(twin: Twin) -> dict[str, tuple[TcpSegment, bool]]:
    """Segments on the predicate's edges, and whether the fast path takes each."""
    c = twin.fast
    una, nxt, rcv, wnd = c.snd_una, c.snd_nxt, c.rcv_nxt, c.snd_wnd >> 7
    return {
        "pure ACK of everything (ack == snd_nxt)": (segment(rcv, nxt, ACK, wnd), True),
        "pure ACK of part": (segment(rcv, una + 1, ACK, wnd), True),
        "ACK beyond snd_max": (segment(rcv, nxt + 1, ACK, wnd), False),
        "ACK below snd_una": (segment(rcv, una - 1, ACK, wnd, b"x"), False),
        "duplicate ACK (ack == snd_una, no data)": (segment(rcv, una, ACK, wnd), False),
        "data, ack == snd_una": (segment(rcv, una, ACK, wnd, b"req"), True),
        "data with PSH, acking all": (segment(rcv, nxt, ACK | PSH, wnd, b"req"), True),
        "window grows": (segment(rcv, nxt, ACK, wnd + 1), False),
        "window shrinks": (segment(rcv, nxt, ACK, wnd - 1, b"x"), False),
        "seq one beyond": (segment(rcv + 1, nxt, ACK, wnd, b"x"), False),
        "seq one before": (segment(rcv - 1, nxt, ACK, wnd, b"xy"), False),
        "FIN after data": (segment(rcv, nxt, ACK | FIN, wnd, b"bye"), False),
        "URG": (segment(rcv, nxt, ACK | URG, wnd, b"x"), False),
        "ECE": (segment(rcv, nxt, ACK | ECE, wnd, b"x"), False),
        "no ACK": (segment(rcv, nxt, PSH, wnd, b"x"), False),
    }


CASES = list(edge_cases(established(random.Random(0))))


@pytest.mark.parametrize("case", CASES)
def test_edges_take_the_expected_path_with_the_same_outcome(case):
    twin = established(random.Random(1))
    outstanding(twin)
    seg, fast = edge_cases(twin)[case]
    assert (predicts(twin.fast, seg)) == fast
    twin.on_segment(seg)  # the twin compares both paths
    if twin.offered is not None:
        twin.on_sock_accepted(len(seg.payload), len(seg.payload))
    twin.flush_ack(1 << 20, 1 << 20)


def test_held_data_sends_the_next_segment_the_general_way():
    twin = established(random.Random(2))
    rcv = twin.rcv_nxt
    twin.on_segment(segment(rcv, twin.snd_nxt, ACK, twin.snd_wnd >> 7, b"a" * 100))
    twin.on_sock_accepted(40, 100)  # 60 bytes held behind the socket
    assert len(twin.held) == 60
    follow = segment(rcv + 100, twin.snd_nxt, ACK, twin.snd_wnd >> 7, b"b" * 10)
    assert not predicts(twin.fast, follow)
    twin.on_segment(follow)
    assert len(twin.held) == 70
    twin.on_sock_writable(1 << 20)
    twin.on_sock_accepted(70, 70)
    nxt = segment(rcv + 110, twin.snd_nxt, ACK, twin.snd_wnd >> 7, b"c")
    assert predicts(twin.fast, nxt)  # nothing held: fast again
    twin.on_segment(nxt)
