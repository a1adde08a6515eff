"""Fixtures and hooks of the end-to-end suite.

Theory of operation:

- Every test here is marked ``e2e`` at collection, so ``pytest -m e2e``
  selects the whole directory, including tests other modules add.
- A test parametrized with a ``cell`` (cells.py) is, for ``PASST_IMPL=ours``,
  skipped as "not built yet (issue N)" while a part of ours it needs is
  missing (features.py), and, for ``PASST_IMPL=upstream``, expected to
  fail where upstream is known to get it wrong.  Both are decided at
  collection, before any fixture starts anything.
- One deployment per configuration lives for a module (``passt_stage``,
  ``pasta_stage``, ``pasta_l2_stage``; one per ``peek_mode`` of the module,
  peek.py); the function-scoped fixtures hand it
  to one test, clean up after it, and let the stage rebuild it if the test
  broke it.  A failing test's report carries the program's log and the
  guest's console.
- At the end of the run, a table of every cell (summary.py).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator

import pytest

from . import features, impl
from .cells import Cell
from .deploy import Deployment, Stage, deploy_passt, deploy_pasta
from .peek import PEEK_OFF, PeekMode
from .summary import Summary

HERE = os.path.dirname(os.path.abspath(__file__))
_SUMMARY_KEY = pytest.StashKey[Summary]()


def _is_root() -> bool:
    return os.geteuid() == 0


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SUMMARY_KEY] = Summary()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    chosen = impl.current()
    for item in items:
        if not str(item.path).startswith(HERE):
            continue
        item.add_marker(pytest.mark.e2e)
        if not _is_root():
            item.add_marker(pytest.mark.skip(reason="needs root: builds network namespaces"))
        cell = _cell_of(item)
        if cell is None:
            continue
        if chosen.name in ("ours", "installed"):  # a package of this tree: same parts
            reason = features.not_built_reason(cell)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
        elif chosen.name == "upstream":
            lacks = features.upstream_lacks(cell)
            if lacks:
                item.add_marker(pytest.mark.skip(reason=f"upstream: {lacks}"))
            reason = features.upstream_failure(cell)
            if reason:
                item.add_marker(pytest.mark.xfail(reason=f"upstream: {reason}", strict=True))


def _cell_of(item: pytest.Item) -> Cell | None:
    callspec = getattr(item, "callspec", None)
    cell = callspec.params.get("cell") if callspec else None
    return cell if isinstance(cell, Cell) else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    deployment = getattr(item, "e2e_deployment", None)
    if deployment is not None and call.excinfo is not None and report.when == "call":
        deployment.tainted = True
        for title, text in deployment.diagnostics():
            report.sections.append((title, text))
    item.config.stash[_SUMMARY_KEY].record(item, report)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    summary = config.stash[_SUMMARY_KEY]
    lines = summary.render(impl.current().name)
    if not lines:
        return
    terminalreporter.section("end-to-end summary")
    for note in summary.notes:
        terminalreporter.write_line(note)
    for line in lines:
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def chosen_impl() -> impl.Impl:
    return impl.current()


@pytest.fixture(scope="module")
def peek_mode(request: pytest.FixtureRequest) -> PeekMode:
    """How our TCP reads sockets (peek.py), for the module's deployments:
    ``SO_PEEK_OFF`` unless a module parametrizes it, indirectly and with module
    scope, so that its tests run grouped by mode, one deployment at a time."""
    return getattr(request, "param", PEEK_OFF)


def _stage_fixture(name: str, label: str, deploy: Callable[..., Deployment],
                   impl_name: str | None = None):
    """Module-scoped fixture ``name``: a ``Stage`` of ``deploy``'s deployments
    (``deploy(impl, workdir, env=...)``), in the module's ``peek_mode``, of
    the implementation ``impl_name`` (default: the one ``PASST_IMPL`` chose)."""

    @pytest.fixture(scope="module", name=name)
    def stage(
        request: pytest.FixtureRequest, chosen_impl: impl.Impl,
        tmp_path_factory: pytest.TempPathFactory, peek_mode: PeekMode,
    ) -> Iterator[Stage]:
        used = impl.named(impl_name) if impl_name else chosen_impl
        held = Stage(lambda: deploy(used, str(tmp_path_factory.mktemp(label)),
                                    env=peek_mode.env))
        yield held
        held.close()
        request.config.stash[_SUMMARY_KEY].notes.extend(held.notes)

    return stage


passt_stage = _stage_fixture("passt_stage", "passt", deploy_passt)
passt_vu_stage = _stage_fixture(
    "passt_vu_stage", "passt-vu", functools.partial(deploy_passt, backend="vhost-user")
)
passt_u26vu_stage = _stage_fixture(  # test_passt_vhost_user_upstream.py
    "passt_u26vu_stage", "passt-u26vu", functools.partial(deploy_passt, backend="vhost-user"),
    impl_name="upstream2026",
)
pasta_stage = _stage_fixture("pasta_stage", "pasta", deploy_pasta)
pasta_l2_stage = _stage_fixture("pasta_l2_stage", "pasta-l2",
                                functools.partial(deploy_pasta, config_net=False))


def use_stage(request: pytest.FixtureRequest, stage: Stage) -> Iterator[Deployment]:
    """``stage``'s deployment for one test, cleaned up after it."""
    deployment = stage.get()
    request.node.e2e_deployment = deployment
    try:
        yield deployment
    finally:
        deployment.after_test()


@pytest.fixture
def passt_env(request: pytest.FixtureRequest, passt_stage: Stage) -> Iterator[Deployment]:
    """passt with a booted, configured guest (shared by the module)."""
    yield from use_stage(request, passt_stage)


@pytest.fixture
def pasta_env(request: pytest.FixtureRequest, pasta_stage: Stage) -> Iterator[Deployment]:
    """pasta with --config-net and the matrix's forwarded ports (shared)."""
    yield from use_stage(request, pasta_stage)


@pytest.fixture
def pasta_l2_env(request: pytest.FixtureRequest, pasta_l2_stage: Stage) -> Iterator[Deployment]:
    """pasta without --config-net; the namespace configured by DHCP/SLAAC (shared)."""
    yield from use_stage(request, pasta_l2_stage)
