"""Fixtures of the host tests: a namespace of their own."""

from __future__ import annotations

import os
import subprocess

import pytest


@pytest.fixture
def scratch_netns():
    """A fresh network namespace of our own; yields an fd to it."""
    if os.geteuid() != 0:
        pytest.fail("needs root to build namespaces")
    name = f"nst-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=20)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield name, fd
    finally:
        os.close(fd)
        subprocess.run(["ip", "netns", "del", name], timeout=20)
