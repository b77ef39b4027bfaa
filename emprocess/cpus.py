"""How many threads a CPU-bound pool should run: one per CPU the process may use."""

from __future__ import annotations

import functools


@functools.cache
def usable_cpus() -> int:
    """The CPUs this process may use. ``os.sched_getaffinity`` shows a pinned CPU set but not a CPU
    quota (a Kubernetes pod's limit, ``docker --cpus``): a pod limited to 2 CPUs on a 32-core node
    would start 32 encoders that the quota then throttles. joblib's count honours both."""
    from joblib import cpu_count  # on first use: importing joblib takes ~0.2 s

    return cpu_count()
