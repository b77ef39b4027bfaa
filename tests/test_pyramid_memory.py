"""The block work keeps freed memory: a buffer freed and allocated again reuses its pages."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(getattr(ctypes.CDLL(None), "mallopt", None) is None, reason="not glibc")

# In a fresh interpreter (malloc's adaptive thresholds untouched): fill an 8 MB buffer, free it, fill
# one again, and print the page faults of the second fill.
REFILL = """
import resource, sys
import numpy as np
from emprocess.pyramid.memory import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
def faults_to_fill():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = np.empty(8 << 20, np.uint8)
    buffer[:] = 1
    del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_to_fill()
print(faults_to_fill())
"""


def refill_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", REFILL, mode], check=True, capture_output=True, text=True)
    return int(out.stdout)


def test_a_freed_buffer_is_reused_without_faulting():
    assert refill_faults("default") > 100  # glibc maps the buffer anew
    assert refill_faults("keep") < 20
