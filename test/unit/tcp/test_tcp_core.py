"""Segment-by-segment tests of the sans-I/O TCP translation core (passt.tcp.core)."""

from __future__ import annotations

import struct

import pytest

from passt.packet import ACK, FIN, PSH, RST, SYN, TcpSegment, parse_tcp
from passt.tcp import core as tc
from passt.tcp.core import (
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
    rst_for_stray,
    seq_diff,
    seq_le,
    seq_lt,
)  # fmt: skip

MSS_LIMIT = 65480
GUEST_ISN = 1000
OUR_ISN = 5000
M = 1 << 32


def seg(seq: int, ack: int = 0, flags: int = ACK, window: int = 1000, payload: bytes = b"",
        mss: int | None = None, wscale: int | None = None) -> TcpSegment:
    return TcpSegment(40000, 80, seq & (M - 1), ack & (M - 1), flags, window, mss, wscale,
                      False, None, None, memoryview(payload))


def ops(actions: list) -> list[type]:
    return [type(a) for a in actions]


def find(actions: list, op: type) -> list[tuple]:
    return [a for a in actions if type(a) is op]


def taps(actions: list) -> list[tuple]:
    return find(actions, ToGuest)


def established_outbound(guest_isn: int = GUEST_ISN, our_isn: int = OUR_ISN, window: int = 1000,
                         wscale: int | None = 7) -> TcpConn:
    """Handshake: guest SYN, connect, SYN-ACK, guest ACK (window scaled by 2**wscale)."""
    conn, _ = TcpConn.outbound(
        seg(guest_isn, 0, SYN, 64240, mss=65480, wscale=wscale), our_isn, MSS_LIMIT)
    conn.on_connected()
    acts = conn.on_segment(seg(guest_isn + 1, our_isn + 1, ACK, window))
    assert conn.events & tc.ESTABLISHED
    assert (Peek in ops(acts)) == (window > 0)
    conn.on_sock_drained()
    return conn


def send_from_socket(conn: TcpConn, length: int) -> tuple:
    """The socket has `length` new bytes and the window allows them: one SendData action."""
    assert conn.on_sock_readable() >= length
    return find(conn.on_sock_data(length), SendData)[0]


# -- sequence arithmetic ------------------------------------------------------


def test_sequence_comparisons_wrap_around():
    assert seq_lt(M - 10, 5)
    assert not seq_lt(5, M - 10)
    assert seq_le(7, 7) and not seq_lt(7, 7)
    assert seq_diff(3, M - 2) == 5


# -- handshakes --------------------------------------------------------------


def test_outbound_handshake_answers_syn_only_once_connected():
    conn, acts = TcpConn.outbound(seg(GUEST_ISN, 0, SYN, 64240, mss=1460, wscale=7),
                                  OUR_ISN, MSS_LIMIT)
    assert acts == [ArmTimer(tc.SYN_TIMEOUT)]
    assert conn.mss == 1460
    # The guest repeats its SYN while we connect: nothing to say yet.
    assert conn.on_segment(seg(GUEST_ISN, 0, SYN, 64240, mss=1460, wscale=7)) == []
    acts = conn.on_connected()
    (synack,) = taps(acts)
    flags, seqno, ackno, window, options = synack
    assert flags == SYN | ACK and seqno == OUR_ISN and ackno == GUEST_ISN + 1
    header = struct.pack("!HHIIBBHHH", 80, 40000, 0, 0, (20 + len(options)) << 2, 0, 0, 0, 0)
    parsed = parse_tcp(header + options)
    assert parsed.mss == MSS_LIMIT and parsed.wscale == tc.WS_TO_GUEST
    # Our SYN-ACK got lost: the guest repeats its SYN, we repeat the SYN-ACK.
    assert taps(conn.on_segment(seg(GUEST_ISN, 0, SYN, 64240)))[0][0] == SYN | ACK
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 502))
    assert conn.events & tc.ESTABLISHED
    assert conn.snd_wnd == 502 << 7
    assert Clamp(502 << 7) in acts
    assert ArmTimer(tc.IDLE_TIMEOUT) in acts


def test_outbound_without_window_scaling_offers_none():
    conn, _ = TcpConn.outbound(seg(GUEST_ISN, 0, SYN, 8192), OUR_ISN, MSS_LIMIT)
    (synack,) = taps(conn.on_connected())
    assert synack[4] == b"\x02\x04" + MSS_LIMIT.to_bytes(2, "big")
    assert conn.mss == tc.MSS_DEFAULT
    conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 8192))
    assert conn.snd_wnd == 8192 and conn.ws_to_guest == 0


