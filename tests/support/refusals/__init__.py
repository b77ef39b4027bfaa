"""The bad-input catalogue's support: a small stack to spoil, its good conf, and ``refuse``, which runs
``emprocess run`` in this process and returns its exit status, its message, how long it took to
refuse, and what it left beside the source. Cases live in this package's modules, one per kind
of input; ``catalogue.CATALOGUE`` gathers them for ``test_refusals.py`` and ``benchmarks/refusals.py``.

A case is ``Case(name, change, damage, expected)``: ``change`` edits the conf dict, ``damage`` spoils
the stack folder (both may be None), and every string of ``expected`` must be in the message. Two
optional fields: ``env`` makes the environment the run needs (an object store's endpoint, say, which
it may start then; None unsets a variable), and ``argv``, given the written conf's path, the command
line after ``--quiet`` when it is not ``run <conf>``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

SIZE = 96
SLICES = 4


@dataclass(frozen=True)
class Case:
    name: str
    change: Callable[[dict], object] | None
    damage: Callable[[Path], object] | None
    expected: tuple[str, ...] = field(default=())
    env: Callable[[], dict[str, str | None]] | None = None
    argv: Callable[[Path], list[str]] | None = None

    def environment(self) -> dict[str, str | None]:
        return self.env() if self.env else {}


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str
    seconds: float
    new_files: set[str]  # beside the source (where a run's locations would be), after the refusal


def write_stack(src: Path, n: int = SLICES, size: int = SIZE) -> None:
    src.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for z in range(n):
        cv2.imwrite(str(src / f"img{z:03d}.png"), rng.integers(0, 255, (size, size), dtype=np.uint8))


def good_conf(src: Path) -> dict:
    return {"id": "bad", "image": "img%03d.png", "minz": 0, "maxz": SLICES - 1, "source": f"file://{src}"}


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def spoiled(case: Case, root: Path) -> dict:
    """A stack in ``root/src`` and its conf, both spoiled as the case says."""
    src = root / "src"
    write_stack(src)
    conf = good_conf(src)
    if case.change:
        case.change(conf)
    if case.damage:
        case.damage(src)
    return conf


def arguments(conf: dict, conf_dir: Path, argv: Callable[[Path], list[str]] | None = None) -> list[str]:
    """``emprocess``'s arguments: ``--quiet run`` on ``conf`` written to ``conf_dir`` (away from the
    stack), or ``--quiet`` and what ``argv`` makes of the conf's path."""
    conf_path = conf_dir / "conf.json"
    conf_path.write_text(json.dumps(conf))
    return ["--quiet", *(argv(conf_path) if argv else ["run", str(conf_path)])]


def _set(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextlib.contextmanager
def environment(changes: dict[str, str | None]):
    """``os.environ`` changed as ``changes`` says (None unsets) while the block runs."""
    saved = {name: os.environ.get(name) for name in changes}
    _set(changes)
    try:
        yield
    finally:
        _set(saved)


def refuse(conf: dict, root: Path, conf_dir: Path, argv: Callable[[Path], list[str]] | None = None,
           env: dict[str, str | None] | None = None) -> Refusal:
    """``emprocess`` (see ``arguments``) in this process, with ``env``'s changes to the environment."""
    from emprocess.cli import main

    args = arguments(conf, conf_dir, argv)
    before = listing(root)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    err = io.StringIO()
    started = time.perf_counter()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), environment(env or {}):
            status = main(args)
    except SystemExit as exit:  # argparse refusing the command line
        status = exit.code
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    return Refusal(status, err.getvalue(), time.perf_counter() - started, listing(root) - before)
