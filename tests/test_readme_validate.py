"""The README's list of what ``validate`` checks states the bounds the code enforces: a test that
fails when a bound changes and the README does not."""

from __future__ import annotations

from pathlib import Path

from emprocess.chunkedgraph.inputs import MAX_CHUNKS, SAMPLED_CHUNKS
from emprocess.chunkedgraph.layers import MAX_LAYERS
from emprocess.config import CHUNK_SIDES, MAX_DOWNSAMPLE, MAX_Z, MIN_ALIGN_SIDE, RESOLUTION_NM
from emprocess.storage import PROBE_SECONDS

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_states_validates_bounds_as_the_code_has_them():
    text = " ".join(README.read_text().split())
    stated = [
        f"`minz`/`maxz` 0 to {MAX_Z:,}",
        f"`resolution` {RESOLUTION_NM[0]:g} to {RESOLUTION_NM[1]:,g} nm",
        f"`downsample_factor` 1 to {MAX_DOWNSAMPLE}",
        f"powers of two from {CHUNK_SIDES[0]} to {CHUNK_SIDES[1]}",
        f"default {PROBE_SECONDS:g} s",
        f"keep {MIN_ALIGN_SIDE} px a side after `downsample_factor`",
        f"at most 2^{MAX_CHUNKS.bit_length() - 1} chunks and {MAX_LAYERS} layers",
        f"up to {SAMPLED_CHUNKS} sampled chunks",
    ]
    assert [fact for fact in stated if fact not in text] == []