def test_mss_is_limited_by_the_tap_mtu():
    conn, _ = TcpConn.outbound(seg(GUEST_ISN, 0, SYN, 8192, mss=65495), OUR_ISN, 1460)
    assert conn.mss == 1460 and conn.mss_adv == 1460


@pytest.mark.parametrize("event", ["failed", "timeout"])
def test_outbound_connect_failure_resets_the_guest(event):
    conn, _ = TcpConn.outbound(seg(GUEST_ISN, 0, SYN, 8192), OUR_ISN, MSS_LIMIT)
    acts = conn.on_connect_failed() if event == "failed" else conn.on_timer()
    (rst,) = taps(acts)
    assert rst[0] == RST | ACK and rst[2] == GUEST_ISN + 1
    assert acts[-1] == Close(True) and conn.closed
    assert conn.on_timer() == [] and conn.on_segment(seg(GUEST_ISN + 1, 0, ACK)) == []


def test_outbound_synack_retransmitted_then_handshake_times_out():
    conn, _ = TcpConn.outbound(seg(GUEST_ISN, 0, SYN, 8192), OUR_ISN, MSS_LIMIT)
    conn.on_connected()
    sent = 1
    for _ in range(20):
        acts = conn.on_timer()
        if find(acts, Close):
            break
        assert taps(acts)[0][0] == SYN | ACK
        sent += 1
    assert find(acts, Close) == [Close(True)]
    assert 2 <= sent <= 5


def test_inbound_handshake():
    conn, acts = TcpConn.inbound(OUR_ISN, MSS_LIMIT, 200000)
    (syn,) = taps(acts)
    assert syn[0] == SYN and syn[1] == OUR_ISN and syn[3] == 0xFFFF
    # Data waiting on the accepted socket before the guest answers: not sent.
    assert conn.on_sock_readable() == 0
    # A stray ACK with a wrong number is ignored.
    assert conn.on_segment(seg(77, OUR_ISN + 7, ACK)) == []
    acts = conn.on_segment(seg(9000, OUR_ISN + 1, SYN | ACK, 65160, mss=1400, wscale=7))
    assert conn.events & tc.ESTABLISHED
    (ack,) = taps(acts)
    assert ack[0] == ACK and ack[1] == OUR_ISN + 1 and ack[2] == 9001
    assert Peek in ops(acts)
    assert conn.mss == 1400 and conn.snd_wnd == 65160  # SYN windows are not scaled
    # The guest repeats its SYN-ACK (our ACK was lost): we repeat the ACK.
    assert taps(conn.on_segment(seg(9000, OUR_ISN + 1, SYN | ACK, 65160)))[0][0] == ACK


def test_inbound_refused_by_guest_resets_socket():
    conn, _ = TcpConn.inbound(OUR_ISN, MSS_LIMIT, 65535)
    assert conn.on_segment(seg(0, OUR_ISN + 1, RST | ACK)) == [ArmTimer(None), Close(True)]


def test_inbound_syn_retransmitted_then_times_out():
    conn, _ = TcpConn.inbound(OUR_ISN, MSS_LIMIT, 65535)
    syns = 0
    for _ in range(20):
        acts = conn.on_timer()
        if find(acts, Close):
            break
        assert taps(acts)[0][0] == SYN
        syns += 1
    (rst,) = taps(acts)
    assert rst[0] == RST and syns >= 2


# -- socket to guest -------------------------------------------------------------


def test_data_to_guest_limited_by_window_and_acknowledged_bytes_discarded():
    conn = established_outbound(window=100)  # 100 << 7 = 12800 bytes
    assert conn.on_sock_readable() == 12800
    assert conn.on_sock_data(10000) == [SendData(OUR_ISN + 1, 10000), ArmTimer(tc.ACK_TIMEOUT)]
    assert conn.peek_budget() == 2800
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1 + 4000, ACK, 100))
    assert Discard(4000) in acts
    assert conn.peek_budget() == 12800 - 6000
    assert Peek in ops(acts)  # window opened while data waits
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1 + 10000, ACK, 100))
    assert Discard(6000) in acts
    assert ArmTimer(tc.IDLE_TIMEOUT) in acts  # nothing outstanding any more


