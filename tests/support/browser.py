"""Headless Chromium running the compiled neuroglancer client (PyPI ``neuroglancer``) on outputs the
stages wrote, and pixel measures of its screenshots.

The outputs are served by the project's own server (``emprocess.serve.make_server``: Range + CORS, as
``emprocess serve`` serves them), the client by ``neuroglancer.Viewer``, both on 127.0.0.1; selenium
drives Chromium (WebGL through SwiftShader, no GPU) and reads its console.

Adding a layer check (skeletons, OME-Zarr, …) takes one function call: write the output with the real
stage under the served folder (in ``tests/test_browser.py``, beside the ``sample`` fixture's outputs,
so its ``served`` and ``browser`` fixtures reach it), show it, count pixels::

    shot = browser.show([neuroglancer.ImageLayer(source=f"zarr3://{served}/path/to/output")],
                        dimensions=space("xyz", (8, 8, 8)), position=(128, 96, 4.5), size=(256, 192))
    assert count_unlike(shot[:, :128], CROSS_SECTION_BACKGROUND) == 128 * 192  # drawn where the data is
    assert browser.console_errors() == []

``show`` replaces the whole viewer state (axis lines, scale bar, bounding boxes and 3D slices hidden),
waits until the client has drawn exactly that state with every visible chunk loaded, and returns the
screenshot as an (height, width, 3) uint8 RGB array. Use ``layout="3d"`` and ``projection_scale`` for
meshes and skeletons (against ``PROJECTION_BACKGROUND``); ``segment_colors`` on a segmentation layer
gives a body a colour to count, and a source ``neuroglancer.LayerDataSource(url=…,
enable_default_subsources=False, subsources={"skeletons": True})`` draws one of its subsources
("default": the volume, "mesh", "skeletons") alone. A layer whose source fails never counts as
loaded: show it with ``set_view`` and ``screenshot(size, force=True)``.
"""

from __future__ import annotations

import shutil
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Sequence
from urllib.parse import urljoin

import cv2
import neuroglancer
import numpy as np
import pytest

from emprocess.serve import make_server

CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox",
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader",  # WebGL without a GPU
    # the network is closed: keep Chromium off Google's hosts (updates, sync, QUIC probes)
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-quic",
)
CROSS_SECTION_BACKGROUND = (0, 0, 255)  # no greyscale EM pixel is pure blue
PROJECTION_BACKGROUND = (0, 0, 0)
BROWSER_TIMEOUT = 240  # s, for any one wait: SwiftShader renders on the CPU, on a loaded 2-core machine
WINDOW = (800, 600)


def chromium_or_skip() -> tuple[str, str]:
    """(chromium, chromedriver) paths; the test skips where either is not installed."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip("the browser tests need chromium and chromedriver on PATH (Debian: apt-get install chromium "
                    "chromium-driver)")
    return chromium, chromedriver


@contextmanager
def serving_folder(folder: str) -> Iterator[str]:
    """``folder`` served by ``emprocess.serve.make_server`` on a free 127.0.0.1 port; yields its base URL."""
    server = make_server(folder, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def space(names: Sequence[str], scales_nm: Sequence[float]) -> neuroglancer.CoordinateSpace:
    """The viewer's global coordinates: one unit per voxel of ``scales_nm``, so positions are voxels."""
    return neuroglancer.CoordinateSpace(names=list(names), units="nm", scales=list(scales_nm))


