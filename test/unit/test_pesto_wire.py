"""pesto's protocol (version 2) and forwarding rules: encoding, decoding, validation.

The wire layout is checked against upstream's C structures (``struct
fwd_rule`` is 56 unpadded bytes, the hello 20), the decoders against
truncated, malformed and oversized input, and the spec parser against the
rules upstream's ``pesto -s`` prints for the same options.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passt import fwd_rule as fr
from passt import pesto_wire as pw

CAPS = fr.CAP_IPV4 | fr.CAP_IPV6 | fr.CAP_TCP | fr.CAP_UDP | fr.CAP_SCAN | fr.CAP_IFNAME
EPH = (32768, 60999)


def tcp(first: int, last: int | None = None, to: int | None = None, **kw) -> fr.Rule:
    return fr.Rule(fr.IPPROTO_TCP, first, last or first, to or first, **kw)


def dual(rule: fr.Rule) -> fr.Rule:
    return fr.Rule(rule.proto, rule.first, rule.last, rule.to, flags=fr.DUAL_STACK_ANY)


# -- wire layout ---------------------------------------------------------------


def test_rule_is_56_bytes_in_upstream_field_order():
    r = fr.Rule(fr.IPPROTO_UDP, 8000, 8010, 9000, fr.inany(ipaddress.ip_address("192.0.2.1")),
                ifname="eth0", flags=fr.WEAK)
    raw = r.encode()
    assert len(raw) == 56
    assert raw[:16] == bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1])
    assert raw[32:36] == b"eth0" and raw[47] == 0
    assert raw[48:54] == bytes.fromhex("1f40 1f4a 2328")    # ports in network order
    assert raw[54:] == bytes([17, fr.WEAK])
    assert fr.Rule.decode(raw) == r


@given(st.integers(1, 65535), st.integers(0, 100), st.integers(1, 65435),
       st.sampled_from([fr.IPPROTO_TCP, fr.IPPROTO_UDP]), st.integers(0, 7),
       st.text("abcdefgh0123456789", max_size=15))
def test_rule_round_trips(first, span, to, proto, flags, ifname):
    r = fr.Rule(proto, first, min(first + span, 65535), to, ifname=ifname, flags=flags)
    assert fr.Rule.decode(r.encode()) == r


def test_unterminated_interface_name_is_refused():
    raw = bytearray(tcp(80).encode())
    raw[32:48] = b"x" * 16
    with pytest.raises(fr.RuleError, match="NULL terminated"):
        fr.Rule.decode(bytes(raw))


def test_hello_is_upstreams():
    hello = pw.encode_hello()
    assert hello == b"basil:s\0" + bytes.fromhex("00000002 00000080 00000010")
    assert pw.decode_hello(hello) == 2
    assert pw.decode_hello(hello[:19]) is None


@pytest.mark.parametrize("hello,message", [
    (b"basil:x\0" + bytes.fromhex("00000002 00000080 00000010"), "Bad magic"),
    (pw.encode_hello(3), "Unknown server protocol version 3 > 2"),
    (pw.encode_hello(0), "experimental"),
    (b"basil:s\0" + bytes.fromhex("00000002 00000040 00000010"), "pif name size"),
    (b"basil:s\0" + bytes.fromhex("00000002 00000080 00000020"), "IFNAMSIZ"),
])
def test_bad_hellos_are_refused_in_upstreams_words(hello, message):
    with pytest.raises(pw.ProtocolError, match=message):
        pw.decode_hello(hello)


def test_tables_round_trip_and_wait_for_the_end_byte():
    tables = [pw.PifTable(fr.PIF_HOST, "HOST", CAPS, (tcp(80), tcp(443, to=8443))),
              pw.PifTable(fr.PIF_SPLICE, "SPLICE", CAPS, ())]
    data = pw.encode_tables(tables)
    assert len(data) == 2 * pw.PIF_INFO.size + 2 * 56 + 1
    for cut in range(len(data)):
        assert pw.decode_tables(data[:cut]) is None
    assert pw.decode_tables(data + b"junk") == (tables, len(data))


def test_request_round_trips_and_is_incomplete_until_its_end():
    request = {fr.PIF_HOST: [tcp(80)], fr.PIF_SPLICE: []}
    data = pw.encode_request(request)
    assert data == (bytes([1]) + bytes.fromhex("00000001") + tcp(80).encode()
                    + bytes([3]) + bytes(4) + b"\0")
    known = frozenset({fr.PIF_HOST, fr.PIF_SPLICE})
    for cut in range(len(data)):
        assert pw.decode_request(data[:cut], known) is None
    assert pw.decode_request(data, known) == request


@pytest.mark.parametrize("data,message", [
    (bytes([2, 0, 0, 0, 0, 0]), "non-existent table"),
    (bytes([7]), "non-existent table"),
    (bytes([1, 0, 0, 1, 0]), "maximum 255"),
    (bytes([1, 0, 0, 0, 0, 1, 0, 0, 0, 0]), "twice"),
])
def test_malformed_requests_are_refused(data, message):
    with pytest.raises(pw.ProtocolError, match=message):
        pw.decode_request(data, frozenset({fr.PIF_HOST, fr.PIF_SPLICE}))


def test_oversized_requests_are_refused_early():
    """A count over 255 is refused at once; a valid request can't exceed REQUEST_MAX,
    so whatever a client streams is refused before the buffer grows past it."""
    known = frozenset({fr.PIF_HOST, fr.PIF_SPLICE})
    with pytest.raises(pw.ProtocolError, match="maximum 255"):
        pw.decode_request(bytes([1]) + b"\xff\xff\xff\xff", known)
    for filler in (b"\x01", b"\x03", b"\xff", b"\x00\x01"):
        data = filler * (1 << 19)
        try:
            assert pw.decode_request(data, known) is not None   # b"\x00": empty request
        except pw.ProtocolError:
            pass
    full = {fr.PIF_HOST: [tcp(80)] * 255, fr.PIF_SPLICE: [tcp(80)] * 255}
    assert len(pw.encode_request(full)) < pw.REQUEST_MAX


def test_reply_round_trips():
    for reply in (pw.Reply(True, "ok"), pw.Reply(False, "Can't bind TCP port 80")):
        data = pw.encode_reply(reply)
        assert pw.decode_reply(data[:-1]) is None
        assert pw.decode_reply(data) == reply
    with pytest.raises(pw.ProtocolError):
        pw.decode_reply(b"x" * 20)


# -- rules and tables ----------------------------------------------------------


def test_format_is_upstreams():
    assert str(dual(tcp(80))) == "TCP [*]:80  =>  80 "
    assert str(fr.Rule(fr.IPPROTO_UDP, 22, 80, 32, fr.inany(ipaddress.ip_address("::1")),
                       flags=fr.WEAK | fr.SCAN)) == \
        "UDP [::1]:22-80  =>  32-90  (best effort) (auto-scan)"
    assert str(fr.Rule(fr.IPPROTO_TCP, 5, 5, 5, fr.ANY6, ifname="lo",
                       flags=fr.DUAL_STACK_ANY)) == "TCP [*]%lo:5  =>  5 "


@pytest.mark.parametrize("option,spec,expected", [
    ("t", "22", ["TCP [*]:22  =>  22 "]),
    ("t", "22-80:32-90", ["TCP [*]:22-80  =>  32-90 "]),
    ("u", "5-25,~10-20", ["UDP [*]:5-9  =>  5-9 ", "UDP [*]:21-25  =>  21-25 "]),
    ("t", "192.0.2.1/5", ["TCP [192.0.2.1]:5  =>  5 "]),
    ("t", "%eth0/22", ["TCP [*]%eth0:22  =>  22 "]),
    ("T", "8080", ["TCP [*]%lo:8080  =>  8080 "]),
    ("t", "~25", ["TCP [*]:1-24  =>  1-24  (best effort)",
                  "TCP [*]:26-32767  =>  26-32767  (best effort)",
                  "TCP [*]:61000-65535  =>  61000-65535  (best effort)"]),
    ("t", "8000-8010,auto", ["TCP [*]:8000-8010  =>  8000-8010  (auto-scan)"]),
    ("t", "none", []),
])
def test_specs_make_upstreams_rules(option, spec, expected):
    assert [str(r) for r in fr.rules_from_spec(option, spec, CAPS, EPH)] == expected


def test_single_family_rules_are_not_dual_stack():
    caps = CAPS & ~fr.CAP_IPV6
    assert [str(r) for r in fr.rules_from_spec("t", "80", caps)] == ["TCP [0.0.0.0]:80  =>  80 "]


def test_table_refuses_what_upstream_refuses():
    t = fr.Table(CAPS, [dual(tcp(80, 90))])
    with pytest.raises(fr.RuleError, match="conflict"):
        t.add(dual(tcp(85)))
    with pytest.raises(fr.RuleError, match="port range"):
        t.add(dual(tcp(0)))
    with pytest.raises(fr.RuleError, match="invalid flags"):
        t.add(fr.Rule(fr.IPPROTO_TCP, 1, 1, 1, flags=0x80))
    with pytest.raises(fr.RuleError, match="UDP not enabled"):
        fr.Table(CAPS & ~fr.CAP_UDP).add(fr.Rule(fr.IPPROTO_UDP, 1, 1, 1, flags=1))
    with pytest.raises(fr.RuleError, match="IPv6 not enabled"):
        fr.Table(CAPS & ~fr.CAP_IPV6).add(dual(tcp(1)))
    with pytest.raises(fr.RuleError, match="only allowed for pasta"):
        fr.Table(CAPS & ~fr.CAP_SCAN).add(fr.Rule(fr.IPPROTO_TCP, 1, 1, 1, flags=fr.SCAN | 1))
    with pytest.raises(fr.RuleError, match="Unsupported protocol"):
        t.add(fr.Rule(1, 1, 1, 1, flags=1))
    assert t.rules == [dual(tcp(80, 90))]
    t.add(dual(tcp(91)))
    assert len(t.rules) == 2


def test_delete_needs_an_exact_match_and_is_all_or_nothing():
    t = fr.Table(CAPS, [dual(tcp(80)), dual(tcp(90, 95))])
    with pytest.raises(fr.RuleError, match="doesn't match"):
        fr.apply_spec(t, "t", "80,91", delete=True)
    with pytest.raises(fr.RuleError, match="Couldn't find"):
        fr.apply_spec(t, "t", "80,100", delete=True)
    assert len(t.rules) == 2            # the first of the spec's rules was not deleted
    fr.apply_spec(t, "t", "80,90-95", delete=True)
    assert t.rules == []


def test_none_conflicts_with_previous_rules():
    t = fr.Table(CAPS, [dual(tcp(80))])
    with pytest.raises(fr.RuleError, match="none conflicts"):
        fr.apply_spec(t, "t", "none", delete=False)
    fr.apply_spec(t, "u", "none", delete=False)


def test_bad_spec_is_one_line():
    with pytest.raises(fr.RuleError, match="Invalid port specifier"):
        fr.rules_from_spec("t", "80-", CAPS)
