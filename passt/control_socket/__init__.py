"""The configuration socket (``-c PATH``): pesto's protocol, the rule tables, the server in the loop."""
