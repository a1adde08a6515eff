"""Port-forwarding specifications: grammar, lookups, merging, and every way to get one wrong."""

from __future__ import annotations

from array import array
from ipaddress import ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passt import ports
from passt.ports import (
    ConfError,
    PortFwd,
    PortRange,
    default_port_fwd,
    merge_port_fwds,
    parse_port_spec,
)


def spec(text: str, mode: str = "passt", option: str = "--tcp-ports") -> PortFwd:
    return parse_port_spec(text, mode, option)


def mapping(fwd: PortFwd) -> dict[int, int]:
    return dict(fwd.items())


# -- the forms of a specification -------------------------------------------------

FORMS = [
    # text, mode, {port: target}, ports that must not be forwarded
    ("22", "passt", {22: 22}, [21, 23]),
    ("22:23", "passt", {22: 23}, [23]),
    ("22,25", "passt", {22: 22, 25: 25}, [23, 24]),
    ("22-80", "passt", {p: p for p in range(22, 81)}, [21, 81]),
    ("22-80:32-90", "passt", {p: p + 10 for p in range(22, 81)}, [21, 81]),
    ("5-25,~10-20", "passt", {**{p: p for p in range(5, 10)}, **{p: p for p in range(21, 26)}},
     list(range(10, 21))),
    ("~10-20,5-25", "passt", {**{p: p for p in range(5, 10)}, **{p: p for p in range(21, 26)}},
     list(range(10, 21))),
    ("2000-5000,~3000-3010", "pasta", {2999: 2999, 3011: 3011, 5000: 5000}, [3000, 3010]),
    ("22-80:32-90,~30", "passt", {29: 39, 31: 41}, [30]),
    ("1,65535", "passt", {1: 1, 65535: 65535}, [0, 2]),
    ("65535:1", "passt", {65535: 1}, [1]),
    ("022", "passt", {22: 22}, []),
    ("22", "pasta", {22: 22}, []),
]


@pytest.mark.parametrize("text,mode,expected,absent", FORMS, ids=[f[0] for f in FORMS])
def test_list_forms_map_ports_to_targets(text, mode, expected, absent):
    fwd = spec(text, mode)
    assert fwd.mode == "spec"
    for port, target in expected.items():
        assert fwd.target(port) == target
        assert port in fwd
    for port in absent:
        assert fwd.target(port) is None
        assert port not in fwd
    assert fwd.specs == (text,)


def test_ranges_are_cut_around_exclusions_and_keep_their_targets():
    fwd = spec("22-80:32-90,~30,~40-50")
    assert fwd.ranges == (PortRange(22, 29, 32), PortRange(31, 39, 41), PortRange(51, 80, 61))
    assert fwd.excluded == ((30, 30), (40, 50))


def test_exclusion_outside_every_range_is_kept_as_excluded():
    assert spec("22,~80").excluded == ((80, 80),)


def test_forwarded_ports_are_ascending_and_complete():
    fwd = spec("30-32,10,20:40")
    assert fwd.forwarded_ports() == (10, 20, 30, 31, 32)
    assert list(fwd.items()) == [(10, 10), (20, 40), (30, 30), (31, 31), (32, 32)]


ADDRESSED = [
    ("192.0.2.1/22", ip_address("192.0.2.1"), None),
    ("2001:db8::1/22", ip_address("2001:db8::1"), None),
    ("::1/22", ip_address("::1"), None),
    ("0.0.0.0/22", ip_address("0.0.0.0"), None),
    ("192.0.2.1%eth0/22", ip_address("192.0.2.1"), "eth0"),
    ("fe80::1%eth0/22", ip_address("fe80::1"), "eth0"),
    ("%lo/22", None, "lo"),
    ("127.0.0.1%abcdefghijklmno/22", ip_address("127.0.0.1"), "abcdefghijklmno"),
]


@pytest.mark.parametrize("text,addr,ifname", ADDRESSED, ids=[a[0] for a in ADDRESSED])
def test_bind_address_and_interface_apply_to_every_port(text, addr, ifname):
    fwd = spec(text)
    assert fwd.target(22) == 22
    assert fwd.binding(22) == (addr, ifname)
    assert fwd.range_of(22) == PortRange(22, 22, 22, addr, ifname)


def test_bind_address_covers_the_whole_list():
    fwd = spec("192.0.2.1/20-30,~25")
    assert fwd.binding(20) == fwd.binding(30) == (ip_address("192.0.2.1"), None)
    assert fwd.binding(25) is None


def test_unbound_port_has_no_binding_and_no_range():
    fwd = spec("22")
    assert fwd.binding(22) == (None, None)
    assert fwd.binding(23) is None and fwd.range_of(23) is None


# -- keywords -------------------------------------------------------------------

