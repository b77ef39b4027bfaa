"""A command's calls as data: ``Step``\\ s are built first (reading is allowed, writing is not), then
``carry_out`` prints them (``--dry-run``) or, after confirmation for destructive commands, makes them."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from emprocess.errors import InputError


class NotConfirmed(InputError):
    """A destructive command that was neither confirmed at the terminal nor given ``--yes``."""


@dataclass(frozen=True)
class Step:
    """One call a command makes: ``what`` says it in one line (what ``--dry-run`` prints), ``run``
    makes it. ``what`` never holds a credential."""

    what: str
    run: Callable[[], object]


def carry_out(steps: Sequence[Step], *, dry_run: bool, yes: bool = False, destructive: bool = False,
              summary: str = "", out: Callable[[str], None] = print) -> None:
    """Print ``steps`` (dry run), or make them in order, printing each first. A destructive command
    asks at a terminal unless ``yes``; elsewhere (a script, a test) it refuses without ``--yes``."""
    if dry_run:
        for step in steps:
            out(f"would {step.what}")
        if not steps:
            out("nothing to do")
        return
    if destructive and steps and not yes:
        confirm(summary or f"{len(steps)} destructive calls", steps)
    for step in steps:
        out(step.what)
        step.run()
    if not steps:
        out("nothing to do")


def confirm(summary: str, steps: Sequence[Step]) -> None:
    """Ask at a terminal; refuse (NotConfirmed) where no one can answer."""
    if not sys.stdin.isatty():
        raise NotConfirmed(f"{summary}: not confirmed; pass --yes to go ahead without asking "
                           f"(--dry-run lists the {len(steps)} calls first)")
    for step in steps:
        print(f"  {step.what}")
    answer = input(f"{summary}. Go ahead? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise NotConfirmed(f"{summary}: not confirmed")


def add_safety_flags(parser, destructive: bool = True) -> None:
    """``--dry-run`` for every command; ``--yes`` for the destructive ones."""
    parser.add_argument("--dry-run", action="store_true", help="print every call it would make, make none")
    if destructive:
        parser.add_argument("--yes", action="store_true", help="do not ask before destroying or changing data")
