"""The command line: every option in both forms, the getopt rules, defaults,
positional arguments, every kind of bad input, --help and --version."""

from __future__ import annotations

import grp
import json
import pwd
from ipaddress import ip_address

import pytest

import passt
from passt import conf
from passt.conf import OPTIONS, Conf, ConfError, parse
from passt.ports import PortFwd
from passt.record import fields

MODES = ("passt", "pasta")


def ip(text):
    return ip_address(text)


def modes_of(long):
    return sorted({m for o in OPTIONS if o.long == long for m in o.modes})


def short_of(long):
    return next(o.short for o in OPTIONS if o.long == long)


def fails(mode, argv):
    """The ConfError message for ``argv``, checked to be one line."""
    with pytest.raises(ConfError) as err:
        parse(mode, argv)
    message = str(err.value)
    assert message and "\n" not in message
    return message


# -- each option, short and long form ----------------------------------------------

# long name → (value given, field, expected value); None value: a flag
SAMPLES = {
    "debug": (None, "debug", True),
    "trace": (None, "trace", True),
    "quiet": (None, "quiet", True),
    "foreground": (None, "foreground", True),
    "stderr": (None, "stderr", True),
    "log-file": ("/tmp/passt.log", "log_file", "/tmp/passt.log"),
    "log-size": ("65536", "log_size", 65536),
    "runas": ("1000:100", "runas", (1000, 100)),
    "socket": ("/tmp/passt.sock", "socket", "/tmp/passt.sock"),
    "conf-path": ("/tmp/ctl.sock", "conf_path", "/tmp/ctl.sock"),
    "ns-ifname": ("eth9", "ns_ifname", "eth9"),
    "fd": ("5", "fd", 5),
    "pcap": ("/tmp/x.pcap", "pcap", "/tmp/x.pcap"),
    "pid": ("/run/x.pid", "pid", "/run/x.pid"),
    "mtu": ("1500", "mtu", 1500),
    "address": ("192.0.2.2", "address", (ip("192.0.2.2"),)),
    "netmask": ("24", "netmask", 24),
    "mac-addr": ("52:54:00:12:34:56", "mac_addr", bytes.fromhex("525400123456")),
    "gateway": ("192.0.2.1", "gateway", (ip("192.0.2.1"),)),
    "interface": ("eth0", "interface", "eth0"),
    "outbound": ("192.0.2.3", "outbound", (ip("192.0.2.3"),)),
    "outbound-if4": ("eth1", "outbound_if4", "eth1"),
    "outbound-if6": ("eth2", "outbound_if6", "eth2"),
    "dns": ("192.0.2.53", "dns", (ip("192.0.2.53"),)),
    "search": ("example.com", "search", ("example.com",)),
    "no-dhcp-dns": (None, "no_dhcp_dns", True),
    "no-dhcp-search": (None, "no_dhcp_search", True),
    "dhcp-dns": (None, "dhcp_dns", True),
    "dhcp-search": (None, "dhcp_search", True),
    "dns-forward": ("192.0.2.54", "dns_forward", (ip("192.0.2.54"),)),
    "no-tcp": (None, "no_tcp", True),
    "no-udp": (None, "no_udp", True),
    "no-icmp": (None, "no_icmp", True),
    "no-dhcp": (None, "no_dhcp", True),
    "no-ndp": (None, "no_ndp", True),
    "no-dhcpv6": (None, "no_dhcpv6", True),
    "no-ra": (None, "no_ra", True),
    "no-map-gw": (None, "no_map_gw", True),
    "ipv4-only": (None, "ipv4_only", True),
    "ipv6-only": (None, "ipv6_only", True),
    "one-off": (None, "one_off", True),
    "tcp-ports": ("22", "tcp_ports", "22"),
    "udp-ports": ("53:5353", "udp_ports", "53:5353"),
    "tcp-ns": ("8080", "tcp_ns", "8080"),
    "udp-ns": ("9000-9001", "udp_ns", "9000-9001"),
    "userns": ("/proc/1/ns/user", "userns", "/proc/1/ns/user"),
    "netns": ("ctr1", "netns", "ctr1"),
    "netns-only": (None, "netns_only", True),
    "no-netns-quit": (None, "no_netns_quit", True),
    "config-net": (None, "config_net", True),
    "ns-mac-addr": ("02:00:00:00:00:01", "ns_mac_addr", bytes.fromhex("020000000001")),
    # upstream 2026's additions
    "stats": ("5", "stats", 5),
    "chroot-fallback": (None, "chroot_fallback", True),
    "socket-path": ("/tmp/passt.sock", "socket", "/tmp/passt.sock"),
    "vhost-user": (None, "vhost_user", True),
    "repair-path": ("none", "repair_path", "none"),
    "hostname": ("box", "hostname", "box"),
    "fqdn": ("box.example.com", "fqdn", "box.example.com"),
    "map-host-loopback": ("192.0.2.9", "map_host_loopback", (ip("192.0.2.9"),)),
    "map-guest-addr": ("169.254.1.2", "map_guest_addr", (ip("169.254.1.2"),)),
    "dns-host": ("192.0.2.55", "dns_host", (ip("192.0.2.55"),)),
    "freebind": (None, "freebind", True),
    "host-lo-to-ns-lo": (None, "host_lo_to_ns_lo", True),
    "no-copy-routes": (None, "no_copy_routes", True),
    "no-copy-addrs": (None, "no_copy_addrs", True),
    "no-splice": (None, "no_splice", True),
    "splice-only": (None, "splice_only", True),
}
# Options that never make a Conf: they print and exit, or are refused until
# what they need exists (test_not_implemented_options_are_refused_in_one_line).
NOT_PARSED_INTO_CONF = {"help", "version", "print-capabilities",
                        "migrate-exit", "migrate-no-linger"}