def test_ack_beyond_what_was_sent_is_ignored():
    conn = established_outbound()
    send_from_socket(conn, 1000)
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1 + 5000, ACK, 1000))
    assert not find(acts, Discard) and conn.snd_una == OUR_ISN + 1


def test_sequence_wrap_around_both_directions():
    conn = established_outbound(guest_isn=M - 100, our_isn=M - 50, window=1000)
    assert send_from_socket(conn, 120) == SendData(M - 49, 120)
    assert conn.snd_nxt == 71
    acts = conn.on_segment(seg(M - 99, 71, ACK, 1000))
    assert Discard(120) in acts and conn.snd_una == 71
    acts = conn.on_segment(seg(M - 99, 71, ACK | PSH, 1000, payload=b"x" * 150))
    assert find(acts, SockSend)[0][0] == b"x" * 150
    conn.on_sock_accepted(150, 150)
    assert conn.rcv_nxt == 51
    (ack,) = taps(conn.flush_ack(1 << 20))
    assert ack[2] == 51
    # A retransmission straddling the wrap: only the new part goes to the socket.
    acts = conn.on_segment(seg(M - 10, 71, ACK, 1000, payload=bytes(range(100))))
    assert find(acts, SockSend)[0][0] == bytes(range(61, 100))


def test_zero_window_stops_data_and_probes_until_it_opens():
    conn = established_outbound(window=1000)
    send_from_socket(conn, 5000)
    assert conn.on_sock_readable() > 0  # more data waiting
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 5001, ACK, 0))
    assert Discard(5000) in acts and not find(acts, Clamp)
    assert ArmTimer(tc.ACK_TIMEOUT) in acts  # probe timer
    assert conn.on_sock_readable() == 0  # data waiting, window closed
    probe = taps(conn.on_timer())[0]
    assert probe[0] == ACK and probe[1] == OUR_ISN + 5000  # one below snd_una
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 5001, ACK, 500))
    assert Peek in ops(acts) and Clamp(500 << 7) in acts
    assert conn.peek_budget() == 500 << 7


def test_unanswered_zero_window_probes_reset():
    conn = established_outbound(window=0)
    assert conn.on_sock_readable() == 0
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 0))
    assert acts == []  # already probing
    for _ in range(tc.MAX_RETRANS):
        assert taps(conn.on_timer())[0][0] == ACK
    assert find(conn.on_timer(), Close) == [Close(True)]


def test_window_clamp_skips_small_changes():
    conn = established_outbound(window=1000)
    assert conn.clamped == 1000 << 7
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 1010))
    assert not find(acts, Clamp)
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 1200))
    assert find(acts, Clamp) == [Clamp(1200 << 7)]


def test_duplicate_acks_trigger_one_fast_retransmit():
    conn = established_outbound(window=1000)
    send_from_socket(conn, 60000)
    conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1 + 10000, ACK, 1000))
    dup = seg(GUEST_ISN + 1, OUR_ISN + 1 + 10000, ACK, 1000)
    assert not find(conn.on_segment(dup), Rewind)
    acts = conn.on_segment(dup)
    assert ops(acts)[:2] == [Rewind, Peek]
    assert conn.snd_nxt == conn.snd_una == OUR_ISN + 1 + 10000
    assert conn.snd_max == OUR_ISN + 1 + 60000
    # Re-peeked data goes out again from snd_una.
    assert conn.on_sock_data(50000)[0] == SendData(OUR_ISN + 1 + 10000, 50000)
    # More duplicates of the same ACK (frames in flight) do not rewind again.
    for _ in range(5):
        assert not find(conn.on_segment(dup), Rewind)
    # Once everything is acknowledged, a later loss can be fast-retransmitted again.
    conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1 + 60000, ACK, 1000))
    send_from_socket(conn, 1000)
    dup2 = seg(GUEST_ISN + 1, OUR_ISN + 1 + 60000, ACK, 1000)
    conn.on_segment(dup2)
    assert find(conn.on_segment(dup2), Rewind)


def test_window_update_is_not_a_duplicate_ack():
    conn = established_outbound(window=1000)
    send_from_socket(conn, 1000)
    for window in (900, 800, 700, 600):
        acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, window))
        assert not find(acts, Rewind)


