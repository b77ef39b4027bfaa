"""``emprocess`` run as a lab runs it, in a new process, and what its output names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def emprocess(*args: str, timeout: float = 900, smtp: str | None = None) -> subprocess.CompletedProcess:
    """``emprocess ARGS`` in a new process; with ``smtp``, Airflow's SMTP connection is that URI."""
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_CONN_SMTP_DEFAULT"}
    if smtp:
        env["AIRFLOW_CONN_SMTP_DEFAULT"] = smtp
    return subprocess.run(
        [sys.executable, "-m", "emprocess.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def run_id_of(stdout: str) -> str:
    line = next(line for line in stdout.splitlines() if line.startswith("run "))
    return line.split()[1]


def airflow_log_of(stdout: str) -> Path:
    """The Airflow log file ``emprocess run`` named at its start."""
    return Path(re.search(r"^Airflow's log: (\S+)", stdout, re.MULTILINE).group(1))
