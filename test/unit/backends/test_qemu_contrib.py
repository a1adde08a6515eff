"""contrib/: the examples are valid for the programs that read them.

libvirt's own schema checks the domain XML (virt-xml-validate, from
libvirt-clients); the podman configuration is TOML whose pasta options our
command line accepts; every passt command line in the documentation is one
our passt accepts.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest

from passt.conf import parse

CONTRIB = Path(__file__).resolve().parents[3] / "contrib"
DOCS = [CONTRIB / "README.md", CONTRIB / "qemu" / "README.md"]


@pytest.mark.parametrize("name", ["passt-backend.xml", "passt-qemu-commandline.xml"])
def test_libvirt_examples_follow_libvirts_schema(name: str) -> None:
    result = subprocess.run(["virt-xml-validate", str(CONTRIB / "libvirt" / name), "domain"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_backend_example_uses_the_passt_backend() -> None:
    xml = (CONTRIB / "libvirt" / "passt-backend.xml").read_text()
    assert "<backend type='passt'" in xml and "<interface type='user'>" in xml


def test_podman_configuration_runs_pasta_with_options_it_accepts() -> None:
    with open(CONTRIB / "containers" / "containers.conf", "rb") as f:
        config = tomllib.load(f)
    network = config["network"]
    assert network["default_rootless_network_cmd"] == "pasta"
    # what podman appends: --config-net before, the namespace after
    parse("pasta", ["--config-net", *network["pasta_options"], "--netns", "/run/netns/x"])


def documented_passt_commands() -> list[list[str]]:
    """``passt ...`` command lines of the documentation (continuations joined;
    synopses with placeholders left out)."""
    commands = []
    for doc in DOCS:
        text = re.sub(r"\\\n\s*", " ", doc.read_text())
        for line in text.splitlines():
            if not line.strip().startswith("passt -") or "[" in line:
                continue  # prose, or a synopsis with [OPTIONAL] parts
            words = shlex.split(line.split("#", 1)[0])
            commands.append(words[1:])
    return commands


def test_documentation_has_passt_command_lines() -> None:
    assert len(documented_passt_commands()) >= 3


@pytest.mark.parametrize("argv", documented_passt_commands(), ids=" ".join)
def test_documented_passt_command_lines_are_accepted(argv: list[str]) -> None:
    parse("passt", argv)
