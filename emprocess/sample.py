"""A deterministic synthetic FIB-SEM-like stack with known truth, for tests, demos and benchmarks.

Real data cannot tell us the right alignment or segmentation; this sample can. The tissue is a warped
3D Voronoi tessellation (cells) with dark membranes at cell borders, vesicles and mitochondria inside
the cells, per-cell tone, grain and imaging noise, generated with isotropic voxels so that consecutive
slices are consecutive z planes. Each slice is then moved by a known small affine and, when asked
(``deformation``, for the elastic demo), by its own known smooth displacement field.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import tensorstore as ts
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

IMAGE_TEMPLATE = "img%05d.png"
CONVENTION = (
    "transforms[z] is the 2x3 matrix M_z mapping a pixel (x, y) of the true, aligned frame to the pixel "
    "of slice z that shows the same content: slice_z(M_z @ [x, y, 1]) = truth_z(x, y). Slice z was made "
    "with cv2.warpAffine(truth_z, M_z, size); cv2.warpAffine(slice_z, M_z, size, flags=WARP_INVERSE_MAP) "
    "maps it back. Pixel centres are at integer coordinates, x to the right, y down."
)

CELL_SPACING = 36.0  # px between cell centres on average (~0.3 µm at 8 nm)
ELONGATION = 3.0  # cells are this many times longer along z than across
WARP_AMPLITUDE, WARP_SCALE = 5.0, 40.0  # px; bends the flat Voronoi faces into curved membranes
MEMBRANE, GRAIN = 0.55, 0.2  # darkening of a membrane voxel and cytoplasm grain, before the 1-voxel blur
PHOTONS, READ_NOISE = 400.0, 0.015  # shot noise at full scale, plus Gaussian detector noise
MAX_ROTATION_DEG, MAX_SHIFT, MAX_SCALE, MAX_SHEAR = 1.0, 15.0, 0.005, 0.002
DEFORMATION_WAVES = (0.4, 0.6)  # a deformation's waves are this share of the slice side long
DEFORMATION_CONVENTION = (
    "with a deformation, slice z's pixel p shows truth_z at inverse(M_z)·p + d_z(p), where each component "
    "of d_z is amplitude · sin(2π x / Lx + φx) · sin(2π y / Ly + φy) with [Lx, Ly, φx, φy] its entry in "
    "deformation.waves[z] (first dx, then dy)"
)


def make_volume(size: int = 512, n_slices: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The aligned (truth) image stack, uint8, and its cell labels, uint32 >= 1, both (z, y, x).

    Every voxel belongs to its nearest cell, membranes included, so later stages can score a
    segmentation against the labels directly.
    """
    if size < 16 or n_slices < 1:
        raise ValueError(f"size {size} / n_slices {n_slices}: need size >= 16 and at least one slice")
    rng = np.random.default_rng(seed)
    shape = (n_slices, size, size)
    labels = _cell_labels(rng, shape)
    return _render(rng, labels), labels