def test_data_from_guest_is_not_a_duplicate_ack():
    conn = established_outbound(window=1000)
    send_from_socket(conn, 1000)
    for i in range(4):
        acts = conn.on_segment(seg(GUEST_ISN + 1 + i, OUR_ISN + 1, ACK, 1000, payload=b"a"))
        conn.on_sock_accepted(1, 1)
        assert not find(acts, Rewind)


def test_retransmission_timeout_backs_off_then_resets():
    conn = established_outbound(window=1000)
    send_from_socket(conn, 3000)
    delays = []
    for _ in range(tc.MAX_RETRANS):
        acts = conn.on_timer()
        assert ops(acts)[:2] == [Rewind, Peek]
        delays.append(find(acts, ArmTimer)[0][0])
        assert conn.snd_nxt == conn.snd_una
        conn.on_sock_data(3000)  # the re-peek
    assert delays == sorted(delays) and delays[-1] == tc.ACK_TIMEOUT_MAX
    acts = conn.on_timer()
    assert taps(acts)[0][0] == RST | ACK and acts[-1] == Close(True)


def test_progress_resets_the_retransmission_count():
    conn = established_outbound(window=1000)
    send_from_socket(conn, 3000)
    for _ in range(tc.MAX_RETRANS):
        conn.on_timer()
        conn.on_sock_data(3000)
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1 + 1000, ACK, 1000))
    assert ArmTimer(tc.ACK_TIMEOUT) in acts and conn.retries == 0
    assert Rewind in ops(conn.on_timer())


def test_ack_after_rewind_beyond_snd_nxt_moves_it_forward():
    conn = established_outbound(window=1000)
    send_from_socket(conn, 8000)
    conn.on_timer()  # rewind: snd_nxt back to snd_una
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1 + 6000, ACK, 1000))
    assert Discard(6000) in acts
    assert conn.snd_nxt == conn.snd_una == OUR_ISN + 1 + 6000
    assert conn.on_sock_data(2000)[0] == SendData(OUR_ISN + 1 + 6000, 2000)


# -- guest to socket --------------------------------------------------------------


def test_guest_data_acknowledged_only_as_far_as_the_socket_took_it():
    conn = established_outbound()
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK | PSH, 1000, payload=b"a" * 3000))
    assert find(acts, SockSend)[0][0] == b"a" * 3000
    assert not taps(acts)  # acknowledged once we know what the socket took
    assert conn.on_sock_accepted(1000, 3000) == [WantOut(True)]
    assert conn.held == b"a" * 2000  # kept, in case the guest's buffer is reused
    (ack,) = taps(conn.flush_ack(5000))
    assert ack[2] == GUEST_ISN + 1 + 1000 and ack[3] == (5000 - 2000) >> tc.WS_TO_GUEST
    assert conn.flush_ack(0) == []  # nothing new
    # More data in order while the socket is full: held behind the rest.
    acts = conn.on_segment(seg(GUEST_ISN + 3001, OUR_ISN + 1, ACK, 1000, payload=b"b" * 500))
    assert not find(acts, SockSend) and conn.held == b"a" * 2000 + b"b" * 500
    # A retransmission of held data is old news.
    acts = conn.on_segment(seg(GUEST_ISN + 1001, OUR_ISN + 1, ACK, 1000, payload=b"a" * 2000))
    assert not find(acts, SockSend) and taps(acts)[0][2] == GUEST_ISN + 1001
    # Room again: what we hold goes to the socket, then it is acknowledged.
    assert conn.on_sock_writable(0) == [WantOut(True)]  # stale notification
    (send,) = conn.on_sock_writable(1 << 20)
    assert type(send) is SockSend and bytes(send[0]) == b"a" * 2000 + b"b" * 500
    assert conn.on_sock_accepted(2500, 2500) == []
    (ack,) = taps(conn.flush_ack(1 << 20))
    assert ack[2] == GUEST_ISN + 3501 and not conn.held


def test_beyond_the_hold_limit_data_is_dropped_then_duplicate_acks(monkeypatch):
    monkeypatch.setattr(tc, "HOLD_MAX", 1000)
    conn = established_outbound()
    conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 1000, payload=b"a" * 1500))
    conn.on_sock_accepted(1000, 1500)
    acts = conn.on_segment(seg(GUEST_ISN + 1501, OUR_ISN + 1, ACK, 1000, payload=b"c" * 800))
    assert taps(acts)[0][2] == GUEST_ISN + 1001 and conn.held == b"a" * 500
    (send,) = conn.on_sock_writable(1 << 20)
    conn.on_sock_accepted(500, 500)
    acts = conn.on_sock_writable(1 << 20)
    assert acts[0] == WantOut(False)
    assert len(taps(acts)) == 4 and all(a[2] == GUEST_ISN + 1501 for a in taps(acts))


