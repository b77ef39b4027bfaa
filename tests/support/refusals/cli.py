"""Bad-input cases about the command line and the conf file: see ``support.refusals``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from support.refusals import Case


def conf_file(content: bytes) -> Callable[[Path], list[str]]:
    """``run`` on a conf file holding ``content`` instead of the case's conf."""

    def argv(path: Path) -> list[str]:
        path.write_bytes(content)
        return ["run", str(path)]

    return argv


CASES = [
    Case("conf file missing", None, None, ("missing.json does not exist",),
         argv=lambda path: ["run", str(path.with_name("missing.json"))]),
    Case("conf file a folder", None, None, ("cannot be read", "Is a directory"),
         argv=lambda path: ["run", str(path.parent)]),
    Case("conf not JSON", None, None, ("is not valid JSON",), argv=conf_file(b"{'id': 'single quotes'}")),
    Case("conf not UTF-8", None, None, ("is not valid JSON",), argv=conf_file(b'{"id": "caf\xe9"}')),
    Case("conf a JSON list", None, None, ("must be a JSON object, got list",), argv=conf_file(b"[]")),
    Case("resume of a malformed run id", None, None, ("--resume", "'yesterday'", "manual__<ISO date>"),
         argv=lambda path: ["run", str(path), "--resume", "yesterday"]),
    Case("width not offered", None, None, ("--width", "invalid choice"),
         argv=lambda path: ["run", str(path), "--width", "3"]),
]
