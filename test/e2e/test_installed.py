"""The programs as distributions install them: make install, the .deb, the RPM.

Theory of operation
-------------------
``make install`` is checked in a temporary ``DESTDIR``: what lands where, and
that ``make uninstall`` leaves the directory empty again.

``make deb`` builds the Debian package as Debian does (``dpkg-buildpackage
-us -uc`` on the tracked files, debhelper and pybuild) and runs lintian,
which must report nothing above info; ``make rpm`` runs ``rpmbuild -bb`` on
contrib/fedora/passt-py.spec.

The .deb is then installed with apt in a throw-away copy of this machine
(overlay.py): beside Debian's ``passt`` first, whose programs must stay in
place, then, Debian's ``passt`` removed, as ``passt`` and ``pasta`` through
the alternatives.  apt may not download anything (its proxy is a closed port
on the loopback): the package's dependencies are installed on the machine
by ``make deps``.  Inside, the installed programs must run with Debian's
python3 in isolated mode, their manual pages must list every option their
``--help`` lists, the profiles must be in place and parse, and the
end-to-end suite runs against them (``PASST_IMPL=installed``, see impl.py).
test_debian12.py installs it in a stock Debian 12 root.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .overlay import Overlay, run, tail

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
PROGRAMS = ("passt", "pasta")
CONFINED = (*PROGRAMS, "passt-repair", "pesto")  # with AppArmor profiles and SELinux modules
# The part of the end-to-end suite run against the installed programs: the
# modules that start passt and pasta through impl.py, except those booting
# QEMU guests (test_passt.py, test_libvirt.py), which `make check` already
# runs for the working tree and which cost minutes each under TCG, and
# test_pasta.py, which test_debian12.py runs against the package in a stock
# Debian 12 root.
INSTALLED_E2E_MODULES = ("test_l2_options.py", "test_l2_passt_socket.py")


def load_genman():
    spec = importlib.util.spec_from_file_location("genman", ROOT / "tools" / "genman.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


genman = load_genman()


def make(*targets: str, check: bool = True, **variables: str) -> subprocess.CompletedProcess[str]:
    result = run(["make", "-C", str(ROOT), *targets,
                  *(f"{name}={value}" for name, value in variables.items())], timeout=1200)
    if check:
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


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
                     "/etc/apparmor.d/usr.local.bin.pesto",
                     "/etc/apparmor.d/abstractions/passt-py", "/etc/apparmor.d/tunables/passt-py",
                     "/etc/apparmor.d/abstractions/passt-py-private",
                     "/usr/local/share/selinux/packages/pesto.pp",
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


# -- the Debian package and the RPM, built as the distributions build them --------

DEB_DIR = Path(os.environ.get("DEB_DIR", BUILD / "deb"))
RPM_DIR = Path(os.environ.get("RPM_DIR", BUILD / "rpm"))
SUFFIXED = tuple(f"{program}-py" for program in PROGRAMS)
CONFINED_SUFFIXED = tuple(f"{program}-py" for program in CONFINED)


def dpkg_architecture() -> str:
    return run(["dpkg", "--print-architecture"]).stdout.strip()


def built_deb() -> Path:
    """The .deb ``make deb`` builds (again: it is cheap, and the tree may have changed)."""
    make("deb")
    packages = sorted(DEB_DIR.glob(f"passt-py_*_{dpkg_architecture()}.deb"))
    assert len(packages) == 1, packages
    return packages[0]


@pytest.fixture(scope="module")
def deb() -> Path:
    return built_deb()


def test_lintian_reports_nothing_above_info(deb):
    report = (DEB_DIR / "lintian.log").read_text()
    print(report)
    tags = [line for line in report.splitlines() if re.match(r"[EWX]: ", line)]
    assert not tags, "\n".join(tags)
    assert (DEB_DIR / f"{deb.name.split('_')[0]}_{deb.name.split('_')[1]}.dsc").exists(), \
        "no source package"


def test_deb_declares_debian_dependencies_and_its_relation_to_passt(deb):
    control = run(["dpkg-deb", "--field", str(deb)]).stdout
    fields = dict(re.findall(r"^([\w-]+): (.*)$", control, re.M))
    assert fields["Architecture"] == dpkg_architecture()
    assert "pyroute2" not in fields["Depends"], "netlink is our own (passt/host/rtnl.py)"
    assert "numpy" not in fields["Depends"], "NumPy is only recommended"
    assert fields["Recommends"] == "python3-numpy"
    assert fields["Provides"] == "passt (= 0.0~git20260716)"
    assert "Conflicts" not in fields and "Replaces" not in fields
    assert "invalid" not in fields["Maintainer"]
    conffiles = run(["dpkg-deb", "--info", str(deb), "conffiles"]).stdout.split()
    for program in CONFINED_SUFFIXED:
        assert f"/etc/apparmor.d/usr.bin.{program}" in conffiles


def test_rpmbuild_builds_the_programs_and_the_selinux_subpackage():
    make("rpm")
    machine = os.uname().machine
    (program,) = RPM_DIR.glob(f"RPMS/{machine}/passt-py-[0-9]*.rpm")
    (selinux,) = RPM_DIR.glob("RPMS/noarch/passt-py-selinux-*.rpm")
    files = run(["rpm", "-qlp", str(program)]).stdout.split()
    for name in SUFFIXED + ("qrap-py", "pesto-py"):
        assert f"/usr/bin/{name}" in files
    assert not any(f.startswith("/etc/apparmor.d") for f in files), "AppArmor on Fedora"
    provides = run(["rpm", "-qp", "--provides", str(program)]).stdout
    assert "passt = 0^20260716" in provides
    modules = run(["rpm", "-qlp", str(selinux)]).stdout.split()
    for module in CONFINED:
        assert f"/usr/share/selinux/packages/targeted/{module}.pp" in modules
        assert f"/usr/share/selinux/devel/include/distributed/{module}.if" in modules
    scripts = run(["rpm", "-qp", "--scripts", str(selinux)]).stdout
    assert "selinux_modules_install -s targeted" in scripts


# apt must find everything installed or cached: a download would go to a
# closed port on the loopback and fail, instead of leaving the machine.
APT_OFFLINE = ("-o", "Acquire::http::Proxy=http://127.0.0.1:9/",
               "-o", "Acquire::https::Proxy=http://127.0.0.1:9/", "-o", "Acquire::Retries=0")
APT_ENV = dict(os.environ, DEBIAN_FRONTEND="noninteractive")


@pytest.fixture(scope="module")
def machine(deb: Path, tmp_path_factory) -> Iterator[Overlay]:
    """The overlay machine with the package installed by apt beside Debian's passt."""
    overlay = Overlay(tmp_path_factory.mktemp("overlay"))
    try:
        result = overlay.run(["apt-get", "install", "-y", "--no-install-recommends",
                              *APT_OFFLINE, str(deb)], timeout=1200, env=APT_ENV)
        assert result.returncode == 0, "(`make deps` installs the dependencies)\n" + tail(result)
        yield overlay
    finally:
        overlay.close()


