"""Elastic alignment (align_mode "elastic") end to end through the stage work functions: align.pairs
with flows, align.collect with the relaxation, align.warp with the maps; real EM from ../shared/data
(skipped when absent).

Registration of two output slices is measured as the issue asks: a dense DIS optical flow between
them, the median vector of each 32-px block (blocks touching the frame's zero fill left out), then the
95th percentile of the blocks' lengths. Per-pixel flow would measure the slices' different content,
not their alignment: the two real neighbours differ by ~1.7 px that way, by ~0.9 px block-wise.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_align_accuracy import ISBI, deformed, need, real_slice, register_images, similarity, smooth_deformation

from emprocess import registry, storage
from emprocess.align.compose import homogeneous
from emprocess.align.maps import dense, read_map
from emprocess.align.models import apply
from emprocess.align.stages import COLLECT, PAIRS
from emprocess.batch import run_in_process
from emprocess.pyramid.warp import warp, warp_elastic
from emprocess.pyramid.writers import open_zarr
from emprocess.stages import RunContext

BLOCK = 32
ALIGN_STAGES = [stage for stage in registry.table() if stage.group == "align"]  # pairs … warp, in order


def misregistration(first: np.ndarray, second: np.ndarray) -> float:
    """95th percentile over 32-px blocks of the block-median DIS flow between two slices, px."""
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(first, second, None)
    rows, cols = first.shape[0] // BLOCK, first.shape[1] // BLOCK
    lengths = []
    for i in range(rows):
        for j in range(cols):
            window = np.s_[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK]
            if (first[window] == 0).any() or (second[window] == 0).any():
                continue
            lengths.append(np.hypot(*np.median(flow[window].reshape(-1, 2), axis=0)))
    assert len(lengths) >= 20, "too few blocks inside both slices to measure"
    return float(np.percentile(lengths, 95))


def run_stack(tmp_path, slices: list[np.ndarray], remove: tuple[int, ...] = (), **conf) -> tuple[RunContext,
                                                                                                np.ndarray | None]:
    """ALIGN and the warp for ``slices`` (the files of slices ``remove`` left out), in-process; the
    aligned volume (z, y, x), None without "pyramid" in the conf's stages (then nothing is warped)."""
    (tmp_path / "src").mkdir(parents=True)
    for z, image in enumerate(slices):
        if z not in remove:
            assert cv2.imwrite(str(tmp_path / "src" / f"s{z:03d}.png"), image)
    ctx = RunContext.create({"id": "t", "image": "s%03d.png", "minz": 0, "maxz": len(slices) - 1,
                             "source": f"file://{tmp_path}/src", "clip-limit": 0, **conf}, "run-1")
    for stage in ALIGN_STAGES:
        run_in_process(stage, ctx, 0, 1)
    if not ctx.wants("pyramid"):
        return ctx, None
    transforms = storage.read_json(storage.join(ctx.locations.process, "align", "transforms.json"))
    shape = (len(slices), transforms["height"], transforms["width"])
    volume = open_zarr(ctx.locations.aligned, shape, (1, 1024, 1024), create=False)
    return ctx, volume.read().result()


def read_align(ctx: RunContext, name: str) -> dict:
    return storage.read_json(storage.join(ctx.locations.process, "align", name))


def source_points(transforms: dict, z: int, points: np.ndarray) -> np.ndarray:
    """Where frame points ``points`` come from in source slice z: T⁻¹(g + u(g)), u from the maps."""
    matrix = homogeneous(transforms["transforms"][str(z)])
    elastic = transforms.get("elastic")
    if elastic is None:
        return apply(np.linalg.inv(matrix), points)
    grid = tuple(elastic["grid"])
    displacement = read_map(elastic["maps"], z - elastic["minz"], grid)
    u = np.stack([dense(displacement, 0.0, elastic["stride"], np.array([x]), np.array([y]))[0, 0]
                  for x, y in points])
    return apply(np.linalg.inv(matrix), points + u)