IMPLIED = {"trace": ("debug",), "fd": ("one_off",),
           "stats": ("foreground",), "no-copy-routes": ("config_net",),
           "no-copy-addrs": ("config_net",),
           "splice-only": ("host_lo_to_ns_lo", "no_icmp", "dns", "search")}
NEEDS = {"stats": ["-f"], "no-copy-routes": ["--config-net"], "no-copy-addrs": ["--config-net"]}


def option_cases():
    for opt in OPTIONS:
        if opt.long in NOT_PARSED_INTO_CONF:
            continue
        for mode in sorted(opt.modes):
            value = SAMPLES[opt.long][0]
            forms = [[f"--{opt.long}"] + ([value] if value is not None else [])]
            if value is not None:
                forms.append([f"--{opt.long}={value}"])
            if opt.short:
                forms.append([f"-{opt.short}"] + ([value] if value is not None else []))
                if value is not None:
                    forms.append([f"-{opt.short}{value}"])
            for argv in forms:
                argv = [*NEEDS.get(opt.long, []), *argv]
                yield pytest.param(mode, opt.long, argv, id=f"{mode}:{' '.join(argv)}")


def test_every_option_has_a_sample():
    assert {o.long for o in OPTIONS} - NOT_PARSED_INTO_CONF == set(SAMPLES)


@pytest.mark.parametrize("mode,long,argv", list(option_cases()))
def test_each_option_in_each_form(mode, long, argv):
    _, field, expected = SAMPLES[long]
    got = getattr(parse(mode, argv), field)
    if isinstance(got, PortFwd):
        assert got.specs == (expected,)
        assert got.mode == "spec"
    else:
        assert got == expected
    # and nothing else moved from the defaults
    defaults = parse(mode, [])
    changed = {f for f in fields(Conf)
               if getattr(parse(mode, argv), f) != getattr(defaults, f)}
    assert changed <= {field, *IMPLIED.get(long, ())}


# -- getopt_long's rules --------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["-fq"], ["-f", "-q"], ["--foreground", "--quiet"], ["--fore", "--qu"],
])
def test_flags_cluster_and_abbreviate(argv):
    c = parse("passt", argv)
    assert c.foreground and c.quiet


@pytest.mark.parametrize("argv", [
    ["-m1500"], ["-m", "1500"], ["--mtu=1500"], ["--mtu", "1500"], ["--mt", "1500"],
    ["-fm1500"], ["-fm", "1500"],
])
def test_argument_forms(argv):
    assert parse("passt", argv).mtu == 1500


def test_an_argument_may_start_with_a_dash():
    assert parse("passt", ["--runas", "0", "-l", "-x.log"]).log_file == "-x.log"


def test_exact_long_name_wins_over_longer_ones():
    c = parse("passt", ["--no-dhcp"])
    assert c.no_dhcp and not c.no_dhcp_dns and not c.no_dhcpv6


def test_abbreviation_may_name_an_option_of_the_other_program():
    assert "--no-dhcp-dns is for passt mode only" in fails("pasta", ["--no-dhcp-d"])


GETOPT_BAD = [
    ("unknown-long", ["--foo"], "unrecognized option '--foo'"),
    ("unknown-short", ["-x"], "invalid option -- 'x'"),
    ("unknown-in-cluster", ["-fx"], "invalid option -- 'x'"),
    ("ambiguous", ["--no-d"], "option '--no-d' is ambiguous"),
    ("missing-long-argument", ["--tcp-ports"], "option '--tcp-ports' requires an argument"),
    ("missing-short-argument", ["-t"], "option requires an argument -- 't' (--tcp-ports)"),
    ("flag-with-argument", ["--debug=yes"], "option '--debug' doesn't allow an argument"),
    ("empty-long-name", ["--=x"], "unrecognized option"),
]


@pytest.mark.parametrize("argv,expected", [g[1:] for g in GETOPT_BAD], ids=[g[0] for g in GETOPT_BAD])
def test_getopt_errors(argv, expected):
    assert expected in fails("passt", argv)


# -- options of one program only -------------------------------------------------------

ONE_MODE = [(o, m) for o in OPTIONS for m in MODES if modes_of(o.long) == [m]]


@pytest.mark.parametrize("opt,mode", ONE_MODE, ids=[f"{o.long}-in-{'pasta' if m == 'passt' else 'passt'}"
                                                   for o, m in ONE_MODE])
def test_options_of_the_other_program_are_refused_by_name(opt, mode):
    other = "pasta" if mode == "passt" else "passt"
    value = SAMPLES.get(opt.long, (None,))[0]
    forms = [f"--{opt.long}"] + ([f"-{opt.short}"] if opt.short else [])
    for form in forms:
        argv = [form] + ([value] if value is not None else [])
        assert fails(other, argv) == f"--{opt.long} is for {mode} mode only"


def test_mode_only_options_are_those_of_upstream():
    only = {m: {o.long for o in OPTIONS if modes_of(o.long) == [m]} for m in MODES}
    assert only["passt"] == {"socket", "one-off", "no-dhcp-dns", "no-dhcp-search",
                             "socket-path", "vhost-user", "repair-path",
                             "migrate-exit", "migrate-no-linger"}
    assert only["pasta"] == {"ns-ifname", "tcp-ns", "udp-ns", "userns", "netns", "netns-only",
                             "no-netns-quit", "config-net", "ns-mac-addr", "dhcp-dns",
                             "dhcp-search", "host-lo-to-ns-lo", "no-copy-routes",
                             "no-copy-addrs", "no-splice", "splice-only"}


