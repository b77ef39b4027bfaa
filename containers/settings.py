"""A service's settings, from its environment, each checked at start so a bad one stops the service.

- ``EMPROCESS_ALLOWED_PREFIXES``: comma-separated locations the service may read and write (see
  ``storage.is_under``; ``gs://B_*`` covers every bucket whose name starts with ``B_``).
- ``EMPROCESS_CONCURRENT_REQUESTS`` (1): mini-tasks one process runs at once.
- ``EMPROCESS_MAX_BODY_BYTES`` (1 MiB): the largest request body; payloads are a few KB.
- ``EMPROCESS_MEMORY_LIMIT`` (the container's cgroup limit, else the machine's memory): bytes, or a
  number with K, M, G, Ki, Mi or Gi; one call may plan to use this divided by the concurrency.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from emprocess import storage

DEFAULT_MAX_BODY_BYTES = 1 << 20
MAX_JSON_DEPTH = 32  # payloads nest 4 deep; deeper JSON is refused before it is parsed
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
# cgroup v2, then v1; v1 reports an unlimited group as a huge number
_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


@dataclass(frozen=True)
class Settings:
    allowed_prefixes: list[str]
    concurrent_requests: int
    max_body_bytes: int
    memory_limit: int

    @property
    def memory_per_call(self) -> int:
        return self.memory_limit // self.concurrent_requests

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(allowed_prefixes(), _whole("EMPROCESS_CONCURRENT_REQUESTS", "1"),
                   _whole("EMPROCESS_MAX_BODY_BYTES", str(DEFAULT_MAX_BODY_BYTES)), memory_limit())


def allowed_prefixes() -> list[str]:
    prefixes = [p.strip() for p in os.environ.get("EMPROCESS_ALLOWED_PREFIXES", "").split(",") if p.strip()]
    for prefix in prefixes:
        try:
            storage.check_prefix(prefix)
        except storage.StorageError as err:
            raise ValueError(f"EMPROCESS_ALLOWED_PREFIXES: {err}") from None
    return prefixes


def _whole(name: str, default: str) -> int:
    raw = os.environ.get(name, default)
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name} must be a whole number ≥ 1, got {raw!r}")
    return int(raw)


def memory_limit() -> int:
    """``EMPROCESS_MEMORY_LIMIT``, else the cgroup's limit, else the machine's memory."""
    raw = os.environ.get("EMPROCESS_MEMORY_LIMIT", "").strip()
    if raw:
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]i?)?", raw)
        if match is None or float(match[1]) <= 0:
            raise ValueError(f"EMPROCESS_MEMORY_LIMIT must be a size such as 4Gi or 4000000000, got {raw!r}")
        return int(float(match[1]) * _UNITS[match[2] or ""])
    import psutil

    machine = psutil.virtual_memory().total
    for path in _CGROUP_LIMITS:
        try:
            value = path.read_text().strip()
        except OSError:
            continue
        if value.isdigit():
            return min(int(value), machine)
    return machine
