"""``pesto``: show and change the forwards of a running passt or pasta, as upstream's.

Theory of operation
-------------------
``pesto [OPTION]... PATH`` connects to the socket a passt or pasta was
started with ``-c PATH`` on (``control.Session``), and without a change
option prints its tables.  The change options are commands applied in
order to copies of the tables, as upstream's ``pesto(1)`` says: ``-A``
makes the specs that follow additions, ``-D`` deletions, ``-C PIF`` empties
a table, and a spec given before any ``-A``/``-D`` first empties its table
(``pesto -t 1024`` replaces the inbound TCP and UDP rules).  Everything is
parsed and checked before the request goes out: a bad spec, or a deletion
of a rule that is not there, sends nothing and exits 1.

Exit status, as upstream: 0 on success, 1 on any error (usage included).
Against our server the request's verdict is also read: a refusal (say, a
port that cannot be bound) is printed and exits 1.  Upstream's server gives
no verdict; then 0 means "sent".

The options live in ``OPTIONS`` (``conf.OptionSpec``), from which both
``--help`` and ``pesto(1)`` (``tools/genman.py pesto``) are made.
"""

from __future__ import annotations

import getopt
import sys

from . import __version__, control
from .conf import OptionSpec
from .fwd_rule import RuleError
from .pesto_wire import ProtocolError

PESTO = frozenset({"pesto"})

OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("A", "add", None, PESTO, "Add following specifiers to forwards"),
    OptionSpec("D", "delete", None, PESTO, "Delete following specifiers instead"),
    OptionSpec("C", "clear", "PIF", PESTO, "Clear forwarding table for given PIF",
               ("PIF names: those the instance shows (HOST, SPLICE)",)),
    OptionSpec("t", "tcp-ports", "SPEC", PESTO, "TCP inbound port forwarding",
               ("can be specified multiple times",
                "SPEC: none, or [ADDR[%IFACE]/]PORTS as passt(1) and pasta(1)",
                "e.g. -t 22, -t 22:23, -t 8000-8010,~8005, -t 192.0.2.1/80")),
    OptionSpec("u", "udp-ports", "SPEC", PESTO, "UDP inbound port forwarding",
               ("SPEC is as described for TCP above",)),
    OptionSpec("T", "tcp-ns", "SPEC", PESTO, "TCP port forwarding to init namespace",
               ("SPEC is as described above",)),
    OptionSpec("U", "udp-ns", "SPEC", PESTO, "UDP port forwarding to init namespace",
               ("SPEC is as described above",)),
    OptionSpec("s", "show", None, PESTO, "Show configuration before and after"),
    OptionSpec("d", "debug", None, PESTO, "Print debugging messages"),
    OptionSpec("h", "help", None, PESTO, "Display this help message and exit"),
    OptionSpec(None, "version", None, PESTO, "Show version and exit"),
)

_SHORT = "".join(o.short + (":" if o.metavar else "") for o in OPTIONS if o.short)
_LONG = [o.long + ("=" if o.metavar else "") for o in OPTIONS]
_BY_NAME = {f"--{o.long}": o for o in OPTIONS} | {f"-{o.short}": o for o in OPTIONS if o.short}
_COLUMN = 24


class _Die(Exception):
    """One line on standard error, exit status 1."""


def help_text() -> str:
    lines = ["Usage: pesto [OPTION]... PATH", ""]
    for opt in OPTIONS:
        left = f"  {opt.names()}" + (f" {opt.metavar}" if opt.metavar else "")
        lines.append(f"{left:<{_COLUMN}}{opt.help}" if len(left) + 2 <= _COLUMN
                     else f"{left}  {opt.help}")
        lines += [f"    {detail}" for detail in opt.details]
    return "\n".join(lines) + "\n"


def show(title: str, session: control.Session) -> None:
    print(f"{title} ({session.path})")
    for name, table in session.tables.items():
        print(f"  {name}")
        for rule in table.rules:
            print(f"    {rule}")


def edit(session: control.Session, opts: list[tuple[str, str]]) -> None:
    """Apply the change options in order to the session's copies of the tables."""
    delete: bool | None = None          # None: replacing (no -A/-D yet)
    for name, value in opts:
        letter = _BY_NAME[name].short
        if letter == "A":
            delete = False
        elif letter == "D":
            delete = True
        elif letter == "C":
            session.clear(value)
        elif letter in control.OPTION_PIF:
            pif = control.OPTION_PIF[letter]
            if delete is None and pif in session.tables and pif not in session.cleared:
                session.clear(pif)
            (session.delete if delete else session.add)(letter, value)


def run(argv: list[str]) -> int:
    try:
        opts, args = getopt.gnu_getopt(argv, _SHORT, _LONG)
    except getopt.GetoptError as e:
        sys.stderr.write(f"pesto: {e}\n{help_text()}")
        return 1
    letters = {_BY_NAME[name].long for name, _ in opts}
    if "help" in letters:
        sys.stdout.write(help_text())
        return 0
    if "version" in letters:
        sys.stdout.write(f"pesto {__version__}\n")
        return 0
    if len(args) != 1:
        sys.stderr.write(help_text())
        return 1
    debug = "debug" in letters
    changes = [(n, v) for n, v in opts if (_BY_NAME[n].short or "-") in "ADCtuTU"]
    try:
        with control.Session(args[0]) as session:
            if debug:
                sys.stderr.write(f"Connected to {args[0]}, protocol version {session.version}\n")
            if not changes:
                show("passt/pasta configuration", session)
                return 0
            if "show" in letters:
                show("Previous configuration", session)
            edit(session, changes)
            if "show" in letters:
                show("Updated configuration", session)
            sys.stdout.flush()
            reply = session.commit()
            if debug:
                sys.stderr.write(f"Server: {reply.message if reply else 'no verdict'}\n")
    except (control.ControlError, ProtocolError, RuleError) as e:
        sys.stdout.flush()
        sys.stderr.write(f"{e}\n")
        return 1
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()