def test_small_window_asks_for_writability():
    conn = established_outbound()
    conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 1000, payload=b"a" * 100))
    conn.on_sock_accepted(100, 100)
    acts = conn.flush_ack(1000)
    assert WantOut(True) in acts
    # A stale notification (no room after all): watch again, say nothing.
    assert conn.on_sock_writable(0) == [WantOut(True)]
    acts = conn.on_sock_writable(500)
    assert acts[0] == WantOut(False)
    assert taps(acts)[0][3] == 500 >> tc.WS_TO_GUEST


def test_a_small_window_is_watched_again_even_while_watching():
    """Writing held data can fill the socket without the kernel marking it short of
    space (it took everything); the ACK after it leaves a small window, and only
    a fresh poll makes the kernel report room later: without it the guest waits
    for its zero-window probe (200 ms at least)."""
    conn = established_outbound()
    conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 1000, payload=b"a" * 3000))
    assert conn.on_sock_accepted(1000, 3000) == [WantOut(True)]
    (send,) = conn.on_sock_writable(1 << 20)
    assert type(send) is SockSend
    assert conn.on_sock_accepted(2000, 2000) == []
    acts = conn.flush_ack(1000)
    assert taps(acts)[0][2] == GUEST_ISN + 3001 and WantOut(True) in acts


def guest_sends(conn, length: int) -> None:
    """The guest sends ``length`` bytes in order and the socket takes them all."""
    conn.on_segment(seg(conn.rcv_nxt, conn.snd_nxt, ACK | PSH, 1000, payload=b"q" * length))
    conn.on_sock_accepted(length, length)


def test_send_space_is_queried_only_near_the_edge_of_the_buffer():
    conn = established_outbound()
    guest_sends(conn, 100)
    assert conn.space_query_needed()  # nothing known yet
    (ack,) = taps(conn.flush_ack(100_000, 100_000))
    assert ack[3] == 100_000 >> tc.WS_TO_GUEST
    guest_sends(conn, 30_000)
    assert not conn.space_query_needed()  # 70,000 left of 100,000: still far from the edge
    (ack,) = taps(conn.flush_ack())
    assert ack[3] == 70_000 >> tc.WS_TO_GUEST  # the right edge stays where it was
    guest_sends(conn, 30_000)
    assert conn.space_query_needed()  # below half the buffer: ask the kernel again


def test_a_small_request_may_wait_for_its_answer_to_carry_the_ack():
    conn = established_outbound()
    guest_sends(conn, 100)
    conn.note_send_space(100_000, 100_000)
    assert conn.ack_can_wait()
    send_from_socket(conn, 10)
    assert not conn.ack_due and not conn.ack_can_wait()  # the answer carried the ACK
    guest_sends(conn, tc.ACK_DELAY_BYTES)  # bulk: acknowledged at once
    assert not conn.ack_can_wait()
    conn.flush_ack(100_000, 100_000)
    guest_sends(conn, 100)
    conn.note_send_space(1000, 100_000)  # near the edge: at once, with a window update
    assert not conn.ack_can_wait()


def test_keepalive_or_window_probe_from_guest_is_answered_with_a_fresh_window():
    conn = established_outbound()
    acts = conn.on_segment(seg(GUEST_ISN, OUR_ISN + 1, ACK, 1000))  # seq one below rcv_nxt
    assert not taps(acts) and conn.ack_due
    (ack,) = taps(conn.flush_ack(1 << 20))
    assert ack[2] == GUEST_ISN + 1 and ack[3] == (1 << 20) >> tc.WS_TO_GUEST


def test_out_of_order_guest_data_is_dropped_with_a_duplicate_ack():
    conn = established_outbound()
    acts = conn.on_segment(seg(GUEST_ISN + 1 + 1000, OUR_ISN + 1, ACK, 1000, payload=b"z" * 500))
    assert not find(acts, SockSend)
    (ack,) = taps(acts)
    assert ack[2] == GUEST_ISN + 1
    # Old data entirely: acknowledged again, not written.
    conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 1000, payload=b"a" * 10))
    conn.on_sock_accepted(10, 10)
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 1000, payload=b"a" * 10))
    assert not find(acts, SockSend) and taps(acts)[0][2] == GUEST_ISN + 11


