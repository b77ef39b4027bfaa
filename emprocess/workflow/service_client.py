"""POST one mini-task to a service with retries, backoff and optional Cloud Run ID-token auth.

Transient failures (connection errors, timeouts, replies cut off or undecodable mid-body, 429, 5xx)
are retried with capped exponential backoff and full jitter for a retry window (10 minutes by default,
from a call's first failure): long enough to ride out a Cloud Run cold start, a rolling redeploy or
a restarted service without failing the task. 4xx is permanent and raised at once with the service's
own message.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from dataclasses import dataclass, field

import requests

from emprocess.batch import Stopped
from emprocess.errors import InputError

log = logging.getLogger("emprocess.service_client")

RETRYABLE_STATUS = {429, 500, 502, 503, 504}
# A body cut off in transit: short of its Content-Length or chunk size, undecodable, or (closed early
# without a length) incomplete JSON. The network failed, not the service, so it is retried.
TRUNCATED = (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError,
             requests.JSONDecodeError)


class PermanentError(InputError):
    """The service rejected the mini-task (4xx): bad input, which retrying cannot mend."""


@dataclass
class IdTokenAuth:
    """Google ID tokens for a Cloud Run audience, fetched with google-auth and refreshed before expiry."""

    audience: str
    refresh_margin_s: float = 300.0
    _credentials: object = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def header(self) -> dict[str, str]:
        import datetime

        import google.auth.transport.requests
        from google.oauth2 import id_token

        with self._lock:
            request = google.auth.transport.requests.Request()
            if self._credentials is None:
                self._credentials = id_token.fetch_id_token_credentials(self.audience, request=request)
            creds = self._credentials
            expiry = getattr(creds, "expiry", None)
            margin = datetime.timedelta(seconds=self.refresh_margin_s)
            now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
            if not creds.token or expiry is None or expiry - margin <= now:
                creds.refresh(request)
            return {"Authorization": f"Bearer {creds.token}"}


@dataclass
class ServiceClient:
    base_url: str
    auth: IdTokenAuth | None = None
    timeout_s: float = 900.0
    retry_window_s: float = 600.0  # how long a call's transient failures are retried
    max_attempts: int | None = None  # a bound on attempts as well, when set
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 30.0
    stop: threading.Event = field(default_factory=threading.Event)
    session: requests.Session = field(default_factory=requests.Session)

    def post(self, endpoint: str, payload: dict) -> dict:
        url = self.base_url.rstrip("/") + endpoint
        first_failure = None
        for attempt in itertools.count(1):
            if self.stop.is_set():
                raise Stopped(f"stopped before calling {endpoint}")
            headers = self.auth.header() if self.auth else {}
            try:
                response = self.session.post(url, json=payload, headers=headers, timeout=self.timeout_s)
                if response.ok:
                    return response.json()
            except (requests.ConnectionError, requests.Timeout) as err:
                reason = f"{type(err).__name__}"
            except TRUNCATED as err:
                reason = f"truncated or undecodable reply: {type(err).__name__}"
            else:
                message = _message(response)
                if response.status_code not in RETRYABLE_STATUS:
                    raise PermanentError(f"{endpoint} answered {response.status_code}: {message}")
                reason = f"HTTP {response.status_code}: {message}"
            now = time.monotonic()
            first_failure = now if first_failure is None else first_failure
            left = self.retry_window_s - (now - first_failure)
            if left <= 0 or attempt == self.max_attempts:
                raise RuntimeError(f"{endpoint} failed after {attempt} attempts; last: {reason} (retried for "
                                   f"{now - first_failure:.0f} s of a {self.retry_window_s:.0f} s retry window)")
            delay = min(left, random.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2 ** (attempt - 1))))
            log.warning("%s attempt %d failed (%s); retrying in %.1f s", endpoint, attempt, reason, delay)
            if self.stop.wait(delay):
                raise Stopped(f"stopped while retrying {endpoint}")


def _message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:2000]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return str(detail)[:2000]