class Browser:
    """A neuroglancer viewer open in headless Chromium."""

    def __init__(self, viewer: neuroglancer.Viewer, driver) -> None:
        self.viewer = viewer
        self.driver = driver

    def show(self, layers: Sequence, *, size: tuple[int, int], **view) -> np.ndarray:
        """``set_view(layers, **view)``, then its screenshot once every visible chunk has loaded."""
        self.set_view(layers, **view)
        return self.screenshot(size)

    def set_view(self, layers: Sequence, *, dimensions: neuroglancer.CoordinateSpace, position: Sequence[float],
                 layout: str = "xy", cross_section_scale: float = 1.0, projection_scale: float | None = None) -> None:
        """Show only ``layers`` (named layer0, layer1, …) at ``position``; axis lines, scale bar,
        bounding boxes and 3D slices are hidden so the only pixels unlike the background are the layers'."""
        with self.viewer.txn() as state:
            state.layers.clear()
            for index, layer in enumerate(layers):
                state.layers[f"layer{index}"] = layer
            state.dimensions = dimensions
            state.position = list(position)
            state.layout = layout
            state.cross_section_scale = cross_section_scale
            if projection_scale is not None:
                state.projection_scale = projection_scale
            state.show_axis_lines = False
            state.show_scale_bar = False
            state.show_default_annotations = False
            state.show_slices = False
            state.cross_section_background_color = "#%02x%02x%02x" % CROSS_SECTION_BACKGROUND
            state.projection_background_color = "#%02x%02x%02x" % PROJECTION_BACKGROUND

    def screenshot(self, size: tuple[int, int], force: bool = False) -> np.ndarray:
        """The view as (height, width, 3) RGB, taken once every visible chunk has loaded, or at once
        with ``force`` (for a layer whose source failed: neuroglancer never counts it as loaded).
        Screenshots are taken until one shows the viewer's state: a request can overtake the state
        just set, and the client may normalise that state and send it back (as ``neuroglancer.webdriver``
        syncs)."""
        deadline = time.monotonic() + BROWSER_TIMEOUT
        with self.viewer.config_state.txn() as config:
            config.show_ui_controls = False
            config.show_panel_borders = False
            config.viewer_size = list(size)
        if force:  # the client's screenshot mode FORCE (2) skips its wait for readiness, and its resizing
            while self.driver.execute_script("return [viewer.display.canvas.width, viewer.display.canvas.height]") \
                    != list(size):
                assert time.monotonic() < deadline, "the client never took the screenshot's size"
                time.sleep(0.1)
            self.driver.execute_script("viewer.display.screenshotMode.value = 2")
        try:
            while True:
                reply = self._screenshot(size, deadline)
                if reply.viewer_state == self.viewer.state:
                    image = cv2.imdecode(np.frombuffer(reply.screenshot.image, np.uint8), cv2.IMREAD_COLOR)
                    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
                assert time.monotonic() < deadline, "the client never drew the state that was set"
        finally:
            if force:
                self.driver.execute_script("viewer.display.screenshotMode.value = 0")

    def _screenshot(self, size: tuple[int, int], deadline: float):
        """``viewer.screenshot(size)`` (which waits for every visible chunk) with a deadline: it
        would otherwise wait forever on a client that died."""
        while True:
            done = threading.Event()
            replies = []
            self.viewer.async_screenshot(lambda reply: (replies.append(reply), done.set()))
            assert done.wait(max(0.0, deadline - time.monotonic())), \
                f"no screenshot within {BROWSER_TIMEOUT} s: {self.console_errors()}"
            shot = replies[0].screenshot
            if (shot.width, shot.height) == tuple(size):  # the first one may precede the resize
                return replies[0]

    def console_errors(self) -> list[str]:
        """The SEVERE browser-console entries since the last call (reading the log empties it).

        One is left out: Chromium asks the page's origin, neuroglancer's Python server, for
        /favicon.ico, which it does not have; a missing tab icon is no fault of the outputs."""
        favicon = urljoin(self.viewer.get_viewer_url(), "/favicon.ico") + " - Failed to load resource: "
        return [entry["message"] for entry in self.driver.get_log("browser")
                if entry["level"] == "SEVERE" and not entry["message"].startswith(favicon)]


@contextmanager
def open_browser() -> Iterator[Browser]:
    """A neuroglancer viewer open in headless Chromium; Chromium is quit after, and neuroglancer's
    server (on 127.0.0.1) stopped unless another browser opened before this one still uses it."""
    import selenium.webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = chromium_or_skip()
    first = not neuroglancer.server.is_server_running()
    neuroglancer.set_server_bind_address("127.0.0.1")
    viewer = neuroglancer.Viewer()
    try:
        options = selenium.webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in (*CHROMIUM_FLAGS, "--window-size=%d,%d" % WINDOW):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = selenium.webdriver.Chrome(options=options, service=Service(chromedriver))
        try:
            driver.set_page_load_timeout(BROWSER_TIMEOUT)
            driver.get(viewer.get_viewer_url())
            yield Browser(viewer, driver)
        finally:
            driver.quit()
    finally:
        if first:
            neuroglancer.stop()


def count_like(image: np.ndarray, colour: Sequence[int], tolerance: int = 2) -> int:
    """Pixels of ``image`` within ``tolerance`` of ``colour`` in every channel."""
    return int((np.abs(image.astype(np.int16) - np.array(colour, np.int16)) <= tolerance).all(axis=-1).sum())


def count_unlike(image: np.ndarray, colour: Sequence[int], tolerance: int = 2) -> int:
    """Pixels of ``image`` that differ from ``colour`` (e.g. the background) by more than ``tolerance``."""
    return int(image.shape[0] * image.shape[1]) - count_like(image, colour, tolerance)
