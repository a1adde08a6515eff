"""The command line: option table, parser, ``Conf``, ``--help`` and ``--version``.

Theory of operation
-------------------
``OPTIONS`` is the one description of the command line: the parser looks
options up in it, ``help_text()`` prints it, and ``tools/genman.py`` makes
the manual pages from it.  Each ``OptionSpec`` names an option (short and
long form), its argument (``metavar``, ``None`` for a flag), the programs that
accept it (``modes``), a one-line ``help`` and further ``details`` lines.  An
option whose help differs between passt and pasta (``-t``, ``-D``...) has one
entry per program, with the same names.

``parse(mode, argv)`` reads the arguments as upstream's ``getopt_long`` does:
``-fe`` (clustered flags), ``-m1500`` and ``-m 1500``, ``--mtu=1500`` and
``--mtu 1500``, unambiguous abbreviations of long options (``--deb``), ``--``
ending the options.  Each value is checked where it appears, so the first
mistake on the line is the one reported; conflicts between options are
checked at the end.  Any error raises ``ConfError`` with one line naming the
option and the problem, before anything was started; ``--help`` and
``--version`` print to standard output and raise ``SystemExit(0)``.

Positional arguments: passt takes none.  pasta's first non-option argument
starts the command to run, and everything after it belongs to the command
(``pasta sh -c 'echo hi'``), except that a sole decimal number is the PID of
a process whose namespaces to join, and options may follow it (as upstream,
``pasta 1234 --config-net``).  After ``--``, a sole decimal number is a PID
too, anything else is the command.

``Conf`` holds what the user said, in checked and typed form (addresses as
``ipaddress`` objects, MACs as 6 bytes, ``runas`` as ``(uid, gid)``, port
specifications as ``ports.PortFwd``), plus the defaults that do not depend on
the host.  What comes from the host (addresses, routes, MAC, resolvers, the
interface) stays ``None`` or empty here and is filled in by ``hostnet``.
Nothing here does I/O but reading the user and group databases for
``--runas`` names.

The option set is upstream 2026_07_16's (``test/unit/test_conf_2026.py``
compares it with that build's ``--help``).  Options whose feature this
program does not have yet would be parsed like the others and refused at
the end with one line naming what is missing (``NOT_IMPLEMENTED``, empty
now); the vhost-user-only options of live migration (``--repair-path``,
``--migrate-exit``, ``--migrate-no-linger``) are refused without
``--vhost-user`` in upstream's words (``--repair-path none`` excepted).  ``--print-capabilities`` prints
upstream's JSON and exits 0, as ``--version`` does.

Where this parser differs from upstream (2023) on purpose: values upstream
reads with ``strtol``/``sscanf`` and silently turns to 0 on garbage (``--mtu
abc``, ``-n abc``, ``-M zz:...``, ``-F abc``) are refused; single-valued
options given twice are refused as ``Multiple --X options given``
consistently (upstream lets ``-M``, ``-n`` and the last ``--netns`` win);
``-D ''`` and ``-S ''`` disable DNS and the search list as ``none`` does (the
help text says so, the 2023 binary refused them); ``--runas root`` is
accepted (upstream refused a name resolving to UID 0); a port spec may not
use port 0, takes ``%IFNAME/`` without an address and ``all,~22`` /
``auto,~22``; options of the other program are refused by name in both
directions; ``--help`` exits 0 on standard output.
"""

from __future__ import annotations

import grp
import ipaddress
import pwd
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from passt import __version__
from passt.ports import (
    ConfError,
    PortFwd,
    merge_port_fwds,
    parse_port_spec,
    shown,
    valid_ifname,
)
from passt.record import field, record

__all__ = ["Conf", "ConfError", "OptionSpec", "OPTIONS", "parse", "help_text", "version_text",
           "MODES"]

MODES = ("passt", "pasta")
PASST = frozenset({"passt"})
PASTA = frozenset({"pasta"})
BOTH = PASST | PASTA

MTU_MIN = 68                # ETH_MIN_MTU, as upstream
MTU_MAX = 65535             # ETH_MAX_MTU, as upstream
MTU_DEFAULT = 65520         # not applied here: hostnet fills it in (None: not given)
LOG_SIZE_DEFAULT = 1 << 20
LOG_SIZE_MIN = 40960        # the smallest --log-size upstream accepts
UNIX_PATH_MAX = 108         # sun_path, with its terminating NUL
PATH_MAX = 4096
INT_MAX = (1 << 31) - 1
ID_MAX = (1 << 32) - 2      # (uid_t)-1 means "unchanged" to setresuid()
DNAME_MAX = 253             # a domain name, without its final dot
LABEL_MAX = 63

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_DECIMAL = re.compile(r"[0-9]+")


# -- the option table ---------------------------------------------------------


@record(frozen=True, slots=True)
class OptionSpec:
    """One command-line option: names, argument, programs, help.

    ``short`` is the letter without ``-`` (or ``None``), ``long`` the name
    without ``--``, ``metavar`` the argument's name in the help (``None``: the
    option takes no argument), ``modes`` the programs accepting it, ``help``
    the one-line summary and ``details`` the further lines (defaults,
    repetition, examples), plain text.
    """

    short: str | None
    long: str
    metavar: str | None
    modes: frozenset[str]
    help: str
    details: tuple[str, ...] = ()

    @property
    def takes_arg(self) -> bool:
        return self.metavar is not None

    def names(self) -> str:
        """``-x, --long`` (or ``--long``) as in the help."""
        return f"-{self.short}, --{self.long}" if self.short else f"--{self.long}"


def _opt(short: str | None, long: str, metavar: str | None, modes: frozenset[str],
         help: str, *details: str) -> OptionSpec:
    return OptionSpec(short, long, metavar, modes, help, tuple(details))


_TWICE = "can be specified zero to two times (for IPv4 and IPv6)"

