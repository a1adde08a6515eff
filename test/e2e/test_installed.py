"""The programs as a distribution installs them: make install, and the .deb.

Theory of operation
-------------------
``make install`` is checked in a temporary ``DESTDIR``: what lands where, and
that ``make uninstall`` leaves the directory empty again.

The Debian package must be installed with apt on this machine, but it
conflicts with Debian's ``passt`` (same program names), whose C programs the
comparison tests need, possibly at this very moment in another engineer's
run. So the package is installed in a throw-away copy of the machine: an
overlay mount whose lower layer is ``/`` and whose upper layer is a tmpfs,
in a private mount and PID namespace (``unshare``), made the root there with
``pivot_root`` and entered with ``nsenter``. Inside, apt really removes
``passt`` and installs ``passt-py`` resolving its dependencies. Outside,
nothing changes. When the test ends, or dies, the holder process of the
namespaces reads end-of-file on its standard input and exits: as the PID
namespace's init it takes every process started inside with it, and the
mounts disappear with the namespace.
apt may not download anything (its proxy is a closed port on the loopback):
the package's dependencies, Debian's python3-numpy and python3-pyroute2, are
installed on the machine by ``make deps``, so apt has all it needs.

Inside, the installed programs must run with Debian's python3, their manual
pages must list every option their ``--help`` lists, the profiles must be in
place and parse, and the end-to-end suite runs against them
(``PASST_IMPL=installed``, see impl.py).
"""

from __future__ import annotations

import importlib.util
import os
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
PROGRAMS = ("passt", "pasta")
# The part of the end-to-end suite run against the installed programs: the
# modules that start passt and pasta through impl.py, except those booting
# QEMU guests (test_passt.py, test_libvirt.py), which `make check` already
# runs for the working tree and which cost minutes each under TCG.
INSTALLED_E2E_MODULES = ("test_pasta.py", "test_l2_options.py", "test_l2_passt_socket.py")
# apt must find everything installed or cached: a download would go to a
# closed port on the loopback and fail, instead of leaving the machine.
APT_OFFLINE = ("-o", "Acquire::http::Proxy=http://127.0.0.1:9/",
               "-o", "Acquire::https::Proxy=http://127.0.0.1:9/", "-o", "Acquire::Retries=0")


