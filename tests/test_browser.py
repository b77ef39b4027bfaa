"""The outputs as stock neuroglancer shows them: its compiled client in headless Chromium, reading
what the real stages wrote, served by ``emprocess.serve`` as ``emprocess serve`` serves it.

Every check is on screenshot pixels, against the volumes as tensorstore reads them: the JPEG and raw
pyramids and the OME-Zarr copy in a 2D cross-section, the root-ID segmentation in 2D, the meshes and
the skeletons of selected bodies in 3D; the browser console must stay free of errors, and a layer on
a missing path must fail the same check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import neuroglancer
import numpy as np
import pytest
import tensorstore as ts
from support.browser import (
    CROSS_SECTION_BACKGROUND,
    PROJECTION_BACKGROUND,
    BROWSER_TIMEOUT,
    Browser,
    count_like,
    count_unlike,
    open_browser,
    serving_folder,
    space,
)
from support.chunkedgraph import graph_of_bodies, read_labels, run_stage
from support.volumes import psnr, smooth

from emprocess import storage
from emprocess.align import transforms_url
from emprocess.meshing.stages import STAGES as MESHING
from emprocess.pyramid import stages as pyramid
from emprocess.skeletons.stages import STAGES as SKELETONS
from emprocess.stages import RunContext

EM_SHAPE = (8, 192, 256)  # z, y, x
EM_RESOLUTION = (8, 8, 8)
SEGMENTATION_SHAPE, SEGMENTATION_RESOLUTION = (64, 48, 32), (8, 8, 10)  # x, y, z
SEGMENT_PIXELS = 4  # screen pixels per segmentation voxel in the 2D checks
BODY_COLOURS = ((0, 255, 0), (255, 0, 255))
IMAGE_PROTOCOLS = {"jpeg": "precomputed", "raw": "precomputed", "ome-zarr": "zarr3"}  # neuroglancer's, by volume


@dataclass
class Sample:
    root: Path
    pyramids: dict[str, str]  # "jpeg", "raw" and "ome-zarr": the image volumes, as paths under root
    segmentation: str  # the root-ID layer, with its meshes and skeletons, as a path under root
    pyramid_voxels: dict[str, np.ndarray]  # each volume's finest scale as tensorstore reads it, (x, y, z)
    roots: np.ndarray  # the root-ID layer's finest scale, (x, y, z)


def served_path(root: Path, url: str) -> str:
    return Path(storage.parse(url).path).relative_to(root).as_posix()


def em_pyramids(root: Path) -> dict[str, str]:
    """The image stages (identity alignment, as align.collect writes it with skip_align) on a smooth
    stack, writing the OME-Zarr copy too."""
    src = root / "em" / "src"
    src.mkdir(parents=True)
    depth, height, width = EM_SHAPE
    for z, image in enumerate(smooth(EM_SHAPE, seed=3)):
        assert cv2.imwrite(str(src / f"img{z:03d}.png"), image)
    ctx = RunContext.create({"id": "em", "image": "img%03d.png", "minz": 0, "maxz": depth - 1,
                             "source": f"file://{src}", "formats": ["precomputed", "ome-zarr"]}, "browser")
    storage.write_json(transforms_url(ctx.locations.process), {
        "minz": 0, "maxz": depth - 1, "width": width, "height": height,
        "transforms": {str(z): [[1, 0, 0], [0, 1, 0]] for z in range(depth)},
        "source_sizes": {str(z): [width, height] for z in range(depth)}})
    for stage in (*pyramid.ALIGN_STAGES, *pyramid.STAGES):
        run_stage(ctx, stage)
    return {"jpeg": ctx.locations.jpeg, "raw": ctx.locations.raw, "ome-zarr": ctx.locations.ome_zarr}


def read_finest(name: str, url: str) -> np.ndarray:
    """A volume's finest scale as tensorstore reads it, (x, y, z); the OME-Zarr one is stored (z, y, x)."""
    if name != "ome-zarr":
        return read_labels(url)
    spec = {"driver": "zarr3", "kvstore": storage.kvstore_spec(storage.join(url, "0"))}
    return np.asarray(ts.open(spec, context=storage.context()).result().read().result()).transpose(2, 1, 0)


