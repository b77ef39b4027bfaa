"""Bad confs and bad inputs: the real DAG fails before any write, with a message naming the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.refusals import good_conf, listing, spoiled, write_stack
from support.refusals.conf import CASES


@pytest.fixture(scope="module")
def width1_dag(airflow_db):
    from emprocess.workflow.dag_factory import build_dag

    return build_dag(1)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_fails_in_validate_before_any_write(width1_dag, tmp_path, case):
    from emprocess.workflow.local_run import run_dag_test

    conf = spoiled(case, tmp_path)
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
    assert all(expected in message for expected in case.expected), f"{case.name}: {message}"
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