KEYWORDS = [
    ("none", "passt", "none"),
    ("none", "pasta", "none"),
    ("all", "passt", "all"),
    ("auto", "pasta", "auto"),
    ("~25", "passt", "all"),
    ("~25", "pasta", "auto"),
    ("all,~25", "passt", "all"),
    ("auto,~25", "pasta", "auto"),
]


@pytest.mark.parametrize("text,mode,fwd_mode", KEYWORDS, ids=[f"{k[1]}:{k[0]}" for k in KEYWORDS])
def test_keywords_and_exclusion_only_lists(text, mode, fwd_mode):
    fwd = spec(text, mode)
    assert fwd.mode == fwd_mode
    assert fwd.ranges == ()
    if fwd_mode == "none":
        assert fwd.target(22) is None and fwd.forwarded_ports() == ()
    else:
        assert fwd.target(22) == 22 and fwd.allowed(22)
        assert (25 in fwd) is ("~25" not in text)


def test_every_port_but_exclusions_is_a_candidate_for_all_and_auto():
    fwd = spec("~20000-20010", "pasta")
    ports = fwd.forwarded_ports()
    assert len(ports) == 65535 - 11
    assert ports[0] == 1 and ports[-1] == 65535
    assert fwd.excluded == ((20000, 20010),)


def test_exclusion_only_list_keeps_its_bind_address():
    fwd = spec("127.0.0.1/~25")
    assert fwd.mode == "all"
    assert (fwd.addr, fwd.ifname) == (ip_address("127.0.0.1"), None)
    assert fwd.binding(22) == (ip_address("127.0.0.1"), None)


def test_defaults_per_program():
    assert default_port_fwd("passt") == PortFwd("none")
    assert default_port_fwd("pasta") == PortFwd("auto")
    assert default_port_fwd("pasta").specs == ()     # "not given"
    assert merge_port_fwds([], "--udp-ports", "pasta").mode == "auto"


# -- bad specifications: one test per kind --------------------------------------

BAD = [
    ("port-zero", "0", "passt", "--tcp-ports", "out of range"),
    ("port-too-big", "65536", "passt", "--tcp-ports", "out of range"),
    ("target-zero", "22:0", "passt", "--tcp-ports", "out of range"),
    ("target-too-big", "65535-65536", "passt", "--tcp-ports", "out of range"),
    ("reversed-range", "80-22", "passt", "-t", "reversed"),
    ("target-length", "22-80:32-89", "passt", "--udp-ports", "not as long"),
    ("range-to-single", "41000-41005:42000", "passt", "-t", "not as long"),
    ("single-to-range", "41000:42000-42005", "passt", "-t", "not as long"),
    ("empty", "", "passt", "-t", "empty"),
    ("empty-item", "22,,25", "passt", "-t", "empty item"),
    ("trailing-comma", "22,", "passt", "-t", "empty item"),
    ("leading-comma", ",22", "passt", "-t", "empty item"),
    ("word", "abc", "passt", "-t", "bad port"),
    ("wrong-case", "NONE", "passt", "-t", "bad port"),
    ("hex", "0x100", "passt", "-t", "bad port"),
    ("sign", "+22", "passt", "-t", "bad port"),
    ("space", " 22", "passt", "-t", "bad port"),
    ("dangling-dash", "22-", "passt", "-t", "missing port"),
    ("negative", "-22", "passt", "-t", "missing port"),
    ("double-dash", "22--24", "passt", "-t", "bad port"),
    ("twice-in-list", "22,22", "passt", "-t", "given twice"),
    ("overlapping-ranges", "20-30,25-35", "passt", "-t", "given twice"),
    ("overlapping-exclusions", "~20-30,~25", "passt", "-t", "overlapping excluded"),
    ("exclusion-target", "~22:23", "passt", "-t", "with a target"),
    ("auto-in-passt", "auto", "passt", "--tcp-ports", "only allowed for pasta"),
    ("all-in-pasta-ns", "all", "pasta", "--udp-ns", "not supported for the namespace side"),
    ("auto-with-targets", "80:90,auto", "pasta", "--tcp-ports", "with target ports"),
    ("keyword-with-ports", "all,22", "passt", "-t", "exclusions only"),
    ("keyword-inside-list", "22,none", "passt", "-t", "whole specification"),
    ("bad-address", "bogus/22", "passt", "-t", "bad address"),
    ("bracketed-v6", "[::1]/22", "passt", "-t", "bad address"),
    ("short-v4", "10.1/22", "passt", "-t", "bad address"),
    ("missing-address", "/22", "passt", "-t", "missing address"),
    ("empty-after-address", "127.0.0.1/", "passt", "-t", "empty"),
    ("two-slashes", "127.0.0.1//22", "passt", "-t", "bad port"),
    ("empty-ifname", "127.0.0.1%/22", "passt", "-t", "interface"),
    ("long-ifname", "127.0.0.1%abcdefghijklmnop/22", "passt", "-t", "interface"),
    ("address-on-tcp-ns", "127.0.0.1/22", "pasta", "--tcp-ns", "no bind address"),
    ("interface-on-udp-ns", "%lo/22", "pasta", "-U", "no bind address"),
    ("newline", "22\n23", "passt", "-t", "bad port"),
]


