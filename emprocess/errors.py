"""One error policy for every path a stage's work runs on: behind an HTTP service, in-process
(``emprocess work``, a light stage in the orchestrator) and in a pod.

An error is either **bad input** — the conf, a slice, a segmentation, a URL, a payload, a missing or
corrupt file — which fails its task at once, because a retry would only meet it again, or a
**fault** a retry may mend (a service's 5xx or 429, a timeout, a dropped connection), which Airflow
retries. ``is_bad_input`` decides; ``http_status`` says how a service answers bad input.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input; the message names the offending key, slice, URL or file (never a credential)."""


class ConfError(InputError):
    """A run conf that cannot run; ``problems``: one line per refused key, when it had several."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or []


def is_bad_input(err: BaseException) -> bool:
    """Whether retrying cannot mend ``err``: an InputError (a service's 4xx answer is one), a missing
    file, a location outside the allowed prefixes, or data tensorstore cannot decode."""
    from emprocess import storage  # storage raises these errors; it imports this module

    return isinstance(err, (InputError, FileNotFoundError, PermissionError)) or storage.is_permanent(err)


def http_status(err: BaseException) -> int | None:
    """A service's answer to ``err``: 404 for a missing file, 403 for a location outside the allowed
    prefixes, 422 for other bad input; None for a fault (the service answers 500, the caller retries)."""
    if isinstance(err, FileNotFoundError):
        return 404
    if isinstance(err, PermissionError):
        return 403
    return 422 if is_bad_input(err) else None
