"""Every bad-input case, gathered from the ``refusals_*`` modules (one per kind of input)."""

from __future__ import annotations

import refusals_cli
import refusals_conf
import refusals_segmentation
import refusals_slices
import refusals_storage

CATALOGUE = [*refusals_conf.CASES, *refusals_slices.CASES, *refusals_segmentation.CASES, *refusals_storage.CASES,
             *refusals_cli.CASES]