def invert_field(point: np.ndarray, matrix: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """The pixel p of a ``deformed(image, matrix, dx, dy)`` slice that shows original point ``point``:
    inverse(matrix)·p + d(p) = point, solved by fixed-point iteration (d is small and smooth)."""
    p = apply(matrix, point)
    for _ in range(30):
        d = np.column_stack([cv2.remap(f, *p.T.astype(np.float32)[:, None], cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_REFLECT)[0] for f in (dx, dy)])
        p = apply(matrix, point - d)
    return p


# --- accuracy on known deformations ----------------------------------------------------------------------


def test_elastic_follows_known_smooth_deformations_where_affine_cannot(tmp_path):
    """Real neighbouring FIB-SEM slices, alternating, each moved by a small affine and its own smooth
    field (amplitude 8 px, waves 160–480 px long), so a pair differs by up to 16 px of deformation.

    Measured (see the note of issue 18): elastic leaves consecutive outputs 2.0–3.2 px out by the DIS
    measure where affine leaves 11–14 px (the undeformed real pair: ~0.9 px), and its maps are within
    0.7–1.0 px of the known truth at the median, 1.5–2.4 px at the 95th percentile, where affine is
    off by 4–9 px. The issue's 0.5 px / 1 px targets are not met: the flows are within ~0.5 px of the
    truth (median; the two real neighbours differ by ~0.25 px themselves), but the relaxation evaluates
    them bilinearly between grid points, and where a flow is unknown (next to the pre-warp fill) the
    maps follow the neighbouring points. The bounds below keep the gain honest."""
    originals = [real_slice(0), real_slice(1)]
    real = homogeneous(register_images(tmp_path / "real", *originals)["affine"]["matrix"])  # original 1 → 0
    count, amplitude = 5, 8.0
    moves, fields, slices = [], [], []
    for z in range(count):
        rng = np.random.default_rng(100 + z)
        moves.append(similarity(rng.uniform(-1, 1), 1 + rng.uniform(-0.005, 0.005), 0.0, rng.uniform(-4, 4, 2),
                                (520, 520)))
        fields.append(smooth_deformation((520, 520), amplitude, rng.uniform(200, 400), seed=z))
        slices.append(deformed(originals[z % 2], moves[-1], *fields[-1]))
    elastic_ctx, elastic = run_stack(tmp_path / "elastic", slices, align_mode="elastic")
    affine_ctx, affine = run_stack(tmp_path / "affine", slices)
    pairs = read_align(elastic_ctx, "pairs.json")
    assert pairs["align_mode"] == "elastic" and pairs["fallbacks"] == []
    assert [e["elastic"]["residual_px"] is not None for e in pairs["pairs"]] == [True] * (count - 1)
    elastic_transforms = read_align(elastic_ctx, "transforms.json")
    affine_transforms = read_align(affine_ctx, "transforms.json")
    assert "elastic" not in affine_transforms and read_align(affine_ctx, "pairs.json")["fallbacks"] == []
    frame = np.array([elastic_transforms["width"], elastic_transforms["height"]])
    ys, xs = np.mgrid[0.25:0.76:0.05, 0.25:0.76:0.05]
    interior = np.column_stack([xs.ravel(), ys.ravel()]) * frame
    for z in range(count - 1):
        measured, left = misregistration(elastic[z], elastic[z + 1]), misregistration(affine[z], affine[z + 1])
        assert measured <= min(4.0, 0.6 * left), (z, measured, left)
        assert 3.0 <= left <= 2 * amplitude + 2, (z, left)  # the pair's deformation: two fields of ``amplitude``
        errors = {}
        for name, transforms in (("elastic", elastic_transforms), ("affine", affine_transforms)):
            # truth: the original point slice z shows at each frame point, then slice z+1's pixel showing it
            in_z = source_points(transforms, z, interior)
            original = apply(np.linalg.inv(homogeneous(moves[z])), in_z) + np.column_stack(
                [cv2.remap(f, *in_z.T.astype(np.float32)[:, None], cv2.INTER_LINEAR)[0] for f in fields[z]])
            to_next = np.linalg.inv(real) if z % 2 == 0 else real  # original z%2 → original (z+1)%2 pixels
            truth = invert_field(apply(to_next, original), moves[z + 1], *fields[z + 1])
            errors[name] = np.hypot(*(source_points(transforms, z + 1, interior) - truth).T)
        assert np.median(errors["elastic"]) <= min(1.2, 0.5 * np.median(errors["affine"])), z
        assert np.percentile(errors["elastic"], 95) <= 3.0, z


# --- no drift -----------------------------------------------------------------------------------------------


def test_thirty_slices_without_true_motion_gain_no_drift(tmp_path):
    """The two real neighbours alternating over 30 slices, each under a small known affine only: the
    elastic maps add at most 1 px anywhere inside the frame, first slice to last (95th percentile)."""
    originals = [real_slice(0), real_slice(1)]
    slices = []
    for z in range(30):
        rng = np.random.default_rng(z)
        slices.append(cv2.warpAffine(originals[z % 2], similarity(rng.uniform(-1, 1), 1.0, 0.0, rng.uniform(-10, 10, 2),
                                                                   (520, 520)), (520, 520), flags=cv2.INTER_CUBIC))
    ctx, _ = run_stack(tmp_path, slices, align_mode="elastic", stages=["align"])
    transforms = read_align(ctx, "transforms.json")
    elastic = transforms["elastic"]
    for z in (1, 15, 29):
        displacement = read_map(elastic["maps"], z, tuple(elastic["grid"]))
        inside = displacement[2:-2, 2:-2].reshape(-1, 2)
        assert np.percentile(np.hypot(*inside.T), 95) <= 1.0, z


def test_an_aligned_serial_section_stack_stays_aligned(tmp_path):
    """ISBI 2012: 30 serial sections already in register, 50 nm apart (no two share features enough for
    a model: every pair falls back to identity). Elastic must not invent motion: output vs input
    displacement ≤ 1 px at the 95th percentile for every slice."""
    slices = [cv2.imread(str(need(ISBI / f"{z:02d}.png")), cv2.IMREAD_UNCHANGED) for z in range(30)]
    ctx, _ = run_stack(tmp_path, slices, align_mode="elastic", stages=["align"])
    transforms = read_align(ctx, "transforms.json")
    points = np.column_stack([c.ravel() for c in np.mgrid[16:496:16, 16:496:16][::-1]]).astype(float)
    in_frame = apply(homogeneous(transforms["transforms"]["0"]), points)  # where slice 0 puts them
    for z in range(30):
        moved = source_points(transforms, z, in_frame)
        assert np.percentile(np.hypot(*(moved - points).T), 95) <= 1.0, z


# --- the pieces ------------------------------------------------------------------------------------------------


def test_every_flow_is_measured_by_exactly_one_task(tmp_path):
    """20 slices make 3 align.pairs tasks; each pair z has flow1 and, up to z = 17, flow2 (z+2 ≤ 19):
    the last pair of a task takes its flow2 from the next task's first slice, lent as next_image."""
    image = real_slice(0)
    slices = [np.roll(image, (z, 2 * z), axis=(0, 1)) for z in range(20)]
    for z, s in enumerate(slices):
        (tmp_path / "src").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "src" / f"s{z:03d}.png"), s)
    ctx = RunContext.create({"id": "t", "image": "s%03d.png", "minz": 0, "maxz": 19, "align_mode": "elastic",
                             "source": f"file://{tmp_path}/src"}, "run-1")
    tasks = PAIRS.plan(ctx)
    assert [t["payload"].get("next_image") for t in tasks] == [ctx.conf.slice_url(9), ctx.conf.slice_url(17), None]
    pairs = [p for t in tasks for p in PAIRS.execute(t["payload"])["pairs"]]
    assert [p["z"] for p in pairs] == list(range(19))
    assert [p["z"] for p in pairs if "flow2" in p] == list(range(18))
    for p in pairs:  # np.roll moves content by (+2, +1) a slice: the affine takes it, the flow is ~0
        for key in ("flow1", "flow2"):
            if key in p:
                dx = np.array(p[key]["dx"], float)
                assert p[key]["valid"] > 0.5 and np.nanmax(np.abs(dx)) < 0.5, (p["z"], key)
                assert np.allclose(np.array(p[key]["prewarp"])[:, 2], [-2 * p[key]["reach"], -p[key]["reach"]],
                                   atol=0.2)