# -- defaults ---------------------------------------------------------------------------


def test_passt_defaults():
    c = parse("passt", [])
    assert c.mode == "passt"
    assert c.mtu is None and c.log_size == 1 << 20 and c.runas is None
    assert c.address == c.gateway == c.outbound == c.dns_forward == ()
    assert c.dns is None and c.search is None
    assert all(p == PortFwd("none") for p in (c.tcp_ports, c.udp_ports, c.tcp_ns, c.udp_ns))
    assert c.dhcp_dns_effective and c.dhcp_search_effective
    assert not c.udp_ports_follow_tcp and not c.udp_ns_follow_tcp
    assert c.command == () and c.target_pid is None and c.netns is None and c.pid is None


def test_pasta_defaults():
    c = parse("pasta", [])
    assert all(p.mode == "auto" and p.specs == ()
               for p in (c.tcp_ports, c.udp_ports, c.tcp_ns, c.udp_ns))
    assert not c.dhcp_dns_effective and not c.dhcp_search_effective
    assert c.udp_ports_follow_tcp and c.udp_ns_follow_tcp
    assert c.command == () and c.target_pid is None


@pytest.mark.parametrize("argv,follow,follow_ns", [
    ([], True, True),
    (["-t", "auto"], True, True),
    (["-t", "~22"], True, True),
    (["-t", "22"], False, True),
    (["-u", "auto"], False, True),
    (["-u", "53"], False, True),
    (["-T", "none"], True, False),
    (["-U", "auto"], True, False),
])
def test_udp_follows_tcp_only_with_tcp_auto_and_no_udp_option(argv, follow, follow_ns):
    c = parse("pasta", argv)
    assert (c.udp_ports_follow_tcp, c.udp_ns_follow_tcp) == (follow, follow_ns)


def test_conf_is_frozen_and_comparable():
    c = parse("passt", ["-t", "22"])
    with pytest.raises(AttributeError):
        c.mtu = 1  # type: ignore[misc]
    assert c == parse("passt", ["-t", "22"])
    assert c != parse("passt", ["-t", "23"])


def test_conf_can_be_built_directly_with_defaults():
    c = Conf(mode="pasta", mtu=1400)
    assert c.mtu == 1400 and c.tcp_ports == PortFwd()


# -- values -------------------------------------------------------------------------------


def test_one_address_per_family():
    c = parse("passt", ["-a", "2001:db8::2", "-a", "192.0.2.2", "-g", "fe80::1", "-g", "192.0.2.1",
                        "-o", "127.0.0.1", "-o", "::1", "--dns-forward", "192.0.2.9",
                        "--dns-forward", "2001:db8::9"])
    assert c.address == (ip("2001:db8::2"), ip("192.0.2.2"))
    assert c.gateway == (ip("fe80::1"), ip("192.0.2.1"))
    assert c.outbound == (ip("127.0.0.1"), ip("::1"))
    assert c.dns_forward == (ip("192.0.2.9"), ip("2001:db8::9"))


@pytest.mark.parametrize("text", ["fe80::5", "240.0.0.1", "10.0.0.255", "2001:db8::ffff"])
def test_unusual_but_valid_addresses(text):
    assert parse("passt", ["-a", text]).address == (ip(text),)


@pytest.mark.parametrize("text,bits", [
    ("24", 24), ("1", 1), ("32", 32), ("255.255.255.0", 24), ("255.255.255.255", 32),
    ("128.0.0.0", 1), ("255.255.254.0", 23),
])
def test_netmask_as_bits_or_dot_decimal(text, bits):
    assert parse("passt", ["-n", text]).netmask == bits


@pytest.mark.parametrize("text", ["52:54:00:12:34:56", "52-54-00-12-34-56", "52:54:0:12:34:56",
                                  "52:54:00:12:34:56".upper()])
def test_mac_forms(text):
    assert parse("passt", ["-M", text]).mac_addr == bytes.fromhex("525400123456")


def test_mtu_zero_disables_and_limits_are_upstream_ones():
    assert parse("passt", ["--mtu", "0"]).mtu == 0
    assert parse("passt", ["--mtu", "68"]).mtu == 68
    assert parse("passt", ["--mtu", "65535"]).mtu == 65535
    assert parse("passt", ["-6", "--mtu", "1280"]).mtu == 1280


def test_dns_repeated_in_order_without_duplicates():
    c = parse("passt", ["-D", "192.0.2.53", "-D", "2001:db8::53", "-D", "127.0.0.53",
                        "-D", "192.0.2.53"])
    assert c.dns == (ip("192.0.2.53"), ip("2001:db8::53"), ip("127.0.0.53"))


@pytest.mark.parametrize("value", ["none", ""])
def test_dns_and_search_disabled(value):
    c = parse("passt", ["-D", value, "-S", value])
    assert c.dns == () and c.search == ()


def test_search_lists_split_and_add_up():
    c = parse("pasta", ["-S", " a.example  b.example. ", "-S", "c.example a.example", "-S", "none."])
    assert c.search == ("a.example", "b.example.", "c.example", "none.")


def test_trace_implies_debug():
    c = parse("passt", ["--trace"])
    assert c.trace and c.debug
    assert parse("passt", ["-d", "--trace"]).debug


def test_fd_implies_one_off():
    c = parse("passt", ["-F", "0"])
    assert c.fd == 0 and c.one_off
    assert parse("passt", ["-F", "3", "-1"]).one_off


def test_socket_path_limit_is_sun_path():
    path = "/tmp/" + "a" * 102
    assert parse("passt", ["-s", path]).socket == path