_SPEC_FORMS = (
    "  'none': don't forward any ports",
    "  [ADDR[%IFACE]/]PORTS: forward specific ports",
    "    PORTS is a comma-separated list of ports or port",
    "     ranges.  'all' indicates all unbound non-ephemeral",
    "     ports.  Ranges can be reduced by excluding ports or",
    "     ranges prefixed by '~'.",
)


def _port_examples(guest: str) -> tuple[str, ...]:
    return (
        "    Examples:",
        "    -t all          Forward all ports",
        "    -t ::1/all      Forward all ports from local address ::1",
        f"    -t 22           Forward local port 22 to 22 on {guest}",
        f"    -t 22:23        Forward local port 22 to 23 on {guest}",
        "    -t 22,25        Forward ports 22, 25 to ports 22, 25",
        "    -t 22-80        Forward ports 22 to 80",
        "    -t 22-80:32-90  Forward ports 22 to 80 to",
        "                    corresponding port numbers plus 10",
        f"    -t 192.0.2.1/5  Bind port 5 of 192.0.2.1 to {guest}",
        "    -t 5-25,~10-20  Forward ports 5 to 9, and 21 to 25",
        "    -t ~25          Forward all ports except for 25",
    )


_AUTO_EXAMPLES = (
    "    The 'auto' keyword may be given to only forward",
    "    ports which are bound in the target namespace",
    "    -t auto         Forward all ports bound in namespace",
    "    -t ::1/auto     Forward ports from ::1 if they are",
    "                    bound in the namespace",
    "    -t 80-82,auto   Forward ports 80-82 if they are bound",
    "                    in the namespace",
)


