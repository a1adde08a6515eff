"""Fixtures shared by the back ends' tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


@pytest.fixture
def seqpacket() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A message-preserving pair: one frame per read or write, like a tap."""
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield ours, peer
    ours.close()
    peer.close()
