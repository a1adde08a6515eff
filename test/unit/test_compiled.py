"""The optional mypyc build (passt/compiled.py): its key, its finder, its fallback.

The last two tests run only with ``PASST_MYPYC`` set (``make check-mypyc``,
after ``make mypyc``): then the hot modules must come from the build, and
every module of the package must import with them (an interpreted class
cannot inherit from a compiled one, and that fails at import).
"""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import sys
from pathlib import Path

import pytest

import passt
from passt import compiled

SUFFIX = compiled.extension_path(Path("/"), "x").name[1:]


def fake_build(top: Path, shared: str = "abc__mypyc") -> None:
    for module in compiled.HOT:
        path = compiled.extension_path(top, module)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    (top / (shared + SUFFIX)).write_bytes(b"")


def test_the_key_follows_every_source_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text("A = 1\n")
    (tmp_path / "sub" / "b.py").write_text("B = 1\n")
    first = compiled.source_key(tmp_path)
    assert compiled.source_key(tmp_path) == first
    (tmp_path / "sub" / "b.py").write_text("B = 2\n")
    assert compiled.source_key(tmp_path) != first


def test_a_complete_build_maps_each_hot_module_and_the_shared_library(tmp_path):
    fake_build(tmp_path)
    files = compiled.build_files(tmp_path)
    assert files is not None
    assert set(files) == {*compiled.HOT, "abc__mypyc"}
    assert files["passt.tcp.core"] == tmp_path / "passt" / "tcp" / ("core" + SUFFIX)


def test_an_incomplete_build_is_none(tmp_path):
    fake_build(tmp_path)
    compiled.extension_path(tmp_path, "passt.loop").unlink()
    assert compiled.build_files(tmp_path) is None
    assert compiled.build_files(tmp_path / "missing") is None


def test_the_finder_serves_only_its_modules(tmp_path):
    fake_build(tmp_path)
    files = compiled.build_files(tmp_path)
    assert files is not None
    finder = compiled.CompiledFinder(files)
    spec = finder.find_spec("passt.packet")
    assert spec is not None and spec.origin == str(files["passt.packet"])
    assert finder.find_spec("passt.conf") is None


def test_without_a_build_for_these_sources_it_stays_pure_python(tmp_path, capsys):
    before = list(sys.meta_path)
    assert compiled.install(str(tmp_path)) is False
    assert sys.meta_path == before
    assert "running pure Python" in capsys.readouterr().err


def test_a_build_that_does_not_load_is_left_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compiled, "source_key", lambda: "k")
    fake_build(tmp_path / "k")  # empty files: not shared objects
    before = list(sys.meta_path)
    assert compiled.install(str(tmp_path)) is False
    assert sys.meta_path == before
    assert "does not load" in capsys.readouterr().err
    assert "abc__mypyc" not in sys.modules


def except_names_of_two_types(source: str) -> list[str]:
    """Functions that bind one ``except ... as NAME`` to different exception types."""
    found = []
    for function in ast.walk(ast.parse(source)):
        if isinstance(function, ast.FunctionDef):
            types: dict[str, set[str]] = {}
            for node in ast.walk(function):
                if isinstance(node, ast.ExceptHandler) and node.name and node.type:
                    types.setdefault(node.name, set()).add(ast.unparse(node.type))
            found += [f"{function.name}: {name}" for name, t in types.items() if len(t) > 1]
    return found


def test_the_guard_sees_an_except_name_reused_for_another_type():
    source = "def f():\n try: g()\n except A as e: pass\n try: g()\n except B as e: pass\n"
    assert except_names_of_two_types(source) == ["f: e"]


@pytest.mark.parametrize("module", compiled.HOT)
def test_no_hot_function_reuses_an_except_name_for_another_type(module):
    # mypyc types the name by its first binding: the second handler would raise
    # TypeError ("A object expected; got B") instead of handling its exception.
    path = Path(passt.__file__).parent.parent.joinpath(*module.split(".")).with_suffix(".py")
    assert except_names_of_two_types(path.read_text()) == []


compiled_only = pytest.mark.skipif(
    not os.environ.get(compiled.ENV), reason="needs PASST_MYPYC (make check-mypyc)"
)


@compiled_only
def test_the_hot_modules_come_from_the_build():
    for name in compiled.HOT:
        module = importlib.import_module(name)
        assert module.__file__ is not None and module.__file__.endswith(SUFFIX), name


@compiled_only
def test_every_module_imports_with_the_compiled_ones():
    for info in pkgutil.walk_packages(passt.__path__, "passt."):
        if info.name != "passt.__main__":
            importlib.import_module(info.name)
