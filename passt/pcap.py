"""``--pcap FILE``: every tap frame, both directions, in classic pcap format.

Theory of operation
-------------------
The capture is what the guest or namespace exchanged with us, as seen on the
tap side: Ethernet frames, one record per frame, whichever the direction.
The format is the classic libpcap one (magic ``0xa1b2c3d4``, version 2.4,
microsecond timestamps, ``LINKTYPE_ETHERNET``), which every tool reads.

The file is opened at start-up, before isolation takes the filesystem away,
and written synchronously: frames handed to ``write_frames`` may be views into
buffers that are reused right after.  Capturing is a debugging aid, but it
must not change the program's behaviour much, so writes are batched: one
``os.writev`` carries the record headers and frames of a whole batch (up to
``IOV_MAX`` buffers), and frames of one batch share one timestamp (they were
read or produced in one wake-up).  A failed write is logged at debug level
and the capture goes on with the next batch, as upstream does.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Sequence

from passt import log
from passt.errors import StartupError

MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144  # larger than any frame: nothing is ever truncated
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024

_GLOBAL_HEADER = struct.Struct("=IHHiIII")
_RECORD_HEADER = struct.Struct("=IIII")

Buffer = bytes | bytearray | memoryview


class PcapError(StartupError):
    """The capture file can't be created; one-line message."""


class Pcap:
    """An open capture file; frames are appended with ``write_frames``."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        _write_all(fd, [_GLOBAL_HEADER.pack(MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET)])

    @classmethod
    def open(cls, path: str) -> Pcap:
        flags = os.O_CREAT | os.O_TRUNC | os.O_WRONLY | os.O_CLOEXEC
        try:
            return cls(os.open(path, flags, 0o600))
        except OSError as e:
            raise PcapError(f"Couldn't open pcap file {path}: {e.strerror}") from None

    def write_frames(self, frames: Sequence[Buffer]) -> None:
        """Append one record per frame, all with the current time."""
        if not frames:
            return
        now = time.time()
        sec = int(now)
        usec = int((now - sec) * 1_000_000)
        pack = _RECORD_HEADER.pack
        iov: list[Buffer] = []
        for frame in frames:
            length = len(frame)
            iov.append(pack(sec, usec, length, length))
            iov.append(frame)
        try:
            _write_all(self._fd, iov)
        except OSError as e:
            log.debug("pcap: can't write %d frames: %s", len(frames), e.strerror)

    def close(self) -> None:
        os.close(self._fd)


def _write_all(fd: int, iov: list[Buffer]) -> None:
    """``writev`` in chunks of at most IOV_MAX buffers, finishing short writes."""
    for start in range(0, len(iov), IOV_MAX):
        chunk = iov[start : start + IOV_MAX]
        written = os.writev(fd, chunk)
        if written < sum(map(len, chunk)):
            _write_remainder(fd, chunk, written)


def _write_remainder(fd: int, chunk: list[Buffer], written: int) -> None:
    rest = memoryview(b"".join(chunk))[written:]
    while rest:
        rest = rest[os.write(fd, rest) :]
