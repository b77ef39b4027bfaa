"""Every bad-input case, gathered from the other modules of ``support.refusals`` (one per kind of input)."""

from __future__ import annotations

from support.refusals import cli, conf, segmentation, slices, storage

CATALOGUE = [*conf.CASES, *slices.CASES, *segmentation.CASES, *storage.CASES, *cli.CASES]
