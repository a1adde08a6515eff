"""passt and pasta in Python: user-mode networking for VMs and namespaces.

One core, two programs: ``passt`` serves one QEMU guest through a UNIX
stream socket, ``pasta`` serves a network namespace through a tap device.
See doc/internals.md for the module map and the theory of operation.
"""

__version__ = "0.1.0"
