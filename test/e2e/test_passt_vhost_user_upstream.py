"""Upstream 2026's passt as a vhost-user back end, beside ours, in every run.

The cells of test_passt_vhost_user.py (boot, the direction matrix with
SHA-256-checked TCP both ways, UDP, forwarded ports, DHCP, DHCPv6, SLAAC,
ping, the clean shutdown), run against upstream's release 2026_07_16
(built into build/upstream-2026 by mk/upstream.mk) with the same QEMU 10
guest, as cells ``passt u26vu_<check>``: a cell that fails here and passes
with ours is our harness's or QEMU's doing, not our back end's; one that
fails with ours alone is ours.  Whatever ``PASST_IMPL`` says, these run
upstream 2026.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .conftest import use_stage
from .deploy import Deployment, Stage
from .test_passt import passt_tests

pytestmark = pytest.mark.e2e


@pytest.fixture
def passt_env(request: pytest.FixtureRequest, passt_u26vu_stage: Stage) -> Iterator[Deployment]:
    """Upstream's passt --vhost-user with a booted, configured guest (shared by the module)."""
    yield from use_stage(request, passt_u26vu_stage)


globals().update(passt_tests("upstream2026 vhost-user"))