OPTIONS: tuple[OptionSpec, ...] = (
    _opt("d", "debug", None, BOTH, "Be verbose"),
    _opt(None, "trace", None, BOTH, "Be extra verbose, implies --debug"),
    _opt(None, "stats", "DELAY", BOTH, "Display events statistics",
         "minimum DELAY seconds between updates", "needs --foreground"),
    _opt("q", "quiet", None, BOTH, "Don't print informational messages"),
    _opt("f", "foreground", None, BOTH, "Don't run in background",
         "default: run in background if started from a TTY"),
    _opt("e", "stderr", None, BOTH, "Log to stderr too",
         "default: log to system logger only if started from a TTY"),
    _opt("l", "log-file", "PATH", BOTH, "Log (only) to given file"),
    _opt(None, "log-size", "BYTES", BOTH, "Maximum size of log file",
         f"minimum: {LOG_SIZE_MIN} bytes", "default: 1 MiB"),
    _opt(None, "runas", "UID|UID:GID", BOTH, "Run as given UID and GID",
         "numeric, or login and group names",
         "default: drop to user \"nobody\" if started as root"),
    _opt("c", "conf-path", "PATH", BOTH, "Configuration socket path"),
    _opt("h", "help", None, BOTH, "Display this help message and exit"),
    _opt(None, "version", None, BOTH, "Show version and exit"),
    _opt("s", "socket", "PATH", PASST, "UNIX domain socket path",
         "default: probe free path starting from /tmp/passt_1.socket"),
    _opt(None, "socket-path", "PATH", PASST, "Same as --socket"),
    _opt(None, "vhost-user", None, PASST, "Enable vhost-user mode",
         "UNIX domain socket is provided by -s option"),
    _opt(None, "print-capabilities", None, BOTH,
         "Print back-end capabilities in JSON format",
         "only meaningful for vhost-user mode"),
    _opt(None, "repair-path", "PATH", PASST, "Path for passt-repair(1)",
         "default: append '.repair' to UNIX domain path",
         "for vhost-user mode only; 'none' disables it"),
    _opt(None, "migrate-exit", None, PASST, "DEPRECATED: source quits after migration",
         "for vhost-user mode only"),
    _opt(None, "migrate-no-linger", None, PASST, "DEPRECATED: close sockets on migration",
         "for vhost-user mode only"),
    _opt("I", "ns-ifname", "NAME", PASTA, "Namespace interface name",
         "default: same interface name as external one"),
    _opt("F", "fd", "FD", BOTH, "Use FD as pre-opened connected socket",
         "implies --one-off behaviour: quit once it is closed"),
    _opt("p", "pcap", "FILE", BOTH, "Log tap-facing traffic to pcap file"),
    _opt("P", "pid", "FILE", BOTH, "Write own PID to the given file"),
    _opt("m", "mtu", "MTU", BOTH, "Assign MTU via DHCP/NDP",
         "a zero value disables assignment",
         "default: 65520: maximum 802.3 MTU minus 802.3 header",
         "         length, rounded to 32 bits (IPv4 words)"),
    _opt("a", "address", "ADDR", BOTH, "Assign IPv4 or IPv6 address ADDR[/PREFIXLEN]",
         _TWICE, "default: use addresses from interface with default route"),
    _opt("n", "netmask", "MASK", BOTH, "Assign IPv4 MASK, dot-decimal or bits",
         "default: netmask from matching address on the host"),
    _opt("M", "mac-addr", "ADDR", BOTH, "Use source MAC address ADDR",
         "default: 9a:55:9a:55:9a:55 (locally administered)"),
    _opt("g", "gateway", "ADDR", BOTH, "Pass IPv4 or IPv6 address as gateway",
         _TWICE, "default: gateway from interface with default route"),
    _opt("i", "interface", "NAME", BOTH, "Interface for addresses and routes",
         "default: from --outbound-if4 and --outbound-if6, if any",
         "         otherwise interface with first default route"),
    _opt("o", "outbound", "ADDR", BOTH, "Bind to address as outbound source",
         _TWICE, "default: use source address from routing tables"),
    _opt(None, "outbound-if4", "NAME", BOTH, "Bind to outbound interface for IPv4",
         "default: use interface from default route"),
    _opt(None, "outbound-if6", "NAME", BOTH, "Bind to outbound interface for IPv6",
         "default: use interface from default route"),
    _opt("D", "dns", "ADDR", PASST, "Use IPv4 or IPv6 address as DNS",
         "can be specified multiple times",
         "a single, empty option or 'none' disables DNS information",
         "default: use addresses from /etc/resolv.conf"),
    _opt("D", "dns", "ADDR", PASTA, "Use IPv4 or IPv6 address as DNS",
         "can be specified multiple times",
         "a single, empty option or 'none' disables DNS information",
         "default: don't use any addresses"),
    _opt("S", "search", "LIST", PASST, "Space-separated list, search domains",
         "a single, empty option or 'none' disables the DNS search list",
         "default: use search list from /etc/resolv.conf"),
    _opt("S", "search", "LIST", PASTA, "Space-separated list, search domains",
         "a single, empty option or 'none' disables the DNS search list",
         "default: don't use any search list"),
    _opt("H", "hostname", "NAME", BOTH, "Hostname to configure client with",
         "handed out by DHCP (option 12)"),
    _opt(None, "fqdn", "NAME", BOTH, "FQDN to configure client with",
         "handed out by DHCP (option 81) and DHCPv6 (option 39)"),
    _opt(None, "no-dhcp-dns", None, PASST, "No DNS list in DHCP/DHCPv6/NDP"),
    _opt(None, "no-dhcp-search", None, PASST, "No list in DHCP/DHCPv6/NDP"),
    _opt(None, "dhcp-dns", None, PASTA, "Pass DNS list via DHCP/DHCPv6/NDP"),
    _opt(None, "dhcp-search", None, PASTA, "Pass list via DHCP/DHCPv6/NDP"),
    _opt(None, "map-host-loopback", "ADDR", BOTH, "Translate ADDR to refer to host",
         _TWICE, "'none' disables the mapping (as --no-map-gw)",
         "default: gateway address"),
    _opt(None, "map-guest-addr", "ADDR", BOTH, "Translate ADDR to guest's address",
         _TWICE, "default: none"),
    _opt(None, "dns-forward", "ADDR", BOTH, "Forward DNS queries sent to ADDR",
         _TWICE, "default: don't forward DNS queries"),
    _opt(None, "dns-host", "ADDR", BOTH, "Host nameserver to direct queries to",
         _TWICE, "default: first nameserver from host's /etc/resolv.conf"),
    _opt(None, "no-tcp", None, BOTH, "Disable TCP protocol handler"),
    _opt(None, "no-udp", None, BOTH, "Disable UDP protocol handler"),
    _opt(None, "no-icmp", None, BOTH, "Disable ICMP/ICMPv6 protocol handler"),
    _opt(None, "no-dhcp", None, BOTH, "Disable DHCP server"),
    _opt(None, "no-ndp", None, BOTH, "Disable NDP responses"),
    _opt(None, "no-dhcpv6", None, BOTH, "Disable DHCPv6 server"),
    _opt(None, "no-ra", None, BOTH, "Disable router advertisements"),
    _opt(None, "freebind", None, BOTH, "Bind to any address for forwarding"),
    _opt(None, "no-map-gw", None, BOTH, "Don't map gateway address to host"),
    _opt(None, "chroot-fallback", None, BOTH, "Use chroot() if pivot_root() fails"),
    _opt("4", "ipv4-only", None, BOTH, "Enable IPv4 operation only"),
    _opt("6", "ipv6-only", None, BOTH, "Enable IPv6 operation only"),
    _opt("1", "one-off", None, PASST, "Quit after handling one single client"),
    _opt("t", "tcp-ports", "SPEC", PASST, "TCP port forwarding to guest",
         "can be specified multiple times",
         "SPEC can be:",
         *_SPEC_FORMS,
         *_port_examples("guest"),
         "default: none"),
    _opt("t", "tcp-ports", "SPEC", PASTA, "TCP port forwarding to namespace",
         "can be specified multiple times",
         "SPEC can be:",
         *_SPEC_FORMS,
         *_port_examples("namespace"),
         *_AUTO_EXAMPLES,
         "default: auto",
         "IPv6 bound ports are also forwarded for IPv4"),
    _opt("u", "udp-ports", "SPEC", PASST, "UDP port forwarding to guest",
         "SPEC is as described for TCP above",
         "default: none"),
    _opt("u", "udp-ports", "SPEC", PASTA, "UDP port forwarding to namespace",
         "SPEC is as described for TCP above",
         "default: auto",
         "IPv6 bound ports are also forwarded for IPv4",
         "unless specified, with '-t auto', UDP ports with numbers",
         "corresponding to forwarded TCP port numbers are",
         "forwarded too"),
    _opt("T", "tcp-ns", "SPEC", PASTA, "TCP port forwarding to init namespace",
         "SPEC is as described above, without address or interface",
         "default: auto"),
    _opt("U", "udp-ns", "SPEC", PASTA, "UDP port forwarding to init namespace",
         "SPEC is as described above, without address or interface",
         "default: auto"),
    _opt(None, "host-lo-to-ns-lo", None, PASTA,
         "Translate host-loopback forwards to namespace loopback"),
    _opt(None, "userns", "NSPATH", PASTA, "Target user namespace to join"),
    _opt(None, "netns", "PATH|NAME", PASTA, "Target network namespace to join"),
    _opt(None, "netns-only", None, PASTA, "Don't join existing user namespace",
         "implied if PATH or NAME are given without --userns"),
    _opt(None, "no-netns-quit", None, PASTA, "Don't quit if the target namespace is deleted",
         "for a network namespace bound to the filesystem (PATH or NAME)"),
    _opt(None, "config-net", None, PASTA, "Configure tap interface in namespace"),
    _opt(None, "no-copy-routes", None, PASTA, "DEPRECATED: Don't copy all routes to namespace",
         "needs --config-net"),
    _opt(None, "no-copy-addrs", None, PASTA,
         "DEPRECATED: Don't copy all addresses to namespace", "needs --config-net"),
    _opt(None, "ns-mac-addr", "ADDR", PASTA, "Set MAC address on tap interface"),
    _opt(None, "no-splice", None, PASTA, "Disable inbound socket splicing"),
    _opt(None, "splice-only", None, PASTA, "Only enable loopback forwarding",
         "implies --host-lo-to-ns-lo, --no-icmp, no DNS information"),
)