@pytest.fixture(scope="module")
def alone(machine: Overlay) -> Overlay:
    """The same machine, Debian's passt removed: ours is passt through the alternatives."""
    result = machine.run(["apt-get", "remove", "-y", *APT_OFFLINE, "passt"], env=APT_ENV)
    assert result.returncode == 0, tail(result)
    # Removing Debian's passt leaves the alternative unlinked until told.
    result = machine.run(["update-alternatives", "--auto", "passt"])
    assert result.returncode == 0, tail(result)
    return machine


def package_status(machine: Overlay | None, package: str) -> str:
    argv = ["dpkg-query", "-W", "-f", "${Status}", package]
    result = machine.run(argv) if machine else run(argv)
    return result.stdout.strip()


def test_deb_installs_beside_debians_passt(machine):
    assert package_status(machine, "passt-py") == "install ok installed"
    assert package_status(machine, "passt") == "install ok installed"
    elf = machine.run(["head", "-c", "4", "/usr/bin/passt"]).stdout
    assert elf == "\x7fELF", "Debian's passt was replaced"
    query = machine.run(["update-alternatives", "--query", "passt"]).stdout
    assert "Alternative: /usr/bin/passt-py" in query, query
    assert Path("/usr/bin/passt").read_bytes()[:4] == b"\x7fELF", "the machine's passt changed"


