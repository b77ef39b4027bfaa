"""What orchestration costs: parsing the DAG file, starting a task process, and the sample run under
a real Airflow deployment against the same run through ``dag.test`` (``emprocess run``).

    .venv/bin/python benchmarks/orchestration.py [--slices 24] [--size 512] [--width 4]

Prints figures, no pass/fail. Targets (issue #15): parsing the DAG file (all six widths) ≤ 2 CPU-s,
a task process's start-up ≤ 1 CPU-s (our part: parsing its DAG, beyond importing Airflow), the
real-scheduler run within 3 min and 3× its dag.test time, a refused conf's run failed within 30 s of
its trigger.
The deployment is the tests' (tests/support/airflow_deployment.py: PostgreSQL, api-server, scheduler, dag-processor,
LocalExecutor with 4 task processes at once), so it needs Debian's postgresql.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "tests"))

CPU_OF = "import time; t = time.process_time(); {code}; print(time.process_time() - t)"


def cpu_seconds(code: str, pycache: str) -> float:
    """CPU seconds ``code`` takes in a fresh interpreter (imports included), with bytecode cached as a
    deployment has it: run once to fill the cache, then measured (the best of three)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = pycache
    runs = []
    for _ in range(4):
        out = subprocess.run([sys.executable, "-c", CPU_OF.format(code=code)], capture_output=True, text=True,
                             check=True, cwd=ROOT, env=env)
        runs.append(float(out.stdout.strip().splitlines()[-1]))
    return min(runs[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--width", type=int, default=4)
    args = parser.parse_args()

    from emprocess.workflow import dag_id

    pycache = tempfile.mkdtemp(prefix="emprocess-pycache-")
    parse = "import runpy; runpy.run_path('dags/emprocess_dags.py')"
    sdk = cpu_seconds("import airflow.sdk", pycache)
    dag_file = cpu_seconds(f"import airflow.sdk; {parse}", pycache)
    runner = cpu_seconds("import airflow.sdk.execution_time.task_runner", pycache)
    # a task process parses the file with the parsing context naming its DAG (what the task runner sets)
    task = cpu_seconds(f"import airflow.sdk.execution_time.task_runner, os; "
                       f"os.environ['_AIRFLOW_PARSING_CONTEXT_DAG_ID'] = '{dag_id(args.width)}'; {parse}", pycache)
    print(f"parse: the DAG file (six widths) {dag_file - sdk:.2f} CPU-s beyond importing airflow.sdk "
          f"({sdk:.2f} CPU-s); target 2")
    print(f"task start-up: {task - runner:.2f} CPU-s to parse its DAG beyond importing Airflow's task runner "
          f"({runner:.2f} CPU-s, Airflow's own); target 1")

    from emprocess.config import parse_conf
    from emprocess.sample import write_sample
    from emprocess.registry import SERVICES
    from emprocess.workflow.local_run import allowed_prefixes, service
    from support.airflow_deployment import deployment

    work = Path(tempfile.mkdtemp(prefix="emprocess-orchestration-"))
    conf = write_sample(work / "sample", size=args.size, n_slices=args.slices, seed=1)
    conf_path = work / "conf.json"
    conf_path.write_text(json.dumps(conf))
    started = time.monotonic()
    local = subprocess.run([sys.executable, "-m", "emprocess.cli", "--quiet", "run", str(conf_path), "--width",
                            str(args.width)], capture_output=True, text=True)
    local_seconds = time.monotonic() - started
    if local.returncode != 0:
        raise SystemExit(f"emprocess run failed:\n{local.stderr[-3000:]}")
    with ExitStack() as stack:
        connections = {f"AIRFLOW_CONN_{svc.connection}": stack.enter_context(
            service(svc.name, allowed_prefixes(parse_conf(conf)), work)) for svc in SERVICES.values()}
        airflow = stack.enter_context(deployment({**connections, "AIRFLOW__CORE__PARALLELISM": "4"}))
        dag = dag_id(args.width)
        real_seconds, state = run_seconds(airflow, dag, conf)
        refused_seconds, refused_state = run_seconds(airflow, dag, {**conf, "minz": conf["maxz"] + 1})
    print(f"sample {args.slices} × {args.size}², width {args.width}: real scheduler {real_seconds:.0f} s ({state}), "
          f"dag.test (emprocess run) {local_seconds:.0f} s: {real_seconds / local_seconds:.1f}×; "
          f"target ≤ 180 s and ≤ 3×")
    print(f"a refused conf (minz > maxz): the run ended {refused_state} {refused_seconds:.0f} s after the trigger; "
          f"target 30 s")


def run_seconds(airflow, dag: str, conf: dict) -> tuple[float, str]:
    """Seconds from triggering a run through the REST API to its end, and its final state."""
    started = time.monotonic()
    run_id = airflow.rest("POST", f"/dags/{dag}/dagRuns", json={"logical_date": None, "conf": conf}).json()[
        "dag_run_id"]
    while (state := airflow.rest("GET", f"/dags/{dag}/dagRuns/{run_id}").json()["state"]) not in (
            "success", "failed"):
        time.sleep(0.5)
    return time.monotonic() - started, state


if __name__ == "__main__":
    main()
