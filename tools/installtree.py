"""Install passt-py where a distribution expects it, and uninstall exactly that.

Theory of operation
-------------------
``make install``, the Debian package (debian/rules) and the RPM
(contrib/fedora/passt-py.spec) put the same files in the same places, so all
call this script; only the directories differ (``--prefix``, ``--sitedir``,
``--destdir``), the names (``--suffix``) and what a package manager does for
us (a manifest, byte-compiling, compressed manual pages; pybuild installs
the Python package itself).  An install is a *plan*,
a list of (path, content, mode), computed first and checked as a whole
before anything is written:

- ``bin/passt``, ``bin/pasta``, ``bin/pesto``, ``bin/passt-repair``: small launcher
  scripts for the interpreter that has NumPy (``--python``); they run in
  isolated mode (``-I``: no ``PYTHONPATH``, no user site directory), since
  libvirt and container engines may start them with privileges, and without
  the ``site`` module (``-S``: its ``.pth`` files cost a good part of
  start-up), so they put the interpreter's site directories, found at
  installation, and ``--sitedir`` on ``sys.path`` themselves.
  ``bin/qrap``, the QEMU wrapper (``contrib/qrap``, standard library only),
  with its first line pointing at the same interpreter;
- the ``passt`` package, into ``SITEDIR/passt``;
- ``share/man/man1/passt.1``, ``pasta.1``, ``pesto.1``, ``passt-repair.1`` from
  ``make man``;
- AppArmor: ``/etc/apparmor.d/<path of the program with dots>`` for the four
  profiles (passt, pasta, passt-repair, pesto), ``abstractions/passt-py``,
  ``passt-py-python`` and ``passt-py-private``, and ``tunables/passt-py``.  The tunables
  carry the paths of the launchers, interpreter and package, and are
  rewritten for this install; outside ``/usr`` the profiles are renamed after
  their path too, so that they never replace Debian's ``passt`` profile;
- ``--suffix -py`` (the packages) names the programs, manual pages and
  profiles ``passt-py``, ``pasta-py``, ``pesto-py``, ``qrap-py``, ``passt-repair-py``, so that
  they sit beside a distribution's ``passt``; ``--no-python-package`` leaves
  the package to the Python build tool that installed it (pybuild);
- SELinux: compiled modules in ``share/selinux/packages/``, interfaces in
  ``share/selinux/devel/include/contrib/`` (where the refpolicy devel
  Makefile finds them), ``.te`` and ``.fc`` in ``share/passt-py/selinux/``.

A file that exists and that an earlier run of this script did not install is
never overwritten (a distribution's ``passt`` owns ``/usr/bin/passt`` and
``/etc/apparmor.d/usr.bin.passt``): the install stops before writing anything.
The manifest (``PREFIX/share/passt-py/install-manifest``) lists every file
written and every directory created, so that ``uninstall`` removes exactly
those, files first, then the directories it made, deepest first, if empty.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = {"passt": "main_passt", "pasta": "main_pasta"}
CONFINED = (*PROGRAMS, "passt-repair", "pesto")  # the programs with AppArmor and SELinux profiles
QRAP_SCRIPT = ROOT / "contrib" / "qrap"
MANIFEST = "share/passt-py/install-manifest"
DEBIAN_SITEDIR = "/usr/lib/python3/dist-packages"


class InstallError(Exception):
    """A problem that stops the install before anything is written."""


@dataclass(frozen=True)
class Layout:
    """Where things go: ``prefix`` and ``sitedir`` as seen by the installed system."""

    destdir: Path
    prefix: str
    sitedir: str
    python: str
    man_dir: Path
    selinux_dir: Path
    sysconfdir: str = "/etc"
    gzip_man: bool = False
    suffix: str = ""  # program names: passt-py beside a distribution's passt
    with_package: bool = True  # False: a Python build tool installed it (pybuild)

    def under_destdir(self, path: str) -> Path:
        return self.destdir / path.lstrip("/")


@dataclass(frozen=True)
class Item:
    path: str       # absolute, as seen by the installed system
    content: bytes
    mode: int


# -- what gets installed ----------------------------------------------------


def interpreter_facts(python: str, *flags: str) -> tuple[list[str], str]:
    """``sys.path`` in isolated mode (and ``flags``) and ``sys.base_prefix`` of an interpreter."""
    code = "import json, sys; print(json.dumps([sys.path, sys.base_prefix]))"
    try:
        out = subprocess.run([python, "-I", *flags, "-c", code], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise InstallError(f"cannot run the interpreter {python}: {e}") from None
    path, base_prefix = json.loads(out)
    return path, base_prefix


def site_dirs(python: str) -> list[str]:
    """The directories the ``site`` module adds to the interpreter's path, in order."""
    with_site, _ = interpreter_facts(python)
    without, _ = interpreter_facts(python, "-S")
    return [p for p in with_site if p not in without]