@pytest.mark.parametrize("text,mode,option,why", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_spec_is_one_line_naming_option_and_problem(text, mode, option, why):
    with pytest.raises(ConfError) as err:
        parse_port_spec(text, mode, option)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("Invalid port specifier")
    assert message.endswith(f"({option})")
    assert why in message


# -- several occurrences of one option -----------------------------------------


def test_occurrences_add_up():
    fwd = merge_port_fwds([spec("22"), spec("80:8080"), spec("1000-1002")], "-t")
    assert mapping(fwd) == {22: 22, 80: 8080, 1000: 1000, 1001: 1001, 1002: 1002}
    assert fwd.specs == ("22", "80:8080", "1000-1002")


def test_occurrences_keep_their_own_addresses():
    fwd = merge_port_fwds([spec("127.0.0.1/22"), spec("::1%lo/23")], "-t")
    assert fwd.binding(22) == (ip_address("127.0.0.1"), None)
    assert fwd.binding(23) == (ip_address("::1"), "lo")


def test_an_exclusion_only_applies_to_its_own_occurrence():
    fwd = merge_port_fwds([spec("1-100,~50-60"), spec("55")], "-t")
    assert fwd.target(55) == 55 and fwd.target(54) is None
    assert fwd.excluded == ((50, 54), (56, 60))


MERGE_BAD = [
    ("same-port", ["22", "22"], "Overlapping port specifier 22"),
    ("overlapping-range", ["20-30", "25"], "Overlapping port specifier 25"),
    ("other-address-same-port", ["127.0.0.1/22", "::1/22"], "Overlapping port specifier"),
    ("none-then-ports", ["none", "22"], "Specific ports cannot be specified"),
    ("ports-then-none", ["22", "none"], "mode 'none' conflicts"),
    ("none-twice", ["none", "none"], "mode 'none' conflicts"),
    ("all-then-ports", ["all", "22"], "Specific ports cannot be specified"),
    ("ports-then-all", ["22", "all"], "mode 'all' conflicts"),
    ("exclusions-then-ports", ["~22", "80"], "Specific ports cannot be specified"),
    ("ports-then-exclusions", ["80", "~22"], "mode '~22' conflicts"),
]


@pytest.mark.parametrize("texts,why", [m[1:] for m in MERGE_BAD], ids=[m[0] for m in MERGE_BAD])
def test_conflicting_occurrences_are_refused(texts, why):
    with pytest.raises(ConfError) as err:
        merge_port_fwds([spec(t) for t in texts], "--tcp-ports")
    assert why in str(err.value) and str(err.value).endswith("(--tcp-ports)")


def test_auto_twice_is_refused_in_pasta():
    with pytest.raises(ConfError, match="mode 'auto' conflicts"):
        merge_port_fwds([spec("auto", "pasta"), spec("auto", "pasta")], "-t", "pasta")


# -- the value itself ------------------------------------------------------------


def test_equal_by_content_and_hashable():
    assert spec("22,25") == spec("22,25")
    assert spec("22") != spec("23")
    assert hash(spec("22,25")) == hash(spec("22,25"))
    assert {spec("22"), spec("22")} == {spec("22")}


def test_frozen():
    fwd = spec("22")
    with pytest.raises(AttributeError):
        fwd.mode = "all"  # type: ignore[misc]


def test_target_table_is_read_only_and_covers_every_port():
    fwd = spec("22")
    assert len(fwd._targets) == 65536
    with pytest.raises(TypeError):
        fwd._targets[22] = 1


def test_out_of_range_lookups_are_not_errors():
    fwd = spec("all")
    for port in (-1, 0, 65536, 1 << 20):
        assert fwd.target(port) is None and port not in fwd and fwd.range_of(port) is None
    assert "22" not in fwd


def test_direct_construction_checks_its_ranges():
    with pytest.raises(ValueError):
        PortFwd("spec", (PortRange(10, 20, 10), PortRange(15, 16, 15)))
    with pytest.raises(ValueError):
        PortFwd("spec", (PortRange(65535, 65535, 65535), PortRange(0, 1, 1)))
    with pytest.raises(ValueError):
        PortFwd("sometimes")
    with pytest.raises(ValueError):
        PortFwd("all", (PortRange(1, 1, 1),))


# -- properties --------------------------------------------------------------------


@st.composite
def disjoint_items(draw):
    """Sorted, disjoint (first, last, target) items and the spec text naming them."""
    cuts = sorted(draw(st.sets(st.integers(1, 65535), min_size=1, max_size=12)))
    items = []
    for first, nxt in zip(cuts, [*cuts[1:], 65536], strict=True):
        last = draw(st.integers(first, nxt - 1))
        length = last - first
        target = draw(st.integers(1, 65535 - length))
        items.append((first, last, target))
    return items


def item_text(first, last, target, with_target):
    src = str(first) if first == last else f"{first}-{last}"
    if not with_target:
        return src
    dst = str(target) if first == last else f"{target}-{target + last - first}"
    return f"{src}:{dst}"


@settings(max_examples=150, deadline=None)
@given(disjoint_items(), st.data())
def test_any_list_of_disjoint_items_maps_exactly_its_ports(items, data):
    with_targets = [data.draw(st.booleans()) for _ in items]
    order = data.draw(st.permutations(range(len(items))))
    text = ",".join(item_text(*items[i], with_targets[i]) for i in order)
    fwd = parse_port_spec(text, "passt", "-t")
    expected = {}
    for (first, last, target), retarget in zip(items, with_targets, strict=True):
        base = target if retarget else first
        expected.update({p: base + p - first for p in range(first, last + 1)})
    assert mapping(fwd) == expected
    probes = data.draw(st.lists(st.integers(0, 65535), max_size=20))
    for port in probes:
        assert fwd.target(port) == expected.get(port)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 65535), st.integers(0, 500), st.lists(st.integers(1, 65535), max_size=5))
