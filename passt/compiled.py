"""The optional mypyc build of the hot modules: finding it, and loading it.

Theory of operation
-------------------
``make mypyc`` (tools/build_mypyc.py) compiles the modules of ``HOT`` (the
per-frame paths: parsing and building frames, checksums, the TCP and UDP
translation, the tap backend, the dispatcher and the event loop) with mypyc
into C extensions.  The source tree never holds them: they go to a directory
of the build tree named by ``source_key``, a hash of every source file of
the package and of the interpreter's tag, so that one build serves exactly
the sources and the Python it was made from.

Running with it is opt-in: ``PASST_MYPYC=build/mypyc`` in the environment
(children inherit it).  At ``import passt`` the package calls ``install``,
which looks for the directory of the current key and, when every extension
is there and the shared library mypyc puts their code in loads, puts a
finder first on ``sys.meta_path`` that serves those module names from it.
The modules are all or none: compiled modules call each other's native
code, so a mix of compiled and pure copies of one class could not work.

Anything else (no such directory: the sources changed since the build, or
another Python; an extension that does not load) leaves the import system
as it is, with one line on standard error: pure Python is the default and
the fallback, and always runs the same code.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

# The per-frame modules, by the profiles (doc/performance.md, "The hot paths").
HOT = (
    "passt.checksum",
    "passt.packet",
    "passt.tcp.core",
    "passt.tcp.tap",
    "passt.udp.tap",
    "passt.loop",
    "passt.backends.tap",
    "passt.backends.dispatch",
    "passt.l2.common",
)
ENV = "PASST_MYPYC"
PACKAGE_ROOT = Path(__file__).resolve().parent
# mypyc's shared library: "<hash>__mypyc", at the top of the build.
SHARED_GLOB = "*__mypyc" + importlib.machinery.EXTENSION_SUFFIXES[0]


def source_key(root: Path = PACKAGE_ROOT) -> str:
    """A hash of the package's sources under ``root`` and of this interpreter's tag."""
    digest = hashlib.sha256(sys.implementation.cache_tag.encode())
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def extension_path(top: Path, module: str) -> Path:
    """Where a build rooted at ``top`` keeps the extension of ``module``."""
    return top.joinpath(*module.split(".")).with_name(
        module.rsplit(".", 1)[-1] + importlib.machinery.EXTENSION_SUFFIXES[0]
    )


def build_files(top: Path) -> dict[str, Path] | None:
    """Module name to extension file for the build at ``top``, or None if incomplete."""
    shared = sorted(top.glob(SHARED_GLOB))
    files = {module: extension_path(top, module) for module in HOT}
    if len(shared) != 1 or not all(path.is_file() for path in files.values()):
        return None
    files[shared[0].name.split(".", 1)[0]] = shared[0]
    return files


class CompiledFinder:
    """A meta path finder that serves the compiled modules from one build."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        file = self.files.get(name)
        return None if file is None else importlib.util.spec_from_file_location(name, file)


def install(builds: str) -> bool:
    """Serve the hot modules from the build for these sources under ``builds``, if any."""
    top = Path(builds) / source_key()
    files = build_files(top)
    if files is None:
        sys.stderr.write(f"passt: no mypyc build in {top}, running pure Python\n")
        return False
    finder = CompiledFinder(files)
    shared = next(name for name in files if name not in HOT)
    try:
        spec = finder.find_spec(shared)
        assert spec is not None and spec.loader is not None
        sys.modules[shared] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError as e:
        sys.modules.pop(shared, None)
        sys.stderr.write(f"passt: mypyc build in {top} does not load ({e}), running pure Python\n")
        return False
    sys.meta_path.insert(0, finder)
    return True