def test_repeated_handler_flags_are_harmless():
    c = parse("pasta", ["--no-tcp", "--no-tcp", "--config-net", "--config-net", "--dhcp-dns",
                        "--dhcp-dns", "-4", "-4"])
    assert c.no_tcp and c.config_net and c.dhcp_dns and c.ipv4_only


def test_netns_name_and_path():
    assert parse("pasta", ["--netns", "ctr1"]).netns_path == "/run/netns/ctr1"
    assert parse("pasta", ["--netns", "/proc/1/ns/net"]).netns_path == "/proc/1/ns/net"
    assert parse("pasta", []).netns_path is None


def test_userns_combines_with_every_target():
    assert parse("pasta", ["--userns", "/u", "--netns", "/n"]).userns == "/u"
    assert parse("pasta", ["--userns", "/u", "1234"]).target_pid == 1234
    assert parse("pasta", ["--userns", "/u", "--", "true"]).command == ("true",)


def test_forwarding_options_add_up():
    c = parse("pasta", ["-t", "22", "--tcp-ports", "80:8080", "-T", "5432", "-U", "53"])
    assert dict(c.tcp_ports.items()) == {22: 22, 80: 8080}
    assert c.tcp_ports.specs == ("22", "80:8080")
    assert c.tcp_ns.target(5432) == 5432 and c.udp_ns.target(53) == 53
    assert c.udp_ports.mode == "auto"


# -- runas ------------------------------------------------------------------------------

ROOT = pwd.getpwuid(0)
ROOT_GROUP = grp.getgrgid(0)


@pytest.mark.parametrize("text,expected", [
    ("0", (0, 0)),
    ("1000", (1000, 1000)),
    ("1000:100", (1000, 100)),
    ("4294967294:0", (4294967294, 0)),
    (ROOT.pw_name, (0, ROOT.pw_gid)),
    (f"{ROOT.pw_name}:{ROOT_GROUP.gr_name}", (0, 0)),
    (f"{ROOT.pw_name}:42", (0, 42)),
    (f"42:{ROOT_GROUP.gr_name}", (42, 0)),
])
def test_runas_numbers_and_names(text, expected):
    assert parse("passt", ["--runas", text]).runas == expected


def test_runas_name_of_an_unprivileged_user():
    users = [p for p in pwd.getpwall() if p.pw_uid != 0 and p.pw_name.isidentifier()]
    if not users:
        pytest.skip("no user but root here")
    user = users[0]
    assert parse("passt", ["--runas", user.pw_name]).runas == (user.pw_uid, user.pw_gid)


# -- positional arguments ----------------------------------------------------------------


@pytest.mark.parametrize("argv,command,pid", [
    ([], (), None),
    (["sh", "-c", "exit 3"], ("sh", "-c", "exit 3"), None),
    (["-d", "sh", "-c", "exit 3"], ("sh", "-c", "exit 3"), None),
    (["--", "sh", "-c", "exit 3"], ("sh", "-c", "exit 3"), None),
    (["--", "-x", "--help"], ("-x", "--help"), None),
    (["ip", "-d", "link"], ("ip", "-d", "link"), None),
    (["--"], (), None),
    (["1234"], (), 1234),
    (["1234", "-d"], (), 1234),
    (["-d", "1234", "--config-net"], (), 1234),
    (["--", "1234"], (), 1234),
    (["1234x"], ("1234x",), None),
    (["./1234"], ("./1234",), None),
])
def test_pasta_command_or_pid(argv, command, pid):
    c = parse("pasta", argv)
    assert (c.command, c.target_pid) == (command, pid)


def test_options_after_pid_are_options():
    c = parse("pasta", ["1234", "--config-net", "-t", "22"])
    assert c.target_pid == 1234 and c.config_net and c.tcp_ports.target(22) == 22


def test_options_after_the_command_belong_to_it():
    c = parse("pasta", ["true", "--config-net"])
    assert c.command == ("true", "--config-net") and not c.config_net


# -- every kind of bad input: one line naming the option -----------------------------------