def meshed_segmentation(root: Path) -> str:
    """The ChunkedGraph, meshing and skeletons stages on Voronoi supervoxels joined into bodies (as
    test_meshing and test_skeletons)."""
    folder = root / "segmentation"
    folder.mkdir()
    ctx, _ = graph_of_bodies(folder, SEGMENTATION_SHAPE, 30, 1, (32, 32, 16), ("chunkedgraph", "meshing", "skeletons"),
                             SEGMENTATION_RESOLUTION)
    for stage in (*MESHING, *SKELETONS):
        run_stage(ctx, stage)
    return ctx.locations.segmentation


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Sample:
    root = tmp_path_factory.mktemp("browser")
    pyramids, segmentation = em_pyramids(root), meshed_segmentation(root)
    return Sample(root, {name: served_path(root, url) for name, url in pyramids.items()},
                  served_path(root, segmentation), {name: read_finest(name, url) for name, url in pyramids.items()},
                  read_labels(segmentation))


@pytest.fixture(scope="module")
def served(sample) -> Iterator[str]:
    with serving_folder(str(sample.root)) as url:
        yield url


@pytest.fixture(scope="module")
def browser(served) -> Iterator[Browser]:
    with open_browser() as opened:
        yield opened


# ---- the image layers (the JPEG pyramid; the raw one and the OME-Zarr copy, written lossless), 2D ----

EM_VIEW_SPACE = dict(dimensions=space("xyz", EM_RESOLUTION), cross_section_scale=1.0)
EM_SIZE = (256, 192)


def show_em(browser: Browser, source: str, z: float) -> np.ndarray:
    """The cross-section at ``z`` centred on the volume's right face: the volume's right half fills the
    screenshot's left half, its right half lies outside the volume."""
    width, height = EM_SHAPE[2], EM_SHAPE[1]
    return browser.show([neuroglancer.ImageLayer(source=source)], position=(width, height / 2, z), size=EM_SIZE,
                        **EM_VIEW_SPACE)


def assert_shows_em(shot: np.ndarray, expected: np.ndarray) -> None:
    """Every pixel is the layer's (none of the background's), grey, and the EM's own value
    (``expected``, (y, x)): exactly from the raw pyramid and the OME-Zarr copy, within the browser's
    JPEG decoding from the JPEG one."""
    assert count_unlike(shot, CROSS_SECTION_BACKGROUND) == shot.shape[0] * shot.shape[1]
    assert np.abs(shot.astype(int) - shot[..., :1]).max() <= 1  # greyscale
    assert psnr(shot[..., 0], expected) > 40  # (a shift by one pixel gives 20 dB, the next slice 8 dB)


@pytest.mark.parametrize("pyramid", list(IMAGE_PROTOCOLS))
def test_em_cross_section_shows_the_data_inside_the_volume_and_nothing_outside(browser, served, sample, pyramid):
    source = f"{IMAGE_PROTOCOLS[pyramid]}://{served}/{sample.pyramids[pyramid]}"
    shot = show_em(browser, source, z=4.5)
    assert_shows_em(shot[:, :128], sample.pyramid_voxels[pyramid][128:, :, 4].T)
    assert count_unlike(shot[:, 128:], CROSS_SECTION_BACKGROUND) == 0
    beyond_last_slice = show_em(browser, source, z=EM_SHAPE[0] + 3.5)
    assert count_unlike(beyond_last_slice, CROSS_SECTION_BACKGROUND) == 0
    assert browser.console_errors() == []


# ---- the root-ID segmentation layer, 2D ----

def only(source: str, subsource: str) -> neuroglancer.LayerDataSource:
    """The segmentation ``source`` with only its ``subsource`` ("default": the volume, "mesh",
    "skeletons") enabled, so that a check sees that subsource's drawing and no other's."""
    return neuroglancer.LayerDataSource(url=source, enable_default_subsources=False, subsources={subsource: True})


def largest_bodies(roots: np.ndarray, count: int) -> list[int]:
    bodies, sizes = np.unique(roots[roots != 0], return_counts=True)
    return [int(body) for body in bodies[np.argsort(sizes)[::-1][:count]]]


