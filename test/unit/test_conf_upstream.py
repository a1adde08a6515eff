"""Our command line against upstream's: the options ``--help`` lists, and what it refuses.

A checked-in copy of the option names of Debian's passt 0.0~git20230309
(``passt --help``, ``pasta --help``) keeps the first check meaningful without
the package; when the upstream binaries are installed, their live ``--help``
is compared too, and a table of bad command lines is run through both: what
upstream refuses we refuse.  Upstream is only ever given lines it refuses
during option parsing, before it starts anything (``-f`` keeps it in the
foreground should it unexpectedly accept one, and a timeout ends it).
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from passt import conf
from passt.conf import OPTIONS, ConfError, parse

UPSTREAM_HELP_OPTIONS = {
    "passt": (
        "-d, --debug", "--trace", "-q, --quiet", "-f, --foreground", "-e, --stderr",
        "-l, --log-file", "--log-size", "--runas", "-h, --help", "--version", "-s, --socket",
        "-F, --fd", "-p, --pcap", "-P, --pid", "-m, --mtu", "-a, --address", "-n, --netmask",
        "-M, --mac-addr", "-g, --gateway", "-i, --interface", "-o, --outbound",
        "--outbound-if4", "--outbound-if6", "-D, --dns", "-S, --search", "--no-dhcp-dns",
        "--no-dhcp-search", "--dns-forward", "--no-tcp", "--no-udp", "--no-icmp", "--no-dhcp",
        "--no-ndp", "--no-dhcpv6", "--no-ra", "--no-map-gw", "-4, --ipv4-only",
        "-6, --ipv6-only", "-1, --one-off", "-t, --tcp-ports", "-u, --udp-ports",
    ),
    "pasta": (
        "-d, --debug", "--trace", "-q, --quiet", "-f, --foreground", "-e, --stderr",
        "-l, --log-file", "--log-size", "--runas", "-h, --help", "--version", "-I, --ns-ifname",
        "-F, --fd", "-p, --pcap", "-P, --pid", "-m, --mtu", "-a, --address", "-n, --netmask",
        "-M, --mac-addr", "-g, --gateway", "-i, --interface", "-o, --outbound",
        "--outbound-if4", "--outbound-if6", "-D, --dns", "-S, --search", "--dhcp-dns",
        "--dhcp-search", "--dns-forward", "--no-tcp", "--no-udp", "--no-icmp", "--no-dhcp",
        "--no-ndp", "--no-dhcpv6", "--no-ra", "--no-map-gw", "-4, --ipv4-only",
        "-6, --ipv6-only", "-t, --tcp-ports", "-u, --udp-ports", "-T, --tcp-ns", "-U, --udp-ns",
        "--userns", "--netns", "--netns-only", "--no-netns-quit", "--config-net",
        "--ns-mac-addr",
    ),
}

_HELP_LINE = re.compile(r"^\s+((?:-[A-Za-z0-9], )?--[a-z0-9-]+)", re.M)


def upstream_binary(mode: str) -> str | None:
    """Debian's upstream binary, if installed (not a Python entry point of ours)."""
    path = f"/usr/bin/{mode}"
    try:
        with open(path, "rb") as f:
            return path if f.read(4) == b"\x7fELF" else None
    except OSError:
        return None


