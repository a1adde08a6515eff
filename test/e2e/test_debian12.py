"""The README's two commands, and the .deb, on a stock Debian 12 root.

Theory of operation
-------------------
This machine is not a stock Debian 12: its python3 has everything the tests
need, so it cannot show that a new user's first commands work.  ``make
debian12-root`` makes a stock one once, with debootstrap (minbase, plus make
and git to clone and run make), and keeps it under build/, with apt's
download cache beside it (pip downloads the test tools again each time:
about 60 MB).  Each test works in a copy-on-write overlay
of it (overlay.py) holding the tracked files of this tree, as a clone has
them.  The overlay shares the machine's network namespace so that apt and pip
can fetch what the commands install, as they would on the user's machine;
the tests themselves send nothing outside.

- ``make demo`` must work (without NumPy: nothing installs it system-wide)
  and print no traceback; then ``make check`` must
  install what the tests need without pip touching Debian's python3 (PEP
  668: a virtual environment) and run them.  Only a few modules run, and
  without the slow prerequisites (guest images, QEMU 10, the full apt list):
  `make check` on this machine runs everything else.
- The .deb installs beside Debian's passt from the archive, with
  ``--no-install-recommends``: Debian's pyroute2 0.7.2 and no NumPy, whose
  pure-Python checksum replacement then carries a transfer through pasta.
- Then the end-to-end module test_pasta.py runs against the installed
  programs there, with the virtual environment `make check` made.

The tests share one copy, the README's commands first (module-scoped
fixtures).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .overlay import Overlay, run, tail
from .test_installed import ROOT, built_deb

DEBIAN12_DIR = Path(os.environ.get("DEBIAN12_DIR", ROOT / "build" / "debian12"))
SOURCE = "/root/passt-py"
VENV_PYTHON = f"{SOURCE}/build/venv/bin/python"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# What the end-to-end modules run in the stock root need besides python3.
E2E_TOOLS = ("iproute2", "iperf3", "socat", "procps", "psmisc", "busybox-static")
APT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}
# What `make check` runs in the stock root, and the apt packages those need
# (the profile tools: `make check` parses the profiles first).
STOCK_TESTS = "test/unit/test_checksum.py test/unit/host/test_seccomp.py test/unit/test_conf.py"
# and the C tool chain `make deps` builds upstream's 2026 release with.
STOCK_APT = "apparmor selinux-policy-dev checkpolicy semodule-utils m4 gcc make libc6-dev"
# shared/ (upstream's reference tarball) lies beside the checkout, as in CI
# (mk/upstream.mk): beside the copy too.
SHARED = next((p for p in (ROOT.parent / "shared", Path("/work/shared")) if p.is_dir()), None)


@pytest.fixture(scope="module")
def debian12_root() -> Path:
    result = run(["make", "-C", str(ROOT), "debian12-root", f"DEBIAN12_DIR={DEBIAN12_DIR}"],
                 timeout=1800)
    assert result.returncode == 0, tail(result)
    return DEBIAN12_DIR / "root"


def stock_overlay(root: Path, workdir: Path) -> Overlay:
    # The machine's trusted certificates: pip fetches over HTTPS, which a
    # network may intercept with an authority of its own that the machine
    # trusts (as a user behind such a proxy would have configured).
    overlay = Overlay(workdir, lower=root, binds={
        DEBIAN12_DIR / "archives": "/var/cache/apt/archives",
        **({CA_BUNDLE: str(CA_BUNDLE)} if CA_BUNDLE.exists() else {}),
        **({SHARED: str(Path(SOURCE).parent / "shared")} if SHARED else {})})
    files = run(["git", "-C", str(ROOT), "ls-files", "-z"]).stdout.split("\0")
    overlay.put(ROOT, [f for f in files if f and (ROOT / f).exists()], SOURCE)
    return overlay


@pytest.fixture(scope="module")
def stock(debian12_root: Path, tmp_path_factory) -> Iterator[Overlay]:
    overlay = stock_overlay(debian12_root, tmp_path_factory.mktemp("debian12"))
    try:
        yield overlay
    finally:
        overlay.close()


@pytest.fixture(scope="module")
def installed(stock: Overlay, readme) -> Overlay:
    """The .deb installed by apt beside Debian's passt, without its recommendations
    (after the README's commands: those run on the stock root)."""
    deb = built_deb()
    stock.put(deb.parent, [deb.name], "/root")
    update = stock.run(["apt-get", "update", "-qq"], env=APT_ENV, timeout=600)
    assert update.returncode == 0, tail(update)
    install = stock.run(["apt-get", "install", "-y", "--no-install-recommends",
                         f"/root/{deb.name}", "passt", *E2E_TOOLS], env=APT_ENV, timeout=1200)
    assert install.returncode == 0, tail(install)
    return stock


@pytest.fixture(scope="module")
def readme(stock: Overlay) -> tuple[subprocess.CompletedProcess[str], ...]:
    """The README's two commands, run in the stock root: `make demo`, `make check`."""
    demo = stock.run(["make", "demo"], cwd=SOURCE, timeout=1200, env=APT_ENV)
    check = stock.run(["make", "check", f"TESTS={STOCK_TESTS}", "APT_TEST_DEPS=",
                       f"APT_EXTRA_DEPS={STOCK_APT}", "E2E_PREREQS=", "CHECK_PREREQS="],
                      cwd=SOURCE, timeout=1800, env=APT_ENV)
    return demo, check


# A transfer through pasta-py large enough for frames above the NumPy
# threshold: python3's own HTTP server on the host's loopback, fetched from
# the namespace through the gateway address.
TRANSFER = r"""
set -e
mkdir -p /tmp/www && head -c 3000000 /dev/urandom >/tmp/www/blob
python3 -m http.server --bind 127.0.0.1 --directory /tmp/www 8090 >/dev/null 2>&1 &
server=$!
trap 'kill $server' EXIT
python3 - <<'PY'
import socket, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", 8090), timeout=0.2).close()
        break
    except OSError:
        time.sleep(0.1)
PY
sha256sum </tmp/www/blob
pasta-py --config-net -T none -t none -u none -U none -- python3 -c '
import hashlib, subprocess, urllib.request
gateway = subprocess.run(["ip", "-4", "route", "show", "default"], capture_output=True,
                         text=True).stdout.split()[2]
with urllib.request.urlopen(f"http://{gateway}:8090/blob", timeout=60) as reply:
    print(hashlib.sha256(reply.read()).hexdigest(), " -")
'
"""


def test_deb_on_stock_debian12_beside_debians_passt_without_numpy(installed):
    numpy = installed.run(["dpkg-query", "-W", "-f", "${Status}", "python3-numpy"], env=APT_ENV)
    assert "install ok installed" not in numpy.stdout, "NumPy came along: it is only recommended"
    assert installed.run(["head", "-c", "4", "/usr/bin/passt"]).stdout == "\x7fELF"
    version = installed.run(["pasta-py", "--version"], env=APT_ENV)
    assert version.returncode == 0 and version.stdout.startswith("pasta "), tail(version)

    transfer = installed.run(["sh", "-c", TRANSFER], env=APT_ENV, timeout=300)
    assert transfer.returncode == 0, tail(transfer)
    sums = transfer.stdout.split()
    assert len(sums) >= 4 and sums[0] == sums[2], tail(transfer)


def test_the_readmes_two_commands_on_stock_debian12(stock, readme):
    demo, check = readme
    assert demo.returncode == 0, tail(demo)
    assert demo.stdout.count("Hello from the host's loopback") == 2, tail(demo)
    assert "Traceback" not in demo.stdout + demo.stderr, tail(demo)

    print(check.stdout[-2000:])
    assert check.returncode == 0, tail(check, 8000)
    assert "externally-managed-environment" not in check.stdout + check.stderr
    assert re.search(r"\b[1-9]\d* passed", check.stdout), tail(check)
    python = stock.run([VENV_PYTHON, "-c", "import sys; from importlib.metadata import version; "
                        "print(sys.base_prefix, version('pyroute2'))"], env=APT_ENV)
    assert python.stdout.split() == ["/usr", "0.7.2"], tail(python)


def test_end_to_end_suite_against_the_package_in_the_stock_root(installed, readme):
    """test_pasta.py, run by the venv `make check` made, drives the installed pasta-py."""
    bin_dir = "/root/passt-py-bin"  # passt and pasta as ours: /usr/bin has Debian's
    link = installed.run(["sh", "-c", f"mkdir -p {bin_dir} && ln -sf /usr/bin/passt-py "
                          f"{bin_dir}/passt && ln -sf /usr/bin/pasta-py {bin_dir}/pasta"])
    assert link.returncode == 0, tail(link)
    env = dict(APT_ENV, PASST_IMPL="installed", PASST_BIN_DIR=bin_dir, PYTHONPATH=SOURCE)
    result = installed.run([VENV_PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "-m", "e2e", "test/e2e/test_pasta.py"],
                           cwd=SOURCE, timeout=1800, env=env)
    print(result.stdout[-2000:])
    assert result.returncode == 0, tail(result, 8000)
    assert re.search(r"\b[1-9]\d* passed", result.stdout), tail(result)


def test_stock_root_is_debian12_and_has_no_test_tools(debian12_root):
    release = (debian12_root / "etc" / "os-release").read_text()
    assert 'VERSION_ID="12"' in release
    for tool in ("usr/bin/pip3", "usr/lib/python3/dist-packages/pytest"):
        assert not (debian12_root / tool).exists(), f"{tool}: not a stock root"
    assert subprocess.run(["test", "-x", str(debian12_root / "usr/bin/make")]).returncode == 0
