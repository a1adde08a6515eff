# L2/L3 services (arp, ndp, dhcp, dhcpv6, icmp): their unit tests build and
# read frames with scapy.
PIP_EXTRA_DEPS += scapy
# test/e2e/test_l2_inprocess.py: a real DHCPv6 client, for the complete
# Solicit/Advertise/Request/Reply exchange (busybox has no udhcpc6).
APT_EXTRA_DEPS += isc-dhcp-client
