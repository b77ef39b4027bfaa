"""Bad confs and bad inputs: the real DAG fails before any write, with a message naming the problem."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

SIZE = 96


def write_stack(src: Path, n: int = 4) -> None:
    src.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for z in range(n):
        cv2.imwrite(str(src / f"img{z:03d}.png"), rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8))


def good_conf(src: Path) -> dict:
    return {"id": "bad", "image": "img%03d.png", "minz": 0, "maxz": 3, "source": f"file://{src}"}


def truncate(src: Path) -> None:
    data = (src / "img002.png").read_bytes()
    (src / "img002.png").write_bytes(data[: len(data) // 2])


def other_size(src: Path) -> None:
    cv2.imwrite(str(src / "img001.png"), np.zeros((SIZE, SIZE + 8), np.uint8))


def not_an_image(src: Path) -> None:
    (src / "img003.png").write_text("this is not a png")


def colour(src: Path) -> None:
    cv2.imwrite(str(src / "img000.png"), np.zeros((SIZE, SIZE, 3), np.uint8) + 40)


CASES = [
    # (name, conf change, input damage, expected words in the error)
    ("missing key", lambda c: c.pop("image"), None, "image"),
    ("minz > maxz", lambda c: c.update(minz=3, maxz=1), None, "minz"),
    ("negative z", lambda c: c.update(minz=-1), None, "minz"),
    ("template without %d", lambda c: c.update(image="img.png"), None, "'image'"),
    ("template with two fields", lambda c: c.update(image="img%03d_%03d.png"), None, "'image'"),
    ("unknown key", lambda c: c.update(jpeg_qualty=80), None, "jpeg_qualty"),
    ("bad URL scheme", lambda c: c.update(source="ftp://host/stack"), None, "ftp"),
    ("dotdot in path", lambda c: c.update(source=c["source"] + "/../elsewhere"), None, ".."),
    ("template escaping source", lambda c: c.update(image="../img%03d.png"), None, "'image'"),
    ("invalid bucket", lambda c: c.update(source="gs://Bad_Bucket!"), None, "bucket"),
    ("bucket name too long for the run's buckets", lambda c: c.update(source="gs://" + "a" * 50), None,
     "'source': bucket name"),
    ("jpeg quality out of range", lambda c: c.update(jpeg_quality=0), None, "jpeg_quality"),
    ("negative clip limit", lambda c: c.update(**{"clip-limit": -0.1}), None, "clip-limit"),
    ("resolution of two values", lambda c: c.update(resolution=[8, 8]), None, "resolution"),
    ("unknown stage", lambda c: c.update(stages=["align", "segment"]), None, "stages"),
    ("meshing without its graph", lambda c: c.update(stages=["meshing"]), None, "meshing needs chunkedgraph"),
    ("chunk size not a power of two",
     lambda c: c.update(segmentation={"watershed": c["source"], "chunk_size": [100, 128, 128]}), None, "chunk_size"),
    ("missing slice", lambda c: c.update(maxz=5), None, "img004.png does not exist"),
    ("truncated PNG", None, truncate, "img002.png"),
    ("slices of different sizes", None, other_size, "img001.png"),
    ("not an image", None, not_an_image, "img003.png"),
    ("colour slice", None, colour, "img000.png"),
    ("reuse of an unknown run", lambda c: c.update(reuse_alignment="manual__2001-01-01T00:00:00+00:00"), None,
     "reuse_alignment"),
]


@pytest.fixture(scope="module")
def width1_dag(airflow_db):
    from emprocess.workflow.dag_factory import build_dag

    return build_dag(1)


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name,change,damage,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_in_validate_before_any_write(width1_dag, tmp_path, name, change, damage, expected):
    from emprocess.workflow.local_run import run_dag_test

    src = tmp_path / "src"
    write_stack(src)
    conf = good_conf(src)
    if change:
        change(conf)
    if damage:
        damage(src)
    before = listing(tmp_path)
    try:
        result = run_dag_test(width1_dag, conf)
    except Exception as err:  # Airflow's own Param validation refuses the conf before the run starts
        message = str(err)
        assert "param" in type(err).__name__.lower() or "param" in message.lower(), message
    else:
        assert result.state == "failed"
        assert [task for task, _ in result.failed] == ["validate"], result.failed
        message = result.failed[0][1]
    assert expected in message, f"{name}: {message}"
    assert listing(tmp_path) == before, "nothing may be written before validation passes"


def test_locations_holding_a_run_with_another_conf_are_refused(width1_dag, tmp_path):
    import datetime

    from emprocess import storage
    from emprocess.stages import RunContext
    from emprocess.workflow.local_run import run_dag_test

    src = tmp_path / "src"
    write_stack(src)
    conf = good_conf(src)
    logical_date = datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc)
    run_id = f"manual__{logical_date.isoformat()}"
    ctx = RunContext.create(dict(conf, jpeg_quality=70), run_id)
    storage.write_json(storage.join(ctx.locations.process, "complete.json"),
                       {"conf": ctx.conf.to_json(), "run_id": run_id})
    before = listing(tmp_path)
    result = run_dag_test(width1_dag, conf, logical_date=logical_date)
    assert result.state == "failed" and [t for t, _ in result.failed] == ["validate"]
    assert "another conf" in result.failed[0][1]
    assert listing(tmp_path) == before
    complete = Path(ctx.locations.process.removeprefix("file://")) / "complete.json"
    assert json.loads(complete.read_text())["conf"]["jpeg_quality"] == 70