_USAGE = {
    "passt": ("Usage: passt [OPTION]...",),
    "pasta": ("Usage: pasta [OPTION]... [COMMAND] [ARGS]...",
              "       pasta [OPTION]... PID",
              "       pasta [OPTION]... --netns [PATH|NAME]",
              "",
              "Without PID or --netns, run the given command or a",
              "default shell in a new network and user namespace, and",
              "connect it via pasta."),
}
_HELP_COLUMN = 28


def help_text(mode: str) -> str:
    """``--help`` of ``mode``: usage, then every option of that mode, from ``OPTIONS``."""
    _check_mode(mode)
    lines = [*_USAGE[mode], ""]
    for opt in OPTIONS:
        if mode not in opt.modes:
            continue
        left = "  " + (opt.names() if opt.short else "    " + opt.names())
        if opt.metavar:
            left += " " + opt.metavar
        if len(left) + 2 > _HELP_COLUMN:
            lines.append(f"{left}  {opt.help}")
        else:
            lines.append(f"{left:<{_HELP_COLUMN}}{opt.help}")
        lines += [f"    {detail}" for detail in opt.details]
    return "\n".join(lines) + "\n"


def version_text(mode: str) -> str:
    """``--version`` of ``mode``."""
    _check_mode(mode)
    return (f"{mode} {__version__}\n"
            "Copyright the passt-py authors, after passt and pasta by Red Hat\n"
            "GNU Affero GPL version 3 or later <https://www.gnu.org/licenses/agpl-3.0.html>\n"
            "This is free software: you are free to change and redistribute it.\n"
            "There is NO WARRANTY, to the extent permitted by law.\n")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}, expected one of {', '.join(MODES)}")


# -- the result -----------------------------------------------------------------


@record(frozen=True, slots=True)
class Conf:
    """What the command line says, checked and typed; see the module notes.

    Field names are the long option names with ``-`` → ``_`` (``pid`` is the
    PID *file* of ``--pid``; pasta's positional PID is ``target_pid``).
    ``address``, ``gateway``, ``outbound``, ``dns_forward`` hold zero to two
    addresses (at most one per family, in the order given).
    ``None`` or empty means "not given": the host's value or the program's
    default applies (``mtu``: 65520, ``runas``: ``nobody`` if root).
    """

    mode: str = "passt"
    # logging and process
    debug: bool = False                 # also set by --trace
    trace: bool = False
    quiet: bool = False
    foreground: bool = False
    stderr: bool = False
    log_file: str | None = None
    log_size: int = LOG_SIZE_DEFAULT
    runas: tuple[int, int] | None = None
    pid: str | None = None              # --pid FILE
    pcap: str | None = None
    stats: int | None = None            # --stats DELAY (seconds)
    chroot_fallback: bool = False
    conf_path: str | None = None        # -c: pesto's socket (control_server)
    # passt: the QEMU side
    socket: str | None = None
    fd: int | None = None
    one_off: bool = False               # --one-off, or --fd (which implies it)
    vhost_user: bool = False            # --vhost-user: vhost_backend instead of the stream
    repair_path: str | None = None      # only "none" gets through without vhost-user
    migrate_exit: bool = False
    migrate_no_linger: bool = False
    # what the guest or namespace is told
    mtu: int | None = None              # 0: don't advertise an MTU
    address: tuple[IPAddress, ...] = ()
    netmask: int | None = None          # IPv4 prefix length, 0 to 32 (-n, or -a ADDR/LEN)
    mac_addr: bytes | None = None
    gateway: tuple[IPAddress, ...] = ()
    interface: str | None = None
    outbound: tuple[IPAddress, ...] = ()
    outbound_if4: str | None = None
    outbound_if6: str | None = None
    dns: tuple[IPAddress, ...] | None = None        # (): disabled ("none")
    search: tuple[str, ...] | None = None           # (): disabled ("none")
    no_dhcp_dns: bool = False           # passt
    no_dhcp_search: bool = False        # passt
    dhcp_dns: bool = False              # pasta
    dhcp_search: bool = False           # pasta
    dns_forward: tuple[IPAddress, ...] = ()
    dns_host: tuple[IPAddress, ...] = ()
    hostname: str | None = None
    fqdn: str | None = None
    # address mapping (see ``nat``): --map-host-loopback none sets no_map_gw
    map_host_loopback: tuple[IPAddress, ...] = ()
    map_guest_addr: tuple[IPAddress, ...] = ()
    # protocol handlers
    no_tcp: bool = False
    no_udp: bool = False
    no_icmp: bool = False
    no_dhcp: bool = False
    no_ndp: bool = False
    no_dhcpv6: bool = False
    no_ra: bool = False
    no_map_gw: bool = False
    freebind: bool = False
    ipv4_only: bool = False
    ipv6_only: bool = False
    # port forwarding: host → guest/namespace (-t, -u), namespace → host (-T, -U)
    tcp_ports: PortFwd = field(default_factory=PortFwd)
    udp_ports: PortFwd = field(default_factory=PortFwd)
    tcp_ns: PortFwd = field(default_factory=PortFwd)
    udp_ns: PortFwd = field(default_factory=PortFwd)
    # pasta: the namespace
    ns_ifname: str | None = None
    ns_mac_addr: bytes | None = None
    userns: str | None = None
    netns: str | None = None
    netns_only: bool = False
    no_netns_quit: bool = False
    config_net: bool = False
    no_copy_routes: bool = False        # deprecated: copy only the default route
    no_copy_addrs: bool = False         # deprecated: copy only the one address
    no_splice: bool = False
    splice_only: bool = False
    host_lo_to_ns_lo: bool = False      # also set by --splice-only
    target_pid: int | None = None       # PID whose namespaces to join
    command: tuple[str, ...] = ()       # (): the user's shell, unless pid or netns

    @property
    def dhcp_dns_effective(self) -> bool:
        """Whether DNS servers go into DHCP/DHCPv6/NDP (passt: unless told not; pasta: if told)."""
        return self.dhcp_dns if self.mode == "pasta" else not self.no_dhcp_dns

    @property
    def dhcp_search_effective(self) -> bool:
        return self.dhcp_search if self.mode == "pasta" else not self.no_dhcp_search

    @property
    def netns_path(self) -> str | None:
        """``--netns`` as a path: a bare name is under ``/run/netns`` (as ``ip netns``)."""
        if self.netns is None or "/" in self.netns:
            return self.netns
        return "/run/netns/" + self.netns

    @property
    def udp_ports_follow_tcp(self) -> bool:
        """pasta, ``-t auto`` and no ``-u``: UDP also forwards the TCP ports found bound."""
        return (self.mode == "pasta" and self.tcp_ports.mode == "auto"
                and self.udp_ports.mode == "auto" and not self.udp_ports.specs)

    @property
    def udp_ns_follow_tcp(self) -> bool:
        """The same for ``-T auto`` without ``-U``."""
        return (self.mode == "pasta" and self.tcp_ns.mode == "auto"
                and self.udp_ns.mode == "auto" and not self.udp_ns.specs)