BAD = [
    # id, mode, argv, what the message must say
    ("mtu-too-big", "passt", ["--mtu", "70000"], "Invalid MTU: 70000 (--mtu"),
    ("mtu-too-small", "passt", ["-m", "67"], "(--mtu"),
    ("mtu-word", "passt", ["--mtu", "abc"], "(--mtu"),
    ("mtu-negative", "passt", ["--mtu", "-5"], "(--mtu"),
    ("mtu-hex", "passt", ["--mtu", "0x100"], "(--mtu"),
    ("mtu-empty", "passt", ["--mtu", ""], "(--mtu"),
    ("address-word", "passt", ["-a", "bogus"], "Invalid address: bogus (--address"),
    ("address-unspecified", "passt", ["-a", "0.0.0.0"], "(--address, unspecified"),
    ("address-loopback", "passt", ["-a", "127.0.0.1"], "(--address, loopback"),
    ("address-broadcast", "passt", ["-a", "255.255.255.255"], "(--address, broadcast"),
    ("address-multicast", "passt", ["-a", "224.0.0.1"], "(--address, multicast"),
    ("address6-loopback", "passt", ["-a", "::1"], "(--address, loopback"),
    ("address6-unspecified", "passt", ["-a", "::"], "(--address, unspecified"),
    ("address6-multicast", "passt", ["-a", "ff02::1"], "(--address, multicast"),
    ("address6-mapped", "passt", ["-a", "::ffff:10.0.0.1"], "(--address, IPv4-mapped"),
    ("address6-compatible", "passt", ["-a", "::10.0.0.1"], "(--address, IPv4-mapped"),
    ("address6-scoped", "passt", ["-a", "fe80::1%eth0"], "(--address"),
    ("address-prefix", "passt", ["-a", "10.0.0.5/33"], "Invalid prefix length"),
    ("address-prefix-and-netmask", "passt", ["-a", "10.0.0.5/24", "-n", "24"],
     "Redundant prefix length specification"),
    ("address-short-form", "passt", ["-a", "10.1"], "(--address"),
    ("address-leading-zero", "passt", ["-a", "01.2.3.4"], "(--address"),
    ("address-second-ipv4", "passt", ["-a", "10.0.0.1", "-a", "10.0.0.2"],
     "Invalid address: 10.0.0.2 (--address, an IPv4 one was already given)"),
    ("address-second-ipv6", "passt", ["-a", "fd00::1", "-a", "fd00::2"], "an IPv6 one"),
    ("netmask-33", "passt", ["-n", "33"], "Invalid netmask: 33 (--netmask"),
    ("netmask-0", "passt", ["-n", "0"], "(--netmask"),
    ("netmask-holes", "passt", ["-n", "255.0.255.0"], "(--netmask, not a contiguous"),
    ("netmask-zero-dotted", "passt", ["-n", "0.0.0.0"], "(--netmask"),
    ("netmask-word", "passt", ["-n", "abc"], "(--netmask"),
    ("netmask-slash", "passt", ["-n", "/24"], "(--netmask"),
    ("netmask-twice", "passt", ["-n", "24", "-n", "16"], "Multiple --netmask options given"),
    ("mac-short", "passt", ["-M", "52:54:00:12:34"], "Invalid MAC address: 52:54:00:12:34 (--mac-addr"),
    ("mac-long", "passt", ["-M", "52:54:00:12:34:56:78"], "(--mac-addr"),
    ("mac-not-hex", "passt", ["-M", "zz:54:00:12:34:56"], "(--mac-addr"),
    ("mac-wide-group", "passt", ["-M", "52:54:00:12:34:567"], "(--mac-addr"),
    ("mac-dotted", "passt", ["-M", "5254.0012.3456"], "(--mac-addr"),
    ("mac-mixed-separators", "passt", ["-M", "52:54-00:12:34:56"], "(--mac-addr"),
    ("mac-multicast", "passt", ["-M", "01:00:5e:00:00:01"], "(--mac-addr, multicast"),
    ("mac-broadcast", "passt", ["-M", "ff:ff:ff:ff:ff:ff"], "(--mac-addr, multicast"),
    ("mac-zero", "passt", ["-M", "00:00:00:00:00:00"], "(--mac-addr, all zeroes"),
    ("mac-twice", "passt", ["-M", "02:00:00:00:00:01", "-M", "02:00:00:00:00:02"],
     "Multiple --mac-addr options given"),
    ("gateway-loopback", "passt", ["-g", "127.0.0.1"], "Invalid gateway address: 127.0.0.1 (--gateway"),
    ("gateway6-loopback", "passt", ["-g", "::1"], "(--gateway"),
    ("gateway-unspecified", "passt", ["-g", "0.0.0.0"], "(--gateway"),
    ("gateway-word", "passt", ["-g", "bogus"], "(--gateway"),
    ("gateway-second-ipv4", "passt", ["-g", "10.0.0.1", "-g", "10.0.0.2"], "(--gateway, an IPv4"),
    ("interface-empty", "passt", ["-i", ""], "Invalid interface name: '' (--interface"),
    ("interface-too-long", "passt", ["-i", "a" * 16], "(--interface"),
    ("interface-slash", "passt", ["-i", "a/b"], "(--interface"),
    ("interface-space", "passt", ["-i", "a b"], "(--interface"),
    ("interface-dots", "passt", ["-i", ".."], "(--interface"),
    ("interface-twice", "passt", ["-i", "eth0", "-i", "eth0"], "Redundant interface: eth0 (--interface)"),
    ("outbound-unspecified", "passt", ["-o", "0.0.0.0"], "Invalid outbound address: 0.0.0.0 (--outbound"),
    ("outbound-multicast", "passt", ["-o", "224.0.0.1"], "(--outbound"),
    ("outbound-word", "passt", ["-o", "bogus"], "(--outbound"),
    ("outbound-second-ipv4", "passt", ["-o", "10.0.0.1", "-o", "10.0.0.2"], "(--outbound, an IPv4"),
    ("outbound-if4-twice", "passt", ["--outbound-if4", "eth0", "--outbound-if4", "lo"],
     "Redundant outbound interface: lo (--outbound-if4)"),
    ("outbound-if6-bad-name", "passt", ["--outbound-if6", "a" * 16], "(--outbound-if6"),
    ("dns-word", "passt", ["-D", "bogus"], "Invalid DNS address: bogus (--dns"),
    ("dns-unspecified", "passt", ["-D", "0.0.0.0"], "(--dns"),
    ("dns-multicast", "passt", ["-D", "224.0.0.1"], "(--dns"),
    ("dns-none-then-address", "passt", ["-D", "none", "-D", "10.0.0.1"],
     "Conflicting DNS options: 10.0.0.1 (--dns"),
    ("dns-address-then-none", "passt", ["-D", "10.0.0.1", "-D", "none"], "Conflicting DNS options"),
    ("dns-none-twice", "pasta", ["-D", "none", "-D", ""], "Redundant DNS options"),
    ("search-empty-label", "passt", ["-S", "a..com"], "Invalid search domain: a..com (--search"),
    ("search-long-label", "passt", ["-S", "a" * 64 + ".com"], "(--search"),
    ("search-long-name", "passt", ["-S", ".".join(["a" * 60] * 5)], "(--search"),
    ("search-root", "passt", ["-S", "."], "(--search"),
    ("search-none-then-domain", "passt", ["-S", "none", "-S", "a.com"],
     "Conflicting DNS search options: a.com (--search"),
    ("search-domain-then-none", "passt", ["-S", "a.com", "-S", "none"], "Conflicting DNS search"),
    ("search-none-twice", "passt", ["-S", "none", "-S", "none"], "Redundant DNS search options"),
    ("dns-forward-loopback", "passt", ["--dns-forward", "127.0.0.1"],
     "Invalid DNS forwarding address: 127.0.0.1 (--dns-forward"),
    ("dns-forward6-loopback", "passt", ["--dns-forward", "::1"], "(--dns-forward"),
    ("dns-forward-empty", "passt", ["--dns-forward", ""], "(--dns-forward"),
    ("dns-forward-second-ipv4", "passt", ["--dns-forward", "10.0.0.1", "--dns-forward", "10.0.0.2"],
     "(--dns-forward, an IPv4"),
    ("log-size-small", "passt", ["--log-size", "40959"], "Invalid log file size: 40959 (--log-size"),
    ("log-size-suffix", "passt", ["--log-size", "1k"], "(--log-size"),
    ("log-size-negative", "passt", ["--log-size", "-1"], "(--log-size"),
    ("log-size-huge", "passt", ["--log-size", "99999999999999999999"], "(--log-size"),
    ("log-size-twice", "passt", ["--log-size", "65536", "--log-size", "65536"],
     "Multiple --log-size options given"),
    ("log-file-empty", "passt", ["-l", ""], "Invalid log file: '' (--log-file"),
    ("log-file-twice", "passt", ["-l", "/tmp/a", "-l", "/tmp/b"], "Multiple --log-file options given"),
    ("pcap-empty", "passt", ["-p", ""], "Invalid pcap path: '' (--pcap"),
    ("pcap-twice", "passt", ["-p", "/tmp/a", "-p", "/tmp/b"], "Multiple --pcap options given"),
    ("pid-file-empty", "passt", ["-P", ""], "Invalid PID file: '' (--pid"),
    ("pid-file-twice", "pasta", ["-P", "/tmp/a", "-P", "/tmp/b"], "Multiple --pid options given"),
    ("socket-empty", "passt", ["-s", ""], "Invalid socket path: '' (--socket"),
    ("socket-too-long", "passt", ["-s", "/tmp/" + "a" * 103], "(--socket, 1 to 107 bytes)"),
    ("socket-twice", "passt", ["-s", "/tmp/a", "-s", "/tmp/b"], "Multiple --socket options given"),
    ("fd-word", "passt", ["-F", "abc"], "Invalid file descriptor: abc (--fd"),
    ("fd-negative", "passt", ["-F", "-1"], "(--fd"),
    ("fd-too-big", "passt", ["-F", "2147483648"], "(--fd"),
    ("fd-twice", "passt", ["-F", "5", "-F", "6"], "Multiple --fd options given"),
    ("runas-no-user", "passt", ["--runas", "no-such-user-xyz"],
     "Invalid user or group: no-such-user-xyz (--runas, no user"),
    ("runas-no-group", "passt", ["--runas", "0:no-such-group-xyz"], "(--runas, no group"),
    ("runas-minus-one", "passt", ["--runas", "-1"], "(--runas"),
    ("runas-id-max", "passt", ["--runas", "4294967295"], "(--runas"),
    ("runas-empty", "passt", ["--runas", ""], "(--runas"),
    ("runas-empty-group", "passt", ["--runas", "0:"], "(--runas"),
    ("runas-empty-user", "passt", ["--runas", ":0"], "(--runas"),
    ("runas-three-parts", "passt", ["--runas", "1:2:3"], "(--runas"),
    ("runas-twice", "passt", ["--runas", "0", "--runas", "0"], "Multiple --runas options given"),
    ("debug-twice", "passt", ["-d", "-d"], "Multiple --debug options given"),
    ("trace-twice", "passt", ["--trace", "--trace"], "Multiple --trace options given"),
    ("quiet-twice", "passt", ["-q", "-q"], "Multiple --quiet options given"),
    ("foreground-twice", "pasta", ["-ff"], "Multiple --foreground options given"),
    ("stderr-twice", "passt", ["-e", "-e"], "Multiple --stderr options given"),
    ("one-off-twice", "passt", ["-1", "-1"], "Redundant --one-off option"),
    ("mtu-twice", "passt", ["-m", "1500", "-m", "1400"], "Multiple --mtu options given"),
    ("ns-ifname-empty", "pasta", ["-I", ""], "Invalid interface name: '' (--ns-ifname"),
    ("ns-ifname-too-long", "pasta", ["-I", "a" * 16], "(--ns-ifname"),
    ("ns-ifname-twice", "pasta", ["-I", "a", "-I", "b"], "Multiple --ns-ifname options given"),
    ("ns-mac-word", "pasta", ["--ns-mac-addr", "bogus"], "Invalid MAC address: bogus (--ns-mac-addr"),
    ("ns-mac-multicast", "pasta", ["--ns-mac-addr", "33:33:00:00:00:01"], "(--ns-mac-addr"),
    ("userns-empty", "pasta", ["--userns", ""], "Invalid user namespace: '' (--userns"),
    ("netns-empty", "pasta", ["--netns", ""], "Invalid network namespace: '' (--netns"),
    ("netns-dotdot", "pasta", ["--netns", ".."], "(--netns"),
    ("netns-twice", "pasta", ["--netns", "a", "--netns", "b"], "Multiple --netns options given"),
    ("debug-and-quiet", "passt", ["-d", "-q"], "Either --debug or --quiet"),
    ("trace-and-quiet", "passt", ["--trace", "-q"], "Either --debug or --quiet"),
    ("log-file-and-stderr", "passt", ["-l", "/tmp/x", "-e"], "(--log-file, --stderr)"),
    ("ipv4-and-ipv6-only", "passt", ["-4", "-6"], "Options ipv4-only and ipv6-only are mutually"),
    ("socket-and-fd", "passt", ["-s", "/tmp/x", "-F", "5"], "Options --socket and --fd"),
    ("netns-and-pid", "pasta", ["--netns", "x", "1234"], "Both --netns and PID or command given"),
    ("netns-and-command", "pasta", ["--netns", "x", "--", "true"], "Both --netns and PID"),
    ("ports-auto-in-passt", "passt", ["-t", "auto"], "(--tcp-ports)"),
    ("ports-all-in-pasta-ns", "pasta", ["-U", "all"], "(--udp-ns)"),
    ("ports-port-zero", "passt", ["-t", "0"], "(--tcp-ports)"),
    ("ports-too-big", "pasta", ["-T", "65536"], "(--tcp-ns)"),
    ("ports-reversed", "pasta", ["-U", "80-22"], "(--udp-ns)"),
    ("ports-address-on-ns", "pasta", ["-T", "127.0.0.1/22"], "(--tcp-ns)"),
    ("ports-overlap-across-options", "passt", ["-t", "22", "-t", "20-30"],
     "Overlapping port specifier 20-30 (--tcp-ports)"),
    ("ports-keyword-then-list", "pasta", ["-t", "auto", "-t", "22"],
     "Specific ports cannot be specified together with all/none/auto: 22 (--tcp-ports)"),
    ("ports-list-then-keyword", "passt", ["-u", "53", "-u", "none"],
     "Port forwarding mode 'none' conflicts with previous mode (--udp-ports)"),
    ("passt-positional", "passt", ["foo"], "Extra non-option argument: foo"),
    ("passt-after-dashes", "passt", ["--", "foo"], "Extra non-option argument: foo"),
    ("pasta-two-pids", "pasta", ["1234", "5678"], "Extra non-option argument after PID: 5678"),
    ("pasta-pid-and-command", "pasta", ["1234", "--", "true"], "Both PID and command given"),
    ("pasta-pid-zero", "pasta", ["0"], "Invalid PID: 0"),
    ("pasta-pid-too-big", "pasta", ["4294967296"], "Invalid PID: 4294967296"),
]


