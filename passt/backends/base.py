"""The one interface every back end offers, and what the rest of the code sees.

Theory of operation
-------------------
Everything the guest (passt) or the namespace (pasta) sends us arrives as
Ethernet frames through one *backend*; everything we send it leaves through
the same backend.  Protocol handlers never know which backend it is:
``TapBackend`` is the interface (``fileno``, ``recv_frames``,
``send_frames``, ``close``).  passt's backends are the QEMU stream socket
(``backends/qemu.py``) and vhost-user (``backends/vhost_backend.py``);
pasta's is the tap device (``backends/tap.py``).  ``backends/dispatch.py``
reads frames from whichever is attached and routes them to the handlers;
handlers send through ``ctx.tap``, which wraps the attached backend
(``dispatch.RecordingTap``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

Buffer = bytes | bytearray | memoryview


class TapBackend(Protocol):
    """Where frames to and from the guest go; see the module docstring."""

    def fileno(self) -> int: ...

    def recv_frames(self) -> list[memoryview]: ...

    def send_frames(self, frames: Sequence[Buffer]) -> int: ...

    def close(self) -> None: ...
