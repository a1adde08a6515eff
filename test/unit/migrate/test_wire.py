"""The device state stream (migrate/wire.py): round trip, upstream's layout, refusals."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passt.migrate import wire


def _flow(seq: int = 1000, inbound: bool = False) -> wire.TcpFlowRecord:
    tap = wire.FlowSide(wire.inany(bytes([203, 0, 113, 1])), wire.inany(bytes([198, 51, 100, 1])),
                        5201, 40000)
    host = wire.FlowSide(wire.inany(bytes([198, 51, 100, 1])),
                         wire.inany(bytes([203, 0, 113, 1])), 40000, 5201)
    return wire.TcpFlowRecord(
        pif=(wire.PIF_HOST, wire.PIF_TAP) if inbound else (wire.PIF_TAP, wire.PIF_HOST),
        sides=(host, tap) if inbound else (tap, host), events=wire.UPSTREAM_ESTABLISHED,
        ws_from_tap=7, ws_to_tap=8, tap_mss=65480, sndbuf=1 << 20, wnd_from_tap=512,
        wnd_to_tap=1024, seq_to_tap=seq + 10, seq_ack_from_tap=seq, seq_from_tap=77,
        seq_ack_to_tap=77, seq_init_from_tap=1)


def _socket(send: bytes = b"abc", recv: bytes = b"defg") -> wire.TcpSocketRecord:
    return wire.TcpSocketRecord(seq_snd=5, seq_rcv=6, notsent=1, mss=1460, timestamp=99,
                                snd_wl1=1, snd_wnd=2, max_window=3, rcv_wnd=4, rcv_wup=5,
                                snd_ws=7, rcv_ws=7, tcpi_state=1, tcpi_options=7,
                                send_queue=send, recv_queue=recv)


def _state(n: int = 2) -> wire.DeviceState:
    return wire.DeviceState(addr6=bytes(range(16)), addr4=bytes([198, 51, 100, 1]),
                            mac=bytes.fromhex("525400123456"),
                            flows=[(_flow(1000 * (i + 1), i % 2 == 1), _socket()) for i in range(n)])


def test_round_trip() -> None:
    state = _state(3)
    assert wire.decode(wire.encode(state)) == state


def test_dropped_flow_carries_no_queues() -> None:
    state = wire.DeviceState(flows=[(_flow(), wire.TcpSocketRecord())])
    data = wire.encode(state)
    assert len(data) == 16 + 42 + 4 + 112 + 52
    assert wire.decode(data) == state


def test_upstream_layout() -> None:
    """Header, addresses and count in network order; flowside ports in host order."""
    data = wire.encode(_state(1))
    assert data[:16] == struct.pack(">QII", 0xB1BB1D1B0BB1D1B0, 2, 2)
    assert data[16 + 32:16 + 36] == bytes([198, 51, 100, 1])
    assert data[16 + 36:16 + 42] == bytes.fromhex("525400123456")
    assert data[58:62] == b"\0\0\0\1"
    flow = data[62:62 + 112]
    assert flow[:2] == bytes([wire.PIF_TAP, wire.PIF_HOST])
    assert flow[2 + 32:2 + 36] == struct.pack("<HH", 5201, 40000)  # tap side: oport, eport
    assert flow[78:82] == struct.pack(">I", 65480)  # tap_mss
    assert flow[92:96] == struct.pack(">I", 1010)  # seq_to_tap
    ext = data[62 + 112:62 + 112 + 52]
    assert ext[8:12] == struct.pack(">I", 3)  # sndq: the send queue's length
    assert ext[48:52] == bytes([7, 7, 1, 7])


@pytest.mark.parametrize("version,compat", [(1, 1), (3, 3), (0, 0)])
def test_other_versions_refused(version: int, compat: int) -> None:
    data = struct.pack(">QII", wire.MAGIC, version, compat) + wire.encode(_state())[16:]
    with pytest.raises(wire.StateError, match="version"):
        wire.decode(data)


def test_newer_compatible_version_taken() -> None:
    data = struct.pack(">QII", wire.MAGIC, 3, 2) + wire.encode(_state())[16:]
    assert wire.decode(data) == _state()


def test_bad_magic_refused() -> None:
    with pytest.raises(wire.StateError, match="invalid device state"):
        wire.decode(b"\0" * 8 + wire.encode(_state())[8:])


def test_truncated_refused_everywhere() -> None:
    data = wire.encode(_state(2))
    for cut in range(len(data)):
        with pytest.raises(wire.StateError):
            wire.decode(data[:cut])


def test_trailing_bytes_refused() -> None:
    with pytest.raises(wire.StateError, match="after the last flow"):
        wire.decode(wire.encode(_state()) + b"x")


def test_insane_queue_refused() -> None:
    data = bytearray(wire.encode(_state(1)))
    struct.pack_into(">I", data, 62 + 112 + 12, 9)  # notsent beyond the send queue
    with pytest.raises(wire.StateError, match="bad queues"):
        wire.decode(bytes(data))


def test_non_tap_flow_refused() -> None:
    data = bytearray(wire.encode(_state(1)))
    data[62:64] = bytes([wire.PIF_SPLICE, wire.PIF_HOST])
    with pytest.raises(wire.StateError, match="only tap-host"):
        wire.decode(bytes(data))


@given(st.binary(max_size=400))
def test_garbage_never_escapes_as_another_exception(data: bytes) -> None:
    try:
        wire.decode(data)
    except wire.StateError:
        pass


def test_inany() -> None:
    assert wire.from_inany(wire.inany(b"\1\2\3\4")) == b"\1\2\3\4"
    assert wire.from_inany(wire.inany(bytes(range(16)))) == bytes(range(16))
