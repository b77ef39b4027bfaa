"""``emprocess runs list`` and ``runs delete`` (and ``admin bucket delete --run``) on runs laid out as a
real run lays them out, in folders and in buckets on moto's S3 server and the GCS emulator."""

from __future__ import annotations

import json
import re

import pytest

from emprocess import run_layout, storage
from emprocess.cli import main
from emprocess.storage.bucket_contents import location_exists

BACKENDS = ["file", "s3", "gs"]


def emprocess(capsys, *args: str) -> tuple[int, str, str]:
    """``emprocess ARGS`` in this process: (exit code, stdout, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def write_run(source: str, key: str, objects: dict[str, dict[str, bytes]]) -> dict[str, int]:
    """Make the run's locations named in ``objects`` and write them their objects; returns the bytes
    written per location."""
    locations = run_layout.run_locations(source, key)
    for name, files in objects.items():
        location = getattr(locations, name)
        storage.ensure_location(location)
        storage.write_all({storage.join(location, path): data for path, data in files.items()})
    return {name: sum(map(len, files.values())) for name, files in objects.items()}


def init(run_id: str) -> bytes:
    return json.dumps({"run_id": run_id, "started": "2026-12-01T09:08:41+00:00"}).encode()


@pytest.fixture(params=BACKENDS)
def source_with_runs(request, tmp_path) -> tuple[str, dict[str, dict[str, int]]]:
    """A source with three runs: one complete, one whose report says it failed (no chunk location),
    one that only started; and the bytes each wrote per location."""
    if request.param == "file":
        source = f"file://{tmp_path}/em"
    else:
        source = request.getfixturevalue({"s3": "s3_server", "gs": "gcs_server"}[request.param]).new_bucket("src")
    written = {
        "run-a": write_run(source, "run-a", {
            "process": {"init.json": init("manual__a"), "complete.json": b"{}", "logs/airflow.log": b"x" * 3000},
            "ng": {"neuroglancer/jpeg/info": b"i" * 100}, "chunk": {"neuroglancer/raw/0": b"c" * 2048},
            "tmp": {"aligned/zarr.json": b"t" * 10}}),
        "run-b": write_run(source, "run-b", {
            "process": {"init.json": init("manual__b"), "report.json": b'{"state": "failed"}'},
            "ng": {"x": b"1"}, "tmp": {"y": b"22"}}),
        "run-c": write_run(source, "run-c", {"process": {"init.json": init("manual__c")}}),
    }
    return source, written


def test_list_shows_each_run_its_state_and_the_bytes_of_each_location(capsys, source_with_runs):
    source, written = source_with_runs
    code, out, _ = emprocess(capsys, "runs", "list", source, "--json")
    assert code == 0
    runs = json.loads(out)
    assert [(r["run_key"], r["run_id"], r["state"], r["started"]) for r in runs] == [
        ("run-a", "manual__a", "complete", "2026-12-01T09:08:41+00:00"),
        ("run-b", "manual__b", "failed", "2026-12-01T09:08:41+00:00"),
        ("run-c", "manual__c", "incomplete", "2026-12-01T09:08:41+00:00")]
    for run in runs:
        assert run["sizes"] == {name: written[run["run_key"]].get(name) for name in ("process", "ng", "chunk", "tmp")}

    code, out, _ = emprocess(capsys, "runs", "list", source)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["RUN", "KEY", "RUN", "ID", "STATE", "STARTED", "PROCESS", "NG", "CHUNK", "TMP"]
    process_a = written["run-a"]["process"]
    assert rows[0].split() == ["run-a", "manual__a", "complete", "2026-12-01T09:08:41+00:00",
                               f"{process_a / 1024:.1f}", "KiB", "100", "B", "2.0", "KiB", "10", "B"]
    assert rows[1].split()[-5:] == ["1", "B", "-", "2", "B"]  # run-b wrote no chunk location
    assert rows[2].split()[-3:] == ["-", "-", "-"]


def test_list_of_a_source_without_runs(capsys, tmp_path):
    code, out, _ = emprocess(capsys, "runs", "list", f"file://{tmp_path}/em")
    assert code == 0 and out.startswith(f"no runs of file://{tmp_path}/em")
    code, out, _ = emprocess(capsys, "runs", "list", f"file://{tmp_path}/em", "--json")
    assert code == 0 and json.loads(out) == []


def listing(source: str) -> list[dict]:
    """What ``runs list`` reports, with every location's objects, to compare whole states."""
    from emprocess.admin.runs import list_runs

    return [dict(run, objects={name: storage.listdir(url) if location_exists(url) else None
                               for name, url in run["locations"].items()})
            for run in list_runs(source)]


@pytest.mark.parametrize("command", [["runs", "delete", "run-a", "--source"],
                                     ["admin", "bucket", "delete", "--run", "run-a", "--source"]])
def test_delete_removes_exactly_that_run_and_a_rerun_says_already_gone(capsys, source_with_runs, command):
    source, _ = source_with_runs
    others = [run for run in listing(source) if run["run_key"] != "run-a"]
    code, out, _ = emprocess(capsys, *command, source, "--yes")
    assert code == 0 and out.count("objects deleted") == 4
    assert listing(source) == others
    locations = run_layout.run_locations(source, "run-a")
    assert [url for url in locations.all() if location_exists(url)] == []
    assert location_exists(storage.parse(locations.process).parent())  # the shared process location stays
    code, out, _ = emprocess(capsys, *command, source, "--yes")
    assert code == 0 and out.count("already gone") == 4


def test_delete_dry_run_and_refusal_change_nothing(capsys, source_with_runs):
    source, _ = source_with_runs
    before = listing(source)
    code, out, _ = emprocess(capsys, "runs", "delete", "run-b", "--source", source, "--dry-run")
    assert code == 0 and out.count("would delete") == 3  # run-b has no chunk location
    assert "already gone" in out
    code, _, err = emprocess(capsys, "runs", "delete", "run-b", "--source", source)
    assert code == 2 and "delete run run-b" in err and "--yes" in err
    assert listing(source) == before


@pytest.mark.parametrize("key", ["Run-A", "run/a", "../a", "a-"])
def test_delete_refuses_what_is_not_a_run_key(capsys, tmp_path, key):
    code, _, err = emprocess(capsys, "runs", "delete", key, "--source", f"file://{tmp_path}/em", "--yes")
    assert code == 2 and re.search(r"run key .*: not a run key", err)


def test_runs_need_a_source_without_a_path(capsys):
    code, _, err = emprocess(capsys, "runs", "list", "gs://em-data/sub")
    assert code == 2 and "without a path" in err
