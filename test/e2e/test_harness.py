"""The harness's own logic, without namespaces or guests.

The end-to-end verdicts are only as good as the parsing and bookkeeping
behind them: the DHCPv6 messages, iperf3's summary, which part a cell
needs, which ends a direction connects, and the summary table.
"""

from __future__ import annotations

import struct

import pytest

from . import dhcpv6, features, traffic
from .cells import FORWARDED, HOST_SERVICES, NS_FORWARDED, REMOTE_PORTS, Cell, matrix, path
from .summary import Row, Summary
from .world import V4, V6

IPERF_TCP = """\
[ ID] Interval           Transfer     Bitrate         Retr
[  5]   0.00-3.00   sec   118 MBytes   330 Mbits/sec    0             sender
[  5]   0.00-3.04   sec   117 MBytes   323 Mbits/sec                  receiver
"""
IPERF_UDP = """\
[ ID] Interval           Transfer     Bitrate         Jitter    Lost/Total Datagrams
[  5]   0.00-3.00   sec   358 MBytes  1001 Mbits/sec  0.000 ms  0/259275 (0%)  sender
[  5]   0.00-3.00   sec   335 MBytes   937 Mbits/sec  0.004 ms  16472/259275 (6.4%)  receiver
"""


def test_iperf3_receiver_throughput_is_parsed() -> None:
    assert traffic.parse_iperf3(IPERF_TCP).text == "323 Mbit/s"
    udp = traffic.parse_iperf3(IPERF_UDP)
    assert (udp.mbits, udp.text) == (937.0, "937 Mbit/s, 6.4% lost")


def test_iperf3_without_summary_is_an_error() -> None:
    with pytest.raises(traffic.TrafficError):
        traffic.parse_iperf3("iperf3: error - unable to connect to server\n")


def _option(code: int, data: bytes) -> bytes:
    return struct.pack("!HH", code, len(data)) + data


def test_dhcpv6_solicit_carries_client_id_ia_na_and_rapid_commit() -> None:
    message = dhcpv6.solicit("52:54:00:12:34:56", xid=0x010203)
    assert message[:4] == bytes([dhcpv6.SOLICIT, 1, 2, 3])
    codes = [code for code, _ in dhcpv6._options(message[4:])]
    assert codes == [1, 3, 8, 14, 6]
    assert bytes.fromhex("00030001525400123456") in message


def test_dhcpv6_advertise_is_parsed() -> None:
    address = bytes.fromhex("20010db8000100000000000000000001")
    ia_na = struct.pack("!III", 1, 0, 0) + _option(5, address + struct.pack("!II", 60, 120))
    dns = bytes.fromhex("20010db8000200000000000000000053")
    message = (
        bytes([dhcpv6.ADVERTISE, 0x2A, 0x2A, 0x2A])
        + _option(2, b"\x00\x03\x00\x01" + bytes(6))
        + _option(3, ia_na)
        + _option(23, dns)
    )
    answer = dhcpv6.parse(message)
    assert (answer.msg_type, answer.xid) == (dhcpv6.ADVERTISE, 0x2A2A2A)
    assert answer.has_server_id
    assert answer.addresses == ["2001:db8:1::1"]
    assert answer.dns == ["2001:db8:2::53"]


@pytest.mark.parametrize("garbage", [b"", b"\x07\x00", b"\x07\x00\x00\x01\x00\x03\x00\x20\x00"])
def test_dhcpv6_garbage_raises_value_error(garbage: bytes) -> None:
    with pytest.raises(ValueError):
        dhcpv6.parse(garbage)


def test_absent_part_reports_its_issue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(features.PARTS, "TCP", features.Part(5, ("passt.no_such_module:x",)))
    reason = features.not_built_reason(Cell("pasta", "out", "tcp", 4))
    assert reason == "not built yet: TCP (issue 5)"
    assert features.not_built_reason(Cell("pasta", "out", "udp", 4)) is None


def test_spliced_cells_need_the_splice_not_the_tap_handler() -> None:
    assert "TCP splice" in features.parts_needed(Cell("pasta", "in_host", "tcp", 6))
    assert "TCP" not in features.parts_needed(Cell("pasta", "ns_to_host", "tcp", 6))
    assert "TCP" in features.parts_needed(Cell("passt", "in_host", "tcp", 6))


def test_upstream_failures_name_existing_cells() -> None:
    labels = {cell.label for program in ("passt", "pasta") for cell in matrix(program)}
    assert set(features.UPSTREAM_FAILS) <= labels


class _World:
    host, remote = "host-shell", "remote-shell"


@pytest.mark.parametrize(
    "name, client, server, target, bind, ports",
    [
        ("in", "remote-shell", "inner", V6.host, V6.host, FORWARDED),
        ("in_host", "host-shell", "inner", V6.loopback, V6.any, FORWARDED),
        ("out", "inner", "remote-shell", V6.remote, V6.remote, REMOTE_PORTS),
        ("out_host", "inner", "host-shell", V6.gateway, V6.loopback, HOST_SERVICES),
        ("ns_to_host", "inner", "host-shell", V6.loopback, V6.loopback, NS_FORWARDED),
    ],
)
def test_direction_ends(name, client, server, target, bind, ports) -> None:
    p = path(Cell("pasta", name, "tcp", 6), _World(), "inner")  # type: ignore[arg-type]
    assert (p.client, p.server, p.target, p.bind, p.ports) == (
        client, server, target, bind, ports
    )


def test_a_given_guest_address_is_bound_by_inbound_servers_only() -> None:
    given = "198.51.100.77"  # libvirt's --address
    ends = {name: path(Cell("passt", name, "udp", 4), _World(), "inner", given)  # type: ignore[arg-type]
            for name in ("in", "in_host", "out", "out_host")}
    assert (ends["in"].target, ends["in"].bind) == (V4.host, given)
    assert all(given not in (p.target, p.bind) for name, p in ends.items() if name != "in")


def test_socat_addresses_bracket_ipv6_only() -> None:
    p6 = path(Cell("pasta", "out", "udp", 6), _World(), "inner")  # type: ignore[arg-type]
    p4 = path(Cell("pasta", "out", "udp", 4), _World(), "inner")  # type: ignore[arg-type]
    assert traffic.socat_peer(p6, "udp", 10002) == "UDP6:[2001:db8:2::1]:10002"
    assert traffic.socat_listen(p4, "tcp", 10001) == f"TCP4-LISTEN:10001,bind={V4.remote}"


def test_summary_renders_one_row_per_cell() -> None:
    summary = Summary()
    summary.rows["passt in tcp v4"] = Row("passt in tcp v4", "pass", "600 Mbit/s", 5.0)
    summary.rows["pasta in tcp v6"] = Row("pasta in tcp v6", "xfail: upstream: reason", "", 1.0)
    lines = summary.render("upstream")
    assert lines[0] == "end-to-end cells (upstream):"
    assert "600 Mbit/s" in lines[2] and "pass" in lines[2]
    assert lines[3].endswith("upstream: reason")
    assert lines[-1] == "1 pass, 1 xfail"
