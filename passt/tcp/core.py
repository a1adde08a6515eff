"""Sans-I/O TCP translation: what to do with one connection, segment by segment.

Theory of operation
-------------------
We do not implement TCP.  The guest's kernel runs TCP on one side of us, the
host's kernel on the other, and a connection of the guest is carried by an
ordinary host socket.  All we do is translate *events* between the two: a
segment from the guest becomes bytes written to the socket, bytes arriving on
the socket become segments to the guest, and the ends of the connection
(SYN, FIN, RST) are mapped onto ``connect()``, ``shutdown()`` and ``close()``.
This module makes every decision of that translation and does no I/O: each
event method returns a list of *actions* (``Action``: one small NamedTuple
class per kind) that the driver (``tcp/tap.py``) carries out.  Unit tests
feed it segment sequences and check the actions, without a socket in sight.

Sequence spaces
~~~~~~~~~~~~~~~
Toward the guest we are the sender: ``snd_una`` is the oldest byte the guest
has not acknowledged, ``snd_nxt`` the next one we will send, ``snd_max`` the
highest ever sent (``snd_nxt`` moves back on retransmission, ``snd_max`` does
not).  The bytes from ``snd_una`` on are exactly the bytes still sitting in
the socket's receive buffer: we read them with ``MSG_PEEK`` and discard them
(``Discard``) only when the guest acknowledges them, so the kernel's receive
buffer *is* our retransmission queue and the kernel's flow control toward the
far end follows the guest's pace.  The driver keeps the socket's peek offset
(``SO_PEEK_OFF``) at ``snd_nxt - snd_una``: discarding moves it back by the
same amount in the kernel, and a retransmission sets it to zero (``Rewind``).

From the guest we are the receiver: ``rcv_nxt`` is the next byte the socket
has taken.  A segment at that point is written to the socket (``SockSend``)
and the driver reports how much the kernel took (``on_sock_accepted``): only
that is acknowledged.  We advertise the socket's free send space as our
window (queried only near the edge, ``space_query_needed``; in between, the
last figure less what the socket took since), but the kernel's accounting can still fall short of what we
promised (a window we advertised a moment ago, memory overhead); what it
does not take is *held* (``held``, at most ``HOLD_MAX`` bytes) together with
whatever follows in order, and written when the socket has room again
(``on_sock_writable``), still acknowledged only once the kernel takes it.
Dropping it instead would make the guest's TCP, which gets no SACK from us,
recover one segment per round trip.  Held bytes are our memory, not the
kernel's, so they are bounded twice: ``HOLD_MAX`` per connection and one
``HoldBudget`` shared by all connections (``HOLD_BUDGET`` by default), so
that many stalled connections cannot grow the process without bound.  What
does not fit is dropped, the connection advertises a zero window until its
socket has room again (the window shrinks instead of memory growing), and
then duplicate ACKs make the guest retransmit at once.  A closed
connection gives its held bytes back to the budget at once.
Everything is modulo 2**32 (``seq_lt`` and friends).

Events, not states
~~~~~~~~~~~~~~~~~~
Like upstream passt, a connection's state is the set of events observed so
far (``events``, bits below) rather than the classic state machine: SYN from
the guest or an accepted socket, the handshake completed, FIN received and
sent on either side, our FIN acknowledged.  Each direction closes on its
own, so a half-closed connection keeps carrying data the other way; the
connection is over when both directions are (``Close``), or at once on a
reset from either side or a timeout (``Close`` with ``rst=True``, plus an
RST to the guest where it still has a connection).

Timers
~~~~~~
One timer per connection; ``ArmTimer`` (re)arms it, the driver calls
``on_timer`` when it fires.  Its meaning follows the events:

* handshake: the socket's ``connect()`` gets ``SYN_TIMEOUT``; then our
  SYN-ACK (or, inbound, our SYN) is repeated with exponential backoff until
  the guest answers, again within ``SYN_TIMEOUT``;
* unacknowledged data: go back to ``snd_una`` and send again, with
  exponential backoff, at most ``MAX_RETRANS`` times, then reset;
* unacknowledged FIN (the socket's peer has closed): the same, but bounded
  by ``FIN_TIMEOUT`` rather than by a count, as for a kernel's FIN_WAIT_1;
* zero window with data waiting (or in flight): probe the guest with an
  old sequence number, with the same backoff as retransmissions (so at
  most one probe per ``ACK_TIMEOUT_MAX``).  A guest that answers probes
  is alive, however long its window stays closed (RFC 9293 3.8.6.1): each
  answer starts the count afresh, and only ``MAX_RETRANS`` unanswered
  probes in a row reset the connection;
* otherwise idleness: an activity counter is compared when the
  ``IDLE_TIMEOUT`` timer fires, so that busy connections do not re-arm a
  timer for every segment.

Our FIN has one sequence number for life (``fin_seq``, fixed when it is
first sent, ``TAP_FIN_SENT`` never cleared): going back to ``snd_una``
re-sends the data up to it and then the FIN again (``fin_resend``), and an
acknowledgement beyond it acknowledges the FIN, whether or not it was being
re-sent.

Fast retransmit: ``DUP_ACK_THRESHOLD`` duplicate ACKs (no data, no window
change, data outstanding) send everything again from ``snd_una``.  On a tap
nothing reorders, so a duplicate ACK means a lost frame; a retransmission
does not trigger again until the guest has acknowledged what was in flight
when it started (``recover``).

Windows and segment sizes
~~~~~~~~~~~~~~~~~~~~~~~~~
The guest's window (scaled by its window scale, when both SYNs carried the
option) limits how much we peek and send (``peek_budget``), and is mirrored
to the socket with ``TCP_WINDOW_CLAMP`` (``Clamp``, only on changes of more
than 1/16th, to spare system calls), so the far end sees the guest's
receiving pace.  Our segments to the guest are at most its MSS and at most
what the tap MTU allows (``mss_limit``); the MSS we advertise is the MTU's.
The driver may also bound what is in flight to ``inflight_segments``
full segments: without ``SO_PEEK_OFF`` every peek copies again what is in
flight, so the core keeps it within what one peek covers, and once more
than half of that is in flight it waits for ACKs to bring it down to half
before peeking again: each peek then brings at least as many new bytes as
it copies again, rather than a segment or two per ACK.

Header prediction
~~~~~~~~~~~~~~~~~
Most guest segments of an established connection are the expected one
(Van Jacobson's header prediction, as in BSD and Linux): an ACK for data we
sent, or the next bytes of the stream, or both (a request that acknowledges
the last answer).  ``on_segment`` hands such a segment to ``_predicted``,
which does only what the general path would end up doing for it, and takes
everything else through the general path (``_general``).  The predicate,
exactly:

* the connection is ESTABLISHED, and no FIN was received from or sent to
  the guest (nor is one waiting for the socket: ``pending_fin``);
* the flags are exactly ACK or ACK|PSH (no SYN, FIN, RST, URG, ECE, CWR);
* ``seq == rcv_nxt`` and nothing is held (``held`` is our only queue of
  guest data: so the segment is next in order and nothing waits before it);
* the window, scaled, equals ``snd_wnd`` (no clamp, no window update);
* ``snd_una <= ack <= snd_max``, and either the ACK moves forward or the
  segment carries data (a bare repeated ACK may be a duplicate ACK);
* the timer is not probing a zero window.

Then the acknowledged bytes are discarded (``Discard``) and the timer
follows, the payload goes to the socket (``SockSend``), more is peeked if
the ACK made room and the socket has more, and the ACK to the guest is left
to ``flush_ack`` as on the general path.  The two must agree on every
segment: test/unit/tcp/test_tcp_core_fastpath.py drives both, side by side,
through random and simulated segment streams, and compares every action
list and every field after each step.  Options (timestamps included) are
ignored on both paths; ``fast_path`` off (tests only) sends every segment
the general way.  It costs the core 30 % less per in-order data segment,
8 % less per pure ACK and 6 % less per 1-byte round trip in pure Python
(19 %, 9 % and 4 % compiled with mypyc): bench/core_prediction.py, and
doc/performance.md, "Per-packet levers", for the end-to-end figures
(within this machine's noise).
"""