def show_bodies(browser: Browser, source: str, z: int, selected: dict[int, tuple[int, int, int]]) -> np.ndarray:
    """The cross-section through voxel slice ``z``, whole, SEGMENT_PIXELS screen pixels a voxel,
    framed by a margin of 8 voxels; ``selected`` bodies in their given colours, opaque."""
    width, height, _ = SEGMENTATION_SHAPE
    layer = neuroglancer.SegmentationLayer(
        source=only(source, "default"), segments=list(selected), selected_alpha=1.0,
        segment_colors={body: "#%02x%02x%02x" % colour for body, colour in selected.items()})
    return browser.show([layer], dimensions=space("xyz", SEGMENTATION_RESOLUTION),
                        position=(width / 2, height / 2, z + 0.5), cross_section_scale=1 / SEGMENT_PIXELS,
                        size=((width + 16) * SEGMENT_PIXELS, (height + 16) * SEGMENT_PIXELS))


def on_screen(voxels: np.ndarray) -> np.ndarray:
    """A boolean (x, y) slice as show_bodies lays it on screen: (row, column) pixels with the margin."""
    pixels = np.kron(voxels.T, np.ones((SEGMENT_PIXELS, SEGMENT_PIXELS), bool))
    margin = 8 * SEGMENT_PIXELS
    return np.pad(pixels, margin)


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_bodies_cross_section_colours_each_voxel_of_its_body(browser, served, sample):
    source, z = f"precomputed://{served}/{sample.segmentation}", 10
    labels = sample.roots[:, :, z]
    assert len(np.unique(labels[labels != 0])) >= 5
    biggest, second = largest_bodies(labels, 2)

    everything = show_bodies(browser, source, z, {})  # none selected: 2D shows every body, half opaque
    drawn = (np.abs(everything.astype(int) - CROSS_SECTION_BACKGROUND) > 2).any(axis=-1)
    assert overlap(drawn, on_screen(labels != 0)) > 0.99  # (the next slice's bodies overlap 0.75)

    shot = show_bodies(browser, source, z, {biggest: BODY_COLOURS[0], second: BODY_COLOURS[1]})
    for body, colour in ((biggest, BODY_COLOURS[0]), (second, BODY_COLOURS[1])):
        coloured = (np.abs(shot.astype(int) - colour) <= 2).all(axis=-1)
        assert overlap(coloured, on_screen(labels == body)) > 0.99, body
    others = shot.shape[0] * shot.shape[1] - count_like(shot, CROSS_SECTION_BACKGROUND) - \
        sum(count_like(shot, colour) for colour in BODY_COLOURS)
    assert others == 0  # bodies not selected are not drawn
    assert browser.console_errors() == []


# ---- meshes of selected bodies, 3D ----

MESH_SIZE = (320, 240)


def show_3d(browser: Browser, source: str, subsource: str, selected: dict[int, tuple[int, int, int]],
            **options) -> np.ndarray:
    """The 3D view of the segmentation's ``subsource`` ("mesh" or "skeletons"), looking along z at the
    volume's centre, the viewport as high as twice the volume is wide; ``selected`` bodies in their
    given colours; ``options`` are the SegmentationLayer's."""
    width, height, depth = SEGMENTATION_SHAPE
    layer = neuroglancer.SegmentationLayer(
        source=only(source, subsource), segments=list(selected),
        segment_colors={body: "#%02x%02x%02x" % colour for body, colour in selected.items()}, **options)
    return browser.show([layer], layout="3d", dimensions=space("xyz", SEGMENTATION_RESOLUTION),
                        position=(width / 2, height / 2, depth / 2), projection_scale=2 * width, size=MESH_SIZE)


def show_meshes(browser: Browser, source: str, selected: dict[int, tuple[int, int, int]]) -> np.ndarray:
    return show_3d(browser, source, "mesh", selected)



