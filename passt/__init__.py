"""passt and pasta in Python: user-mode networking for VMs and namespaces.

One core, two programs: ``passt`` serves one QEMU guest through a UNIX
stream socket, ``pasta`` serves a network namespace through a tap device.
See doc/internals.md for the module map and the theory of operation.
"""

import os as _os

__version__ = "0.1.0"

# The optional mypyc build of the hot modules (passt/compiled.py), when asked for.
if _os.environ.get("PASST_MYPYC"):
    from passt.compiled import install as _install

    _install(_os.environ["PASST_MYPYC"])
