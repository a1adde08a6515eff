"""What the host has: addresses, routes, MAC and resolvers → ``NetInfo``.

Theory of operation
-------------------
passt and pasta hand the guest (or namespace) the host's own identity: the
address, prefix and default gateway of the host interface that carries the
default route.  The guest then believes it sits on the host's own link, and
replies to its outbound connections come back to addresses it already knows.
The source MAC of every frame we send towards the guest is, as upstream
2026, the fixed locally administered ``9a:55:9a:55:9a:55`` unless ``-M``
(the 2023 snapshot used the template interface's).  Options override each piece (``-a``, ``-n``, ``-g``, ``-M``),
``-i``/``--outbound-if4``/``--outbound-if6`` choose the template interface,
``-4``/``-6`` switch a family off.

Each address family is resolved on its own and may fail on its own, as
upstream does: without an interface holding a default route (and none given)
the family is disabled with a warning; a family also needs an address, a
gateway and, for IPv6, the interface's link-local address, which is what we
answer router solicitations and NDP with.  If neither family survives, there
is nothing to offer and ``discover`` raises ``HostNetError("External interface
not usable")``, which the command line turns into one line and exit status 1.

The work is split in three so that the decisions can be tested without a
kernel:

* ``query_host()`` is the only function that talks netlink (``rtnl``): it
  boils the link, address and route dumps down to a ``HostSnapshot`` of small
  tuples (and leaves no thread or socket behind, which matters to pasta: it
  may ``setns()`` into a user namespace afterwards, which the kernel only
  allows to single-threaded processes);
* ``parse_resolv_conf()`` turns ``/etc/resolv.conf`` text into nameservers
  and a search list (and ``read_sysctl_int()`` reads the kernel's limits that
  size our buffers and pipes);
* ``pick()`` is a pure function from options (``Overrides``), snapshot and
  resolver configuration to ``NetInfo``.

DNS follows upstream: ``--dns`` replaces ``/etc/resolv.conf``; a resolver on
the host's loopback (systemd-resolved's ``127.0.0.53``) is unreachable from
the guest, so it is advertised as the gateway address (which ``--map-gw``
maps to the host's loopback) or, with ``--no-map-gw``, dropped.  The first
resolver of each family, as the host sees it, is where ``--dns-forward``
queries go.  Both programs know the resolvers, but only passt advertises them
by default (DHCP, DHCPv6, NDP RDNSS): pasta's namespace normally shares the
host's ``/etc/resolv.conf``, so it advertises them only with ``--dhcp-dns``
(and the search list with ``--dhcp-search``).  ``NetInfo.dhcp_dns`` and
``NetInfo.dhcp_search`` carry that decision for the L2 services.

Two choices follow the man page and newer upstream rather than the 2023
Debian build: with ``-a`` and no ``-n``, the prefix is the one of the host
address whose subnet contains the given address, else the classful default
(RFC 4632's historical classes A/B/C); and an interface without a MAC address
(a tun or WireGuard device) is a template like any other.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any

from passt import log
from passt.errors import StartupError
from passt.host import rtnl
from passt.record import NamedTuple, field, record

DEFAULT_MTU = 65520
RESOLV_CONF = "/etc/resolv.conf"
# Our MAC towards the guest unless -M (upstream 2026's default, locally administered).
DEFAULT_MAC = bytes.fromhex("9a559a559a55")

RT_TABLE_MAIN = rtnl.RT_TABLE_MAIN
RTPROT_KERNEL = 2
RTN_UNICAST = rtnl.RTN_UNICAST
RT_SCOPE_UNIVERSE = rtnl.RT_SCOPE_UNIVERSE
RT_SCOPE_LINK = rtnl.RT_SCOPE_LINK

IPAddress = IPv4Address | IPv6Address


class HostNetError(StartupError):
    """The host offers nothing usable; the message is one line for the user."""


class Link(NamedTuple):
    ifindex: int
    name: str


class Addr(NamedTuple):
    family: int
    ifindex: int
    address: IPAddress
    prefixlen: int
    scope: int


class DefaultRoute(NamedTuple):
    family: int
    ifindex: int
    gateway: IPAddress | None
    metric: int


class Route(NamedTuple):
    """A main-table route to a prefix other than the default (copied into pasta's namespace)."""

    ifindex: int
    dst: IPv4Network | IPv6Network
    gateway: IPAddress | None
    metric: int


@record(frozen=True)
class HostSnapshot:
    """The host's links, addresses and main-table default routes."""

    links: tuple[Link, ...] = ()
    addrs: tuple[Addr, ...] = ()
    routes: tuple[DefaultRoute, ...] = ()
    other_routes: tuple[Route, ...] = ()


@record(frozen=True)
class Resolv:
    nameservers: tuple[IPAddress, ...] = ()
    search: tuple[str, ...] = ()


@record(frozen=True)
class Overrides:
    """The options that shape ``NetInfo``, in the types ``pick`` wants.

    ``dns``/``search`` are ``None`` for "read /etc/resolv.conf" and empty for
    "none".  ``dhcp_dns``/``dhcp_search`` say whether to advertise them.
    """

    address4: IPAddress | None = None
    address6: IPAddress | None = None
    prefix4: int | None = None
    gateway4: IPAddress | None = None
    gateway6: IPAddress | None = None
    mac: bytes | None = None
    interface: str | None = None
    outbound_if4: str | None = None
    outbound_if6: str | None = None
    ipv4: bool = True
    ipv6: bool = True
    mtu: int = DEFAULT_MTU
    dns: tuple[IPAddress, ...] | None = None
    search: tuple[str, ...] | None = None
    dns_forward: tuple[IPAddress, ...] = ()
    map_gw: bool = True
    map_host_loopback: tuple[IPAddress, ...] = ()
    dhcp_dns: bool = True
    dhcp_search: bool = True
    dns_host: tuple[IPAddress, ...] = ()
    hostname: str | None = None
    fqdn: str | None = None
    copy_addrs: bool = True
    copy_routes: bool = True


@record(frozen=True)
class NetInfo:
    """Addresses and identity we present to the guest or namespace.

    A family is enabled when its address is not ``None``.  ``ifname4`` and
    ``ifname6`` name the host's template interfaces (pasta names its tap
    after them).  ``ll6`` is our own link-local address, the source of router
    advertisements and NDP answers.  ``mac`` is our source MAC towards the
    guest.  ``mtu`` 0 means "don't advertise any".  ``dns`` is what the guest
    is told (if ``dhcp_dns``), ``dns_host4/6`` (``--dns-host``, else the first
    resolver) where ``--dns-forward`` queries to ``dns_match4/6`` are sent.
    ``hostname`` and ``fqdn`` are handed out by DHCP and DHCPv6.
    """

    mac: bytes
    mtu: int = DEFAULT_MTU
    ifname4: str = ""
    addr4: IPv4Address | None = None
    prefix4: int = 0
    gw4: IPv4Address | None = None
    ifname6: str = ""
    addr6: IPv6Address | None = None
    prefix6: int = 64
    gw6: IPv6Address | None = None
    ll6: IPv6Address | None = None
    dns: tuple[IPAddress, ...] = ()
    search: tuple[str, ...] = ()
    dhcp_dns: bool = True
    dhcp_search: bool = True
    dns_host4: IPv4Address | None = None
    dns_host6: IPv6Address | None = None
    dns_match4: IPv4Address | None = None
    dns_match6: IPv6Address | None = None
    hostname: str | None = None         # -H: DHCP option 12
    fqdn: str | None = None             # --fqdn: DHCP option 81, DHCPv6 option 39
    # pasta --config-net: the template interface's other addresses and routes
    extra_addrs: tuple[tuple[IPAddress, int], ...] = ()
    extra_routes: tuple[Route, ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def ipv4(self) -> bool:
        return self.addr4 is not None

    @property
    def ipv6(self) -> bool:
        return self.addr6 is not None

    @property
    def template_ifname(self) -> str:
        """The host interface pasta names its tap after (IPv4's first)."""
        return self.ifname4 or self.ifname6


# -- the host, through netlink -----------------------------------------------


def query_host() -> HostSnapshot:
    """Dump links, addresses and default routes of the current network namespace."""
    with rtnl.Rtnl() as nl:
        links = tuple(Link(link.ifindex, link.name) for link in nl.links())
        addrs = tuple(a for a in (_addr(msg) for msg in nl.addrs()) if a is not None)
        routes: list[DefaultRoute] = []
        others: list[Route] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in nl.routes(family):
                routes.extend(_default_routes(msg))
                others.extend(_other_routes(msg))
    return HostSnapshot(links, addrs, tuple(routes), tuple(others))


def _addr(msg: rtnl.AddrInfo) -> Addr | None:
    packed = msg.local or msg.address
    if not packed:
        return None
    return Addr(msg.family, msg.ifindex, ip_address(packed), msg.prefixlen, msg.scope)


def _default_routes(msg: rtnl.RouteInfo) -> list[DefaultRoute]:
    if msg.dst_len != 0 or msg.table != RT_TABLE_MAIN or msg.type != RTN_UNICAST:
        return []
    if msg.hops:
        return [_route(msg.family, oif, gateway, msg.priority) for oif, gateway in msg.hops]
    return [_route(msg.family, msg.oif, msg.gateway, msg.priority)]


def _other_routes(msg: rtnl.RouteInfo) -> list[Route]:
    """A route worth copying: main table, unicast, not the default, not the
    kernel's own prefix route of an address (adding the address makes it)."""
    if (msg.dst_len == 0 or msg.table != RT_TABLE_MAIN or msg.type != RTN_UNICAST
            or msg.protocol == RTPROT_KERNEL or not msg.oif or msg.dst is None):
        return []
    dst = ip_network((msg.dst, msg.dst_len), strict=False)
    return [Route(msg.oif, dst, ip_address(msg.gateway) if msg.gateway else None, msg.priority)]


def _route(family: int, oif: int, gateway: bytes | None, metric: int) -> DefaultRoute:
    return DefaultRoute(family, oif, ip_address(gateway) if gateway else None, metric)


# -- resolv.conf --------------------------------------------------------------


def read_resolv_conf(path: str = RESOLV_CONF) -> Resolv:
    """Nameservers and search list from ``path``; a missing file means none."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_resolv_conf(f.read())
    except OSError:
        return Resolv()


def read_sysctl_int(path: str) -> int:
    """An integer setting from ``/proc/sys`` (its first field); 0 when unreadable."""
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def parse_resolv_conf(text: str) -> Resolv:
    """``nameserver`` lines in order (scoped and malformed ones skipped); the last ``search``."""
    servers: list[IPAddress] = []
    search: tuple[str, ...] = ()
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver" and "%" not in words[1]:
            try:
                servers.append(ip_address(words[1]))
            except ValueError:
                continue
        elif words and words[0] == "search":
            search = tuple(words[1:])
    return Resolv(tuple(servers), search)


# -- the decisions (pure) -----------------------------------------------------


def discover(conf: Any) -> NetInfo:
    """``NetInfo`` for ``conf`` from the host we run on; raises ``HostNetError``."""
    overrides = overrides_from_conf(conf)
    needs_resolv = overrides.dns is None or overrides.search is None
    info = pick(overrides, query_host(), read_resolv_conf() if needs_resolv else Resolv())
    for message in info.warnings:
        log.warn("%s", message)
    return info


def pick(ov: Overrides, host: HostSnapshot, resolv: Resolv) -> NetInfo:
    """Choose interfaces, addresses, gateways, MAC and resolvers; raise if nothing is usable."""
    warnings: list[str] = []
    v4 = _pick_family(ov, host, socket.AF_INET, warnings) if ov.ipv4 else None
    v6 = _pick_family(ov, host, socket.AF_INET6, warnings) if ov.ipv6 else None
    template = v4 or v6
    if template is None:
        raise HostNetError("External interface not usable")
    fields: dict[str, Any] = {}
    if v4:
        fields.update(ifname4=v4.ifname, addr4=v4.address, prefix4=v4.prefix, gw4=v4.gateway)
    if v6:
        fields.update(ifname6=v6.ifname, addr6=v6.address, prefix6=v6.prefix, gw6=v6.gateway,
                      ll6=v6.link_local)
    dns, hosts = _pick_dns(ov, resolv, v4, v6)
    hosts.update({a.version: a for a in ov.dns_host})     # --dns-host wins
    fields.update(dns_host4=hosts.get(4), dns_host6=hosts.get(6),
                  dns_match4=_first_of_version(ov.dns_forward, 4),
                  dns_match6=_first_of_version(ov.dns_forward, 6))
    fields.update(_copies(ov, host, v4, v6))
    return NetInfo(
        mac=ov.mac or DEFAULT_MAC,
        mtu=ov.mtu,
        dns=dns,
        search=ov.search if ov.search is not None else resolv.search,
        dhcp_dns=ov.dhcp_dns,
        dhcp_search=ov.dhcp_search,
        hostname=ov.hostname,
        fqdn=ov.fqdn,
        warnings=tuple(warnings),
        **fields,
    )


def _copies(ov: Overrides, host: HostSnapshot, v4: _Family | None,
            v6: _Family | None) -> dict[str, Any]:
    """The template interfaces' other global addresses and their routes (upstream
    2026: all are copied into pasta's namespace), per family, unless ``-a`` (or
    ``--no-copy-addrs``) and ``-g`` (or ``--no-copy-routes``) say otherwise."""
    addrs: list[tuple[IPAddress, int]] = []
    routes: list[Route] = []
    for fam, given_addr, given_gw in ((v4, ov.address4, ov.gateway4),
                                      (v6, ov.address6, ov.gateway6)):
        if fam is None:
            continue
        if ov.copy_addrs and given_addr is None:
            addrs += [(a.address, a.prefixlen) for a in host.addrs
                      if a.ifindex == fam.ifindex and a.scope == RT_SCOPE_UNIVERSE
                      and a.address.version == fam.address.version and a.address != fam.address]
        if ov.copy_routes and given_gw is None:
            routes += [r for r in host.other_routes
                       if r.ifindex == fam.ifindex and r.dst.version == fam.address.version]
    return {"extra_addrs": tuple(addrs), "extra_routes": tuple(routes)}


class _Family(NamedTuple):
    ifindex: int
    ifname: str
    address: IPAddress
    prefix: int
    gateway: IPAddress
    link_local: IPAddress | None


def _pick_family(ov: Overrides, host: HostSnapshot, family: int,
                 warnings: list[str]) -> _Family | None:
    """One family's template interface, address, prefix and gateway, or ``None``."""
    version = 4 if family == socket.AF_INET else 6
    index = _template_index(ov, host, family)
    if index is None:
        warnings.append(f"No external routable interface for IPv{version}")
        return None
    ours = [a for a in host.addrs if a.family == family and a.ifindex == index]
    globals_ = [a for a in ours if a.scope == RT_SCOPE_UNIVERSE]
    given = ov.address4 if version == 4 else ov.address6
    address = given or (globals_[0].address if globals_ else None)
    gateway = (ov.gateway4 if version == 4 else ov.gateway6) or _gateway(host, family, index)
    if address is None or gateway is None:
        return None
    if version == 4:
        prefix = ov.prefix4 or _prefix4(address, globals_)
        return _Family(index, _ifname(host, index), address, prefix, gateway, None)
    link_local = next((a.address for a in ours if a.scope == RT_SCOPE_LINK), None)
    if link_local is None:
        return None
    prefix = next((a.prefixlen for a in globals_ if a.address == address), 64)
    return _Family(index, _ifname(host, index), address, prefix, gateway, link_local)


def _template_index(ov: Overrides, host: HostSnapshot, family: int) -> int | None:
    """``-i``, else ``--outbound-ifN``, else the interface of the best default route."""
    name = ov.interface or (ov.outbound_if4 if family == socket.AF_INET else ov.outbound_if6)
    if name:
        link = next((lk for lk in host.links if lk.name == name), None)
        if link is None:
            raise HostNetError(f"Invalid interface name {name}: no such device")
        return link.ifindex
    routes = sorted((r for r in host.routes if r.family == family and r.ifindex),
                    key=lambda r: r.metric)
    return routes[0].ifindex if routes else None


def _gateway(host: HostSnapshot, family: int, index: int) -> IPAddress | None:
    routes = sorted((r for r in host.routes
                     if r.family == family and r.ifindex == index and r.gateway is not None),
                    key=lambda r: r.metric)
    return routes[0].gateway if routes else None


def _prefix4(address: IPAddress, host_addrs: list[Addr]) -> int:
    """The prefix of the host address whose subnet holds ``address``, else the classful one."""
    for a in host_addrs:
        if address in ip_network(f"{a.address}/{a.prefixlen}", strict=False):
            return a.prefixlen
    return classful_prefix(address)


def classful_prefix(address: IPAddress) -> int:
    """RFC 4632's historical classes: A → 8, B → 16, C → 24, anything else → 32."""
    first = address.packed[0]
    if first < 128:
        return 8
    if first < 192:
        return 16
    if first < 224:
        return 24
    return 32


def _ifname(host: HostSnapshot, index: int) -> str:
    return _link_by_index(host, index).name


def _link_by_index(host: HostSnapshot, index: int) -> Link:
    return next((lk for lk in host.links if lk.ifindex == index), Link(index, ""))


def _pick_dns(ov: Overrides, resolv: Resolv, v4: _Family | None,
              v6: _Family | None) -> tuple[tuple[IPAddress, ...], dict[int, IPAddress]]:
    """Advertised resolvers, and the first host-side resolver of each enabled family."""
    gateways = {4: v4.gateway if v4 else None, 6: v6.gateway if v6 else None}
    source = ov.dns if ov.dns is not None else resolv.nameservers
    usable = [a for a in source if gateways[a.version] is not None]
    hosts: dict[int, IPAddress] = {}
    for a in usable:
        hosts.setdefault(a.version, a)
    if ov.dns is not None:
        return tuple(usable), hosts
    # a resolver on the host's loopback is advertised as what stands for it
    loopback = {v: _first_of_version(ov.map_host_loopback, v)
                or (gateways[v] if ov.map_gw else None) for v in (4, 6)}
    advertised: list[IPAddress] = []
    for a in usable:
        if a.is_loopback:
            mapped = loopback[a.version]
            if mapped is None:
                continue
            a = mapped
        if a not in advertised:
            advertised.append(a)
    return tuple(advertised), hosts


def _first_of_version(addresses: tuple[IPAddress, ...], version: int) -> IPAddress | None:
    return next((a for a in addresses if a.version == version), None)


# -- options → Overrides ------------------------------------------------------


def overrides_from_conf(conf: Any) -> Overrides:
    """Translate a ``conf.Conf`` into ``Overrides``."""
    return Overrides(
        address4=_first_of_version(conf.address, 4),
        address6=_first_of_version(conf.address, 6),
        prefix4=conf.netmask,
        gateway4=_first_of_version(conf.gateway, 4),
        gateway6=_first_of_version(conf.gateway, 6),
        mac=conf.mac_addr,
        interface=conf.interface,
        outbound_if4=conf.outbound_if4,
        outbound_if6=conf.outbound_if6,
        ipv4=not conf.ipv6_only,
        ipv6=not conf.ipv4_only,
        mtu=DEFAULT_MTU if conf.mtu is None else conf.mtu,
        dns=conf.dns,
        search=conf.search,
        dns_forward=conf.dns_forward,
        map_gw=not conf.no_map_gw,
        map_host_loopback=conf.map_host_loopback,
        dhcp_dns=conf.dhcp_dns_effective,
        dhcp_search=conf.dhcp_search_effective,
        dns_host=conf.dns_host,
        hostname=conf.hostname,
        fqdn=conf.fqdn,
        copy_addrs=not conf.no_copy_addrs,
        copy_routes=not conf.no_copy_routes,
    )


def interface_index(name: str) -> int:
    """The index of the host interface link-local destinations are reached through."""
    try:
        return socket.if_nametoindex(name) if name else 0
    except OSError:
        return 0
