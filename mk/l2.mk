# L2/L3 services (arp, ndp, dhcp, dhcpv6, icmp): their unit tests build and
# read frames with scapy.
PIP_EXTRA_DEPS += scapy
