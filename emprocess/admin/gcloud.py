"""The Google Cloud CLI, called with argument lists (never a shell string): the deploy commands' one
way to Cloud Composer, Cloud Build, Artifact Registry, Cloud Run and Secret Manager.

``gcloud`` is found on PATH, so tests put a recording stand-in first on it.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess

from emprocess.errors import InputError


class GcloudError(InputError):
    """A gcloud call that failed; the message is the call and gcloud's own last lines."""


def _executable() -> str:
    found = shutil.which("gcloud")
    if found is None:
        raise GcloudError("gcloud is not on PATH: install the Google Cloud CLI and run `gcloud auth login`")
    return found


def shown(args: list[str]) -> str:
    """A call as a terminal would show it (quoted where needed), for ``--dry-run`` and the log."""
    return shlex.join(["gcloud", *args])


def run(args: list[str], stdin: str | None = None) -> str:
    """Make one call; its stdout. ``stdin`` is how a secret reaches gcloud: never in the arguments."""
    done = subprocess.run([_executable(), *args], input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-3:])
        raise GcloudError(f"{shown(args)} failed (exit {done.returncode}): {tail}")
    return done.stdout


def describe(args: list[str]) -> dict | None:
    """A ``… describe`` call's JSON, or None when the resource does not exist."""
    done = subprocess.run([_executable(), *args, "--format=json"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        if "NOT_FOUND" in done.stderr or "not found" in done.stderr.lower():
            return None
        tail = "\n".join(done.stderr.strip().splitlines()[-3:])
        raise GcloudError(f"{shown([*args, '--format=json'])} failed (exit {done.returncode}): {tail}")
    return json.loads(done.stdout)


def dict_flag(flag: str, values: dict[str, str]) -> str:
    """``--flag=^;^K=V;K=V``: gcloud's dict flags split on commas unless another delimiter is named
    first, and allowed prefixes and JSON values hold commas."""
    return f"{flag}=^;^" + ";".join(f"{key}={value}" for key, value in sorted(values.items()))
