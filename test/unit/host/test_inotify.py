"""Unit tests for passt/host/inotify.py: names out of inotify event records."""

from __future__ import annotations

import struct

from passt.host import inotify


def inotify_event(mask: int, name: bytes, pad: int = 16) -> bytes:
    padded = name + b"\0" * (pad - len(name))
    return struct.pack("iIII", 1, mask, 0, len(padded)) + padded


def test_inotify_names() -> None:
    buf = (inotify_event(inotify.IN_DELETE, b"blue") + inotify_event(0x100, b"green")
           + inotify_event(inotify.IN_MOVED_FROM, b"red", 32))
    assert inotify.names(buf, inotify.IN_DELETE | inotify.IN_MOVED_FROM) == ["blue", "red"]
    assert inotify.names(buf[:-3], inotify.IN_DELETE) == ["blue"]
    assert inotify.names(b"", inotify.IN_DELETE) == []


def test_names_are_decoded_as_the_filesystem_encodes_them() -> None:
    assert inotify.names(inotify_event(inotify.IN_CREATE, b"s\xff.repair"), inotify.IN_CREATE) \
        == ["s\udcff.repair"]