def launcher(python: str, sitedir: str, import_line: str, call: str,
             site_path: list[str], daemon: bool = True) -> bytes:
    """``-I``: no ``PYTHONPATH``, no user site; ``-S``: no ``site`` module, whose
    ``.pth`` files take a good part of start-up: its directories are written in.
    For passt and pasta (``daemon``) the cyclic garbage collector waits until
    start-up is over (a tenth of the import time went to collections that
    found nothing to free)."""
    path_line = f"sys.path += {site_path!r}\n"
    if sitedir not in site_path:
        path_line += f"sys.path.insert(0, {sitedir!r})\n"
    gc_line = ("import gc\n"
               "gc.disable()  # during start-up; frozen and on again once ready (passt/runtime.py)\n"
               if daemon else "")
    return (f"#!{python} -IS\n"
            f'"""Launcher installed by passt-py: runs the program in {sitedir}/passt."""\n'
            f"{gc_line}import sys\n{path_line}{import_line}\n{call}\n").encode()


def program_items(layout: Layout) -> list[Item]:
    site_path = site_dirs(layout.python)
    items = [Item(f"{layout.prefix}/bin/{program}{layout.suffix}",
                  launcher(layout.python, layout.sitedir,
                           f"from passt.cli import {function}", f"{function}()", site_path),
                  0o755)
             for program, function in PROGRAMS.items()]
    items.append(Item(f"{layout.prefix}/bin/pesto{layout.suffix}",
                      launcher(layout.python, layout.sitedir, "from passt.pesto import main",
                               "main()", site_path, daemon=False), 0o755))
    items.append(Item(f"{layout.prefix}/bin/passt-repair{layout.suffix}",
                      launcher(layout.python, layout.sitedir,
                               "from passt.repair_helper import main",
                               "raise SystemExit(main())", site_path, daemon=False), 0o755))
    if QRAP_SCRIPT.exists():
        _, _, body = QRAP_SCRIPT.read_bytes().partition(b"\n")
        items.append(Item(f"{layout.prefix}/bin/qrap{layout.suffix}",
                          f"#!{layout.python} -I\n".encode() + body, 0o755))
    return items


def package_items(layout: Layout) -> list[Item]:
    if not layout.with_package:
        return []
    package = ROOT / "passt"
    return [Item(f"{layout.sitedir}/passt/{source.relative_to(package).as_posix()}",
                 source.read_bytes(), 0o644)
            for source in sorted(package.rglob("*.py"))]


def man_items(layout: Layout) -> list[Item]:
    items = []
    for page in sorted(layout.man_dir.glob("*.1")):
        content = page.read_bytes()
        name = f"{page.stem}{layout.suffix}.1"
        if layout.gzip_man:
            content, name = gzip.compress(content, 9, mtime=0), name + ".gz"
        items.append(Item(f"{layout.prefix}/share/man/man1/{name}", content, 0o644))
    if len(items) < len(PROGRAMS):
        raise InstallError(f"manual pages missing in {layout.man_dir}: run `make man` first")
    return items


def dotted(path: str) -> str:
    """AppArmor's file name for the profile of ``path``: /usr/bin/passt -> usr.bin.passt."""
    return path.strip("/").replace("/", ".")


def tunables(layout: Layout) -> bytes:
    """tunables/passt-py with this install's launcher, interpreter and package paths."""
    text = (ROOT / "apparmor" / "tunables" / "passt-py").read_text()
    _, base_prefix = interpreter_facts(layout.python)
    real_python = os.path.realpath(layout.python)
    python = "/usr/bin/python3.[0-9]*" if real_python.startswith("/usr/bin/python3") \
        else real_python
    pylibs = [f"{layout.sitedir}/passt"]
    if not base_prefix.startswith("/usr"):
        pylibs.append(f"{base_prefix}/lib")
    values = {"passt_bindir": f"{layout.prefix}/bin", "passt_python": python,
              "passt_pylibs": " ".join(pylibs)}
    for name, value in values.items():
        text, found = re.subn(rf"^@\{{{name}\}}=.*$", f"@{{{name}}}={value}", text, flags=re.M)
        if found != 1:
            raise InstallError(f"apparmor/tunables/passt-py: no single @{{{name}}} line")
    return text.encode()


