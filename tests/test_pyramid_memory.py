"""The block work reuses memory: freed pages are kept, and a block gets the buffers of the last one."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import numpy as np
import pytest

from emprocess.pyramid.memory import reused_buffers

glibc_only = pytest.mark.skipif(getattr(ctypes.CDLL(None), "mallopt", None) is None, reason="not glibc")

# In a fresh interpreter (malloc's adaptive thresholds untouched): fill an 8 MB buffer, free it, fill
# one again, and print the page faults of the second fill.
REFILL = """
import resource, sys
import numpy as np
from emprocess.pyramid.memory import reuse_memory
if sys.argv[1] == "keep":
    reuse_memory()
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


@glibc_only
def test_a_freed_buffer_is_reused_without_faulting():
    assert refill_faults("default") > 100  # glibc maps the buffer anew
    assert refill_faults("keep") < 20


def test_the_next_block_gets_the_buffers_of_the_last():
    with reused_buffers() as buffer:
        first = buffer("slab", (4, 8, 8))
        first[:] = 7
    with reused_buffers() as buffer:
        smaller = buffer("slab", (2, 8, 8))
        other_name = buffer("scale 1", (2, 4, 4))
        assert smaller.shape == (2, 8, 8) and np.shares_memory(smaller, first)
        assert not np.shares_memory(other_name, first)
    with reused_buffers() as buffer:
        grown = buffer("slab", (8, 8, 8))
        assert grown.shape == (8, 8, 8) and not np.shares_memory(grown, first)


def test_blocks_at_the_same_time_never_share_a_buffer():
    with reused_buffers() as one, reused_buffers() as other:
        assert not np.shares_memory(one("slab", (4, 4)), other("slab", (4, 4)))