def test_next_image_belongs_to_elastic_runs_only():
    with pytest.raises(Exception, match="next_image"):
        PAIRS.parse_payload({"images": ["file:///a.png", "file:///b.png"], "z": [0, 1], "next_image": "file:///c.png"})


def test_a_zero_map_warps_like_the_affine(tmp_path):
    image = real_slice(0)
    matrix = similarity(1.5, 1.0, 0.0, (12.3, -4.2), (520, 520))
    zero = np.zeros((10, 12, 2), np.float32)
    plain, elastic = warp(image, matrix, 560, 500), warp_elastic(image, matrix, zero, 64, 560, 500)
    assert np.abs(plain.astype(int) - elastic).max() <= 1


def test_a_constant_map_shifts_the_output(tmp_path):
    image = real_slice(0)
    matrix = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    shift = np.zeros((10, 10, 2), np.float32)
    shift[..., 0], shift[..., 1] = 3.0, -2.0  # g shows the source at g + (3, -2)
    out = warp_elastic(image, matrix, shift, 64, 520, 520)
    assert np.array_equal(out[10:500, 10:500], image[8:498, 13:503])


def test_a_rerun_rewrites_identical_maps(tmp_path):
    originals = [real_slice(0), real_slice(1)]
    ctx, _ = run_stack(tmp_path, [originals[0], originals[1], originals[0]], align_mode="elastic", stages=["align"])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if "maps.zarr" in p.parts and p.is_file()}
    (task,) = COLLECT.plan(ctx)
    COLLECT.execute(task["payload"])
    assert before and {p: p.read_bytes() for p in before} == before


