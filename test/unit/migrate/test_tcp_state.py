"""migrate/tcp.py without sockets: our core's state to upstream's record and back."""

from __future__ import annotations

from passt.migrate import tcp as mtcp
from passt.migrate import wire
from passt.tcp import core as tcp_core

from .test_wire import _flow


def test_events_round_trip_through_upstream_bits() -> None:
    ours = (tcp_core.ESTABLISHED | tcp_core.SOCK_FIN_RCVD | tcp_core.TAP_FIN_SENT
            | tcp_core.TAP_FIN_ACKED)
    theirs = mtcp.to_upstream_events(ours)
    assert theirs == (wire.UPSTREAM_ESTABLISHED | wire.UPSTREAM_SOCK_FIN_RCVD
                      | wire.UPSTREAM_TAP_FIN_SENT | wire.UPSTREAM_TAP_FIN_ACKED)
    assert mtcp.from_upstream_events(theirs) == ours


def test_restored_core_takes_the_record() -> None:
    core = mtcp.restored_core(_flow(1000), mss_limit=1460)
    assert core.events & tcp_core.ESTABLISHED and not core.events & tcp_core.SOCK_ACCEPTED
    assert (core.snd_una, core.snd_max, core.rcv_nxt) == (1000, 1010, 77)
    assert core.snd_wnd == 512 << 7 and core.ws_to_guest == 8
    assert core.mss == 1460  # the record's 65480, within what our tap carries


def test_restored_core_of_an_inbound_flow() -> None:
    assert mtcp.restored_core(_flow(inbound=True), 1460).events & tcp_core.SOCK_ACCEPTED


def test_resumes_goes_back_to_the_oldest_unacknowledged_byte() -> None:
    """What our record says was sent: from snd_una (the target sends again what
    was in flight), unless our FIN is out."""
    core = mtcp.restored_core(_flow(1000), 1460)
    assert mtcp._resume_from(core) == 1000
    core.events |= tcp_core.TAP_FIN_SENT
    assert mtcp._resume_from(core) == 1010
    acts = mtcp.restored_core(_flow(1000), 1460).resume()
    assert isinstance(acts[0], tcp_core.ToGuest) and acts[0].seq == 1000  # ACK, then go back
    assert any(isinstance(a, tcp_core.Rewind) for a in acts)