@pytest.mark.parametrize("mode,argv,expected", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_refused_with_one_line(mode, argv, expected, capsys):
    message = fails(mode, argv)
    assert expected in message
    assert capsys.readouterr() == ("", "")      # nothing printed, nothing started


def test_first_mistake_on_the_line_is_reported():
    assert "--mtu" in fails("passt", ["--mtu", "1", "-a", "bogus"])
    assert "--address" in fails("passt", ["-a", "bogus", "--mtu", "1"])
    assert "'--foo'" in fails("passt", ["--foo", "-t", "22", "-t", "22"])
    assert "Overlapping" in fails("passt", ["-t", "22", "-t", "22", "--foo"])


def test_bad_values_are_shown_on_one_line():
    message = fails("passt", ["-l", "a\nb", "-l", "c"])
    assert "Multiple --log-file" in message
    assert "'a\\nb'" in fails("passt", ["-i", "a\nb"])


# -- --help and --version ---------------------------------------------------------------


def names_of(opt):
    return [f"--{opt.long}"] + ([f"-{opt.short}"] if opt.short else [])


@pytest.mark.parametrize("mode", MODES)
def test_help_lists_every_option_of_its_mode_and_no_other(mode):
    text = conf.help_text(mode)
    for opt in OPTIONS:
        present = any(line.lstrip().startswith(opt.names()) for line in text.splitlines())
        assert present == (mode in modes_of(opt.long)), opt.long
    assert text.startswith(f"Usage: {mode} [OPTION]...")


@pytest.mark.parametrize("mode", MODES)
def test_help_lines_carry_help_and_details(mode):
    text = conf.help_text(mode)
    for opt in OPTIONS:
        if mode in opt.modes:
            assert opt.help in text
            for detail in opt.details:
                assert f"    {detail}\n" in text


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["--he"], ["-dh"], ["-h", "--mtu", "70000"]])
def test_help_prints_to_stdout_and_exits_0(mode, argv, capsys):
    with pytest.raises(SystemExit) as exited:
        parse(mode, argv)
    assert exited.value.code == 0
    out, err = capsys.readouterr()
    assert out == conf.help_text(mode) and err == ""


