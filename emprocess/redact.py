"""Credentials out of every message: userinfo and signed-URL query keys are masked wherever a URL is
printed, logged, mailed or reported.

Locations with credentials in them are refused (credentials come from the environment), but the
refusal must not repeat the secret into a log, a task log, the mail or the report. ``redact`` works
on any text, so it can sit at the few places messages leave the program (error constructors, the
services' error answers, the log handlers, the mail and the report) instead of at every URL.
"""

from __future__ import annotations

import logging
import re

MASK = "***"
# scheme://user:password@host → scheme://***@host (anything up to the last '@' before the host's end)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s?#@'\"]*@")
# ?X-Amz-Signature=…, &access_token=…, &sig=… (signed URLs of S3, GCS, Azure; OAuth tokens)
_SECRET_QUERY = re.compile(
    r"(?i)([?&;](?:x-amz-(?:signature|credential|security-token)|x-goog-(?:signature|credential)"
    r"|access_token|id_token|token|sig|signature|awsaccesskeyid|password|secret|key)=)[^&#\s'\"]*")


def redact(text: str) -> str:
    """``text`` with URL credentials masked."""
    return _SECRET_QUERY.sub(r"\1" + MASK, _USERINFO.sub(r"\1" + MASK + "@", text))


class RedactingFilter(logging.Filter):
    """A log filter that masks URL credentials in each record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def redact_logs() -> None:
    """Mask credentials in everything this process's log handlers write (the root logger's and those
    of loggers that keep their own, such as uvicorn's)."""
    loggers = [logging.getLogger(), *(v for v in logging.root.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    for handler in {h for logger in loggers for h in logger.handlers}:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
