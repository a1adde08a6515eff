"""UDP: flows between the tap and host sockets, pasta's spliced path."""