def test_exclusions_remove_exactly_their_ports(first, length, excluded_ports):
    last = min(first + length, 65535)
    excluded = sorted(set(excluded_ports))
    text = ",".join([f"{first}-{last}", *(f"~{p}" for p in excluded)])
    fwd = parse_port_spec(text, "passt", "-t")
    kept = [p for p in range(first, last + 1) if p not in excluded]
    assert list(fwd.forwarded_ports()) == kept
    if not kept:
        assert fwd.mode == "spec" and fwd.ranges == ()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789-,:~/%.abl", max_size=24),
       st.sampled_from(["passt", "pasta"]),
       st.sampled_from(["-t", "-u", "--tcp-ns", "-U"]))
def test_any_text_parses_or_is_refused_with_one_line(text, mode, option):
    try:
        fwd = parse_port_spec(text, mode, option)
    except ConfError as e:
        assert "\n" not in str(e) and str(e).endswith(f"({option})")
    else:
        assert fwd.mode in ("none", "all", "auto", "spec")
        for port, target in fwd.items():
            assert 1 <= port <= 65535 and 1 <= target <= 65535


@settings(max_examples=100, deadline=None)
@given(disjoint_items(), st.data())
def test_splitting_a_list_over_occurrences_changes_nothing(items, data):
    texts = [item_text(*item, True) for item in items]
    split = data.draw(st.integers(1, len(texts)))
    whole = parse_port_spec(",".join(texts), "passt", "-t")
    parts = [parse_port_spec(",".join(texts[:split]), "passt", "-t")]
    if texts[split:]:
        parts.append(parse_port_spec(",".join(texts[split:]), "passt", "-t"))
    merged = merge_port_fwds(parts, "-t")
    assert merged.ranges == whole.ranges
    assert mapping(merged) == mapping(whole)


# -- upstream 2026's forms ---------------------------------------------------------------


@pytest.mark.parametrize("text,bound,not_bound", [
    ("80-82,auto", (80, 81, 82), (79, 83, 22)),
    ("auto,80-82", (80, 82), (79, 83)),
    ("80-82,~81,auto", (80, 82), (81, 83)),
])
def test_auto_restricted_to_listed_ports(text, bound, not_bound):
    fwd = parse_port_spec(text, "pasta", "-t")
    assert fwd.mode == "auto"
    assert all(fwd.allowed(p) for p in bound) and not any(fwd.allowed(p) for p in not_bound)


def test_address_before_a_keyword():
    fwd = parse_port_spec("::1/auto", "pasta", "-t")
    assert fwd.mode == "auto" and str(fwd.addr) == "::1"
    assert parse_port_spec("::1/all", "passt", "-t").mode == "all"


def test_all_is_also_pasta_s_on_the_host_side():
    assert parse_port_spec("all", "pasta", "-t").mode == "all"


def test_the_identity_table_is_the_array_of_every_port() -> None:
    assert ports.identity_table() == array("H", range(ports.NUM_PORTS)).tobytes()
