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
  ``pasta_stage``, ``pasta_l2_stage``, and per ``peek_mode`` (peek.py)
  ``passt_peek_stage``, ``pasta_peek_stage``); the function-scoped fixtures hand it
  to one test, clean up after it, and let the stage rebuild it if the test
  broke it.  A failing test's report carries the program's log and the
  guest's console.
- At the end of the run, a table of every cell (summary.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from . import features, impl
from .cells import Cell
from .deploy import Deployment, Stage, deploy_passt, deploy_pasta
from .peek import PeekMode
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


def _stage_fixture(name: str, label: str, deploy: Callable[[impl.Impl, str], Deployment]):
    """Module-scoped fixture ``name``: a ``Stage`` of ``deploy``'s deployments."""

    @pytest.fixture(scope="module", name=name)
    def stage(
        request: pytest.FixtureRequest, chosen_impl: impl.Impl,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> Iterator[Stage]:
        yield from _held(request, lambda: deploy(chosen_impl, str(tmp_path_factory.mktemp(label))))

    return stage


def _held(request: pytest.FixtureRequest, build: Callable[[], Deployment]) -> Iterator[Stage]:
    """A ``Stage`` of ``build``'s deployments for the fixture's scope; its notes
    go to the summary."""
    held = Stage(build)
    yield held
    held.close()
    request.config.stash[_SUMMARY_KEY].notes.extend(held.notes)


passt_stage = _stage_fixture("passt_stage", "passt", deploy_passt)
pasta_stage = _stage_fixture("pasta_stage", "pasta", deploy_pasta)
pasta_l2_stage = _stage_fixture(
    "pasta_l2_stage", "pasta-l2",
    lambda chosen, workdir: deploy_pasta(chosen, workdir, config_net=False),
)


@pytest.fixture(scope="module")
def peek_mode(request: pytest.FixtureRequest) -> PeekMode:
    """How our TCP reads sockets (peek.py): parametrize it indirectly, so that
    the module's tests run grouped by mode, one deployment per mode at a time."""
    return request.param


@pytest.fixture(scope="module")
def passt_peek_stage(
    request: pytest.FixtureRequest, chosen_impl: impl.Impl,
    tmp_path_factory: pytest.TempPathFactory, peek_mode: PeekMode,
) -> Iterator[Stage]:
    yield from _held(request, lambda: deploy_passt(
        chosen_impl, str(tmp_path_factory.mktemp("passt")), peek_mode.env))


@pytest.fixture(scope="module")
def pasta_peek_stage(
    request: pytest.FixtureRequest, chosen_impl: impl.Impl,
    tmp_path_factory: pytest.TempPathFactory, peek_mode: PeekMode,
) -> Iterator[Stage]:
    yield from _held(request, lambda: deploy_pasta(
        chosen_impl, str(tmp_path_factory.mktemp("pasta")), env=peek_mode.env))


def _use(request: pytest.FixtureRequest, stage: Stage) -> Iterator[Deployment]:
    deployment = stage.get()
    request.node.e2e_deployment = deployment
    try:
        yield deployment
    finally:
        deployment.after_test()


@pytest.fixture
def passt_env(request: pytest.FixtureRequest, passt_stage: Stage) -> Iterator[Deployment]:
    """passt with a booted, configured guest (shared by the module)."""
    yield from _use(request, passt_stage)


@pytest.fixture
def pasta_env(request: pytest.FixtureRequest, pasta_stage: Stage) -> Iterator[Deployment]:
    """pasta with --config-net and the matrix's forwarded ports (shared)."""
    yield from _use(request, pasta_stage)


@pytest.fixture
def pasta_l2_env(request: pytest.FixtureRequest, pasta_l2_stage: Stage) -> Iterator[Deployment]:
    """pasta without --config-net; the namespace configured by DHCP/SLAAC (shared)."""
    yield from _use(request, pasta_l2_stage)


@pytest.fixture
def passt_peek_env(request: pytest.FixtureRequest, passt_peek_stage: Stage) -> Iterator[Deployment]:
    """``passt_env`` in the test's ``peek_mode`` (shared by the module's tests of that mode)."""
    yield from _use(request, passt_peek_stage)


@pytest.fixture
def pasta_peek_env(request: pytest.FixtureRequest, pasta_peek_stage: Stage) -> Iterator[Deployment]:
    """``pasta_env`` in the test's ``peek_mode`` (shared by the module's tests of that mode)."""
    yield from _use(request, pasta_peek_stage)