# -- value checks -------------------------------------------------------------


class _Bad(Exception):
    """Internal: a value is wrong; the parser adds the value and the option."""

    def __init__(self, problem: str, hint: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.hint = hint


def _ip(text: str, problem: str) -> IPAddress:
    if "%" in text:         # no scope: ipaddress would take "fe80::1%eth0"
        raise _Bad(problem)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise _Bad(problem) from None


def _special(addr: IPAddress, *, loopback: bool) -> str | None:
    """Why ``addr`` cannot be used (``None`` if it can); ``loopback``: allowed or not."""
    if addr.is_unspecified:
        return "unspecified address"
    if addr.is_multicast:
        return "multicast address"
    if isinstance(addr, ipaddress.IPv4Address):
        if addr == ipaddress.IPv4Address("255.255.255.255"):
            return "broadcast address"
    elif addr.ipv4_mapped is not None or int(addr) >> 32 == 0 and not addr.is_loopback:
        return "IPv4-mapped or -compatible address"
    if addr.is_loopback and not loopback:
        return "loopback address"
    return None


def _checked_ip(text: str, problem: str, *, loopback: bool) -> IPAddress:
    addr = _ip(text, problem)
    why = _special(addr, loopback=loopback)
    if why:
        raise _Bad(problem, why)
    return addr


def _decimal(text: str, problem: str, lo: int, hi: int, hint: str | None = None) -> int:
    if not _DECIMAL.fullmatch(text) or not lo <= int(text) <= hi:
        raise _Bad(problem, hint)
    return int(text)


def _mtu(text: str) -> int:
    if _DECIMAL.fullmatch(text) and int(text) == 0:
        return 0
    return _decimal(text, "Invalid MTU", MTU_MIN, MTU_MAX, f"0 or {MTU_MIN} to {MTU_MAX}")


def _netmask(text: str) -> int:
    if _DECIMAL.fullmatch(text):
        return _decimal(text, "Invalid netmask", 1, 32, "1 to 32 bits, or dot-decimal")
    try:
        value = int(ipaddress.IPv4Address(text))
    except ValueError:
        raise _Bad("Invalid netmask", "1 to 32 bits, or dot-decimal") from None
    host = ~value & 0xFFFFFFFF
    if value == 0 or host & (host + 1):
        raise _Bad("Invalid netmask", "not a contiguous mask")
    return 32 - host.bit_length()


def _mac(text: str) -> bytes:
    sep = ":" if ":" in text else "-"
    parts = text.split(sep)
    if len(parts) != 6 or not all(re.fullmatch(r"[0-9A-Fa-f]{1,2}", p) for p in parts):
        raise _Bad("Invalid MAC address")
    mac = bytes(int(p, 16) for p in parts)
    if mac[0] & 1:
        raise _Bad("Invalid MAC address", "multicast or broadcast")
    if mac == bytes(6):
        raise _Bad("Invalid MAC address", "all zeroes")
    return mac


def _ifname(text: str) -> str:
    if not valid_ifname(text):
        raise _Bad("Invalid interface name", "1 to 15 bytes, no '/', ':' or spaces")
    return text


def _path(problem: str, limit: int = PATH_MAX) -> Callable[[str], str]:
    def check(text: str) -> str:
        raw = text.encode(errors="surrogateescape")
        if not raw or b"\0" in raw or len(raw) >= limit:
            raise _Bad(problem, f"1 to {limit - 1} bytes" if raw else None)
        return text
    return check


def _netns(text: str) -> str:
    if not text or "\0" in text or text in (".", ".."):
        raise _Bad("Invalid network namespace")
    return text


def _log_size(text: str) -> int:
    return _decimal(text, "Invalid log file size", LOG_SIZE_MIN, (1 << 63) - 1,
                    f"at least {LOG_SIZE_MIN} bytes")


def _fd(text: str) -> int:
    return _decimal(text, "Invalid file descriptor", 0, INT_MAX)


def _runas(text: str) -> tuple[int, int]:
    """``UID``, ``UID:GID``, ``LOGIN`` or ``LOGIN:GROUP`` → (uid, gid).

    A numeric UID alone runs with the same number as GID (as upstream); a
    login name alone with that user's primary group.
    """
    user, colon, group = text.partition(":")
    if not user or (colon and not group):
        raise _Bad("Invalid user or group")
    if _DECIMAL.fullmatch(user):
        uid = gid = _decimal(user, "Invalid user or group", 0, ID_MAX)
    else:
        try:
            entry = pwd.getpwnam(user)
        except (KeyError, ValueError):
            raise _Bad("Invalid user or group", f"no user {user!r}") from None
        uid, gid = entry.pw_uid, entry.pw_gid
    if colon:
        if _DECIMAL.fullmatch(group):
            gid = _decimal(group, "Invalid user or group", 0, ID_MAX)
        else:
            try:
                gid = grp.getgrnam(group).gr_gid
            except (KeyError, ValueError):
                raise _Bad("Invalid user or group", f"no group {group!r}") from None
    return uid, gid


def _domain(name: str) -> str:
    body = name[:-1] if name.endswith(".") else name
    labels = body.split(".")
    if (not body or len(body) > DNAME_MAX or not name.isascii() or not name.isprintable()
            or any(not 0 < len(label) <= LABEL_MAX for label in labels)):
        raise _Bad("Invalid search domain", "labels of 1 to 63 characters, 253 in all")
    return name


def _name(problem: str) -> Callable[[str], str]:
    """A hostname or FQDN handed to the client: printable, at most 253 bytes."""
    def check(text: str) -> str:
        if len(text.encode(errors="surrogateescape")) > DNAME_MAX or not text.isprintable():
            raise _Bad(problem, f"at most {DNAME_MAX} printable bytes")
        return text
    return check


def _stats(text: str) -> int:
    return _decimal(text, "Invalid statistics interval", 0, INT_MAX, "seconds")


def _address(text: str) -> tuple[IPAddress, int | None]:
    """``ADDR[/PREFIXLEN]`` of ``-a``; the prefix length only counts for IPv4."""
    addr_s, slash, prefix_s = text.partition("/")
    addr = _checked_ip(addr_s, "Invalid address", loopback=False)
    if not slash:
        return addr, None
    if not _DECIMAL.fullmatch(prefix_s) or not 0 < int(prefix_s) <= addr.max_prefixlen:
        raise _Bad("Invalid prefix length", f"1 to {addr.max_prefixlen}")
    return addr, int(prefix_s) if addr.version == 4 else None


# What a given option needs that this program does not have yet (issue named).
# The option is parsed, then refused at the end with this one line.
NOT_IMPLEMENTED: dict[str, str] = {}
# Options of vhost-user mode, refused without it in upstream's words.
_VHOST_USER_ONLY = ("repair-path", "migrate-exit", "migrate-no-linger")
CAPABILITIES = '{\n  "type": "net"\n}\n'


# -- the parser ---------------------------------------------------------------


_BY_LONG: dict[str, dict[str, OptionSpec]] = {}
_BY_SHORT: dict[str, dict[str, OptionSpec]] = {}
for _o in OPTIONS:
    for _m in _o.modes:
        _BY_LONG.setdefault(_o.long, {})[_m] = _o
        if _o.short:
            _BY_SHORT.setdefault(_o.short, {})[_m] = _o
del _o, _m

_SINGLE = {  # single-valued options: value check
    "log-file": _path("Invalid log file"),
    "log-size": _log_size,
    "runas": _runas,
    "pid": _path("Invalid PID file"),
    "pcap": _path("Invalid pcap path"),
    "socket": _path("Invalid socket path", UNIX_PATH_MAX),
    "conf-path": _path("Invalid configuration path", UNIX_PATH_MAX),
    "repair-path": _path("Invalid passt-repair path", UNIX_PATH_MAX),
    "stats": _stats,
    "hostname": _name("Invalid hostname"),
    "fqdn": _name("Invalid FQDN"),
    "fd": _fd,
    "mtu": _mtu,
    "netmask": _netmask,
    "mac-addr": _mac,
    "ns-ifname": _ifname,
    "ns-mac-addr": _mac,
    "userns": _path("Invalid user namespace"),
    "netns": _netns,
    "interface": _ifname,
    "outbound-if4": _ifname,
    "outbound-if6": _ifname,
}
_REDUNDANT = {  # single-valued options upstream words differently when repeated
    "interface": "Redundant interface",
    "outbound-if4": "Redundant outbound interface",
    "outbound-if6": "Redundant outbound interface",
}
_PER_FAMILY = {  # long name → (problem, loopback allowed)
    "address": ("Invalid address", False),
    "gateway": ("Invalid gateway address", False),
    "outbound": ("Invalid outbound address", True),
    "dns-forward": ("Invalid DNS forwarding address", False),
    "dns-host": ("Invalid host nameserver address", True),
    "map-host-loopback": ("Invalid address to remap to host", False),
    "map-guest-addr": ("Invalid address to remap to guest", False),
}
_ALIASES = {"socket-path": "socket"}  # long name → the option it is another name of
_ONCE_FLAGS = {  # flags upstream refuses twice
    "debug": "Multiple --debug options given",
    "trace": "Multiple --trace options given",
    "quiet": "Multiple --quiet options given",
    "foreground": "Multiple --foreground options given",
    "stderr": "Multiple --stderr options given",
    "one-off": "Redundant --one-off option",
}
_PORT_OPTIONS = ("tcp-ports", "udp-ports", "tcp-ns", "udp-ns")


class _Parser:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.values: dict[str, Any] = {"mode": mode}
        self.seen: set[str] = set()
        self.ports: dict[str, list[PortFwd]] = {name: [] for name in _PORT_OPTIONS}
        self.extra: list[str] = []

    # -- the option scanner, getopt_long's way --

    def run(self, argv: Sequence[str]) -> Conf:
        i, n = 0, len(argv)
        while i < n:
            arg = argv[i]
            i += 1
            if arg == "--":
                self.after_dashes(list(argv[i:]))
                break
            if arg.startswith("--"):
                name, eq, value = arg[2:].partition("=")
                opt = self.long(name)
                if not opt.takes_arg:
                    if eq:
                        raise ConfError(f"option '--{opt.long}' doesn't allow an argument")
                    self.apply(opt, None)
                    continue
                if not eq:
                    if i == n:
                        raise ConfError(f"option '--{opt.long}' requires an argument")
                    value, i = argv[i], i + 1
                self.apply(opt, value)
            elif arg.startswith("-") and arg != "-":
                j = 1
                while j < len(arg):
                    opt = self.short(arg[j])
                    j += 1
                    if not opt.takes_arg:
                        self.apply(opt, None)
                        continue
                    if j < len(arg):
                        value = arg[j:]
                    elif i < n:
                        value, i = argv[i], i + 1
                    else:
                        raise ConfError(f"option requires an argument -- '{opt.short}' "
                                        f"(--{opt.long})")
                    self.apply(opt, value)
                    break
            elif self.positional(arg):
                self.values["command"] = tuple(argv[i - 1:])
                break
        return self.finish()

    def long(self, name: str) -> OptionSpec:
        if name in _BY_LONG:
            return self.pick(_BY_LONG[name])
        matches = sorted(long for long in _BY_LONG if name and long.startswith(name))
        if not matches:
            raise ConfError(f"unrecognized option '--{shown(name)}'")
        if len(matches) > 1:
            listed = " ".join(f"'--{m}'" for m in matches)
            raise ConfError(f"option '--{name}' is ambiguous; possibilities: {listed}")
        return self.pick(_BY_LONG[matches[0]])

    def short(self, letter: str) -> OptionSpec:
        if letter not in _BY_SHORT:
            raise ConfError(f"invalid option -- '{shown(letter)}'")
        return self.pick(_BY_SHORT[letter])

    def pick(self, variants: dict[str, OptionSpec]) -> OptionSpec:
        if self.mode in variants:
            return variants[self.mode]
        (other, opt), = variants.items()
        raise ConfError(f"--{opt.long} is for {other} mode only")

    # -- positional arguments --

    def positional(self, arg: str) -> bool:
        """A non-option argument; ``True`` if it starts pasta's command."""
        if self.mode == "passt":
            self.extra.append(arg)
            return False
        if self.values.get("target_pid") is not None:
            raise ConfError(f"Extra non-option argument after PID: {shown(arg)}")
        if _DECIMAL.fullmatch(arg):
            self.set_pid(arg)
            return False
        return True

    def after_dashes(self, rest: list[str]) -> None:
        if self.mode == "passt":
            self.extra += rest
        elif self.values.get("target_pid") is not None:
            if rest:
                raise ConfError(f"Both PID and command given: {shown(rest[0])}")
        elif len(rest) == 1 and _DECIMAL.fullmatch(rest[0]):
            self.set_pid(rest[0])
        else:
            self.values["command"] = tuple(rest)

    def set_pid(self, text: str) -> None:
        if not 0 < int(text) <= INT_MAX:
            raise ConfError(f"Invalid PID: {text}")
        self.values["target_pid"] = int(text)

    # -- options --

    def apply(self, opt: OptionSpec, value: str | None) -> None:
        if opt.long in _ALIASES:
            opt = self.pick(_BY_LONG[_ALIASES[opt.long]])
        name = opt.long
        try:
            _HANDLERS[name](self, opt, value)
        except _Bad as e:
            assert value is not None
            where = f"--{name}, {e.hint}" if e.hint else f"--{name}"
            raise ConfError(f"{e.problem}: {shown(value)} ({where})") from None
        self.seen.add(name)

    def flag(self, opt: OptionSpec, _value: str | None) -> None:
        if opt.long in self.seen and opt.long in _ONCE_FLAGS:
            raise ConfError(_ONCE_FLAGS[opt.long])
        self.values[opt.long.replace("-", "_")] = True
        if opt.long == "trace":
            self.values["debug"] = True

    def single(self, opt: OptionSpec, value: str | None) -> None:
        assert value is not None
        if opt.long in self.seen:
            if opt.long in _REDUNDANT:
                raise _Bad(_REDUNDANT[opt.long])
            raise ConfError(f"Multiple --{opt.long} options given")
        self.values[opt.long.replace("-", "_")] = _SINGLE[opt.long](value)
        if opt.long == "fd":
            self.values["one_off"] = True

    def per_family(self, opt: OptionSpec, value: str | None) -> None:
        assert value is not None
        problem, loopback = _PER_FAMILY[opt.long]
        addr = _checked_ip(value, problem, loopback=loopback)
        key = opt.long.replace("-", "_")
        given: tuple[IPAddress, ...] = self.values.get(key, ())
        if any(a.version == addr.version for a in given):
            raise _Bad(problem, f"an IPv{addr.version} one was already given")
        self.values[key] = (*given, addr)

    def address(self, opt: OptionSpec, value: str | None) -> None:
        assert value is not None
        addr, prefix = _address(value)
        self.per_family(opt, str(addr))
        if prefix is not None:
            self.prefix_length(prefix)

    def netmask(self, _opt: OptionSpec, value: str | None) -> None:
        assert value is not None
        if "netmask" in self.seen:
            raise ConfError("Multiple --netmask options given")
        self.prefix_length(_netmask(value))

    def prefix_length(self, bits: int) -> None:
        """The IPv4 prefix, from ``-n`` or ``-a ADDR/LEN``: only one of them, once."""
        if self.values.get("netmask") is not None:
            raise ConfError("Redundant prefix length specification")
        self.values["netmask"] = bits

    def map_host_loopback(self, opt: OptionSpec, value: str | None) -> None:
        if value == "none":      # as upstream: no mapping at all, like --no-map-gw
            self.values["map_host_loopback"] = ()
            self.values["no_map_gw"] = True
            return
        self.per_family(opt, value)

    def print_capabilities(self, _opt: OptionSpec, _value: str | None) -> None:
        sys.stdout.write(CAPABILITIES)
        sys.stdout.flush()
        raise SystemExit(0)

    def dns(self, _opt: OptionSpec, value: str | None) -> None:
        assert value is not None
        given = self.values.get("dns")
        if value in ("", "none"):
            if given == ():
                raise _Bad("Redundant DNS options")
            if given:
                raise _Bad("Conflicting DNS options")
            self.values["dns"] = ()
            return
        if given == ():
            raise _Bad("Conflicting DNS options", "DNS was disabled")
        addr = _checked_ip(value, "Invalid DNS address", loopback=True)
        if addr not in (given or ()):
            self.values["dns"] = (*(given or ()), addr)

    def search(self, _opt: OptionSpec, value: str | None) -> None:
        assert value is not None
        given = self.values.get("search")
        if value.strip() in ("", "none"):
            if given == ():
                raise _Bad("Redundant DNS search options")
            if given:
                raise _Bad("Conflicting DNS search options")
            self.values["search"] = ()
            return
        if given == ():
            raise _Bad("Conflicting DNS search options", "the search list was disabled")
        names = list(given or ())
        for word in value.split():
            try:
                _domain(word)
            except _Bad as e:
                raise ConfError(f"{e.problem}: {shown(word)} (--search, {e.hint})") from None
            if word not in names:
                names.append(word)
        self.values["search"] = tuple(names)

    def port_spec(self, opt: OptionSpec, value: str | None) -> None:
        assert value is not None
        part = parse_port_spec(value, self.mode, f"--{opt.long}")
        parts = self.ports[opt.long]
        if parts:   # check now, so that the first mistake is the one reported
            merge_port_fwds([*parts, part], f"--{opt.long}", self.mode)
        parts.append(part)

    def help(self, _opt: OptionSpec, _value: str | None) -> None:
        sys.stdout.write(help_text(self.mode))
        sys.stdout.flush()
        raise SystemExit(0)

    def version(self, _opt: OptionSpec, _value: str | None) -> None:
        sys.stdout.write(version_text(self.mode))
        sys.stdout.flush()
        raise SystemExit(0)

    # -- the end: conflicts between options, then the Conf --

    def finish(self) -> Conf:
        v = self.values
        if self.extra:
            raise ConfError(f"Extra non-option argument: {shown(self.extra[0])}")
        if v.get("debug") and v.get("quiet"):
            raise ConfError("Either --debug or --quiet")
        if v.get("log_file") is not None and v.get("stderr"):
            raise ConfError("Can't log to both stderr and file (--log-file, --stderr)")
        if v.get("ipv4_only") and v.get("ipv6_only"):
            raise ConfError("Options ipv4-only and ipv6-only are mutually exclusive")
        if v.get("socket") is not None and v.get("fd") is not None:
            raise ConfError("Options --socket and --fd are mutually exclusive")
        if v.get("netns") is not None and (v.get("target_pid") is not None or v.get("command")):
            raise ConfError("Both --netns and PID or command given")
        self.check_2026(v)
        for name, parts in self.ports.items():     # not given: none (passt), auto (pasta)
            v[name.replace("-", "_")] = merge_port_fwds(parts, f"--{name}", self.mode)
        return Conf(**v)

    def check_2026(self, v: dict[str, Any]) -> None:
        """Conflicts among the options upstream added after 2023, in its words."""
        if v.get("stats") is not None and not v.get("foreground"):
            raise ConfError("Can't display statistics if not running in foreground")
        if v.get("splice_only"):
            if v.get("no_splice"):
                raise ConfError("--splice-only is incompatible with --no-splice")
            v.update(host_lo_to_ns_lo=True, no_icmp=True, dns=(), search=())
        if v.get("no_splice") and v.get("host_lo_to_ns_lo"):
            raise ConfError("--host-lo-to-ns-lo is incompatible with --no-splice")
        for name in ("no-copy-routes", "no-copy-addrs"):
            if name in self.seen and not v.get("config_net"):
                raise ConfError(f"--{name} needs --config-net")
        for name, message in NOT_IMPLEMENTED.items():
            if name in self.seen:
                raise ConfError(message)
        for name in _VHOST_USER_ONLY:
            if name in self.seen and v.get(name.replace("-", "_")) not in ("none", None, False):
                if not v.get("vhost_user"):
                    raise ConfError(f"--{name} is for vhost-user mode only")


_Handler = Callable[[_Parser, OptionSpec, "str | None"], None]


def _handlers() -> dict[str, _Handler]:
    table: dict[str, _Handler] = {}
    for opt in OPTIONS:
        name = opt.long
        if name in ("help", "version", "dns", "search", "address", "netmask",
                    "map-host-loopback", "print-capabilities"):
            table[name] = getattr(_Parser, name.replace("-", "_"))
        elif name in _PORT_OPTIONS:
            table[name] = _Parser.port_spec
        elif name in _PER_FAMILY:
            table[name] = _Parser.per_family
        elif not opt.takes_arg:
            table[name] = _Parser.flag
        else:
            table[name] = _Parser.single
    return table


_HANDLERS = _handlers()


def parse(mode: str, argv: Sequence[str]) -> Conf:
    """The ``Conf`` for ``argv`` (without the program name) of ``mode`` (passt, pasta).

    Raises ``ConfError`` (one line) for anything wrong; ``SystemExit(0)`` after
    printing ``--help`` or ``--version``.
    """
    _check_mode(mode)
    return _Parser(mode).run(argv)