def load_genman():
    spec = importlib.util.spec_from_file_location("genman", ROOT / "tools" / "genman.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


genman = load_genman()


def run(argv: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


def make(*targets: str, check: bool = True, **variables: str) -> subprocess.CompletedProcess[str]:
    result = run(["make", "-C", str(ROOT), *targets,
                  *(f"{name}={value}" for name, value in variables.items())], timeout=1200)
    if check:
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def tail(result: subprocess.CompletedProcess[str], size: int = 4000) -> str:
    return f"exit {result.returncode}\n{result.stdout[-size:]}\n{result.stderr[-size:]}"


# -- make install / uninstall ----------------------------------------------------


@pytest.fixture(scope="module")
def built() -> None:
    make("man", "selinux")


def installed_files(destdir: Path) -> set[str]:
    return {"/" + str(p.relative_to(destdir)) for p in destdir.rglob("*") if not p.is_dir()}


def test_make_install_into_destdir_and_uninstall_leaves_it_empty(built, tmp_path):
    destdir = tmp_path / "stage"
    destdir.mkdir()
    make("install", DESTDIR=str(destdir), PREFIX="/usr/local")
    files = installed_files(destdir)
    for expected in ("/usr/local/bin/passt", "/usr/local/bin/pasta", "/usr/local/bin/qrap",
                     "/usr/local/bin/pesto", "/usr/local/share/man/man1/pesto.1",
                     "/usr/local/lib/passt-py/passt/cli.py",
                     "/usr/local/lib/passt-py/passt/__pycache__/cli.cpython-311.pyc",
                     "/usr/local/share/man/man1/passt.1", "/usr/local/share/man/man1/pasta.1",
                     "/etc/apparmor.d/usr.local.bin.passt", "/etc/apparmor.d/usr.local.bin.pasta",
                     "/etc/apparmor.d/abstractions/passt-py", "/etc/apparmor.d/tunables/passt-py",
                     "/usr/local/share/selinux/packages/passt.pp",
                     "/usr/local/share/selinux/packages/pasta.pp",
                     "/usr/local/share/selinux/devel/include/contrib/passt.if",
                     "/usr/local/share/passt-py/selinux/pasta.te"):
        assert expected in files, f"{expected} not installed"
    assert os.access(destdir / "usr/local/bin/passt", os.X_OK)

    make("uninstall", DESTDIR=str(destdir), PREFIX="/usr/local")
    assert list(destdir.iterdir()) == [], sorted(installed_files(destdir))


def test_installed_apparmor_profiles_follow_the_prefix_and_parse(built, tmp_path):
    destdir = tmp_path / "stage"
    make("install", DESTDIR=str(destdir), PREFIX="/opt/passt")
    etc = destdir / "etc/apparmor.d"
    tunables = (etc / "tunables/passt-py").read_text()
    assert "@{passt_bindir}=/opt/passt/bin" in tunables
    assert "/opt/passt/lib/passt-py/passt" in tunables
    for program in PROGRAMS:
        profile = etc / f"opt.passt.bin.{program}"
        assert f"profile opt.passt.bin.{program} " in profile.read_text()
        result = run(["apparmor_parser", "-Q", "-K", "-I", str(etc), "-I", "/etc/apparmor.d",
                      str(profile)])
        assert result.returncode == 0, result.stderr
    make("uninstall", DESTDIR=str(destdir), PREFIX="/opt/passt")


def test_install_refuses_to_overwrite_what_it_does_not_own(built, tmp_path):
    destdir = tmp_path / "stage"
    (destdir / "usr/bin").mkdir(parents=True)
    foreign = destdir / "usr/bin/pasta"
    foreign.write_text("Debian's pasta\n")
    result = make("install", DESTDIR=str(destdir), PREFIX="/usr", check=False)
    assert result.returncode != 0
    assert "refusing to overwrite" in result.stdout + result.stderr
    assert foreign.read_text() == "Debian's pasta\n"
    assert installed_files(destdir) == {"/usr/bin/pasta"}, "wrote before checking"


# -- the Debian package, installed with apt in an overlay of this machine ---------


# The overlay becomes the root of the mount namespace (pivot_root, not
# chroot: the kernel refuses new user namespaces to a chrooted process, and
# pasta creates them).  The old root is detached; the overlay keeps its
# layers alive by itself.
HOLDER_SCRIPT = """
mount -t tmpfs -o size=2g,mode=755 passt-py-overlay "$W"
mkdir "$W/upper" "$W/work" "$W/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$W/upper,workdir=$W/work" "$W/root"
mount -t proc proc "$W/root/proc"
mount --rbind /sys "$W/root/sys"
mount --rbind /dev "$W/root/dev"
cd "$W/root"
mkdir -p .old-root
pivot_root . .old-root
cd /
umount -l /.old-root
rmdir /.old-root
echo ready
exec cat >/dev/null
"""


class Overlay:
    """A copy-on-write copy of this machine, in private mount and PID namespaces."""

    def __init__(self, workdir: Path) -> None:
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
             "sh", "-euc", HOLDER_SCRIPT],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=dict(os.environ, W=str(workdir)))
        ready, _, _ = select.select([self.holder.stdout], [], [], 60)
        if not ready or self.holder.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError(f"overlay set-up failed: {self.holder.stderr.read()}")
        self.init_pid = self._namespace_init()

    def _namespace_init(self) -> int:
        """Host PID of the holder's child, the init of the new PID namespace."""
        pid = self.holder.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return int(children[0])

    def run(self, argv: list[str], timeout: float = 600, cwd: str = "/",
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside, as root, in ``cwd`` (a path inside)."""
        inside = ["nsenter", f"--target={self.init_pid}", "--mount", "--pid", "--root",
                  "sh", "-c", 'cd "$0" && exec "$@"', cwd, *argv]
        return run(inside, timeout=timeout, env=env)

    def close(self) -> None:
        if self.holder.stdin:
            self.holder.stdin.close()
        try:
            self.holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.holder.kill()
            self.holder.wait(timeout=30)


@pytest.fixture(scope="module")
def deb() -> Path:
    make("deb")
    packages = sorted(BUILD.glob("passt-py_*_all.deb"))
    assert len(packages) == 1, packages
    return packages[0]


@pytest.fixture(scope="module")
def machine(deb: Path, tmp_path_factory) -> Iterator[Overlay]:
    """The overlay machine with the package installed by apt."""
    overlay = Overlay(tmp_path_factory.mktemp("overlay"))
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        result = overlay.run(["apt-get", "install", "-y", "--no-install-recommends",
                              *APT_OFFLINE, str(deb)], timeout=1200, env=env)
        assert result.returncode == 0, "(`make deps` installs the dependencies)\n" + tail(result)
        assert re.search(r"Removing passt\b", result.stdout), tail(result)
        yield overlay
    finally:
        overlay.close()


def package_status(machine: Overlay | None, package: str) -> str:
    argv = ["dpkg-query", "-W", "-f", "${Status}", package]
    result = machine.run(argv) if machine else run(argv)
    return result.stdout.strip()


def test_deb_replaces_debians_passt_in_the_overlay_only(machine):
    assert package_status(machine, "passt-py") == "install ok installed"
    assert package_status(machine, "passt") != "install ok installed"
    launcher = machine.run(["head", "-n", "1", "/usr/bin/passt"]).stdout
    assert launcher == "#!/usr/bin/python3 -I\n", launcher
    assert package_status(None, "passt") == "install ok installed"
    assert Path("/usr/bin/passt").read_bytes()[:4] == b"\x7fELF", "the machine's passt changed"


def test_deb_declares_the_replacement_and_debian_dependencies(deb):
    control = run(["dpkg-deb", "--field", str(deb)]).stdout
    assert "Depends: python3 (>= 3.11), python3-numpy, python3-pyroute2" in control
    for relation in ("Conflicts", "Replaces", "Provides"):
        assert f"{relation}: passt\n" in control
    conffiles = run(["dpkg-deb", "--info", str(deb), "conffiles"]).stdout.split()
    assert "/etc/apparmor.d/usr.bin.passt" in conffiles
    assert "/etc/apparmor.d/usr.bin.pasta" in conffiles


@pytest.mark.parametrize("program", PROGRAMS)
def test_installed_program_runs_with_debians_python(machine, program):
    result = machine.run([f"/usr/bin/{program}", "--version"], timeout=60)
    assert result.returncode == 0, tail(result)
    assert result.stdout.strip(), "no version printed"
    compiled = machine.run(["sh", "-c", "ls /usr/lib/python3/dist-packages/passt/__pycache__"])
    assert "cli.cpython-311.pyc" in compiled.stdout, "postinst did not byte-compile"


def test_installed_qemu_wrapper_runs_with_debians_python(machine):
    result = machine.run(["/usr/bin/qrap", "--help"], timeout=60)
    assert result.returncode == 0, tail(result)
    assert "qrap" in result.stdout + result.stderr


@pytest.mark.parametrize("program", PROGRAMS)
def test_installed_man_page_shows_every_option_help_lists(machine, program):
    help_text = machine.run([f"/usr/bin/{program}", "--help"], timeout=60)
    assert help_text.returncode == 0, tail(help_text)
    env = dict(os.environ, MANWIDTH="120")
    page = machine.run(["man", "--warnings", program], timeout=120, env=env)
    assert page.returncode == 0 and page.stderr == "", tail(page)
    listed = genman.help_option_names(help_text.stdout + help_text.stderr)
    assert len(listed) > 20, f"--help parsed to too few options: {sorted(listed)}"
    missing = listed - genman.page_option_names(page.stdout)
    assert not missing, f"man {program} lacks: {sorted(missing)}"


def test_installed_profiles_are_in_place_and_parse(machine):
    for program in PROGRAMS:
        profile = f"/etc/apparmor.d/usr.bin.{program}"
        result = machine.run(["apparmor_parser", "-Q", "-K", profile], timeout=120)
        assert result.returncode == 0, tail(result)
        for path in (f"/usr/share/selinux/packages/{program}.pp",
                     f"/usr/share/selinux/devel/include/contrib/{program}.if"):
            assert machine.run(["test", "-s", path]).returncode == 0, f"{path} missing"


def test_end_to_end_suite_against_the_installed_programs(machine):
    modules = [f"test/e2e/{name}" for name in INSTALLED_E2E_MODULES
               if (ROOT / "test" / "e2e" / name).exists()]
    assert modules, "none of the end-to-end modules to run is there"
    env = dict(os.environ, PASST_IMPL="installed", PASST_BIN_DIR="/usr/bin")
    result = machine.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "e2e", *modules],
        cwd=str(ROOT), timeout=3000, env=env)
    print(result.stdout[-3000:])
    assert result.returncode == 0, tail(result, 12000)
    assert re.search(r"\b[1-9]\d* passed", result.stdout), "no end-to-end test ran"
