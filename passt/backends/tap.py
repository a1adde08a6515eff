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

Offloads
--------
pasta's tap is opened with ``IFF_VNET_HDR`` (``PASTA_VNET_HDR``): every
frame then travels behind a 10-byte ``virtio_net_hdr``, as on a virtio
NIC, and ``TUNSETOFFLOAD`` tells the namespace's kernel that we take frames
with partial checksums (``TUN_F_CSUM``) and TCP segments larger than the
MTU (``TUN_F_TSO4``, ``TUN_F_TSO6``: one GSO frame of up to 64 KiB).  We
end every TCP connection and send UDP payloads through sockets, so no
handler reads a TCP or UDP checksum of the namespace's; its kernel then
neither sums what it sends us nor, with a small MTU, cuts it into
MTU-sized frames.  A read takes the header and the frame into one buffer,
one after the other (``FileIO.readinto``); the header is ignored.  Writes
are one ``writev`` of an all-zero header (a plain frame, checksums
complete) and the frame.

Our TCP frames, and our UDP frames over IPv6 (``partial_csum``, set with
``Ctx.partial_csum``), go out with ``NEEDS_CSUM``: their checksum field
holds the pseudo-header's sum alone (``TcpFrameTemplate`` and
``UdpFrameTemplate`` with ``partial_csum``, the DHCPv6 server's replies)
and the header says where the TCP or UDP header starts and where its
checksum is.  (UDP over IPv4 carries no checksum, as upstream sends it, or
a complete one: an all-zero header.)  The namespace's
kernel then takes the frame as "checksum partial", which its stack
delivers locally without summing the payload, as it does for loopback
traffic, and completes if it forwards the frame (a bridge in a rootless
network namespace): neither we nor it pass over a 64 KiB payload to sum
it.  The frame's kind is read from its Ethernet type and IP protocol (our
IPv4 headers have no options); every other frame goes behind an all-zero
header, checksums complete.  ``DATA_VALID`` ("trust my checksum") would
be simpler, but it is the virtio driver's flag, not tun's: the tap
ignores it, and a frame whose checksum left the payload out is dropped.
"""

from __future__ import annotations

import fcntl
import io
import os
import struct
from collections.abc import Sequence

from passt import buffers, log
from passt.backends.base import Buffer
from passt.errors import StartupError

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
VNET_HDR_LEN = 10  # struct virtio_net_hdr, the tap's default size
TX_HEADER = bytes(VNET_HDR_LEN)  # no flags, no GSO: the frame as it is
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
_VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, offset


def _needs_csum(l4_offset: int, csum_offset: int) -> bytes:
    end = l4_offset + csum_offset + 2
    return _VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, end, 0, l4_offset, csum_offset)


TCP_CSUM_OFFSET = 16
UDP_CSUM_OFFSET = 6
TCP4_HEADER = _needs_csum(14 + 20, TCP_CSUM_OFFSET)  # Ethernet, IPv4 without options
TCP6_HEADER = _needs_csum(14 + 40, TCP_CSUM_OFFSET)  # Ethernet, IPv6 without extensions
UDP6_HEADER = _needs_csum(14 + 40, UDP_CSUM_OFFSET)
IPPROTO_TCP = 6
IPPROTO_UDP = 17
PASTA_VNET_HDR = True  # how pasta opens its tap and reads and writes it
IFNAMSIZ = 16
FRAME_MAX = 65535 + 14  # largest MTU a tap takes, plus the Ethernet header
RECV_BATCH = 64


class TapError(StartupError):
    """The tap device can't be created; one-line message."""


def open_tap(name: str = "", vnet_hdr: bool = False) -> tuple[int, str]:
    """Create (or attach to) tap ``name`` in the caller's network namespace, with
    ``IFF_VNET_HDR`` and the offloads (see "Offloads") if ``vnet_hdr``.

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
    flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
    request = struct.pack("16sH22x", encoded, flags)
    try:
        answer = fcntl.ioctl(fd, TUNSETIFF, request)
    except OSError as e:
        os.close(fd)
        raise TapError(f"Failed to set up tap device {name or '(any)'}: {e.strerror}") from None
    if vnet_hdr:
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        except OSError as e:
            log.debug("tap: no offloads: %s", e.strerror)
    return fd, answer[:IFNAMSIZ].split(b"\0", 1)[0].decode()


class TunTap:
    """pasta's backend: a tap descriptor, one frame per read or write, each behind
    a ``virtio_net_hdr`` if ``vnet_hdr`` (the device was opened so).

    With ``owns_fd`` false, ``close`` leaves the descriptor open: pasta's
    namespace owns it and closes it at tear-down.
    """

    def __init__(self, fd: int, batch: int = RECV_BATCH, frame_max: int = FRAME_MAX,
                 vnet_hdr: bool = False, partial_csum: bool = False,
                 owns_fd: bool = True) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._owns_fd = owns_fd
        self._hdr_len = VNET_HDR_LEN if vnet_hdr else 0
        self._partial = vnet_hdr and partial_csum
        # One read a frame, header and frame into one buffer: FileIO.readinto
        # costs less than a readv of two buffers (0.33 against 0.59 µs a call).
        self._file = io.FileIO(fd, "r", closefd=False)
        self._slots = buffers.pool(batch, self._hdr_len + frame_max)

    def fileno(self) -> int:
        return self._fd

    def recv_frames(self) -> list[memoryview]:
        """Frames readable now, at most one batch; views valid until the next call."""
        frames = []
        readinto = self._file.readinto
        hdr_len = self._hdr_len
        for slot in self._slots:
            got = readinto(slot)  # None: nothing now (EAGAIN); 0: end of file
            if not got or got <= hdr_len:
                break
            frames.append(slot[hdr_len:got])
        return frames

    def send_frames(self, frames: Sequence[Buffer]) -> int:
        """Write frames in order until the device refuses one; returns how many went."""
        fd = self._fd
        sent = 0
        try:
            if self._partial:
                writev = os.writev
                for frame in frames:
                    writev(fd, (_tx_header(frame), frame))
                    sent += 1
            elif self._hdr_len:
                writev = os.writev
                for frame in frames:
                    writev(fd, (TX_HEADER, frame))
                    sent += 1
            else:
                write = os.write
                for frame in frames:
                    write(fd, frame)
                    sent += 1
        except BlockingIOError:
            pass
        except OSError as e:
            log.debug("tap: write failed: %s", e.strerror)
        return sent

    def close(self) -> None:
        self._file.close()  # closefd=False: the descriptor is left alone
        if self._fd >= 0 and self._owns_fd:
            os.close(self._fd)
        self._fd = -1


_PARTIAL_IPV6 = {IPPROTO_TCP: TCP6_HEADER, IPPROTO_UDP: UDP6_HEADER}


def _tx_header(frame: Buffer) -> bytes:
    """The virtio-net header of one of our frames when checksums are partial."""
    ethertype = frame[12:14]
    if ethertype == b"\x08\x00":
        return TCP4_HEADER if frame[23] == IPPROTO_TCP else TX_HEADER
    if ethertype == b"\x86\xdd":
        return _PARTIAL_IPV6.get(frame[20], TX_HEADER)
    return TX_HEADER