def test_the_deformed_sample_aligns_better_elastic_and_its_report_charts_it(tmp_path):
    """The demo's sample (``make demo-elastic``): slices bent by known 6-px fields. Elastic leaves each
    pair of consecutive slices closer than affine does, by the DIS measure, and the report charts the
    elastic residual per pair and names the worst pairs."""
    from emprocess.report.page import render
    from emprocess.report.summary import run_summary
    from emprocess.sample import write_sample

    conf = write_sample(tmp_path / "sample", size=384, n_slices=5, seed=4, deformation=6.0)
    assert conf["align_mode"] == "elastic"
    truth = storage.read_json(f"file://{tmp_path}/sample/truth.json")
    assert truth["deformation"]["amplitude"] == 6.0 and len(truth["deformation"]["waves"]) == 5
    volumes = {}
    for mode in ("elastic", "affine"):
        ctx = RunContext.create({**conf, "align_mode": mode, "clip-limit": 0}, f"{mode}-run")
        for stage in ALIGN_STAGES:
            run_in_process(stage, ctx, 0, 1)
        transforms = read_align(ctx, "transforms.json")
        shape = (5, transforms["height"], transforms["width"])
        volumes[mode] = open_zarr(ctx.locations.aligned, shape, (1, 1024, 1024), create=False).read().result()
        if mode == "elastic":
            page = render(run_summary(ctx, registry.pipeline()))
            pairs = read_align(ctx, "pairs.json")
    for z in range(4):
        elastic, affine = (misregistration(volumes[m][z], volumes[m][z + 1]) for m in ("elastic", "affine"))
        assert elastic < affine, (z, elastic, affine)
    assert "elastic residual (px RMS) per pair" in page and len(pairs["worst_elastic"]) == 4
    worst_table = page[page.index("<th>worst pair from z</th>"):]
    worst_table = worst_table[:worst_table.index("</table>")]
    residual = {e["z"]: e["elastic"]["residual_px"] for e in pairs["pairs"]}
    assert sorted(residual, key=lambda z: -residual[z]) == pairs["worst_elastic"]
    for z in pairs["worst_elastic"]:
        assert f'<td class="number">{z}</td><td class="number">{residual[z]:g}</td>' in worst_table


def test_a_run_reusing_an_elastic_alignment_warps_with_its_maps(tmp_path):
    """reuse_alignment takes the other run's transforms and its maps where they are: the aligned
    slices come out byte-identical."""
    slices = [real_slice(0), real_slice(1), real_slice(0)]
    first, volume = run_stack(tmp_path, slices, align_mode="elastic")
    second = RunContext.create({**first.conf.to_json(), "reuse_alignment": first.run_id}, "run-2")
    for stage in ALIGN_STAGES:
        run_in_process(stage, second, 0, 1)
    reused = read_align(second, "transforms.json")
    assert reused["elastic"] == read_align(first, "transforms.json")["elastic"]
    assert read_align(second, "pairs.json")["align_mode"] == "elastic"
    again = open_zarr(second.locations.aligned, volume.shape, (1, 1024, 1024), create=False).read().result()
    assert np.array_equal(again, volume)