def shaded(shot: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Pixels of ``colour`` as the 3D view lights it: a darker or lighter shade of the same hue
    (channels that are 0 in ``colour`` stay near 0, the others are bright enough to tell apart)."""
    colour = np.array(colour)
    off, on = shot[..., colour == 0].astype(int), shot[..., colour > 0].astype(int)
    return (off <= 8).all(axis=-1) & (on >= 40).all(axis=-1)


def expected_centre(roots: np.ndarray, body: int) -> np.ndarray:
    """Where the body's voxels' centroid falls on screen, (column, row): x right, y down."""
    width, height, _ = SEGMENTATION_SHAPE
    centroid = np.argwhere(roots == body).mean(axis=0)[:2] + 0.5
    return np.array(MESH_SIZE) / 2 + (centroid - (width / 2, height / 2)) * MESH_SIZE[1] / (2 * width)


def test_meshes_of_selected_bodies_where_the_bodies_are_and_none_without_selection(browser, served, sample):
    source = f"precomputed://{served}/{sample.segmentation}"
    biggest, second = largest_bodies(sample.roots, 2)

    nothing = show_meshes(browser, source, {})
    assert count_unlike(nothing, PROJECTION_BACKGROUND) == 0

    one = show_meshes(browser, source, {biggest: BODY_COLOURS[0]})
    assert shaded(one, BODY_COLOURS[0]).sum() > 500
    assert shaded(one, BODY_COLOURS[0]).sum() == count_unlike(one, PROJECTION_BACKGROUND)  # nothing else drawn

    two = show_meshes(browser, source, {biggest: BODY_COLOURS[0], second: BODY_COLOURS[1]})
    masks = [shaded(two, colour) for colour in BODY_COLOURS]
    assert sum(mask.sum() for mask in masks) == count_unlike(two, PROJECTION_BACKGROUND)
    for body, mask in zip((biggest, second), masks):
        assert mask.sum() > 500, body
        rows, columns = np.nonzero(mask)
        # the silhouette's centre is not the voxels' centroid, nor is the view orthographic: 12 px
        # are 6 voxels, a tenth of the volume's width
        assert np.hypot(*(np.array([columns.mean(), rows.mean()]) - expected_centre(sample.roots, body))) < 12, body
    assert browser.console_errors() == []


# ---- skeletons of selected bodies, 3D ----

SKELETON_LINE_WIDTH = 3  # screen pixels


def show_skeletons(browser: Browser, source: str, selected: dict[int, tuple[int, int, int]]) -> np.ndarray:
    """As show_meshes, the skeletons in lines SKELETON_LINE_WIDTH wide (the default 1 is a thin trace)."""
    return show_3d(browser, source, "skeletons", selected, skeleton_rendering=neuroglancer.SkeletonRenderingOptions(
        mode3d="lines", line_width3d=SKELETON_LINE_WIDTH))


def test_skeletons_of_selected_bodies_lie_on_their_meshes_and_none_without_selection(browser, served, sample):
    source = f"precomputed://{served}/{sample.segmentation}"
    nothing = show_skeletons(browser, source, {})
    assert count_unlike(nothing, PROJECTION_BACKGROUND) == 0

    half_a_line = np.ones((SKELETON_LINE_WIDTH,) * 2, np.uint8)  # dilates by half the line width
    for body, colour in zip(largest_bodies(sample.roots, 2), BODY_COLOURS):
        skeleton = show_skeletons(browser, source, {body: colour})
        traced = (np.abs(skeleton.astype(int) - colour) <= 2).all(axis=-1)  # lines are unlit: the flat colour
        assert traced.sum() > 200, body
        assert traced.sum() == count_unlike(skeleton, PROJECTION_BACKGROUND), body  # nothing else drawn
        # on the body: inside its mesh's silhouette, give or take half the line's width
        silhouette = cv2.dilate(shaded(show_meshes(browser, source, {body: colour}), colour).astype(np.uint8),
                                half_a_line).astype(bool)
        assert (traced & ~silhouette).sum() == 0, body
        rows, columns = np.nonzero(traced)
        assert np.hypot(*(np.array([columns.mean(), rows.mean()]) - expected_centre(sample.roots, body))) < 12, body
    assert browser.console_errors() == []


# ---- a negative control: the checks fail on a layer that shows nothing ----

def test_a_layer_on_a_missing_path_fails_the_check_and_logs_an_error(served, sample):
    missing = f"{served}/nothing-here/neuroglancer/jpeg"
    width, height = EM_SHAPE[2], EM_SHAPE[1]
    with open_browser() as browser:
        browser.set_view([neuroglancer.ImageLayer(source=f"precomputed://{missing}")],
                         position=(width, height / 2, 4.5), **EM_VIEW_SPACE)
        errors = []
        deadline = time.monotonic() + BROWSER_TIMEOUT
        while not any(f"{missing}/info" in error for error in errors):  # the layer's source has failed
            assert time.monotonic() < deadline, errors
            time.sleep(0.2)
            errors += browser.console_errors()
        shot = browser.screenshot(EM_SIZE, force=True)
    # neuroglancer leaves the panel of a layer that failed undrawn (its coordinates never settle): one
    # flat colour, black, and no EM
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) == 1
    with pytest.raises(AssertionError):
        assert_shows_em(shot[:, :128], sample.pyramid_voxels["jpeg"][128:, :, 4].T)