def test_challenge_ack_for_syn_on_established_connection():
    conn = established_outbound()
    (ack,) = taps(conn.on_segment(seg(77777, 0, SYN, 1000)))
    assert ack[0] == ACK and ack[2] == GUEST_ISN + 1
    # The guest (with no such connection any more) answers with an RST at that number.
    assert conn.on_segment(seg(GUEST_ISN + 1, 0, RST, 0))[-1] == Close(True)


def test_rst_outside_the_window_is_ignored():
    conn = established_outbound()
    assert conn.on_segment(seg(GUEST_ISN + 1 + (1 << 30), 0, RST, 0)) == []
    assert not conn.closed


def test_socket_error_resets_guest():
    conn = established_outbound()
    send_from_socket(conn, 10)
    acts = conn.on_sock_error()
    (rst,) = taps(acts)
    assert rst[0] == RST | ACK and rst[1] == OUR_ISN + 11 and rst[2] == GUEST_ISN + 1
    assert acts[-1] == Close(True)
    assert conn.on_sock_error() == []


# -- closing -------------------------------------------------------------------


def test_guest_closes_first_then_socket_data_keeps_flowing():
    conn = established_outbound()
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK | FIN, 1000))
    assert ops(acts)[:2] == [ShutWr, ToGuest] and acts[1][2] == GUEST_ISN + 2
    assert not conn.closed
    send_from_socket(conn, 4000)
    acts = conn.on_segment(seg(GUEST_ISN + 2, OUR_ISN + 4001, ACK, 1000))
    assert Discard(4000) in acts and not conn.closed
    acts = conn.on_sock_eof()
    (fin,) = taps(acts)
    assert fin[0] == FIN | ACK and fin[1] == OUR_ISN + 4001
    acts = conn.on_segment(seg(GUEST_ISN + 2, OUR_ISN + 4002, ACK, 1000))
    assert not find(acts, Discard)
    assert acts[-1] == Close(False) and conn.closed


def test_socket_closes_first_then_guest_data_keeps_flowing():
    conn = established_outbound()
    send_from_socket(conn, 100)
    acts = conn.on_sock_eof()
    assert taps(acts)[0][1] == OUR_ISN + 101
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 102, ACK, 1000))
    assert Discard(100) in acts and conn.events & tc.TAP_FIN_ACKED
    assert conn.peek_budget() == 0  # nothing after our FIN
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 102, ACK, 1000, payload=b"q" * 300))
    assert find(acts, SockSend)
    conn.on_sock_accepted(300, 300)
    acts = conn.on_segment(seg(GUEST_ISN + 301, OUR_ISN + 102, ACK | FIN, 1000))
    assert ops(acts) == [ShutWr, ToGuest, ArmTimer, Close] and acts[-1] == Close(False)
    assert acts[1][2] == GUEST_ISN + 302


def test_fin_with_payload_is_processed_after_the_payload():
    conn = established_outbound()
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK | FIN, 1000, payload=b"bye"))
    assert ops(acts)[0] == SockSend and ShutWr not in ops(acts)
    assert conn.on_sock_accepted(2, 3) == [WantOut(True)]
    assert not conn.events & tc.TAP_FIN_RCVD  # "e" is held, the FIN waits for it
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK | FIN, 1000, payload=b"bye"))
    assert not find(acts, SockSend) and ShutWr not in ops(acts)
    (send,) = conn.on_sock_writable(1000)
    assert bytes(send[0]) == b"e"
    acts = conn.on_sock_accepted(1, 1)
    assert ops(acts)[:2] == [ShutWr, ToGuest] and acts[1][2] == GUEST_ISN + 5


@pytest.mark.parametrize("guest_acks_our_fin", [False, True])
def test_simultaneous_close(guest_acks_our_fin):
    conn = established_outbound()
    assert taps(conn.on_sock_eof())[0][0] == FIN | ACK
    ack = OUR_ISN + 2 if guest_acks_our_fin else OUR_ISN + 1
    acts = conn.on_segment(seg(GUEST_ISN + 1, ack, ACK | FIN, 1000))
    assert ShutWr in ops(acts)
    if guest_acks_our_fin:
        assert acts[-1] == Close(False)
        return
    assert not conn.closed
    acts = conn.on_segment(seg(GUEST_ISN + 2, OUR_ISN + 2, ACK, 1000))
    assert acts[-1] == Close(False)