def write_sample(out_dir: str | Path, *, size: int = 512, n_slices: int = 24, seed: int = 0,
                 deformation: float = 0.0) -> dict:
    """Write the moved slices, the truth and a run conf to ``out_dir``; return the conf.

    Files: ``img%05d.png`` (8-bit slices z = 0..n_slices-1), ``labels.npy`` (uint32 (z, y, x) cell
    labels in the aligned frame), ``truth.json`` (the per-slice matrices, see ``CONVENTION``, and with
    ``deformation`` px > 0 each slice's smooth field, see ``DEFORMATION_CONVENTION``) and ``conf.json``
    (``align_mode`` "elastic" when deformed). Same seed, same bytes.
    """
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    truth, labels = make_volume(size, n_slices, seed)
    transforms = _slice_transforms(size, n_slices, seed)
    waves = _deformation_waves(size, n_slices, seed) if deformation > 0 else None
    for z, (plane, matrix) in enumerate(zip(truth, transforms)):
        if waves is None:
            moved = cv2.warpAffine(plane, matrix, (size, size), flags=cv2.INTER_CUBIC,
                                   borderMode=cv2.BORDER_REFLECT_101)  # no black borders to confuse matching
        else:
            moved = _deformed(plane, matrix, deformation, waves[z])
        if not cv2.imwrite(str(out / (IMAGE_TEMPLATE % z)), moved):
            raise OSError(f"could not write {out / (IMAGE_TEMPLATE % z)}")
    np.save(out / "labels.npy", labels)
    truth_doc = {
        "convention": CONVENTION,
        "transforms": {str(z): matrix.tolist() for z, matrix in enumerate(transforms)},
        "size": [size, size],
        "n_slices": n_slices,
    }
    if waves is not None:
        truth_doc["deformation"] = {"convention": DEFORMATION_CONVENTION, "amplitude": deformation,
                                    "waves": {str(z): w for z, w in enumerate(waves)}}
    (out / "truth.json").write_text(json.dumps(truth_doc, indent=1))
    conf = {"id": "sample", "image": IMAGE_TEMPLATE, "minz": 0, "maxz": n_slices - 1,
            "source": f"file://{out}", "resolution": 8}
    if waves is not None:
        conf["align_mode"] = "elastic"
    (out / "conf.json").write_text(json.dumps(conf, indent=2))
    return conf


SUPERVOXEL_DEPTH = 8  # slices: each cell is cut into supervoxels this deep, so the table has work to do