from __future__ import annotations

from passt.packet import ACK, FIN, PSH, RST, SYN, TcpSegment, tcp_options
from passt.record import NamedTuple

SEQ_MOD = 1 << 32
SEQ_MASK = SEQ_MOD - 1
_HALF = 1 << 31

# Actions: what the driver is to do, in order (one class each, so that mypy
# checks every field; the driver dispatches on the class).


class ToGuest(NamedTuple):
    """A segment without payload to the guest."""

    flags: int
    seq: int
    ack: int
    window: int  # the window field, already scaled
    options: bytes


class SendData(NamedTuple):
    """Send ``length`` bytes just peeked, from ``seq``, in MSS-sized frames."""

    seq: int
    length: int


class SockSend(NamedTuple):
    """Write to the socket, then call ``on_sock_accepted(n)``."""

    payload: bytes | bytearray | memoryview


class Peek(NamedTuple):
    """Read (peek) from the socket now: the window allows more data."""


class Rewind(NamedTuple):
    """Set the socket's peek offset back to 0 (``snd_nxt = snd_una``)."""


class Discard(NamedTuple):
    """Drop ``n`` acknowledged bytes from the socket's receive buffer."""

    n: int


class Clamp(NamedTuple):
    """``TCP_WINDOW_CLAMP`` on the socket."""

    window: int


class ShutWr(NamedTuple):
    """``shutdown(SHUT_WR)`` on the socket."""


class ArmTimer(NamedTuple):
    """(Re)arm the connection's timer, or cancel it (``None``)."""

    seconds: float | None


class WantOut(NamedTuple):
    """(Re)arm, or stop, watching the socket for writability."""

    on: bool


class Close(NamedTuple):
    """Close the socket (with RST if ``rst``) and free the flow."""

    rst: bool


Action = (ToGuest | SendData | SockSend | Peek | Rewind | Discard | Clamp | ShutWr | ArmTimer
          | WantOut | Close)

# Events (bits of TcpConn.events).
SOCK_ACCEPTED = 1 << 0  # inbound: socket accepted, SYN sent to the guest
TAP_SYN_RCVD = 1 << 1  # outbound: SYN from the guest, socket connecting
TAP_SYN_ACK_SENT = 1 << 2  # outbound: socket connected, SYN-ACK sent to the guest
ESTABLISHED = 1 << 3
SOCK_FIN_RCVD = 1 << 4  # the socket reached end of file (peer's FIN)
SOCK_FIN_SENT = 1 << 5  # shutdown(SHUT_WR) done (the guest's FIN)
TAP_FIN_RCVD = 1 << 6  # FIN from the guest
TAP_FIN_SENT = 1 << 7  # FIN sent to the guest
TAP_FIN_ACKED = 1 << 8  # the guest acknowledged our FIN
CLOSED = 1 << 9  # CLOSE was emitted: the connection is gone
# The events a segment's connection has for header prediction: ESTABLISHED alone of these.
_PREDICTED_EVENTS = ESTABLISHED | TAP_FIN_RCVD | TAP_FIN_SENT | CLOSED

