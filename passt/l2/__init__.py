"""Services answered locally on the guest's link: ARP, NDP/RA, DHCP, DHCPv6."""