def write_sample_segmentation(sample_dir: str | Path, transforms: dict, out_dir: str | Path,
                              resolution: float = 8.0) -> dict:
    """Write the sample's cells as a supervoxel volume in a run's aligned frame, plus their table.

    ``transforms`` is that run's ``align/transforms.json``. The aligned frame is the truth frame moved
    by the first slice's transform (its truth transform is the identity), so the cell labels are
    carried over with that one map. Each cell is cut every SUPERVOXEL_DEPTH slices into supervoxels
    (an over-segmentation, as a watershed gives); ``agglomeration.npy`` joins them back into cells.
    Returns the run conf's ``segmentation`` block.
    """
    from emprocess import storage

    labels = np.load(Path(sample_dir) / "labels.npy")
    minz, maxz = transforms["minz"], transforms["maxz"]
    if labels.shape[0] < maxz + 1:
        raise ValueError(f"the sample has {labels.shape[0]} slices; the run goes to slice {maxz}")
    frame = np.asarray(transforms["transforms"][str(minz)], np.float64)
    size = (transforms["width"], transforms["height"])
    blocks = -(-labels.shape[0] // SUPERVOXEL_DEPTH)
    watershed = np.zeros((size[0], size[1], maxz - minz + 1), np.uint64)  # x, y, z
    for z in range(minz, maxz + 1):
        cells = cv2.warpAffine(labels[z].astype(np.int32), frame, size, flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(np.uint64)
        pieces = (cells - 1) * blocks + z // SUPERVOXEL_DEPTH + 1
        watershed[:, :, z - minz] = np.where(cells > 0, pieces, 0).T
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    supervoxels = np.unique(watershed[watershed > 0])
    np.save(out / "agglomeration.npy", np.column_stack([supervoxels, (supervoxels - 1) // blocks + 1]))
    url = f"file://{out / 'watershed'}"
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": storage.kvstore_spec(url),
        "multiscale_metadata": {"type": "segmentation", "data_type": "uint64", "num_channels": 1},
        "scale_metadata": {"size": list(watershed.shape), "voxel_offset": [0, 0, minz],
                           "resolution": [resolution] * 3, "chunk_size": [64, 64, 8],
                           "encoding": "compressed_segmentation", "compressed_segmentation_block_size": [8, 8, 8]},
        "create": True,
        "delete_existing": True,
    }
    ts.open(spec, context=storage.context()).result()[..., 0].write(watershed).result()
    return {"watershed": url, "agglomeration": f"file://{out / 'agglomeration.npy'}", "chunk_size": [128, 128, 16]}


def _cell_labels(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Nearest-seed labels over smoothly displaced voxel positions (a curved 3D Voronoi), with cells
    ELONGATION times longer along z than across, like neurites running through the stack.

    Elongation keeps the content's own plane-to-plane flow small: with round cells, the few hundred
    oblique membranes in view shift coherently by a tenth of a pixel per plane, so even a perfect
    pairwise alignment drifts over 1 px from the truth within 20 slices.
    """
    stretch = np.array([ELONGATION, 1.0, 1.0])
    lo = -CELL_SPACING * stretch
    hi = np.array(shape, float) + CELL_SPACING * stretch  # seeds beyond the edges cut cells there naturally
    n_seeds = max(2, round(float(np.prod((hi - lo) / stretch)) / CELL_SPACING**3))
    tree = cKDTree(rng.uniform(lo, hi, size=(n_seeds, 3)) / stretch)
    # One displacement for every plane: a field varying with z would make the tissue flow coherently
    # from plane to plane (the z-interpolated field changes linearly through the stack).
    plane = (1, *shape[1:])
    shift = [np.broadcast_to(WARP_AMPLITUDE * _smooth_field(rng, plane, WARP_SCALE), shape) for _ in range(3)]
    yy, xx = np.mgrid[: shape[1], : shape[2]].astype(np.float32)
    nearest = np.empty(shape, np.int64)
    for z in range(shape[0]):  # plane by plane keeps the query buffers small
        points = np.stack([(z + shift[0][z]) / ELONGATION, yy + shift[1][z], xx + shift[2][z]], axis=-1)
        nearest[z] = tree.query(points.reshape(-1, 3), workers=-1)[1].reshape(shape[1:])
    present = np.bincount(nearest.ravel(), minlength=n_seeds) > 0
    relabel = np.zeros(n_seeds, np.uint32)
    relabel[present] = np.arange(1, int(present.sum()) + 1, dtype=np.uint32)
    return relabel[nearest]


def _render(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    shape = labels.shape
    tone = rng.uniform(0.45, 0.75, int(labels.max()) + 1).astype(np.float32)
    image = tone[labels] + 0.04 * _smooth_field(rng, shape, 48.0)
    detail = GRAIN * rng.standard_normal(shape, dtype=np.float32)
    detail -= MEMBRANE * _borders(labels)
    _stamp_organelles(rng, detail, labels)
    image += ndi.gaussian_filter(detail, 1.0)
    # Shot noise (the Gaussian limit of Poisson photon counts) plus detector noise.
    sigma = np.sqrt(np.clip(image, 0, None) / PHOTONS + READ_NOISE**2)
    image += sigma * rng.standard_normal(shape, dtype=np.float32)
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)


def _borders(labels: np.ndarray) -> np.ndarray:
    """Voxels with a face neighbour in another cell (both sides, so membranes are 2 voxels thick)."""
    border = np.zeros(labels.shape, np.float32)
    for axis in range(3):
        head = [slice(None)] * 3
        tail = [slice(None)] * 3
        head[axis], tail[axis] = slice(1, None), slice(None, -1)
        differs = labels[tuple(head)] != labels[tuple(tail)]
        border[tuple(head)][differs] = 1
        border[tuple(tail)][differs] = 1
    return border


def _stamp_organelles(rng: np.random.Generator, detail: np.ndarray, labels: np.ndarray) -> None:
    """Vesicles (dark shells) and mitochondria (dark capsules), clipped to the cell of their centre."""
    voxels = labels.size
    kinds = (  # count, radius range, half-length range, darkness, shell
        (voxels // 5000, (1.8, 3.2), (0.0, 0.0), 0.8, True),
        (voxels // 150_000 + 1, (3.0, 5.0), (3.0, 12.0), 0.3, False),
    )
    extent = np.array(labels.shape)
    for count, radii, half_lengths, darkness, shell in kinds:
        for _ in range(count):
            centre = rng.uniform(0, extent)
            radius, half = rng.uniform(*radii), rng.uniform(*half_lengths)
            axis = rng.standard_normal(3)
            axis /= np.linalg.norm(axis)
            lo = np.maximum(np.floor(centre - radius - half - 1).astype(int), 0)
            hi = np.minimum(np.ceil(centre + radius + half + 2).astype(int), extent)
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            rel = np.mgrid[box].astype(np.float32) - centre[:, None, None, None].astype(np.float32)
            along = np.clip(np.tensordot(axis, rel, 1), -half, half)
            dist = np.linalg.norm(rel - along * axis[:, None, None, None], axis=0)
            inside = np.abs(dist - radius) < 0.8 if shell else dist < radius
            inside &= labels[box] == labels[tuple(np.minimum(centre.astype(int), extent - 1))]
            detail[box][inside] -= darkness


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], scale: float) -> np.ndarray:
    """Unit-variance random field varying over ~``scale`` voxels (coarse noise, interpolated)."""
    nz, ny, nx = shape
    coarse = rng.standard_normal((int(nz / scale) + 2, int(ny / scale) + 2, int(nx / scale) + 2)).astype(np.float32)
    zc = np.arange(nz) / scale
    z0 = zc.astype(int)
    frac = (zc - z0).astype(np.float32)[:, None, None]
    planes = coarse[z0] * (1 - frac) + coarse[z0 + 1] * frac
    field = np.stack([cv2.resize(p, (nx, ny), interpolation=cv2.INTER_CUBIC) for p in planes])
    return field / field.std()


def _deformation_waves(size: int, n_slices: int, seed: int) -> list[list[list[float]]]:
    """Per slice, [Lx, Ly, φx, φy] of dx and of dy (see DEFORMATION_CONVENTION)."""
    rng = np.random.default_rng([seed, 2])  # its own stream: the affines do not depend on it
    low, high = (share * size for share in DEFORMATION_WAVES)
    return [[[*rng.uniform(low, high, 2).tolist(), *rng.uniform(0, 2 * np.pi, 2).tolist()] for _ in range(2)]
            for _ in range(n_slices)]


def _deformed(plane: np.ndarray, matrix: np.ndarray, amplitude: float, waves: list[list[float]]) -> np.ndarray:
    """``plane`` moved by ``matrix`` and then by the smooth field ``waves`` describes."""
    size = plane.shape[0]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    back = cv2.invertAffineTransform(matrix)
    d = [amplitude * np.sin(2 * np.pi * xs / lx + px) * np.sin(2 * np.pi * ys / ly + py) for lx, ly, px, py in waves]
    map_x = (back[0, 0] * xs + back[0, 1] * ys + back[0, 2] + d[0]).astype(np.float32)
    map_y = (back[1, 0] * xs + back[1, 1] * ys + back[1, 2] + d[1]).astype(np.float32)
    return cv2.remap(plane, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)


def _slice_transforms(size: int, n_slices: int, seed: int) -> list[np.ndarray]:
    """M_0 = identity; then independent small rotations, scales and shears about the centre plus a shift."""
    rng = np.random.default_rng([seed, 1])  # its own stream: the volume does not depend on it
    centre = np.full(2, (size - 1) / 2)
    transforms = [np.eye(2, 3)]
    for _ in range(1, n_slices):
        angle = np.radians(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
        scale = 1 + rng.uniform(-MAX_SCALE, MAX_SCALE)
        shear = rng.uniform(-MAX_SHEAR, MAX_SHEAR)
        direction, reach = rng.uniform(0, 2 * np.pi), MAX_SHIFT * np.sqrt(rng.uniform())
        shift = reach * np.array([np.cos(direction), np.sin(direction)])
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        linear = scale * rotation @ np.array([[1.0, shear], [0.0, 1.0]])
        transforms.append(np.column_stack([linear, centre - linear @ centre + shift]))
    return transforms
