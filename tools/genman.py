"""Generate the passt(1) and pasta(1) manual pages from the option table.

Theory of operation
-------------------
``--help`` and the manual pages describe the same options, so they are made
from the same source: ``passt.conf.OPTIONS``, the table the command-line parser
and ``conf.help_text()`` are built from.  A page is a hand-written roff
template (``doc/man/passt.1.in``, ``doc/man/pasta.1.in``; ``pesto.1.in`` with
``passt.pesto.OPTIONS``) with three kinds of
placeholders, each alone on its line or inline:

- ``@OPTIONS@`` (a line): replaced by one ``.TP`` entry per option of the
  page's mode, in table order;
- ``@INCLUDE name@`` (a line): replaced by ``doc/man/name``, for prose the two
  pages share (the port-specification grammar, exit statuses);
- ``@VERSION@`` and ``@DATE@`` (inline): the package version, and the date
  from ``SOURCE_DATE_EPOCH`` when set (reproducible builds), else today.

Prose that ``--help`` has no room for (description, grammar, examples, exit
statuses) lives in the templates, where a writer edits roff directly; what
``--help`` does list is never typed twice.  Text taken from the table is
escaped for roff (backslashes, hyphens as ``\\-`` so that options copy and
paste as ASCII, and lines that would start with a control character), so the
help strings need no roff knowledge.  ``test/unit/test_manpages.py`` renders
the result with ``groff -ww`` and checks that every option ``--help`` prints
is on the page.

Usage: ``python3 tools/genman.py MODE OUTPUT`` (``make man`` runs it).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

SOURCE_DIR = Path(__file__).resolve().parent.parent / "doc" / "man"
MODES = ("passt", "pasta", "pesto")

_INCLUDE = re.compile(r"^@INCLUDE ([\w.-]+)@$")
_HELP_OPTIONS = re.compile(r"\s*((?:--?[A-Za-z0-9][\w-]*)(?:,\s*--?[A-Za-z0-9][\w-]*)*)")
_PAGE_OPTION = re.compile(r"(?<![\w-])--?[A-Za-z0-9][\w-]*")
_OVERSTRIKE = re.compile(".\x08")  # bold and underline as a terminal pager gets them
# Hyphen, non-breaking hyphen, minus sign: how groff may print "-".
_HYPHENS = str.maketrans({"\u2010": "-", "\u2011": "-", "\u2212": "-"})


class OptionLike(Protocol):
    """What the generator reads of ``conf.OptionSpec``."""

    short: str | None
    long: str
    metavar: str | None
    modes: frozenset[str]
    help: str
    details: tuple[str, ...]


def escape(text: str) -> str:
    """Make plain text safe inside a roff line (not at its start)."""
    return text.replace("\\", "\\e").replace("-", "\\-")


def text_line(text: str) -> str:
    """One roff text line: escaped, leading spaces kept (unpaddable), never a request."""
    spaced = text.replace("\t", "  ").rstrip()
    body = spaced.lstrip(" ")
    indent = "\\ " * (len(spaced) - len(body))
    line = escape(body)
    if not indent and line[:1] in (".", "'"):
        return "\\&" + line
    return indent + line


def option_tag(opt: OptionLike) -> str:
    """The bold option names and italic argument of one ``.TP`` tag line."""
    names = [f"\\fB{escape(name)}\\fR" for name in option_names(opt)]
    tag = ", ".join(names)
    if opt.metavar:
        tag += f" \\fI{escape(opt.metavar)}\\fR"
    return tag


def option_names(opt: OptionLike) -> list[str]:
    """``-x`` and ``--long`` as typed on the command line."""
    names = [f"-{opt.short}"] if opt.short else []
    return [*names, f"--{opt.long}"]


def option_entry(opt: OptionLike) -> list[str]:
    """The roff lines of one option: tag, help sentence, one line per detail."""
    lines = [".TP", option_tag(opt), text_line(opt.help)]
    for detail in opt.details:
        if detail.strip():
            lines += [".br", text_line(detail)]
    return lines


def options_section(options: Iterable[OptionLike], mode: str) -> list[str]:
    """Every option of ``mode``, in table order."""
    lines: list[str] = []
    for opt in options:
        if mode in opt.modes:
            lines += option_entry(opt)
    return lines


def build_date() -> str:
    """ISO date of the build: ``SOURCE_DATE_EPOCH`` if set, else today (UTC)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (datetime.datetime.fromtimestamp(int(epoch), datetime.UTC) if epoch
            else datetime.datetime.now(datetime.UTC))
    return when.strftime("%Y-%m-%d")


def expand(template: str, source_dir: Path, options: Iterable[OptionLike], mode: str,
           version: str) -> str:
    """Fill a page template: options, includes, version and date."""
    out: list[str] = []
    for line in template.splitlines():
        include = _INCLUDE.match(line)
        if line == "@OPTIONS@":
            out += options_section(options, mode)
        elif include:
            out += (source_dir / include.group(1)).read_text().splitlines()
        elif line.startswith("@"):
            raise ValueError(f"unknown placeholder line in template: {line!r}")
        else:
            out.append(line.replace("@VERSION@", version).replace("@DATE@", build_date()))
    return "\n".join(out) + "\n"


def render(mode: str, options: Iterable[OptionLike], version: str,
           source_dir: Path = SOURCE_DIR) -> str:
    """The roff source of the manual page of ``mode``."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}, expected one of {', '.join(MODES)}")
    template = (source_dir / f"{mode}.1.in").read_text()
    return expand(template, source_dir, options, mode, version)


def help_option_names(help_text: str) -> set[str]:
    """Option names at the start of ``--help`` lines (``-x``, ``--long``)."""
    found: set[str] = set()
    for line in help_text.splitlines():
        lead = _HELP_OPTIONS.match(line)
        if lead:
            found.update(name.strip() for name in lead.group(1).split(","))
    return found


def page_option_names(rendered: str) -> set[str]:
    """Every ``-x``/``--long`` word of a rendered page (any Unicode hyphen, overstrikes)."""
    plain = _OVERSTRIKE.sub("", rendered).translate(_HYPHENS)
    return set(_PAGE_OPTION.findall(plain))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate a manual page from passt.conf")
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("output", type=Path)
    parser.add_argument("--source", type=Path, default=SOURCE_DIR,
                        help="directory of the page templates (default: %(default)s)")
    args = parser.parse_args(argv)

    import passt
    from passt import conf, pesto

    options = pesto.OPTIONS if args.mode == "pesto" else conf.OPTIONS
    page = render(args.mode, options, passt.__version__, args.source)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