def apparmor_items(layout: Layout) -> list[Item]:
    etc = f"{layout.sysconfdir}/apparmor.d"
    source = ROOT / "apparmor"
    items = [Item(f"{etc}/abstractions/{name}", (source / "abstractions" / name).read_bytes(),
                  0o644) for name in ("passt-py", "passt-py-python", "passt-py-private")]
    items.append(Item(f"{etc}/tunables/passt-py", tunables(layout), 0o644))
    for program in CONFINED:
        name = f"{program}{layout.suffix}"
        installed_at = dotted(f"{layout.prefix}/bin/{name}")
        text = (source / f"usr.bin.{program}").read_text()
        text = text.replace(f"@{{passt_bindir}}/{program}", f"@{{passt_bindir}}/{name}")
        profile = name if layout.prefix == "/usr" else installed_at
        text = text.replace(f"profile {program} ", f"profile {profile} ")
        text = text.replace(f"<local/usr.bin.{program}>", f"<local/{installed_at}>")
        items.append(Item(f"{etc}/{installed_at}", text.encode(), 0o644))
    return items


def selinux_items(layout: Layout) -> list[Item]:
    share = f"{layout.prefix}/share"
    items = []
    for program in CONFINED:
        module = layout.selinux_dir / f"{program}.pp"
        if not module.exists():
            raise InstallError(f"{module} missing: run `make selinux` first")
        items.append(Item(f"{share}/selinux/packages/{program}.pp", module.read_bytes(), 0o644))
        items.append(Item(f"{share}/selinux/devel/include/contrib/{program}.if",
                          (ROOT / "selinux" / f"{program}.if").read_bytes(), 0o644))
        for ext in ("te", "fc"):
            items.append(Item(f"{share}/passt-py/selinux/{program}.{ext}",
                              (ROOT / "selinux" / f"{program}.{ext}").read_bytes(), 0o644))
    return items


def plan(layout: Layout) -> list[Item]:
    return (program_items(layout) + package_items(layout) + man_items(layout)
            + apparmor_items(layout) + selinux_items(layout))


# -- manifest ------------------------------------------------------------------


@dataclass
class Manifest:
    """Files written and directories created, in order, as installed paths."""

    files: list[str]
    dirs: list[str]

    @classmethod
    def read(cls, path: Path) -> Manifest:
        files: list[str] = []
        dirs: list[str] = []
        if path.exists():
            for line in path.read_text().splitlines():
                kind, _, name = line.partition(" ")
                (dirs if kind == "d" else files).append(name)
        return cls(files, dirs)

    def write(self, path: Path) -> None:
        lines = [f"d {d}" for d in self.dirs] + [f"f {f}" for f in self.files]
        path.write_text("".join(line + "\n" for line in lines))


def make_dirs(layout: Layout, path: str, manifest: Manifest) -> None:
    """Create the missing parents of ``path``, recording each one created."""
    missing: list[str] = []
    parent = os.path.dirname(path)
    while parent != "/" and not layout.under_destdir(parent).is_dir():
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        layout.under_destdir(directory).mkdir(mode=0o755)
        manifest.dirs.append(directory)


def write_file(target: Path, item: Item) -> None:
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(item.content)
    partial.chmod(item.mode)
    partial.replace(target)


def check_overwrites(layout: Layout, items: list[Item], owned: set[str]) -> None:
    foreign = [item.path for item in items
               if item.path not in owned and layout.under_destdir(item.path).exists()]
    if foreign:
        raise InstallError("refusing to overwrite files this install does not own: "
                           + ", ".join(foreign))


def compile_package(layout: Layout, manifest: Manifest) -> None:
    """Byte-compile the package with the launchers' interpreter; record the caches."""
    package = layout.under_destdir(f"{layout.sitedir}/passt")
    folders = [package, *sorted(p for p in package.rglob("*") if p.is_dir()
                                and p.name != "__pycache__")]
    caches_existed = {folder: (folder / "__pycache__").is_dir() for folder in folders}
    subprocess.run([layout.python, "-m", "compileall", "-q", "-d", f"{layout.sitedir}/passt",
                    str(package)], check=True, timeout=300)
    for folder in folders:
        installed_folder = f"{layout.sitedir}/passt/{folder.relative_to(package).as_posix()}"
        installed_folder = installed_folder.removesuffix("/.")
        if not caches_existed[folder]:
            manifest.dirs.append(f"{installed_folder}/__pycache__")
        for cached in sorted((folder / "__pycache__").glob("*.pyc")):
            installed = f"{installed_folder}/__pycache__/{cached.name}"
            if installed not in manifest.files:
                manifest.files.append(installed)