def test_guest_fin_retransmitted_is_acknowledged_again():
    conn = established_outbound()
    conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK | FIN, 1000))
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK | FIN, 1000))
    assert ShutWr not in ops(acts) and taps(acts)[0][2] == GUEST_ISN + 2


def test_lost_fin_is_retransmitted_then_fin_timeout_resets():
    conn = established_outbound()
    conn.on_sock_eof()
    elapsed = 0.0
    delay = tc.ACK_TIMEOUT
    fins = 1
    for _ in range(100):
        elapsed += delay
        acts = conn.on_timer()
        if find(acts, Close):
            break
        (fin,) = taps(acts)
        assert fin[0] == FIN | ACK and fin[1] == OUR_ISN + 1
        fins += 1
        delay = find(acts, ArmTimer)[0][0]
    assert find(acts, Close) == [Close(True)]
    assert fins > tc.MAX_RETRANS  # bounded by FIN_TIMEOUT, not by the count
    assert elapsed <= tc.FIN_TIMEOUT + tc.ACK_TIMEOUT_MAX


def test_lost_fin_after_data_follows_the_resent_data():
    conn = established_outbound()
    send_from_socket(conn, 700)
    conn.on_sock_eof()
    acts = conn.on_timer()
    assert ops(acts)[:2] == [Rewind, Peek]
    assert conn.on_sock_readable() == 700  # the data before the FIN, not beyond
    (fin,) = taps(conn.on_sock_data(700))  # the FIN follows its data at once
    assert fin[0] & FIN and fin[1] == OUR_ISN + 701
    assert conn.on_sock_readable() == 0 and taps(conn.on_sock_eof()) == []


def test_guest_rst_closes_socket_with_rst():
    conn = established_outbound()
    acts = conn.on_segment(seg(GUEST_ISN + 1, 0, RST, 0))
    assert acts == [ArmTimer(None), Close(True)]
    assert conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 1000)) == []


def test_idle_timeout_rearms_while_active_and_resets_when_idle():
    conn = established_outbound()
    conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 1000))
    assert conn.on_timer() == [ArmTimer(tc.IDLE_TIMEOUT)]  # there was activity
    acts = conn.on_timer()
    assert taps(acts)[0][0] == RST | ACK and acts[-1] == Close(True)


def test_rst_for_stray_segments():
    assert rst_for_stray(seg(10, 99, ACK)) == (RST, 99, 0)
    assert rst_for_stray(seg(10, 0, SYN)) == (RST | ACK, 0, 11)
    assert rst_for_stray(seg(10, 0, FIN, payload=b"abc")) == (RST | ACK, 0, 14)
    assert rst_for_stray(seg(10, 0, RST)) is None


def test_state_names():
    conn = established_outbound()
    assert conn.state_name() == "ESTABLISHED"
    conn.on_sock_eof()
    assert "TAP_FIN_SENT" in conn.state_name()


# -- issue 19: zero windows, FIN after going back, the hold budget, in flight --


def zero_window_with_data_waiting() -> TcpConn:
    """Established; the guest shut its window; the socket has more for it."""
    conn = established_outbound()
    conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 0))
    assert conn.on_sock_readable() == 0
    acts = conn.on_window_full()
    assert find(acts, ArmTimer) == [ArmTimer(tc.ACK_TIMEOUT)]  # the probe timer
    return conn


def test_zero_window_probes_answered_keep_the_connection_open_at_a_bounded_rate():
    conn = zero_window_with_data_waiting()
    waited = 0.0
    for _ in range(5 * tc.MAX_RETRANS):  # far longer than MAX_RETRANS probes
        acts = conn.on_timer()
        (probe,) = taps(acts)
        assert probe[0] == ACK and probe[1] == OUR_ISN  # an old sequence number
        (timer,) = find(acts, ArmTimer)
        assert tc.ACK_TIMEOUT <= timer[0] <= tc.ACK_TIMEOUT_MAX
        waited += timer[0]
        assert not find(conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 0)), Close)
    assert not conn.closed and waited > 130
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 1000))  # the reader is back
    assert Peek in ops(acts)


