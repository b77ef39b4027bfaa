"""``emprocess run`` end to end: real Airflow (temp SQLite), both real services on 127.0.0.1, file:// storage."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from support.emprocess_cli import airflow_log_of, emprocess, run_id_of

from emprocess import storage
from emprocess.stages import RunContext


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict:
    from emprocess.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("e2e") / "sample", size=256, n_slices=6, seed=3)


@pytest.fixture(scope="module")
def sample_run(sample, tmp_path_factory, smtp_server) -> tuple[dict, str, subprocess.CompletedProcess]:
    conf = dict(sample, email="ann@lab.example")
    conf_path = tmp_path_factory.mktemp("conf") / "conf.json"
    conf_path.write_text(json.dumps(conf))
    done = emprocess("run", str(conf_path), smtp=smtp_server.connection)
    assert done.returncode == 0, done.stderr[-5000:]
    return conf, run_id_of(done.stdout), done


def test_sample_run_writes_init_and_complete(sample_run):
    conf, run_id, done = sample_run
    ctx = RunContext.create(conf, run_id)
    init = storage.read_json(storage.join(ctx.locations.process, "init.json"))
    complete = storage.read_json(storage.join(ctx.locations.process, "complete.json"))
    assert init["run_id"] == run_id == complete["run_id"]
    assert init["conf"] == complete["conf"] == ctx.conf.to_json()
    assert init["versions"]["emprocess"] and init["versions"]["apache-airflow"].startswith("3.")
    assert complete["outputs"]["jpeg"] == ctx.locations.jpeg
    assert storage.exists(storage.join(ctx.locations.process, "align", "transforms.json"))
    assert ctx.locations.process in done.stdout


def test_the_run_ends_with_its_report_and_the_cli_rewrites_it(sample_run, tmp_path):
    conf, run_id, done = sample_run
    ctx = RunContext.create(conf, run_id)
    report_url = storage.join(ctx.locations.process, "report.json")
    report = storage.read_json(report_url)
    assert report["complete"] and report["run_id"] == run_id
    stages = {row["stage"]: row for row in report["stages"]}
    for name in ("align.pairs", "align.collect", "align.warp", "pyramid.meta", "pyramid.shard"):
        assert stages[name]["done"] == stages[name]["total"] > 0, name
        assert stages[name]["task_seconds"] > 0, name
    assert stages["align.warp"]["total"] == conf["maxz"] - conf["minz"] + 1
    assert [p["z"] for p in report["alignment"]["pairs"]] == list(range(conf["minz"], conf["maxz"]))
    assert [t["z"] for t in report["thumbnails"]] == list(range(conf["minz"], conf["maxz"] + 1))
    assert storage.join(ctx.locations.process, "report.html") in done.stdout

    storage.delete(report_url)
    conf_path = tmp_path / "conf.json"
    conf_path.write_text(json.dumps(conf))
    again = emprocess("report", run_id, "--conf", str(conf_path))
    assert again.returncode == 0, again.stderr[-3000:]
    assert storage.read_json(report_url) == report


def test_resume_skips_finished_work(sample_run, tmp_path, smtp_server):
    conf, run_id, first = sample_run
    ctx = RunContext.create(conf, run_id)
    cache = storage.join(ctx.locations.process, "cache")
    before = {key: storage.read(storage.join(cache, key)) for key in storage.listdir(cache)}
    assert any(key.startswith("align.pairs/") for key in before)
    conf_path = tmp_path / "conf.json"
    conf_path.write_text(json.dumps(conf))
    log = airflow_log_of(first.stdout)
    earlier_log = log.stat().st_size
    again = emprocess("run", str(conf_path), "--resume", run_id, smtp=smtp_server.connection)
    assert again.returncode == 0, again.stderr[-5000:]
    assert run_id_of(again.stdout) == run_id
    after = {key: storage.read(storage.join(cache, key)) for key in storage.listdir(cache)}
    assert after == before  # nothing re-ran: every mini-task was found finished
    assert airflow_log_of(again.stdout) == log  # the resumed run appends to the run's log
    summaries = re.findall(r"(\S+) worker \d+/\d+: (\d+) mini-tasks, (\d+) already done, (\d+) run now",
                           log.read_bytes()[earlier_log:].decode())
    assert {stage for stage, *_ in summaries} >= {"align.pairs", "align.warp", "pyramid.shard"}
    assert all(done == total and ran == "0" for _, total, done, ran in summaries), summaries


def test_single_slice_run(sample, tmp_path):
    conf = dict(sample, id="single", minz=2, maxz=2)
    conf_path = tmp_path / "conf.json"
    conf_path.write_text(json.dumps(conf))
    done = emprocess("run", str(conf_path))
    assert done.returncode == 0, done.stderr[-5000:]
    ctx = RunContext.create(conf, run_id_of(done.stdout))
    assert storage.exists(storage.join(ctx.locations.process, "complete.json"))
    transforms = storage.read_json(storage.join(ctx.locations.process, "align", "transforms.json"))
    assert list(transforms["transforms"]) == ["2"]


def test_the_finished_run_mails_the_conf_address_its_report_and_outputs(sample_run, smtp_server):
    conf, run_id, _ = sample_run
    ctx = RunContext.create(conf, run_id)
    mails = smtp_server.to("ann@lab.example")  # one per run of it: a resumed run mails again
    assert mails and all(m["Subject"] == f"emprocess: {conf['id']} run {run_id} succeeded" for m in mails)
    assert mails[0]["From"] == "emprocess@lab.example"
    body = mails[0].get_body().get_content()
    for url in (storage.join(ctx.locations.process, "report.html"), ctx.locations.jpeg, ctx.locations.raw):
        assert url in body
    assert "Failed" not in body


def test_failed_run_names_the_task_and_error_and_mails_it(sample, tmp_path, smtp_server):
    """One slice's pixels are garbage (its header and end are whole, so validate lets it by): the
    alignment worker that reads it fails, and the run-ended mail names it."""
    source = tmp_path / "broken"
    shutil.copytree(storage.parse(sample["source"]).path, source)
    bad = source / f"img{sample['minz'] + 2:05d}.png"
    whole = bad.read_bytes()
    bad.write_bytes(whole[:33] + bytes(2048) + whole[-12:])  # PNG signature + IHDR, garbage, IEND
    conf = dict(sample, id="broken", source=f"file://{source}", email="bob@lab.example")
    conf_path = tmp_path / "conf.json"
    conf_path.write_text(json.dumps(conf))
    done = emprocess("run", str(conf_path), smtp=smtp_server.connection)
    assert done.returncode == 1
    assert "task align.pairs[0] failed" in done.stderr and bad.name in done.stderr
    [mail] = smtp_server.to("bob@lab.example")
    assert mail["Subject"] == f"emprocess: broken run {run_id_of(done.stderr)} failed"
    body = mail.get_body().get_content()
    assert "<li>align.pairs[0]</li>" in body and "later tasks did not run" in body


def test_a_conf_that_asks_for_mail_needs_an_smtp_connection(sample, tmp_path):
    conf = dict(sample, id="unmailed", email="cy@lab.example")
    conf_path = tmp_path / "conf.json"
    conf_path.write_text(json.dumps(conf))
    done = emprocess("run", str(conf_path))
    assert done.returncode == 1
    assert "task validate failed" in done.stderr and "'smtp_default'" in done.stderr
    assert "AIRFLOW_CONN_SMTP_DEFAULT" in done.stderr and "task notify" not in done.stderr
    ctx = RunContext.create(conf, run_id_of(done.stderr))
    assert not storage.exists(storage.join(ctx.locations.process, "init.json"))


def test_cli_rejects_a_bad_conf_before_starting(tmp_path):
    conf_path = tmp_path / "conf.json"
    conf_path.write_text(json.dumps({"id": "x", "image": "a%d.png", "minz": 0, "maxz": 1, "source": "ftp://x"}))
    done = emprocess("run", str(conf_path))
    assert done.returncode == 2
    assert "'source'" in done.stderr and "ftp" in done.stderr
    assert list(tmp_path.iterdir()) == [conf_path]


def test_cli_names_each_refused_key_on_its_own_line_without_a_traceback(tmp_path):
    conf_path = tmp_path / "conf.json"
    conf_path.write_text(json.dumps({"id": "x", "image": "a%d.png", "minz": 3, "maxz": 1, "source": "ftp://x",
                                     "jpeg_quality": 0, "colour": "red"}))
    done = emprocess("run", str(conf_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: invalid run conf: '") for line in lines)
    assert [line.split("'")[1] for line in lines] == ["source", "jpeg_quality", "colour"]


def test_sample_run_recovers_the_known_misalignment_and_cloudvolume_reads_aligned_slices(sample_run):
    """The run's transforms undo the sample's known per-slice affines within 1 px, and the JPEG
    pyramid it wrote opens in CloudVolume with consecutive slices in register (phase correlation)."""
    import cv2
    import numpy as np
    from cloudvolume import CloudVolume

    from emprocess.align.compose import homogeneous, max_corner_distance

    conf, run_id, _ = sample_run
    ctx = RunContext.create(conf, run_id)
    transforms = storage.read_json(storage.join(ctx.locations.process, "align", "transforms.json"))
    truth = storage.read_json(storage.join(conf["source"], "truth.json"))["transforms"]
    # truth maps the true frame into slice z; ours maps slice z into the output frame: their product
    # must be the same map for every slice
    frame_of = {z: homogeneous(transforms["transforms"][z]) @ homogeneous(truth[z]) for z in transforms["transforms"]}
    first = frame_of[str(conf["minz"])]
    assert max(max_corner_distance(m, first, transforms["source_sizes"][z]) for z, m in frame_of.items()) <= 1.0

    volume = CloudVolume(f"precomputed://{ctx.locations.jpeg}", mip=0, progress=False)
    stack = np.asarray(volume[:, :, :])[..., 0].astype(np.float32)  # x, y, z
    assert stack.shape[2] == conf["maxz"] - conf["minz"] + 1
    inner = stack[32:-32, 32:-32]  # clear of the zero fill at the warped edges
    window = cv2.createHanningWindow(inner.shape[1::-1], cv2.CV_32F)
    for z in range(stack.shape[2] - 1):
        (dx, dy), _ = cv2.phaseCorrelate(np.ascontiguousarray(inner[..., z]), np.ascontiguousarray(inner[..., z + 1]),
                                         window)
        assert np.hypot(dx, dy) <= 1.0, (z, dx, dy)