@pytest.mark.parametrize("program", SUFFIXED)
def test_installed_program_runs_isolated_with_debians_python(machine, program):
    launcher = machine.run(["head", "-n", "1", f"/usr/bin/{program}"]).stdout
    assert launcher == "#!/usr/bin/python3 -IS\n", launcher
    result = machine.run([f"/usr/bin/{program}", "--version"], timeout=60)
    assert result.returncode == 0, tail(result)
    assert result.stdout.startswith(program.removesuffix("-py") + " ") and \
        result.stdout.endswith("\n"), result.stdout
    compiled = machine.run(["sh", "-c", "ls /usr/lib/python3/dist-packages/passt/__pycache__"])
    assert "cli.cpython-311.pyc" in compiled.stdout, "not byte-compiled at installation"


def test_installed_qemu_wrapper_runs_with_debians_python(machine):
    result = machine.run(["/usr/bin/qrap-py", "--help"], timeout=60)
    assert result.returncode == 0, tail(result)
    assert "qrap" in result.stdout + result.stderr


@pytest.mark.parametrize("program", PROGRAMS)
def test_installed_man_page_shows_every_option_help_lists(machine, program):
    help_text = machine.run([f"/usr/bin/{program}-py", "--help"], timeout=60)
    assert help_text.returncode == 0, tail(help_text)
    env = dict(os.environ, MANWIDTH="120")
    page = machine.run(["man", "--warnings", f"{program}-py"], timeout=120, env=env)
    assert page.returncode == 0 and page.stderr == "", tail(page)
    listed = genman.help_option_names(help_text.stdout + help_text.stderr)
    assert len(listed) > 20, f"--help parsed to too few options: {sorted(listed)}"
    missing = listed - genman.page_option_names(page.stdout)
    assert not missing, f"man {program}-py lacks: {sorted(missing)}"


def test_installed_profiles_are_in_place_and_parse(machine):
    for program in CONFINED_SUFFIXED:
        profile = f"/etc/apparmor.d/usr.bin.{program}"
        text = machine.run(["cat", profile]).stdout
        assert f"profile {program} @{{passt_bindir}}/{program} " in text, text
        result = machine.run(["apparmor_parser", "-Q", "-K", profile], timeout=120)
        assert result.returncode == 0, tail(result)
    for module in CONFINED:
        for path in (f"/usr/share/selinux/packages/{module}.pp",
                     f"/usr/share/selinux/devel/include/contrib/{module}.if"):
            assert machine.run(["test", "-s", path]).returncode == 0, f"{path} missing"


def test_alternatives_make_ours_passt_once_debians_is_removed(alone):
    for program in PROGRAMS:
        target = alone.run(["readlink", "-f", f"/usr/bin/{program}"]).stdout.strip()
        assert target == f"/usr/bin/{program}-py", target
        page = alone.run(["readlink", "-f", f"/usr/share/man/man1/{program}.1.gz"]).stdout
        assert page.strip() == f"/usr/share/man/man1/{program}-py.1.gz"


def test_end_to_end_suite_against_the_installed_programs(alone):
    modules = [f"test/e2e/{name}" for name in INSTALLED_E2E_MODULES
               if (ROOT / "test" / "e2e" / name).exists()]
    assert modules, "none of the end-to-end modules to run is there"
    env = dict(os.environ, PASST_IMPL="installed", PASST_BIN_DIR="/usr/bin")
    result = alone.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "e2e", *modules],
        cwd=str(ROOT), timeout=3000, env=env)
    print(result.stdout[-3000:])
    assert result.returncode == 0, tail(result, 12000)
    assert re.search(r"\b[1-9]\d* passed", result.stdout), "no end-to-end test ran"