def test_zero_window_probes_unanswered_reset_in_bounded_time():
    conn = zero_window_with_data_waiting()
    waited = tc.ACK_TIMEOUT
    for _ in range(tc.MAX_RETRANS + 1):
        acts = conn.on_timer()
        if find(acts, Close):
            break
        waited += find(acts, ArmTimer)[0][0]
    assert find(acts, Close) == [Close(True)] and taps(acts)[0][0] & RST
    assert waited <= tc.MAX_RETRANS * tc.ACK_TIMEOUT_MAX


def test_zero_window_with_data_in_flight_probes_rather_than_resends_nothing():
    conn = established_outbound()
    send_from_socket(conn, 500)
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 0))  # window shut, 500 unacked
    conn.on_timer()
    for _ in range(3 * tc.MAX_RETRANS):
        acts = conn.on_timer()
        assert taps(acts) and not find(acts, Close)
        conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 0))
    assert not conn.closed


def fin_sent_after(length: int) -> TcpConn:
    conn = established_outbound()
    send_from_socket(conn, length)
    (fin,) = taps(conn.on_sock_eof())
    assert fin[1] == OUR_ISN + 1 + length
    return conn


def test_fin_acknowledged_during_a_resend_closes_cleanly():
    conn = fin_sent_after(3000)
    assert ops(conn.on_timer())[:2] == [Rewind, Peek]  # spurious: all had arrived
    conn.on_sock_readable()
    conn.on_sock_data(1000)
    conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 3002, ACK, 1000))  # data and FIN acked
    assert conn.events & tc.TAP_FIN_ACKED and conn.peek_budget() == 0
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 3002, ACK | FIN, 1000))
    assert find(acts, Close) == [Close(False)]


def test_fin_resent_at_its_own_sequence_after_a_window_limited_resend():
    conn = fin_sent_after(3000)
    conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 8))  # window 8 << 7 = 1024
    conn.on_timer()
    fins = []
    for _ in range(10):
        budget = conn.on_sock_readable()
        if not budget:
            break
        acts = conn.on_sock_data(budget)
        fins += [t for t in taps(acts) if t[0] & FIN]
        conn.on_segment(seg(GUEST_ISN + 1, conn.snd_nxt, ACK, 8))
    assert [f[1] for f in fins] == [OUR_ISN + 3001]
    assert conn.events & tc.TAP_FIN_ACKED


def test_held_data_beyond_the_shared_budget_is_dropped_and_the_window_shuts():
    budget = tc.HoldBudget(1500)
    first, second = (established_outbound() for _ in range(2))
    first.budget = second.budget = budget
    first.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 1000, payload=b"a" * 2000))
    first.on_sock_accepted(500, 2000)
    assert len(first.held) == 1500 and budget.used == 1500
    second.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 1000, payload=b"b" * 2000))
    acts = second.on_sock_accepted(500, 2000)
    assert not second.held and budget.used == 1500 and acts == [WantOut(True)]
    (ack,) = taps(second.flush_ack(100_000, 200_000))
    assert ack[2] == GUEST_ISN + 501 and ack[3] == 0  # only what was taken; window shut
    acts = second.on_sock_writable(100_000)  # room again: window and duplicate ACKs
    assert len(taps(acts)) == 4 and taps(acts)[0][3] > 0


def test_closing_gives_held_bytes_back_to_the_budget():
    budget = tc.HoldBudget()
    conn = established_outbound()
    conn.budget = budget
    conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1, ACK, 1000, payload=b"a" * 2000))
    conn.on_sock_accepted(0, 2000)
    assert budget.used == 2000
    conn.abort()
    assert budget.used == 0 and not conn.held


def test_bytes_in_flight_are_bounded_and_peeks_wait_for_half_of_them_acknowledged():
    conn = established_outbound(window=0xFFFF)  # 8 MiB with the scale
    conn.inflight_segments = 4
    bound = 4 * conn.mss
    assert conn.on_sock_readable() == bound
    assert find(conn.on_sock_data(bound), ArmTimer) == [ArmTimer(tc.ACK_TIMEOUT)]
    assert conn.on_sock_readable() == 0
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1 + conn.mss, ACK, 0xFFFF))
    assert Peek not in ops(acts) and conn.peek_budget() == 0  # 3 of 4 still in flight
    acts = conn.on_segment(seg(GUEST_ISN + 1, OUR_ISN + 1 + 2 * conn.mss, ACK, 0xFFFF))
    assert Peek in ops(acts) and conn.peek_budget() == 2 * conn.mss
