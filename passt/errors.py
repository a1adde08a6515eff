"""``StartupError``: what a user sees as one line before exit status 1.

Theory of operation
-------------------
Every stage of start-up raises its own exception type (``HostNetError``,
``NetnsError``, ``QemuError``...), each defined by the module that knows the
failure.  They all derive from ``StartupError``, so that the command line
(``cli``) catches the one base class: it need not import the module of each
stage, and a stage that a run does not need (QEMU's socket for pasta, the
control socket without ``-c``) is not imported at all.
"""

from __future__ import annotations


class StartupError(Exception):
    """A start-up failure the user can fix; the message is one line."""
