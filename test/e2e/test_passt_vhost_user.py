"""passt as a vhost-user back end: test_passt.py's tests over ``--vhost-user``.

The guest's RAM is a shared memfd that passt maps; frames go through its
virtqueues (guest.py's ``vhost-user`` back end).  Boot, the direction
matrix (TCP both ways, bulk data with SHA-256, UDP, forwarded ports), DHCP,
DHCPv6, SLAAC, ping and the clean shutdown run as for the stream socket,
in cells named ``passt vu_<check>``.  ``PASST_IMPL=upstream2026`` runs them
against upstream's own vhost-user (Debian's 2023 passt has none).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .conftest import use_stage
from .deploy import Deployment, Stage
from .test_passt import passt_tests

pytestmark = pytest.mark.e2e


@pytest.fixture
def passt_env(request: pytest.FixtureRequest, passt_vu_stage: Stage) -> Iterator[Deployment]:
    """passt --vhost-user with a booted, configured guest (shared by the module)."""
    yield from use_stage(request, passt_vu_stage)


globals().update(passt_tests("vhost-user"))
