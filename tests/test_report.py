"""The run report, made from what a run left in its process location (no Airflow, no services)."""

from __future__ import annotations

import base64
import re
import time
import xml.etree.ElementTree as ElementTree
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
from support.align_pairs import pair, rotation, translation

from emprocess import registry, storage
from emprocess.align.stages import BRIDGE, COLLECT, PAIRS
from emprocess.batch import run_and_cache
from emprocess.lifecycle import create_env
from emprocess.pyramid.stages import WARP
from emprocess.report import write_report
from emprocess.report.page import MAX_THUMBNAILS, render
from emprocess.report.summary import run_summary
from emprocess.stages import RunContext

RUN_ID = "night <1> & more"
WARP_TIMINGS = {8: ("2026-01-01T00:00:00+00:00", 2.0), 9: ("2026-01-01T00:00:01+00:00", 3.0),
                11: ("2026-01-01T00:00:05+00:00", 0.5)}  # slice 10 has not been warped yet


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])
        if tag == "a":
            self.links.append(dict(attrs)["href"])


def image_sources(page: str) -> list[str]:
    parser = Images()
    parser.feed(page)
    return parser.sources


def image_links(page: str) -> list[str]:
    parser = Images()
    parser.feed(page)
    return [link for link in parser.links if link.endswith(".png")]


def thumbnail(z: int) -> bytes:
    """A 600×300 thumbnail: dark left of column 100·(z − 7), bright right of it."""
    image = np.full((300, 600), 220, np.uint8)
    image[:, :100 * (z - 7)] = 20
    return cv2.imencode(".png", image)[1].tobytes()


def decoded(data_uri: str) -> np.ndarray:
    head, payload = data_uri.split(",", 1)
    assert head == "data:image/jpeg;base64"
    return cv2.imdecode(np.frombuffer(base64.b64decode(payload), np.uint8), cv2.IMREAD_GRAYSCALE)


@pytest.fixture
def partial_run(tmp_path) -> RunContext:
    """A run of slices 8..11 stopped during align.warp: the pairs (one affine, one translation
    fallback, one identity fallback) and collect are done, three of four slices are warped."""
    conf = {"id": "t", "image": "s%03d.png", "minz": 8, "maxz": 11, "source": f"file://{tmp_path}/src"}
    ctx = RunContext.create(conf, RUN_ID)
    create_env(ctx)
    results = {"pairs": [pair(8, rotation(1.0)), pair(9, None, translation(3, 0)), pair(10, None, None)]}

    def align_pairs(task):
        time.sleep(0.05)
        return results

    (pairs_task,) = PAIRS.plan(ctx)
    run_and_cache(PAIRS, ctx, pairs_task, align_pairs)
    (bridge_task,) = BRIDGE.plan(ctx)  # over slice 10, whose pairs both fell back: it registers nothing
    run_and_cache(BRIDGE, ctx, bridge_task, lambda task: {k: v for k, v in pair(9).items() if k != "z"})
    (collect_task,) = COLLECT.plan(ctx)
    run_and_cache(COLLECT, ctx, collect_task, lambda task: COLLECT.execute(task["payload"]))
    for z, (started, seconds) in WARP_TIMINGS.items():
        storage.write_json(ctx.cache_url(WARP.name, f"{z:08d}"),
                           {"z": z, "timing": {"started": started, "seconds": seconds}})
        url = storage.join(ctx.locations.process, "align", "thumbnails", f"{z}.png")
        storage.write(url, b"not an image" if z == 11 else thumbnail(z))
    return ctx


def test_the_report_of_an_unfinished_run_counts_times_and_lists_what_it_did(partial_run):
    ctx = partial_run
    urls = write_report(ctx, registry.pipeline())
    report = storage.read_json(urls["json"])
    assert report["run_id"] == RUN_ID and not report["complete"] and report["finished"] is None
    assert report["started"] == storage.read_json(storage.join(ctx.locations.process, "init.json"))["started"]

    stages = {row["stage"]: row for row in report["stages"]}
    assert (stages["align.pairs"]["done"], stages["align.pairs"]["total"]) == (1, 1)
    assert stages["align.pairs"]["task_seconds"] >= 0.05  # the time the mini-task took, as cached
    warp = stages["align.warp"]
    assert (warp["done"], warp["total"]) == (3, 4)
    assert warp["task_seconds"] == 5.5  # 2 + 3 + 0.5
    assert warp["wall_seconds"] == 5.5  # from 00:00:00 to 00:00:05.5
    assert warp["started"] == "2026-01-01T00:00:00+00:00"
    assert stages["pyramid.shard"]["done"] == 0 and stages["pyramid.shard"]["total"] > 0
    assert stages["cg.layer2"]["total"] == 0  # no segmentation: not part of this run

    alignment = report["alignment"]
    assert alignment["slices"] == 4 and alignment["fallbacks"] == [9, 10]
    assert [(p["z"], p["model"], p["inliers"], p["fallback"]) for p in alignment["pairs"]] == [
        (8, "affine", 500, False), (9, "translation", 500, True), (10, "identity", None, True)]
    assert "affine not found" in alignment["pairs"][1]["reason"]
    assert [t["z"] for t in report["thumbnails"]] == [8, 9, 11]  # in z order, not name order


def test_the_report_page_shows_thumbnails_charts_and_escapes_what_it_is_given(partial_run):
    ctx = partial_run
    urls = write_report(ctx, registry.pipeline())
    page = storage.read(urls["html"]).decode()
    folder = Path(storage.parse(ctx.locations.process).path)
    links = image_links(page)
    assert links == ["align/thumbnails/8.png", "align/thumbnails/9.png", "align/thumbnails/11.png"]
    assert all((folder / link).is_file() for link in links)  # relative to the page's folder
    previews = image_sources(page)
    for z, source in zip((8, 9), previews):  # each a small copy of its thumbnail, inside the page
        image = decoded(source)
        assert image.shape == (96, 192)
        dark = (image < 120).mean(axis=0) > 0.5
        assert dark.sum() == pytest.approx(32 * (z - 7), abs=2) and not dark[32 * (z - 7) + 2:].any()
    assert previews[2] == "align/thumbnails/11.png"  # one that cannot be decoded is linked as it is

    assert "night &lt;1&gt; &amp; more" in page and "<1>" not in page
    assert "3 / 4" in page and "5.5 s" in page
    charts = [ElementTree.fromstring(svg) for svg in re.findall(r"<svg.*?</svg>", page, re.DOTALL)]
    assert len(charts) == 2  # inliers and residuals, one point per pair with a fitted model
    for chart in charts:
        assert len(chart.find("polyline").get("points").split()) == 2
        assert len(chart.findall("circle")) == 2  # the two pairs that fell back
    assert "identity used" in page  # why each fallback happened


def test_a_long_stack_shows_a_bounded_number_of_thumbnails(partial_run):
    summary = run_summary(partial_run, registry.pipeline())
    summary["thumbnails"] = [{"z": z, "path": f"align/thumbnails/{z}.png"} for z in range(1000)]
    sources = image_sources(render(summary))
    assert 0 < len(sources) <= MAX_THUMBNAILS
    assert sources[0] == "align/thumbnails/0.png" and len(set(sources)) == len(sources)


def test_a_result_may_not_hold_the_cache_s_own_key(partial_run):
    ctx = partial_run
    task = {"key": "x", "payload": {}}
    with pytest.raises(ValueError, match="timing"):
        run_and_cache(PAIRS, ctx, task, lambda task: {"timing": "mine"})
    assert not storage.exists(ctx.cache_url(PAIRS.name, "x"))