EVENT_NAMES = (
    "SOCK_ACCEPTED", "TAP_SYN_RCVD", "TAP_SYN_ACK_SENT", "ESTABLISHED", "SOCK_FIN_RCVD",
    "SOCK_FIN_SENT", "TAP_FIN_RCVD", "TAP_FIN_SENT", "TAP_FIN_ACKED", "CLOSED",
)  # fmt: skip

# Timeouts (seconds) and limits.
SYN_TIMEOUT = 10.0
ACK_TIMEOUT = 1.0  # first retransmission; doubles per retry up to ACK_TIMEOUT_MAX
ACK_TIMEOUT_MAX = 8.0
FIN_TIMEOUT = 60.0
IDLE_TIMEOUT = 7200.0
MAX_RETRANS = 7
DUP_ACK_THRESHOLD = 2
HOLD_MAX = 4 << 20  # guest data we keep while the socket has no room, per connection
HOLD_BUDGET = 32 << 20  # ... and across all connections sharing one HoldBudget
MSS_DEFAULT = 536  # RFC 9293 default when the SYN carries no MSS option
WS_TO_GUEST = 8  # our window scale: windows up to 16 MiB
MAX_WINDOW = 1 << 30  # RFC 7323 maximum
WINDOW_DEFAULT = 65535
ACK_DELAY_BYTES = 4096  # less new data than this (a request, a keystroke): the ACK may wait

# Timer kinds.
_T_NONE, _T_CONNECT, _T_HANDSHAKE, _T_RETRANS, _T_PROBE, _T_IDLE = range(6)

# What the core reads from a guest segment: as ``packet.parse_tcp`` gives it.
Segment = TcpSegment