def test_errors_before_help_win():
    assert "--mtu" in fails("passt", ["--mtu", "70000", "--help"])


@pytest.mark.parametrize("mode", MODES)
def test_version(mode, capsys):
    with pytest.raises(SystemExit) as exited:
        parse(mode, ["--version"])
    assert exited.value.code == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == f"{mode} {passt.__version__}"
    assert any("Copyright" in line for line in lines)
    assert any("GNU Affero GPL version 3 or later" in line for line in lines)
    assert err == ""


def test_help_in_pasta_command_is_the_command_s():
    assert parse("pasta", ["ls", "--help"]).command == ("ls", "--help")


# -- the table itself ------------------------------------------------------------------


def test_table_is_consistent():
    for mode in MODES:
        longs = [o.long for o in OPTIONS if mode in o.modes]
        shorts = [o.short for o in OPTIONS if mode in o.modes and o.short]
        assert len(longs) == len(set(longs)), mode
        assert len(shorts) == len(set(shorts)), mode
    for opt in OPTIONS:
        assert opt.modes and opt.modes <= set(MODES)
        assert opt.help and "\n" not in opt.help
        assert all("\n" not in d for d in opt.details)
        assert opt.short is None or len(opt.short) == 1
        twins = [o for o in OPTIONS if o.long == opt.long]
        assert {(o.short, o.metavar) for o in twins} == {(opt.short, opt.metavar)}


