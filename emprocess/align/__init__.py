"""ALIGN: register adjacent slices (SIFT + RANSAC) and compose one transform per slice; in elastic
mode, also one smooth displacement map per slice.

Modules: ``images`` (slice reading, header-only sizes), ``features`` (tiled SIFT), ``models``
(RANSAC + robust refinement of the affine and translation models), ``register`` (pairwise
registration with retries), ``bad`` (bad and missing slices: found, bridged, replaced), ``compose`` (model choice, composition, bounding box), ``flow`` (patch
flow between two images), ``elastic`` (align.pairs' flows to z+1 and z+2), ``relax`` (the spring-mesh
relaxation, in blocks along z), ``maps`` (flows into the aligned frame, the maps' format), ``collect``
(writes ``align/transforms.json``, ``.csv``, ``pairs.json`` and the maps) and ``stages`` (the
plan/work stages).
"""

from emprocess import storage
from emprocess.run_layout import TRANSFORMS_FILE


def transforms_url(process: str) -> str:
    """The per-slice transforms of the run whose process location is ``process``: what ALIGN hands
    every later stage."""
    return storage.join(process, TRANSFORMS_FILE)