class HoldBudget:
    """Bytes held on behalf of the guest (``TcpConn.held``), across the connections
    that share this object: ``used`` never exceeds ``limit``."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int = HOLD_BUDGET) -> None:
        self.limit = limit
        self.used = 0

    def room(self) -> int:
        room = self.limit - self.used
        return room if room > 0 else 0


def seq_lt(a: int, b: int) -> bool:
    """a < b in sequence space (modulo 2**32)."""
    return 0 < ((b - a) & SEQ_MASK) < _HALF


def seq_le(a: int, b: int) -> bool:
    return ((b - a) & SEQ_MASK) < _HALF


def seq_diff(a: int, b: int) -> int:
    """a - b modulo 2**32, as a non-negative number."""
    return (a - b) & SEQ_MASK


def rst_for_stray(seg: Segment) -> tuple[int, int, int] | None:
    """(flags, seq, ack) of the RST answering a segment that matches no connection.

    RFC 9293 3.10.7.1: an ACK is answered by an RST at its acknowledgement
    number; anything else by an RST-ACK acknowledging it.  An RST is never
    answered.
    """
    flags = seg.flags
    if flags & RST:
        return None
    if flags & ACK:
        return RST, seg.ack, 0
    length = len(seg.payload) + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
    return RST | ACK, 0, (seg.seq + length) & SEQ_MASK


class TcpConn:
    """One connection's translation state; event methods return lists of actions."""

    __slots__ = (
        "events", "isn", "snd_una", "snd_nxt", "snd_max", "snd_wnd", "fin_seq", "rcv_nxt",
        "rcv_wnd", "ws_from_guest", "ws_to_guest", "mss", "mss_adv", "clamped", "dup_acks",
        "recover", "retries", "backoff", "elapsed", "timer_kind", "activity", "idle_mark",
        "sock_pending", "ack_due", "dropped", "want_out", "pending_fin", "held", "offered",
        "sending_held", "rcv_est", "sndbuf", "rcv_acked", "fin_resend", "inflight_segments",
        "budget", "fast_path",
    )  # fmt: skip

    def __init__(self, isn: int, mss_limit: int, budget: HoldBudget | None = None) -> None:
        self.events = 0
        self.isn = isn & SEQ_MASK
        self.snd_una = self.snd_nxt = self.snd_max = self.isn
        self.snd_wnd = 0  # the guest's window, scaled
        self.fin_seq = 0  # sequence number of our FIN, once TAP_FIN_SENT
        self.fin_resend = False  # going back: send the FIN again after the data before it
        self.inflight_segments = 0  # full segments in flight to the guest, at most (0: any)
        self.rcv_nxt = 0
        self.rcv_wnd = WINDOW_DEFAULT  # our window: the socket's free send space
        self.ws_from_guest = self.ws_to_guest = 0
        self.mss = min(MSS_DEFAULT, mss_limit)  # our segments to the guest
        self.mss_adv = mss_limit  # what we advertise: the tap MTU's
        self.clamped = 0  # last TCP_WINDOW_CLAMP set
        self.dup_acks = 0
        self.recover = self.isn
        self.retries = 0
        self.backoff = ACK_TIMEOUT
        self.elapsed = 0.0  # time spent retransmitting a SYN, SYN-ACK or FIN
        self.timer_kind = _T_NONE
        self.activity = self.idle_mark = 0
        self.sock_pending = False  # the socket may hold data we have not peeked
        self.ack_due = False  # guest data taken by the socket and not acknowledged
        self.dropped = False  # guest data the socket did not take
        self.want_out = False
        self.pending_fin = False  # the guest's FIN, once the data before it is written
        self.held = bytearray()  # guest data after rcv_nxt the socket has not taken yet
        self.budget = budget if budget is not None else HoldBudget()  # bounds `held`
        self.offered: memoryview | None = None  # payload of the SOCK_SEND under way
        self.sending_held = False  # ... which is `held`
        self.rcv_est = 0  # free send space at the last query, less what the socket took since
        self.sndbuf = 0  # the socket's send buffer size at the last query (0: not known)
        self.rcv_acked = 0  # the last acknowledgement number sent to the guest
        self.fast_path = True  # header prediction (off only to compare, in tests)

    # -- construction ------------------------------------------------------

    @classmethod
    def outbound(
        cls, syn: Segment, isn: int, mss_limit: int, budget: HoldBudget | None = None
    ) -> tuple[TcpConn, list[Action]]:
        """A SYN from the guest: the driver connects a socket; SYN-ACK once connected."""
        conn = cls(isn, mss_limit, budget)
        conn.events = TAP_SYN_RCVD
        conn.rcv_nxt = (syn.seq + 1) & SEQ_MASK
        conn._take_syn_options(syn)
        return conn, [conn._arm(_T_CONNECT, SYN_TIMEOUT)]

    @classmethod
    def inbound(
        cls, isn: int, mss_limit: int, window: int, budget: HoldBudget | None = None
    ) -> tuple[TcpConn, list[Action]]:
        """An accepted socket: SYN to the guest, with our MSS and window scale."""
        conn = cls(isn, mss_limit, budget)
        conn.events = SOCK_ACCEPTED
        conn.rcv_wnd = min(window, MAX_WINDOW)
        conn.snd_nxt = conn.snd_max = (conn.isn + 1) & SEQ_MASK
        return conn, [conn._syn(), conn._arm(_T_HANDSHAKE, conn.backoff)]

    def _take_syn_options(self, seg: Segment) -> None:
        """MSS and window scale from the guest's SYN or SYN-ACK."""
        self.mss = min(seg.mss or MSS_DEFAULT, self.mss_adv)
        if seg.wscale is not None:
            self.ws_from_guest = seg.wscale
            self.ws_to_guest = WS_TO_GUEST
        self.snd_wnd = seg.window  # never scaled in a SYN

    def _syn(self) -> Action:
        """Our SYN (inbound) or SYN-ACK (outbound), with MSS and window scale options."""
        wscale: int | None = WS_TO_GUEST
        if self.events & SOCK_ACCEPTED:
            flags, ack = SYN, 0
        else:
            flags, ack = SYN | ACK, self.rcv_nxt
            wscale = self.ws_to_guest or None
        options = tcp_options(mss=self.mss_adv, wscale=wscale)
        self.rcv_acked = ack
        return ToGuest(flags, self.isn, ack, min(self.rcv_wnd, 0xFFFF), options)

    # -- state ---------------------------------------------------------------

    def state_name(self) -> str:
        """The events seen so far, for logs."""
        names = [name for bit, name in enumerate(EVENT_NAMES) if self.events & (1 << bit)]
        return "|".join(names) or "NEW"

    @property
    def closed(self) -> bool:
        return bool(self.events & CLOSED)

    def window_field(self) -> int:
        """The 16-bit window field for a segment to the guest (not a SYN)."""
        return min(self.rcv_wnd >> self.ws_to_guest, 0xFFFF)

    def _ack(self) -> Action:
        """A bare ACK to the guest, acknowledging everything the socket took."""
        self.ack_due = False
        self.rcv_acked = self.rcv_nxt
        return ToGuest(ACK, self.snd_nxt, self.rcv_nxt, self.window_field(), b"")

    def peek_budget(self) -> int:
        """How many new bytes the guest's window (and ``inflight_segments``) lets us
        send now; after our FIN, only the data before it, when going back."""
        events = self.events
        if events & CLOSED or not events & ESTABLISHED:
            return 0
        in_flight = (self.snd_nxt - self.snd_una) & SEQ_MASK
        window = self.snd_wnd
        if self.inflight_segments:
            bound = self.inflight_segments * self.mss
            if in_flight > bound >> 1:
                return 0  # wait until a peek brings more than it copies again
            if bound < window:
                window = bound
        budget = window - in_flight
        if events & TAP_FIN_SENT:
            if not self.fin_resend:
                return 0
            before_fin = (self.fin_seq - self.snd_nxt) & SEQ_MASK
            if before_fin < budget:
                budget = before_fin
        return budget if budget > 0 else 0

    # -- timers --------------------------------------------------------------

    def _arm(self, kind: int, seconds: float) -> Action:
        self.timer_kind = kind
        if kind == _T_IDLE:
            self.idle_mark = self.activity
        return ArmTimer(seconds)

    def _settle_timer(self, acts: list[Action]) -> None:
        """After an event of an established connection: the timer its state calls for."""
        kind = self.timer_kind
        if self.snd_wnd == 0 and (self.sock_pending or self.snd_max != self.snd_una):
            if kind != _T_PROBE:  # nothing can be sent: ask for the window instead
                acts.append(self._arm(_T_PROBE, self.backoff))
        elif self.snd_max != self.snd_una:
            if kind != _T_RETRANS:
                acts.append(self._arm(_T_RETRANS, self.backoff))
        elif kind != _T_IDLE:
            acts.append(self._arm(_T_IDLE, IDLE_TIMEOUT))

    def on_timer(self) -> list[Action]:
        """The connection's timer fired."""
        kind = self.timer_kind
        self.timer_kind = _T_NONE
        if self.events & CLOSED:
            return []
        if kind == _T_CONNECT:
            return self._reset()
        if kind == _T_HANDSHAKE:
            return self._handshake_timeout()
        if kind == _T_RETRANS:
            return self._retransmit_timeout()
        if kind == _T_PROBE:
            return self._probe_timeout()
        if kind == _T_IDLE:
            if self.activity != self.idle_mark:
                return [self._arm(_T_IDLE, IDLE_TIMEOUT)]
            return self._reset()
        return []

    def _back_off(self) -> None:
        self.elapsed += self.backoff
        self.retries += 1
        self.backoff = min(self.backoff * 2, ACK_TIMEOUT_MAX)

    def _handshake_timeout(self) -> list[Action]:
        self._back_off()
        if self.elapsed >= SYN_TIMEOUT:
            return self._reset()
        return [self._syn(), self._arm(_T_HANDSHAKE, self.backoff)]

    def _retransmit_timeout(self) -> list[Action]:
        if self.events & SOCK_FIN_RCVD:  # our FIN is out, or follows the data
            if self.elapsed + self.backoff >= FIN_TIMEOUT:
                return self._reset()
        elif self.retries >= MAX_RETRANS:
            return self._reset()
        self._back_off()
        acts = self._go_back()
        acts.append(self._arm(_T_RETRANS, self.backoff))
        return acts

    def _probe_timeout(self) -> list[Action]:
        if self.retries >= MAX_RETRANS:
            return self._reset()
        self._back_off()
        # An already acknowledged sequence number: the guest answers with an
        # ACK carrying its current window.
        probe = ToGuest(ACK, (self.snd_una - 1) & SEQ_MASK, self.rcv_nxt, self.window_field(), b"")
        return [probe, self._arm(_T_PROBE, self.backoff)]

    def _progress(self) -> None:
        """The guest acknowledged something: it is alive, start counting afresh."""
        self.dup_acks = self.retries = 0
        self.elapsed = 0.0
        self.backoff = ACK_TIMEOUT

    # -- retransmission ------------------------------------------------------

    def _go_back(self) -> list[Action]:
        """Send again everything from snd_una: data (peeked again) and our FIN."""
        fin_out = self.events & TAP_FIN_SENT and not self.events & TAP_FIN_ACKED
        data_end = self.fin_seq if self.events & TAP_FIN_SENT else self.snd_max
        self.snd_nxt = self.snd_una
        self.fin_resend = bool(fin_out)
        if data_end != self.snd_una:
            self.sock_pending = True
            return [Rewind(), Peek()]
        if fin_out:
            return [self._fin()]
        return []

    def resume(self) -> list[Action]:
        """A connection migrated to us: acknowledge, then send again from ``snd_una``
        whatever was in flight (frames on their way to the guest may have been lost
        with the source), and arm the timer its state calls for."""
        self._progress()
        again = self._go_back()  # first: the ACK then carries snd_una, not what was lost
        acts = [self._ack(), *again]
        self._settle_timer(acts)
        return acts

    # -- socket side ---------------------------------------------------------

    def on_connected(self) -> list[Action]:
        """Outbound: the socket connected; answer the guest's SYN."""
        if self.events & CLOSED:
            return []
        self.events |= TAP_SYN_ACK_SENT
        self.snd_nxt = self.snd_max = (self.isn + 1) & SEQ_MASK
        return [self._syn(), self._arm(_T_HANDSHAKE, self.backoff)]

    def on_connect_failed(self) -> list[Action]:
        """Outbound: connect() failed (refused, unreachable, timed out): RST the SYN."""
        return self._reset()

    def on_sock_readable(self) -> int:
        """The socket has data (or EOF): returns how much may be peeked now."""
        self.sock_pending = True
        self.activity += 1
        return self.peek_budget()

    def on_sock_data(self, length: int) -> list[Action]:
        """``length`` new bytes were peeked (at offset snd_nxt - snd_una): send them.

        The driver cuts them into frames of at most ``mss`` bytes, acknowledging
        ``rcv_nxt`` with ``window_field()``.
        """
        seq = self.snd_nxt
        self.snd_nxt = (seq + length) & SEQ_MASK
        if seq_lt(self.snd_max, self.snd_nxt):
            self.snd_max = self.snd_nxt
        self.ack_due = False  # data frames carry our ACK
        self.rcv_acked = self.rcv_nxt
        acts: list[Action] = [SendData(seq, length)]
        if self.fin_resend and self.snd_nxt == self.fin_seq:
            acts.append(self._fin())  # all the data before it is out again
        if self.timer_kind != _T_RETRANS:
            acts.append(self._arm(_T_RETRANS, self.backoff))
        return acts

    def on_window_full(self) -> list[Action]:
        """Data waits on the socket but the guest's window is full: the timer says when
        to look again (retransmission, or a zero-window probe)."""
        acts: list[Action] = []
        if self.events & ESTABLISHED and not self.events & CLOSED:
            self._settle_timer(acts)
        return acts

    def on_sock_drained(self) -> None:
        """Nothing more to read now (EAGAIN, or a short read without EOF pending)."""
        self.sock_pending = False

    def on_sock_eof(self) -> list[Action]:
        """The peek reached end of file: all data is out, FIN to the guest."""
        self.sock_pending = False
        first = not self.events & SOCK_FIN_RCVD
        self.events |= SOCK_FIN_RCVD
        if self.events & (TAP_FIN_SENT | CLOSED) or not self.events & ESTABLISHED:
            return []
        if first:
            self.elapsed = 0.0
        acts = [self._fin()]
        self._settle_timer(acts)
        return acts

    def _fin(self) -> Action:
        """Our FIN: at the end of the data the first time, at the same place after."""
        if not self.events & TAP_FIN_SENT:
            self.events |= TAP_FIN_SENT
            self.fin_seq = self.snd_nxt
        self.fin_resend = False
        self.snd_nxt = (self.fin_seq + 1) & SEQ_MASK
        if seq_lt(self.snd_max, self.snd_nxt):
            self.snd_max = self.snd_nxt
        self.ack_due = False
        self.rcv_acked = self.rcv_nxt
        return ToGuest(FIN | ACK, self.fin_seq, self.rcv_nxt, self.window_field(), b"")

    def on_sock_error(self) -> list[Action]:
        """The socket failed (reset by the peer, error): reset the guest's side."""
        return self.abort()

    def abort(self) -> list[Action]:
        """Reset both sides now (socket error, shutting down)."""
        if self.events & CLOSED:
            return []
        return self._reset()

    def on_sock_accepted(self, accepted: int, offered: int) -> list[Action]:
        """The socket took ``accepted`` of the ``offered`` bytes of the last SOCK_SEND."""
        if accepted > 0:
            self.rcv_nxt = (self.rcv_nxt + accepted) & SEQ_MASK
            self.rcv_est -= accepted
            self.ack_due = True
        if self.sending_held:
            self.sending_held = False
            self._unhold(accepted)
        elif accepted < offered:
            assert self.offered is not None
            if not self._hold(self.offered[accepted:]):  # (a copy: the guest's buffer is not ours)
                self.pending_fin = False  # it went with what was dropped
        self.offered = None
        if self.held or self.dropped:  # (dropped: a fresh poll brings the window update)
            return self._watch_out()
        if self.pending_fin:
            self.pending_fin = False
            return self._guest_fin()
        return []

    def _hold(self, data: memoryview) -> bool:
        """Keep ``data`` after what we hold if it fits (``HOLD_MAX``, the shared
        budget); False if it had to be dropped."""
        if len(data) > min(HOLD_MAX - len(self.held), self.budget.room()):
            self.dropped = True
            return False
        self.held += data
        self.budget.used += len(data)
        return True

    def _unhold(self, length: int) -> None:
        """The socket took ``length`` held bytes (or the connection is gone)."""
        length = min(length, len(self.held))
        self.budget.used -= length
        if length == len(self.held):
            self.held = bytearray()  # (the old one keeps its allocation)
        else:
            del self.held[:length]

    def _watch_out(self) -> list[Action]:
        self.want_out = True
        return [WantOut(True)]

    def on_sock_writable(self, space: int) -> list[Action]:
        """The kernel says the send buffer has room again: write what we hold, or
        send a window update (with duplicate ACKs if we had to drop data, so that
        the guest retransmits it at once).

        The notification may be stale (more was written since): with no room
        at all, watch again instead (the kernel then waits for real room).
        """
        if self.events & CLOSED:
            return []
        if not space:
            return self._watch_out()
        if self.held:
            self.sending_held = True
            return [SockSend(self.held)]
        self.rcv_wnd = self.rcv_est = min(space, MAX_WINDOW)
        acts: list[Action] = []
        if self.want_out:
            self.want_out = False
            acts.append(WantOut(False))
        if not self.events & ESTABLISHED:
            return acts
        ack = self._ack()
        acts.append(ack)
        if self.dropped:
            self.dropped = False
            acts.extend((ack, ack, ack))
        return acts

    def _window_comfortable(self, window: int) -> bool:
        """Room for a couple of full segments, or half the socket's send buffer (a
        small buffer is never "near the edge" just for being small): no need to
        watch for more."""
        edge = 2 * self.mss_adv
        if self.sndbuf and self.sndbuf >> 1 < edge:
            edge = self.sndbuf >> 1
        return window >= edge

    def ack_can_wait(self) -> bool:
        """Whether the ACK due may wait a moment (the driver's delayed ACK) for data
        to the guest to carry it: a little new data (a request, a keystroke) with
        plenty of window left.  Bulk data, a window near its edge, held data or
        a keepalive are acknowledged at once."""
        new = (self.rcv_nxt - self.rcv_acked) & SEQ_MASK
        return (
            0 < new < ACK_DELAY_BYTES and not self.held and not self.want_out
            and self._window_comfortable(self.rcv_est)
        )  # fmt: skip

    def space_query_needed(self) -> bool:
        """Whether ``flush_ack`` needs the socket's free send space, or may go by the
        last figure less what the socket took since (``flush_ack(None)``).

        The estimate can only be short of the truth (the socket frees space as its
        peer acknowledges), and advertising it keeps the right edge of our window
        where it was; it is trusted while it stays above half the send buffer, so
        a stream of small segments costs no ``getsockopt``/``ioctl`` per segment
        while a full-speed one, near the edge, queries every time.
        """
        return not self.sndbuf or bool(self.held) or self.rcv_est < self.sndbuf >> 1

    def note_send_space(self, space: int, sndbuf: int = 0) -> None:
        """The socket's free send space now, and its send buffer size (0: unknown):
        our window is that space, less what we hold."""
        space -= len(self.held)
        if sndbuf:
            self.sndbuf = sndbuf
        self.rcv_est = min(space, MAX_WINDOW) if space > 0 else 0

    def flush_ack(self, space: int | None = None, sndbuf: int = 0) -> list[Action]:
        """End of a batch of guest segments: acknowledge what the socket took.

        ``space`` and ``sndbuf`` as for ``note_send_space``; None: go by the last
        figure less what the socket took since (see ``space_query_needed``).
        """
        if space is not None:
            self.note_send_space(space, sndbuf)
        # Data dropped (no room to hold it): a zero window until the socket has
        # room again (``on_sock_writable``), rather than more data to drop.
        self.rcv_wnd = self.rcv_est if self.rcv_est > 0 and not self.dropped else 0
        if not self.ack_due or self.events & CLOSED:
            return []
        acts: list[Action] = [self._ack()]
        if not self._window_comfortable(self.rcv_wnd):
            # Even if already watching: with edge-triggered polling only a fresh
            # poll is sure to mark the socket as short of space (a write that it
            # took whole does not), and without that no edge would ever come.
            acts.extend(self._watch_out())
        return acts

    # -- guest side ----------------------------------------------------------

    def on_segment(self, seg: Segment) -> list[Action]:
        """A segment from the guest for this connection."""
        if self.fast_path:
            acts = self._predicted(seg)
            if acts is not None:
                return acts
        return self._general(seg)

    def _predicted(self, seg: Segment) -> list[Action] | None:
        """The expected segment ("Header prediction" above), or None: not one."""
        flags = seg.flags
        if (
            self.events & _PREDICTED_EVENTS != ESTABLISHED or flags & ~PSH != ACK
            or seg.seq != self.rcv_nxt or self.held or self.pending_fin
            or self.timer_kind == _T_PROBE or seg.window << self.ws_from_guest != self.snd_wnd
        ):  # fmt: skip
            return None
        ack = seg.ack
        acked = (ack - self.snd_una) & SEQ_MASK
        payload = seg.payload
        if acked:
            if acked > (self.snd_max - self.snd_una) & SEQ_MASK:
                return None
        elif not len(payload):
            return None
        self.activity += 1
        acts: list[Action] = []
        if acked:
            self._acked(ack, acked, acts)  # (no FIN of ours: nothing closes here)
        if len(payload):
            self.pending_fin = False
            self.offered = payload
            acts.append(SockSend(payload))
        if acked and self.sock_pending and self.peek_budget():
            acts.append(Peek())
        self._settle_timer(acts)
        return acts

    def _general(self, seg: Segment) -> list[Action]:
        """Any segment from the guest: every check."""
        events = self.events
        if events & CLOSED:
            return []
        self.activity += 1
        flags = seg.flags
        if flags & RST:
            return self._guest_rst(seg)
        if events & ESTABLISHED:
            if flags & SYN:  # RFC 5961 4.2: challenge ACK (a reused port gets RST from it)
                return [self._ack()]
            if not flags & ACK:
                return []
            acts: list[Action] = []
            opened = False
        else:
            acts = self._handshake(seg)
            if not self.events & ESTABLISHED or flags & SYN:
                if self.events & ESTABLISHED:
                    self._settle_timer(acts)
                return acts
            opened = True
        opened |= self._guest_ack(seg, acts)
        if self.events & CLOSED:
            return acts
        if len(seg.payload) or flags & FIN:
            self._guest_data(seg, acts)
        elif seg.seq != self.rcv_nxt:  # keepalive or window probe: answer (fresh window)
            self.ack_due = True
        if opened and self.sock_pending and self.peek_budget():
            acts.append(Peek())
        if self.timer_kind == _T_PROBE:
            self.retries = 0  # the guest answers: alive, however long its window stays shut
        if not self.events & CLOSED:
            self._settle_timer(acts)
        return acts

    def _guest_rst(self, seg: Segment) -> list[Action]:
        """Accept an RST that fits the connection (RFC 5961 3.2, leniently)."""
        if not self.events & ESTABLISHED:
            if self.events & SOCK_ACCEPTED and seg.flags & ACK and seg.ack != self.snd_nxt:
                return []
        elif ((seg.seq - self.rcv_nxt) & SEQ_MASK) > max(self.rcv_wnd, 0xFFFF):
            return []
        return self._close(rst=True)

    def _handshake(self, seg: Segment) -> list[Action]:
        """A guest segment before the connection is established."""
        flags = seg.flags
        if self.events & SOCK_ACCEPTED:  # we sent SYN, expect SYN-ACK
            if flags & (SYN | ACK) != SYN | ACK or seg.ack != self.snd_nxt:
                return []
            self.rcv_nxt = (seg.seq + 1) & SEQ_MASK
            self._take_syn_options(seg)
            self._establish()
            return [self._ack(), Peek()]
        if flags & SYN:  # the guest repeats its SYN: repeat our SYN-ACK, if sent
            if self.events & TAP_SYN_ACK_SENT and not flags & ACK:
                return [self._syn()]
            return []
        if not self.events & TAP_SYN_ACK_SENT or not flags & ACK or seg.ack != self.snd_nxt:
            return []
        self._establish()
        return []

    def _establish(self) -> None:
        self.events = (self.events | ESTABLISHED) & ~(TAP_SYN_RCVD | TAP_SYN_ACK_SENT)
        self.snd_una = self.snd_max = self.recover = self.snd_nxt
        self._progress()
        self.timer_kind = _T_NONE
        self.sock_pending = True  # data may have arrived before the handshake completed

    def _guest_ack(self, seg: Segment, acts: list[Action]) -> bool:
        """Acknowledgement and window of a guest segment; True if the window opened."""
        ack = seg.ack
        acked = (ack - self.snd_una) & SEQ_MASK
        outstanding = (self.snd_max - self.snd_una) & SEQ_MASK
        window = seg.window << self.ws_from_guest
        if window > MAX_WINDOW:
            window = MAX_WINDOW
        previous = self.snd_wnd
        self.snd_wnd = window
        if window != previous:
            self._clamp(window, acts)
        if 0 < acked <= outstanding:
            self._acked(ack, acked, acts)
            return True
        if (
            acked == 0 and outstanding and window == previous
            and not len(seg.payload) and not seg.flags & FIN
        ):  # fmt: skip
            self._duplicate_ack(acts)
        return window > previous

    def _acked(self, ack: int, acked: int, acts: list[Action]) -> None:
        data = acked
        if self.events & TAP_FIN_SENT and seq_lt(self.fin_seq, ack):
            data -= 1
            self.events |= TAP_FIN_ACKED
            self.fin_resend = False
        if data:
            acts.append(Discard(data))
        self.snd_una = ack
        if seq_lt(self.snd_nxt, ack):
            self.snd_nxt = ack
        self._progress()
        if self.snd_max != ack:  # progress: restart the retransmission timer
            acts.append(self._arm(_T_RETRANS, self.backoff))
        elif self.timer_kind == _T_RETRANS:
            self.timer_kind = _T_NONE
        if self.events & TAP_FIN_ACKED and self.events & SOCK_FIN_SENT:
            acts.extend(self._close(rst=False))

    def _duplicate_ack(self, acts: list[Action]) -> None:
        if not seq_le(self.recover, self.snd_una):
            return  # a retransmission is under way already
        self.dup_acks += 1
        if self.dup_acks < DUP_ACK_THRESHOLD:
            return
        self.dup_acks = 0
        self.recover = self.snd_max
        acts.extend(self._go_back())

    def _clamp(self, window: int, acts: list[Action]) -> None:
        """Mirror the guest's window on the socket, skipping small changes."""
        previous = self.clamped
        if not window or (previous and abs(window - previous) < (previous >> 4)):
            return
        self.clamped = window
        acts.append(Clamp(window))

    def _guest_data(self, seg: Segment, acts: list[Action]) -> None:
        """Payload and FIN of a guest segment."""
        if self.events & TAP_FIN_RCVD or self.pending_fin:  # only retransmissions now
            acts.append(self._ack())
            return
        payload = seg.payload
        length = len(payload)
        fin = seg.flags & FIN
        held = len(self.held)
        offset = (self.rcv_nxt + held - seg.seq) & SEQ_MASK
        if offset:
            if offset >= _HALF or offset >= length + (1 if fin else 0):
                acts.append(self._ack())  # a gap, or all old: say what we expect
                return
            payload = payload[offset:]
            length -= offset
        if held:  # the socket is full: keep the data in order behind what we hold
            if not self._hold(payload):
                acts.append(self._ack())
                return
            self.pending_fin = bool(fin)
        elif length:
            self.pending_fin = bool(fin)
            self.offered = payload
            acts.append(SockSend(payload))
        else:
            acts.extend(self._guest_fin())

    def _guest_fin(self) -> list[Action]:
        """The guest closed its side (all its data is in the socket): shut ours."""
        self.events |= TAP_FIN_RCVD | SOCK_FIN_SENT
        self.rcv_nxt = (self.rcv_nxt + 1) & SEQ_MASK
        acts: list[Action] = [ShutWr(), self._ack()]
        if self.events & TAP_FIN_ACKED:
            acts.extend(self._close(rst=False))
        return acts

    # -- endings -------------------------------------------------------------

    def _reset(self) -> list[Action]:
        """Abort: RST to the guest and to the socket's peer."""
        if self.events & ESTABLISHED:
            rst: Action = ToGuest(RST | ACK, self.snd_nxt, self.rcv_nxt, 0, b"")
        elif self.events & SOCK_ACCEPTED:
            rst = ToGuest(RST, self.snd_nxt, 0, 0, b"")
        else:  # refusing the guest's SYN (or abandoning our SYN-ACK)
            rst = ToGuest(RST | ACK, self.snd_nxt, self.rcv_nxt, 0, b"")
        return [rst, *self._close(rst=True)]

    def _close(self, rst: bool) -> list[Action]:
        self.events |= CLOSED
        self.timer_kind = _T_NONE
        self._unhold(len(self.held))  # back to the budget at once
        self.offered = None
        return [ArmTimer(None), Close(rst)]