def run_upstream(mode: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    binary = upstream_binary(mode)
    assert binary
    for _ in range(3):      # the Debian build sometimes dies at start-up: retry that
        try:
            result = subprocess.run([binary, *argv], capture_output=True, text=True, timeout=10,
                                    stdin=subprocess.DEVNULL, cwd="/tmp",
                                    env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
        except subprocess.TimeoutExpired:
            pytest.fail(f"upstream {mode} {argv} did not exit: it accepted the line")
        if result.returncode >= 0:
            return result
    return result


def upstream_help_names(text: str) -> set[str]:
    return set(_HELP_LINE.findall(text))


def ours(mode: str) -> set[str]:
    return {opt.names() for opt in OPTIONS if mode in opt.modes}


@pytest.mark.parametrize("mode", ["passt", "pasta"])
def test_every_upstream_option_is_in_our_table(mode):
    missing = set(UPSTREAM_HELP_OPTIONS[mode]) - ours(mode)
    assert not missing


@pytest.mark.parametrize("mode", ["passt", "pasta"])
def test_every_upstream_option_is_in_our_help(mode):
    listed = upstream_help_names(conf.help_text(mode))
    assert set(UPSTREAM_HELP_OPTIONS[mode]) <= listed


@pytest.mark.parametrize("mode", ["passt", "pasta"])
def test_every_upstream_option_is_accepted_by_name(mode):
    for names in UPSTREAM_HELP_OPTIONS[mode]:
        for name in names.split(", "):
            try:
                parse(mode, [name, "x"])
            except ConfError as e:      # a bad value, never an unknown option
                assert "unrecognized" not in str(e) and "invalid option" not in str(e)
                assert "mode only" not in str(e)
            except SystemExit:
                pass


@pytest.mark.parametrize("mode", ["passt", "pasta"])
def test_live_upstream_help_options_are_ours(mode, capfd):
    if not upstream_binary(mode):
        pytest.skip(f"upstream {mode} not installed")
    result = run_upstream(mode, ["--help"])
    text = "\n".join(line for line in (result.stdout + result.stderr).splitlines()
                     if not line.startswith("Failed to send"))
    live = upstream_help_names(text)
    assert len(live) > 30, text
    assert not live - ours(mode)
    assert not live - upstream_help_names(conf.help_text(mode))


# Lines upstream refuses while parsing options (exit status 1, nothing started).
REFUSED_BY_BOTH = {
    "passt": [
        ["--mtu", "70000"], ["--mtu", "67"], ["-m", "-5"],
        ["-a", "bogus"], ["-a", "127.0.0.1"], ["-a", "224.0.0.1"], ["-a", "::ffff:10.0.0.1"],
        ["-a", "10.0.0.1", "-a", "10.0.0.2"], ["-n", "33"], ["-n", "255.0.255.0"],
        ["-M", "5254.0012.3456"], ["-M", "52:54:00:12:34:567"],
        ["-g", "127.0.0.1"], ["-g", "bogus"], ["-g", "10.0.0.1", "-g", "10.0.0.2"],
        ["-i", "eth0", "-i", "eth0"], ["-o", "0.0.0.0"], ["-o", "224.0.0.1"],
        ["-o", "10.0.0.1", "-o", "10.0.0.2"], ["--outbound-if4", "lo", "--outbound-if4", "lo"],
        ["--outbound-if6", "a" * 16],
        ["-D", "bogus"], ["-D", "none", "-D", "10.0.0.1"],
        ["-D", "10.0.0.1", "-D", "none"], ["-D", "none", "-D", "none"],
        ["-S", "none", "-S", "a.example"], ["-S", "a.example", "-S", "none"],
        ["--dns-forward", "127.0.0.1"], ["--dns-forward", "::1"], ["--dns-forward", "bogus"],
        ["--log-size", "100"], ["--log-size", "1k"], ["--log-size", "0"],
        ["-p", ""], ["-p", "/tmp/a", "-p", "/tmp/b"], ["-P", ""], ["-P", "/tmp/a", "-P", "/tmp/b"],
        ["-s", ""], ["-s", "/tmp/" + "a" * 103], ["-s", "/tmp/a", "-s", "/tmp/b"],
        ["-F", "-1"], ["-F", "5", "-F", "6"], ["-s", "/tmp/x", "-F", "5"],
        ["--runas", "no-such-user-xyz"], ["--runas", "1:2:3"], ["--runas", "0", "--runas", "0"],
        ["-d", "-q"], ["--trace", "-q"], ["-d", "-d"], ["-q", "-q"], ["-e", "-e"],
        ["--trace", "--trace"], ["-4", "-6"], ["-1", "-1"], ["-m", "1500", "-m", "1400"],
        ["-t", "auto"], ["-u", "auto"], ["-t", "65536"], ["-t", "41005-41000"],
        ["-t", "41000-41005:42000-42004"], ["-t", "41000-41005:42000"],
        ["-t", "41000,41000"], ["-t", "41000", "-t", "41000"], ["-t", "none", "-t", "41000"],
        ["-t", "41000", "-t", "none"], ["-t", "none", "-t", "none"], ["-t", "41000,"],
        ["-t", ""], ["-t", "abc"], ["-t", "NONE"], ["-t", "~41005,~41005"],
        ["-t", "~41000-41001:3"], ["-t", "bogus/41000"], ["-t", "[::1]/41000"],
        ["-t", "127.0.0.1/"], ["-t", "127.0.0.1%aaaaaaaaaaaaaaaa/41000"],
        ["--foo"], ["-x"], ["--no-d"], ["-t"], ["--tcp-ports"], ["--help=x"],
        ["positional"], ["--", "positional"],
        ["-I", "eth0"], ["-T", "41000"], ["-U", "41000"], ["--userns", "/x"], ["--netns", "/x"],
        ["--no-netns-quit"], ["--ns-mac-addr", "02:00:00:00:00:01"], ["--dhcp-dns"],
        ["--dhcp-search"],
    ],
    "pasta": [
        ["-s", "/tmp/x"], ["-1"], ["--one-off"], ["--no-dhcp-dns"], ["--no-dhcp-search"],
        ["--foo"], ["-x"],
    ],
}


def refused_cases():
    for mode, lines in REFUSED_BY_BOTH.items():
        for argv in lines:
            yield pytest.param(mode, argv, id=f"{mode}:{' '.join(argv)}")


@pytest.mark.parametrize("mode,argv", list(refused_cases()))
def test_we_refuse_what_upstream_refuses(mode, argv):
    with pytest.raises(ConfError) as err:
        parse(mode, ["-f", *argv])
    assert "\n" not in str(err.value)
    if not upstream_binary(mode):
        return
    if mode == "pasta" and os.geteuid() != 0:
        pytest.skip("upstream pasta as a user: leave namespaces alone")
    result = run_upstream(mode, ["-f", *argv])
    assert result.returncode == 1, (result.stdout, result.stderr)
