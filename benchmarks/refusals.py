"""How soon a bad input is refused, as a user meets it: every case of the bad-input catalogue
(tests/support/refusals/, as it stands when this starts) through ``emprocess --quiet run`` in a
fresh process, imports included. Prints per case its exit status and wall seconds, then the median
and the max; it asserts nothing (tests/test_refusals.py checks the statuses and messages).

Targets (issue 22): a refused run ends within 10 s; one whose store does not answer, within 30 s
(``EMPROCESS_PROBE_TIMEOUT``, by default ``storage.PROBE_SECONDS``, bounds the wait; this benchmark
keeps the default).

    .venv/bin/python benchmarks/refusals.py [-k SUBSTRING]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.refusals import Case, arguments, spoiled  # noqa: E402

EMPROCESS = Path(sys.executable).with_name("emprocess")  # the console script beside this interpreter
PATIENCE = 120  # seconds before a case that has not ended is stopped and reported


def environ(changes: dict[str, str | None]) -> dict[str, str]:
    """This process's environment with ``changes`` (None unsets)."""
    env = dict(os.environ)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def measure(case: Case) -> tuple[str, float | None, str]:
    """(exit status, seconds, remark) of ``emprocess`` on one case, in a fresh temporary folder."""
    with tempfile.TemporaryDirectory() as base:
        root, conf_dir = Path(base, "input"), Path(base, "conf")
        root.mkdir()
        conf_dir.mkdir()
        try:
            command = [str(EMPROCESS), *arguments(spoiled(case, root), conf_dir, case.argv)]
            env = environ(case.environment())
        except Exception:  # a case still being written, or a store that would not start
            return "setup", None, traceback.format_exc(limit=1).strip().splitlines()[-1]
        started = time.perf_counter()
        try:
            ended = subprocess.run(command, env=env, capture_output=True, text=True, timeout=PATIENCE)
        except subprocess.TimeoutExpired:
            return "-", None, f"did not end within {PATIENCE} s"
        seconds = time.perf_counter() - started
    return str(ended.returncode), seconds, "traceback" if "Traceback" in ended.stderr else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", default="", help="only the cases whose name holds this (case-insensitive)")
    args = parser.parse_args()
    if not EMPROCESS.exists():
        sys.exit(f"{EMPROCESS} not found: run this with the interpreter of the venv emprocess is installed in")
    from support.refusals.catalogue import CATALOGUE

    cases = [case for case in CATALOGUE if args.k.lower() in case.name.lower()]
    print(f"{len(cases)} cases, each through {EMPROCESS.name} --quiet run in a fresh process")
    print(f"{'status':>6} {'seconds':>8}  case")
    times: dict[str, float] = {}
    for case in cases:
        status, seconds, remark = measure(case)
        shown = "-" if seconds is None else f"{seconds:.2f}"
        print(f"{status:>6} {shown:>8}  {case.name}" + (f"  ({remark})" if remark else ""), flush=True)
        if seconds is not None:
            times[case.name] = seconds
    if times:
        slowest = max(times, key=times.get)
        print(f"median {statistics.median(times.values()):.2f} s, max {times[slowest]:.2f} s ({slowest}), "
              f"{len(times)} of {len(cases)} cases timed")


if __name__ == "__main__":
    main()
