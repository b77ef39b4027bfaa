"""A real Airflow deployment on loopback for the tests: PostgreSQL (the metadata DB a deployment
uses), ``airflow db migrate``, the api-server, scheduler and dag-processor with the LocalExecutor,
the project's DAG file and plugins, and the emprocess pools made by ``scripts/setup_airflow.py``.

Every process gets a free 127.0.0.1 port and its own temp folder, and is stopped by PID when the
context ends. PostgreSQL refuses to run as root, so as root its server runs as the ``postgres`` user
that Debian's package creates. The deployment is separate processes, as in production; the tests
talk to it through the ``airflow`` CLI and the REST API.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import requests

from emprocess.workflow.local_run import free_port

ROOT = Path(__file__).parents[2]
PG_USER = "postgres"
FINISHED = {"success", "failed"}


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL server binaries, if installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


def _as_postgres() -> list[str]:
    return ["runuser", "-u", PG_USER, "--"] if os.geteuid() == 0 else []


@contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL server in a temp folder with an ``airflow`` database; yields its SQLAlchemy URL."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    home = Path(tempfile.mkdtemp(prefix="emprocess-pg-"))
    home.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(home, PG_USER)
    port = free_port()
    data = home / "data"
    subprocess.run([*_as_postgres(), str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust",
                    "-E", "UTF8"], check=True, capture_output=True)
    log = open(home / "postgres.log", "wb")
    server = subprocess.Popen([*_as_postgres(), str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
                               "-h", "127.0.0.1", "-k", str(home), "-c", "fsync=off", "-c", "max_connections=200"],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start; see {home / 'postgres.log'}")
            time.sleep(0.2)
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, "-q", "-c",
                        "CREATE DATABASE airflow"], check=True, capture_output=True)
        yield f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{port}/airflow"
    finally:
        _stop(server)
        log.close()
        shutil.rmtree(home, ignore_errors=True)


@dataclass
class Deployment:
    """A running deployment: its home, the environment its CLI needs, and the API server's URL."""

    home: Path
    env: dict[str, str]
    api: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def airflow(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``airflow ARGS`` against this deployment."""
        return subprocess.run([sys.executable, "-m", "airflow", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def token(self) -> str:
        """A bearer token for the REST API (the simple auth manager, every user an admin)."""
        reply = requests.get(f"{self.api}/auth/token", timeout=30)
        reply.raise_for_status()
        return reply.json()["access_token"]

    def rest(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token()}"}
        return requests.request(method, f"{self.api}/api/v2{path}", headers=headers, timeout=60, **kwargs)

    def log(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")

    def task_logs(self) -> str:
        """Every task's log so far, concatenated."""
        return "".join(p.read_text(errors="replace") for p in (self.home / "logs").rglob("*.log"))

    def trigger(self, dag: str, conf: dict) -> str:
        """A run of ``dag`` with ``conf`` through the REST API; its run id."""
        reply = self.rest("POST", f"/dags/{dag}/dagRuns", json={"logical_date": None, "conf": conf})
        assert reply.status_code == 200, reply.text
        return reply.json()["dag_run_id"]

    def wait_for(self, dag: str, run_id: str, timeout: float = 900) -> dict:
        """The run once it has finished (success or failed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.rest("GET", f"/dags/{dag}/dagRuns/{run_id}").json()
            if run.get("state") in FINISHED:
                return run
            time.sleep(2)
        raise AssertionError(f"{run_id} did not finish within {timeout} s:\n{self.log('scheduler')[-3000:]}")

    def task_instances(self, dag: str, run_id: str) -> list[dict]:
        """Every task instance of the run, page by page (the API gives at most 100 at a time)."""
        instances: list[dict] = []
        while True:
            page = self.rest("GET", f"/dags/{dag}/dagRuns/{run_id}/taskInstances",
                             params={"limit": 100, "offset": len(instances)}).json()
            instances += page["task_instances"]
            if not page["task_instances"] or len(instances) >= page["total_entries"]:
                return instances

    def task_states(self, dag: str, run_id: str) -> dict[tuple[str, int], str]:
        return {(ti["task_id"], ti["map_index"]): ti["state"] for ti in self.task_instances(dag, run_id)}


def _stop(process: subprocess.Popen, grace: float = 20) -> None:
    """Stop a process and its children (started in their own session) by PID."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    except PermissionError:  # not a group leader we may signal: the process alone
        process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextmanager
def deployment(extra_env: dict[str, str] | None = None) -> Iterator[Deployment]:
    """PostgreSQL and Airflow's api-server, scheduler and dag-processor (LocalExecutor) on loopback,
    with the project's DAG file and plugins and the emprocess pools; stopped and removed at the end."""
    with ExitStack() as stack:
        database = stack.enter_context(postgres())
        home = Path(tempfile.mkdtemp(prefix="emprocess-airflow-deploy-"))
        stack.callback(shutil.rmtree, home, True)
        dags = home / "dags"
        dags.mkdir()
        shutil.copy(ROOT / "dags" / "emprocess_dags.py", dags)
        port = free_port()
        api = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(
            AIRFLOW_HOME=str(home),
            AIRFLOW__CORE__DAGS_FOLDER=str(dags),
            AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__EXECUTOR="LocalExecutor",
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{api}/execution/",
            AIRFLOW__API__BASE_URL=api,
            AIRFLOW__API__PORT=str(port),
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(32),
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=database,
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
            AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="1",
            AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(home / "logs"),
            **(extra_env or {}),
        )
        deploy = Deployment(home, env, api)
        migrated = deploy.airflow("db", "migrate", timeout=600)
        if migrated.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{migrated.stderr[-3000:]}")
        pools = subprocess.run([sys.executable, str(ROOT / "scripts" / "setup_airflow.py"), "--align-slots", "16",
                                "--write-slots", "16"], env=env, capture_output=True, text=True, timeout=300)
        if pools.returncode != 0:
            raise RuntimeError(f"setup_airflow.py failed:\n{pools.stderr[-3000:]}")
        for name, args in (("api-server", ["api-server", "--port", str(port), "--host", "127.0.0.1"]),
                           ("scheduler", ["scheduler"]), ("dag-processor", ["dag-processor"])):
            out = open(home / f"{name}.log", "wb")
            stack.callback(out.close)
            process = subprocess.Popen([sys.executable, "-m", "airflow", *args], env=env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
            deploy.processes[name] = process
            stack.callback(_stop, process)
        _wait_for_api(deploy)
        _wait_for_dags(deploy)
        yield deploy


def _wait_for_api(deploy: Deployment, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in deploy.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"airflow {name} exited at start:\n{deploy.log(name)[-3000:]}")
        try:
            if requests.get(f"{deploy.api}/api/v2/monitor/health", timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the api-server did not answer within {timeout} s:\n{deploy.log('api-server')[-3000:]}")


def _wait_for_dags(deploy: Deployment, timeout: float = 300) -> None:
    """Until the dag-processor has registered every emprocess DAG (a trigger before that is a 404)."""
    from emprocess.workflow import WIDTHS, dag_id

    wanted = {dag_id(width) for width in WIDTHS}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = deploy.rest("GET", "/dags", params={"limit": 100}).json().get("dags", [])
        if wanted <= {dag["dag_id"] for dag in listed}:
            return
        time.sleep(1)
    raise RuntimeError(f"the DAGs were not registered within {timeout} s:\n{deploy.log('dag-processor')[-3000:]}")


@dataclass
class RestartableService:
    """One of the project's services on a fixed loopback port, which a test can kill (an outage) and
    start again on the same port, as a redeployed or rescheduled Cloud Run service comes back."""

    name: str
    allowed: list[str]
    log_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        from emprocess.registry import SERVICES

        with open(self.log_dir / f"{self.name}.log", "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", SERVICES[self.name].app, "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "warning"],
                env=dict(os.environ, EMPROCESS_ALLOWED_PREFIXES=",".join(self.allowed)), stdout=out,
                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {self.name} service did not start; see {self.log_dir}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, calls in flight are cut."""
        self.process.kill()
        self.process.wait()

    def _healthy(self) -> bool:
        try:
            return requests.get(self.url + "/healthz", timeout=2).ok
        except requests.ConnectionError:
            return False
