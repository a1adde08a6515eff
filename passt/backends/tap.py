"""pasta's back end: a tap device, one frame per ``read``/``write``.

Theory of operation
-------------------
``TunTap`` is the ``TapBackend`` (``base.py``) over a tap device opened with
``open_tap`` from inside the namespace (a tap belongs to the network
namespace it was created in, the descriptor works from anywhere).

A tap device moves one frame per ``read``/``write``; nothing batches them.
``TunTap`` reads until ``EAGAIN`` but at most ``RECV_BATCH`` frames per
wake-up (the loop stays fair to the sockets), each into one of a set of
buffers allocated once: the frames returned are views into those buffers,
valid until the next ``recv_frames`` call; a handler that keeps data copies
it.  Writes never block: a frame the device won't take now is dropped, as
a NIC would drop it, and TCP retransmits.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Sequence

from passt import buffers, log
from passt.backends.base import Buffer
from passt.errors import StartupError

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFNAMSIZ = 16
FRAME_MAX = 65535 + 14  # largest MTU a tap takes, plus the Ethernet header
RECV_BATCH = 64


class TapError(StartupError):
    """The tap device can't be created; one-line message."""


def open_tap(name: str = "") -> tuple[int, str]:
    """Create (or attach to) tap ``name`` in the caller's network namespace.

    Returns the non-blocking descriptor and the interface name the kernel
    chose (``name`` may be empty, or a pattern like ``tap%d``).
    """
    encoded = name.encode()
    if len(encoded) >= IFNAMSIZ:
        raise TapError(f"Interface name too long: {name}")
    try:
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise TapError(f"Failed to open {TUN_DEVICE}: {e.strerror}") from None
    request = struct.pack("16sH22x", encoded, IFF_TAP | IFF_NO_PI)
    try:
        answer = fcntl.ioctl(fd, TUNSETIFF, request)
    except OSError as e:
        os.close(fd)
        raise TapError(f"Failed to set up tap device {name or '(any)'}: {e.strerror}") from None
    return fd, answer[:IFNAMSIZ].split(b"\0", 1)[0].decode()


class TunTap:
    """pasta's backend: a tap descriptor, one frame per read or write."""

    def __init__(self, fd: int, batch: int = RECV_BATCH, frame_max: int = FRAME_MAX) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._slots = [([view], view) for view in buffers.pool(batch, frame_max)]

    def fileno(self) -> int:
        return self._fd

    def recv_frames(self) -> list[memoryview]:
        """Frames readable now, at most one batch; views valid until the next call."""
        frames = []
        readv = os.readv
        fd = self._fd
        for iov, view in self._slots:
            try:
                size = readv(fd, iov)
            except BlockingIOError:
                break
            if not size:
                break
            frames.append(view[:size])
        return frames

    def send_frames(self, frames: Sequence[Buffer]) -> int:
        """Write frames in order until the device refuses one; returns how many went."""
        write = os.write
        fd = self._fd
        sent = 0
        try:
            for frame in frames:
                write(fd, frame)
                sent += 1
        except BlockingIOError:
            pass
        except OSError as e:
            log.debug("tap: write failed: %s", e.strerror)
        return sent

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
