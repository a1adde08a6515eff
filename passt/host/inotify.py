"""Reading inotify events: which names in a watched directory changed.

Theory of operation
-------------------
pasta watches the directory of a ``--netns`` path to quit when the
namespace is deleted, and ``passt-repair`` watches a directory for passt's
``.repair`` socket to appear.  Both read ``struct inotify_event`` records
from the descriptor and want only the names of the events they asked for;
this parses them, with no I/O of its own.
"""

from __future__ import annotations

import os
import struct

IN_MOVED_FROM = 0x40
IN_CREATE = 0x100
IN_DELETE = 0x200
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, length of the name that follows


def names(buf: bytes, mask: int) -> list[str]:
    """Names in a buffer of ``struct inotify_event`` whose event matches ``mask``."""
    found = []
    offset = 0
    while offset + _EVENT.size <= len(buf):
        _wd, event, _cookie, length = _EVENT.unpack_from(buf, offset)
        start = offset + _EVENT.size
        if event & mask:
            found.append(os.fsdecode(buf[start:start + length].split(b"\0", 1)[0]))
        offset = start + length
    return found
