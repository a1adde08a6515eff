"""Manual pages: generated from the option table, rendered without warnings.

The pages must list every option ``--help`` lists (they are generated from the
same table, this checks that the generator keeps its promise), and groff must
render them without a warning.  The generator is first exercised on a small
table of our own (escaping, mode filtering, placeholders), then on the real one.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from passt.conf import OptionSpec

ROOT = Path(__file__).resolve().parents[2]
MODES = ("passt", "pasta")


def load_genman():
    spec = importlib.util.spec_from_file_location("genman", ROOT / "tools" / "genman.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("genman", module)
    spec.loader.exec_module(module)
    return module


genman = load_genman()


BOTH = frozenset(MODES)
FAKE_OPTIONS = (
    OptionSpec("d", "debug", None, BOTH, "Be verbose"),
    OptionSpec(None, "trace", None, BOTH, "Be extra verbose, implies --debug"),
    OptionSpec("s", "socket", "PATH", frozenset({"passt"}), "UNIX domain socket path",
               ("default: probe free path starting from /tmp/passt_1.socket",)),
    OptionSpec("I", "ns-ifname", "NAME", frozenset({"pasta"}), "Namespace interface name"),
    OptionSpec("t", "tcp-ports", "SPEC", BOTH, "TCP port forwarding",
               ("SPEC can be:", "\t-t 22\tForward local port 22", ".starts with a dot",
                "back\\slash")),
)


def fake_help_text(mode: str) -> str:
    """--help as conf.help_text() prints it: names, argument, help, details."""
    lines = []
    for opt in FAKE_OPTIONS:
        if mode in opt.modes:
            names = ", ".join(genman.option_names(opt))
            lines.append(f"  {names} {opt.metavar or ''}\t{opt.help}")
            lines += [f"    {detail}" for detail in opt.details]
    return "\n".join(lines) + "\n"


def groff(page: str) -> tuple[str, str]:
    """Render roff as plain text with every warning on; (text, warnings)."""
    result = subprocess.run(
        ["groff", "-ww", "-man", "-Tutf8", "-P-cbou", "-rLL=100n"],
        input=page, capture_output=True, text=True, check=True, timeout=60,
    )
    return result.stdout, result.stderr


def man_warnings(path: Path) -> str:
    """What ``man --warnings -l`` says about a page file, as a reader would run it."""
    env = dict(os.environ, MANWIDTH="80")
    result = subprocess.run(["man", "--warnings", "-l", str(path)], capture_output=True,
                            text=True, env=env, timeout=60, check=True)
    assert "OPTIONS" in result.stdout
    return result.stderr


def test_fake_table_page_lists_every_option_of_its_help_and_renders_cleanly():
    for mode in MODES:
        text, warnings = groff(genman.render(mode, FAKE_OPTIONS, "9.9"))
        assert warnings == ""
        missing = genman.help_option_names(fake_help_text(mode)) - genman.page_option_names(text)
        assert not missing, f"{mode}: on --help but not in the page: {sorted(missing)}"


def test_fake_table_options_of_the_other_mode_stay_out():
    passt_text, _ = groff(genman.render("passt", FAKE_OPTIONS, "9.9"))
    pasta_text, _ = groff(genman.render("pasta", FAKE_OPTIONS, "9.9"))
    assert "--socket" in passt_text and "--socket" not in pasta_text
    assert "--ns-ifname" in pasta_text and "--ns-ifname" not in passt_text


def test_help_strings_are_escaped_not_interpreted():
    page = genman.render("passt", FAKE_OPTIONS, "9.9")
    text, warnings = groff(page)
    assert warnings == ""
    assert ".starts with a dot" in text
    assert "back\\slash" in text
    assert "-t 22  Forward local port 22" in text


def test_placeholders_are_all_filled(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    page = genman.render("pasta", FAKE_OPTIONS, "9.9")
    assert "@" not in "".join(line for line in page.splitlines()
                              if line.startswith((".TH", "@")))
    assert '.TH PASTA 1 "2023-11-14" "passt-py 9.9"' in page
    assert "A port specification" in page  # the shared grammar was included


def test_unknown_placeholder_is_refused(tmp_path):
    (tmp_path / "passt.1.in").write_text(".TH PASST 1\n@INCLUDE typo.roff\n")
    with pytest.raises(ValueError, match="unknown placeholder"):
        genman.render("passt", FAKE_OPTIONS, "9.9", tmp_path)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown mode"):
        genman.render("slirp", FAKE_OPTIONS, "9.9")


def test_sections_required_of_a_manual_page_are_present():
    for mode in MODES:
        text, _ = groff(genman.render(mode, FAKE_OPTIONS, "9.9"))
        for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "PORT FORWARDING",
                        "EXAMPLES", "EXIT STATUS", "SEE ALSO"):
            assert re.search(rf"^{section}$", text, re.M), f"{mode}: no {section} section"


def test_examples_cover_qemu_libvirt_and_containers():
    passt_page = genman.render("passt", FAKE_OPTIONS, "9.9")
    pasta_page = genman.render("pasta", FAKE_OPTIONS, "9.9")
    assert "\\-netdev stream" in passt_page and "<backend type='passt'/>" in passt_page
    assert "podman run" in pasta_page and "\\-\\-netns" in pasta_page


# -- the real option table --------------------------------------------------


def real_pages(tmp_path: Path) -> dict[str, Path]:
    """Generate both pages from passt.conf with the command ``make man`` runs."""
    pages = {}
    for mode in MODES:
        out = tmp_path / f"{mode}.1"
        subprocess.run([sys.executable, str(ROOT / "tools" / "genman.py"), mode, str(out)],
                       check=True, timeout=60, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
        pages[mode] = out
    return pages


def test_real_pages_list_every_option_help_lists(tmp_path):
    from passt import conf

    for mode, path in real_pages(tmp_path).items():
        text, warnings = groff(path.read_text())
        assert warnings == "", f"{mode}: groff warns:\n{warnings}"
        assert man_warnings(path) == "", f"{mode}: man --warnings complains"
        listed = genman.help_option_names(conf.help_text(mode))
        assert len(listed) > 20, f"{mode}: --help parsed to too few options: {listed}"
        missing = listed - genman.page_option_names(text)
        assert not missing, f"{mode}: on --help but not in the page: {sorted(missing)}"


def test_real_pages_carry_every_option_of_their_mode_in_the_table(tmp_path):
    from passt import conf

    pages = {mode: groff(path.read_text())[0] for mode, path in real_pages(tmp_path).items()}
    for opt in conf.OPTIONS:
        for mode in opt.modes:
            for name in genman.option_names(opt):
                assert name in genman.page_option_names(pages[mode]), f"{name} missing from {mode}(1)"


def test_pesto_page_lists_every_option_its_help_lists(tmp_path):
    from passt import pesto

    out = tmp_path / "pesto.1"
    subprocess.run([sys.executable, str(ROOT / "tools" / "genman.py"), "pesto", str(out)],
                   check=True, timeout=60, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    text, warnings = groff(out.read_text())
    assert warnings == "" and man_warnings(out) == ""
    listed = genman.help_option_names(pesto.help_text())
    assert len(listed) == 2 * len(pesto.OPTIONS) - 1       # every short and long name
    assert not listed - genman.page_option_names(text)
    for section in ("NAME", "SYNOPSIS", "OPTIONS", "EXIT STATUS", "SEE ALSO"):
        assert re.search(rf"^{section}$", text, re.M)
