"""What every protocol shares: the flow table, address mapping, forwarded ports; ICMP echo."""