def install(layout: Layout, with_manifest: bool, byte_compile: bool) -> list[str]:
    manifest_path = layout.under_destdir(f"{layout.prefix}/{MANIFEST}")
    manifest = Manifest.read(manifest_path) if with_manifest else Manifest([], [])
    items = plan(layout)
    check_overwrites(layout, items, set(manifest.files))
    layout.destdir.mkdir(parents=True, exist_ok=True)
    for item in items:
        make_dirs(layout, item.path, manifest)
        write_file(layout.under_destdir(item.path), item)
        if item.path not in manifest.files:
            manifest.files.append(item.path)
    if byte_compile:
        compile_package(layout, manifest)
    if with_manifest:
        make_dirs(layout, f"{layout.prefix}/{MANIFEST}", manifest)
        manifest.write(manifest_path)
    return [item.path for item in items]


def uninstall(destdir: Path, prefix: str) -> list[str]:
    manifest_path = destdir / f"{prefix}/{MANIFEST}".lstrip("/")
    if not manifest_path.exists():
        raise InstallError(f"no install manifest at {manifest_path}: nothing to uninstall")
    manifest = Manifest.read(manifest_path)
    removed = []
    for name in manifest.files:
        target = destdir / name.lstrip("/")
        if target.exists() or target.is_symlink():
            target.unlink()
            removed.append(name)
    manifest_path.unlink()
    for directory in sorted(manifest.dirs, key=lambda d: d.count("/"), reverse=True):
        target = destdir / directory.lstrip("/")
        remove_stale_caches(target)
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        elif target.is_dir():
            print(f"uninstall: kept {directory}: not empty", file=sys.stderr)
    return removed


def remove_stale_caches(directory: Path) -> None:
    """``__pycache__`` written at run time by another interpreter, in a directory we made."""
    cache = directory / "__pycache__"
    if cache.is_dir() and all(p.suffix == ".pyc" for p in cache.iterdir()):
        for pyc in cache.iterdir():
            pyc.unlink()
        cache.rmdir()


# -- command line ----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("install", "uninstall", "list"))
    parser.add_argument("--destdir", type=Path, default=Path("/"))
    parser.add_argument("--prefix", default="/usr/local")
    parser.add_argument("--sitedir", help="default: PREFIX/lib/passt-py, or Debian's "
                        "dist-packages for PREFIX=/usr")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter the launchers run (default: this one)")
    parser.add_argument("--sysconfdir", default="/etc")
    parser.add_argument("--man-dir", type=Path, default=ROOT / "build" / "man")
    parser.add_argument("--selinux-dir", type=Path, default=ROOT / "build" / "selinux")
    parser.add_argument("--suffix", default="",
                        help="appended to the names of programs, manual pages and profiles")
    parser.add_argument("--no-python-package", action="store_true",
                        help="install all but the passt package (a Python build tool did)")
    parser.add_argument("--package", action="store_true",
                        help="for a package build: no manifest, no byte-compiling "
                        "(the package manager does both), compressed manual pages")
    args = parser.parse_args(argv)
    destdir = args.destdir.resolve()
    prefix = args.prefix.rstrip("/") or "/"
    sitedir = args.sitedir or (DEBIAN_SITEDIR if prefix == "/usr" else f"{prefix}/lib/passt-py")
    try:
        if args.action == "uninstall":
            for name in uninstall(destdir, prefix):
                print(f"removed {name}")
            return 0
        layout = Layout(destdir, prefix, sitedir, args.python, args.man_dir, args.selinux_dir,
                        args.sysconfdir, gzip_man=args.package, suffix=args.suffix,
                        with_package=not args.no_python_package)
        if args.action == "list":
            print("\n".join(item.path for item in plan(layout)))
            return 0
        for name in install(layout, with_manifest=not args.package,
                            byte_compile=not args.package):
            print(f"installed {name}")
    except (InstallError, OSError) as e:
        print(f"installtree: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
