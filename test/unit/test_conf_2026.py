"""Our command line against upstream 2026_07_16's, the interface clients are written for.

The long options of upstream 2026's ``passt --help`` and ``pasta --help`` are
checked in below, so the comparison holds without the C build; when
``make deps`` has built upstream (``build/upstream-2026``, see
``mk/upstream.mk``), its live ``--help`` is read too and must list exactly
these names, so the checked-in copy cannot drift.  Every name must be
accepted by ours in the same program (a bad value may be refused, an
unknown option or one "for the other mode" may not), and our ``--help`` must
list it.  The exact texts clients match are checked on both programs:
``unrecognized option '--NAME'`` (podman retries without
``--map-guest-addr`` on it) and the rootlesskit probe's exit status 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from passt import conf
from passt.conf import ConfError, parse

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_2026 = ROOT / "build" / "upstream-2026"

_COMMON = (
    "address", "chroot-fallback", "conf-path", "debug", "dns", "dns-forward", "dns-host", "fd",
    "foreground", "fqdn", "freebind", "gateway", "help", "hostname", "interface", "ipv4-only",
    "ipv6-only", "log-file", "log-size", "map-guest-addr", "map-host-loopback", "mac-addr",
    "mtu", "netmask", "no-dhcp", "no-dhcpv6", "no-icmp", "no-map-gw", "no-ndp", "no-ra",
    "no-tcp", "no-udp", "outbound", "outbound-if4", "outbound-if6", "pcap", "pid", "quiet",
    "runas", "search", "stats", "tcp-ports", "trace", "udp-ports", "version",
)
UPSTREAM_2026_LONG = {
    "passt": frozenset(_COMMON) | {
        "migrate-exit", "migrate-no-linger", "no-dhcp-dns", "no-dhcp-search", "one-off",
        "print-capabilities", "repair-path", "socket", "socket-path", "vhost-user",
    },
    "pasta": frozenset(_COMMON) | {
        "config-net", "dhcp-dns", "dhcp-search", "host-lo-to-ns-lo", "netns", "netns-only",
        "no-copy-addrs", "no-copy-routes", "no-netns-quit", "no-splice", "ns-ifname",
        "ns-mac-addr", "splice-only", "tcp-ns", "udp-ns", "userns",
    },
}

_OPTION_LINE = re.compile(r"^ {2,6}((?:-[A-Za-z0-9], )?--[a-z0-9-]+(?:, --[a-z0-9-]+)*)", re.M)


def help_long_names(text: str) -> set[str]:
    """Long option names of a ``--help`` text (not those of the examples)."""
    return {name[2:] for line in _OPTION_LINE.findall(text) for name in line.split(", ")
            if name.startswith("--")}


def upstream(mode: str) -> Path:
    binary = UPSTREAM_2026 / mode
    if not binary.exists():
        pytest.skip("upstream 2026 not built (make deps builds it)")
    return binary


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``argv`` run from /tmp; ours imported from this tree."""
    env = {**os.environ, "LC_ALL": "C", "PYTHONPATH": str(ROOT)}
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd="/tmp",
                          stdin=subprocess.DEVNULL, env=env)


def ours(mode: str) -> list[str]:
    function = "main_passt" if mode == "passt" else "main_pasta"
    return [sys.executable, "-c", f"from passt.cli import {function}; {function}()"]


@pytest.mark.parametrize("mode", ["passt", "pasta"])
def test_live_upstream_2026_help_lists_the_checked_in_names(mode):
    result = run([str(upstream(mode)), "--help"])
    assert result.returncode == 0
    assert help_long_names(result.stdout) == UPSTREAM_2026_LONG[mode]


@pytest.mark.parametrize("mode", ["passt", "pasta"])
def test_our_help_lists_every_upstream_2026_option(mode):
    assert UPSTREAM_2026_LONG[mode] <= help_long_names(conf.help_text(mode))


def accepted_name_cases():
    for mode, names in UPSTREAM_2026_LONG.items():
        for name in sorted(names):
            yield pytest.param(mode, name, id=f"{mode}:--{name}")


@pytest.mark.parametrize("mode,name", list(accepted_name_cases()))
def test_every_upstream_2026_option_is_ours(mode, name):
    try:
        parse(mode, [f"--{name}", "x"])
    except ConfError as e:      # a bad value or a missing feature, never an unknown option
        text = str(e)
        assert "unrecognized" not in text and "ambiguous" not in text
        assert "is for passt mode only" not in text and "is for pasta mode only" not in text
        assert "\n" not in text
    except SystemExit as end:
        assert end.code == 0


@pytest.mark.parametrize("mode,name", [("pasta", "map-guest-adr"), ("passt", "bogus-2026"),
                                       ("pasta", "foo")])
def test_unknown_options_keep_getopt_s_text(mode, name):
    expected = f"unrecognized option '--{name}'"
    result = run([*ours(mode), f"--{name}"])
    assert result.returncode == 1 and result.stderr == expected + "\n"
    theirs = run([str(upstream(mode)), f"--{name}"])
    assert theirs.returncode == 1 and expected in theirs.stderr


@pytest.mark.parametrize("impl", ["ours", "upstream"])
def test_rootlesskit_probe(impl):
    prefix = ours("pasta") if impl == "ours" else [str(upstream("pasta"))]
    result = run([*prefix, "--host-lo-to-ns-lo", "--version"])
    assert result.returncode == 0 and result.stdout.startswith("pasta ")


@pytest.mark.parametrize("impl", ["ours", "upstream"])
def test_podman_s_missing_feature_line_is_not_unrecognized(impl):
    """podman retries without --map-guest-addr only on "unrecognized option": we
    must not say it, for any of the 2026 options."""
    prefix = ours("pasta") if impl == "ours" else [str(upstream("pasta"))]
    result = run([*prefix, "--map-guest-addr", "bogus"])
    assert result.returncode == 1
    assert "unrecognized" not in result.stderr and "map" in result.stderr.lower()