def test_every_option_has_a_handler():
    assert {o.long for o in OPTIONS} == set(conf._HANDLERS)


def test_unknown_mode_is_a_programming_error():
    with pytest.raises(ValueError):
        parse("slirp", [])
    with pytest.raises(ValueError):
        conf.help_text("slirp")


def test_option_spec_interface_for_the_man_page_generator():
    opt = OPTIONS[0]
    assert (opt.short, opt.long, opt.metavar, opt.modes, opt.help, opt.details) == (
        "d", "debug", None, frozenset(MODES), "Be verbose", ())
    assert conf.OptionSpec("x", "xx", None, frozenset({"passt"}), "h", ("d",)).details == ("d",)


def test_parse_has_no_state_between_calls():
    first = parse("passt", ["-t", "22", "-D", "192.0.2.1"])
    fails("passt", ["-t", "22", "-t", "22"])
    assert parse("passt", ["-t", "22", "-D", "192.0.2.1"]) == first
    assert parse("passt", []).dns is None


# -- upstream 2026's additions ------------------------------------------------------------


def test_address_takes_an_ipv4_prefix_length():
    c = parse("pasta", ["-a", "10.0.2.100/24"])
    assert c.address == (ip("10.0.2.100"),) and c.netmask == 24


def test_ipv6_prefix_length_is_parsed_and_not_kept():
    assert parse("pasta", ["-a", "2001:db8::2/64"]).netmask is None


def test_map_host_loopback_none_is_no_map_gw():
    c = parse("pasta", ["--map-host-loopback", "none"])
    assert c.no_map_gw and c.map_host_loopback == ()


def test_map_host_loopback_and_guest_addr_per_family():
    c = parse("passt", ["--map-host-loopback", "10.0.2.2", "--map-host-loopback", "fd00::2",
                        "--map-guest-addr", "169.254.1.2"])
    assert c.map_host_loopback == (ip("10.0.2.2"), ip("fd00::2"))
    assert c.map_guest_addr == (ip("169.254.1.2"),)
    assert "Invalid address to remap to host" in fails("pasta", ["--map-host-loopback",
                                                                  "127.0.0.1"])


def test_splice_only_implies_loopback_forwarding_and_no_icmp_nor_dns():
    c = parse("pasta", ["--splice-only"])
    assert c.host_lo_to_ns_lo and c.no_icmp and c.dns == () and c.search == ()


@pytest.mark.parametrize("mode,argv,expected", [
    ("pasta", ["--splice-only", "--no-splice"], "--splice-only is incompatible with --no-splice"),
    ("pasta", ["--no-splice", "--host-lo-to-ns-lo"],
     "--host-lo-to-ns-lo is incompatible with --no-splice"),
    ("pasta", ["--no-copy-routes"], "--no-copy-routes needs --config-net"),
    ("pasta", ["--no-copy-addrs"], "--no-copy-addrs needs --config-net"),
    ("pasta", ["--stats", "1"], "Can't display statistics if not running in foreground"),
    ("passt", ["--repair-path", "/tmp/r"], "--repair-path is for vhost-user mode only"),
    ("passt", ["--migrate-exit"], "--migrate-exit is for vhost-user mode only"),
    ("passt", ["--migrate-no-linger"], "--migrate-no-linger is for vhost-user mode only"),
    ("pasta", ["--fqdn", "a" * 254], "Invalid FQDN"),
    ("passt", ["--socket-path", "/tmp/a", "-s", "/tmp/b"], "Multiple --socket options given"),
])
def test_2026_conflicts_and_missing_features_are_one_line(mode, argv, expected):
    assert expected in fails(mode, argv)


def test_migration_options_with_vhost_user():
    c = parse("passt", ["--vhost-user", "--repair-path", "/tmp/r", "--migrate-exit",
                        "--migrate-no-linger"])
    assert (c.repair_path, c.migrate_exit, c.migrate_no_linger) == ("/tmp/r", True, True)


def test_rootlesskit_probe_exits_0(capsys):
    with pytest.raises(SystemExit) as end:
        parse("pasta", ["--host-lo-to-ns-lo", "--version"])
    assert end.value.code == 0 and capsys.readouterr().out.startswith("pasta ")


def test_print_capabilities_prints_upstream_json(capsys):
    with pytest.raises(SystemExit) as end:
        parse("passt", ["--print-capabilities"])
    assert end.value.code == 0
    assert json.loads(capsys.readouterr().out) == {"type": "net"}


PODMAN5_ARGV = ["--config-net", "--dns-forward", "169.254.1.1", "-t", "none", "-u", "none",
                "-T", "none", "-U", "none", "--no-map-gw", "--quiet", "--netns", "/run/netns/x",
                "--map-guest-addr", "169.254.1.2"]


def test_podman5_argv_parses():
    c = parse("pasta", PODMAN5_ARGV)
    assert c.no_map_gw and c.map_guest_addr == (ip("169.254.1.2"),) and c.quiet
    assert c.tcp_ports.mode == c.udp_ns.mode == "none"
