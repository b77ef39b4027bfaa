"""Run one DAG run on this machine: temp SQLite Airflow, both services on 127.0.0.1, ``dag.test``.

The run's logs go to files from its start (``RunLogs``): the services' own, and Airflow's, which holds
all else this process writes meanwhile (``output_to``), so the terminal can show the run's progress.

Airflow reads its configuration at import, so a process has one Airflow home: made on the first
``run_local`` (before anything imports Airflow), reset for every run, removed when the process exits.
A killed process cannot remove its home, so making a home first removes this user's homes whose
owner is gone: each holds a lock file its process keeps locked for its whole life.
"""

from __future__ import annotations

import atexit
import datetime
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, TextIO

import requests

from emprocess import run_layout, storage
from emprocess.config import ConfError, parse_conf
from emprocess.registry import SERVICES
from emprocess.run_layout import AIRFLOW_LOG, LOG_FOLDER, service_log_name
from emprocess.stages import RunContext
from emprocess.workflow import DAG_FILE, task_name

log = logging.getLogger("emprocess.run")

POOL_SLOTS = 64
ECHO_JOIN_SECONDS = 10  # how long the end of a run waits for the log's echo to drain


class RunFailed(RuntimeError):
    pass


@dataclass
class RunResult:
    run_id: str
    state: str
    failed: list[tuple[str, str]] = field(default_factory=list)  # (task id, or "task id[worker]", error)


def service_log(log_dir: Path, name: str) -> Path:
    return log_dir / service_log_name(name)


def run_log_folder(process: str) -> Path:
    """Where a run's logs go: ``logs`` in its process location when that is a folder. An object in a
    bucket cannot be appended to as the run goes, so the logs of a gs:// or s3:// run stay on this
    machine, in ``~/.cache/emprocess/logs/<scheme>/<process bucket>/<run key>`` (under
    ``$XDG_CACHE_HOME`` when set): the simplest honest place, and ``emprocess run`` prints it."""
    url = storage.parse(process)
    if url.scheme == "file":
        return Path(url.path) / LOG_FOLDER
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "emprocess" / "logs" / url.scheme / url.bucket / url.path


@dataclass(frozen=True)
class RunLogs:
    """One run's log files; a resumed run appends to them."""

    folder: Path

    @property
    def airflow(self) -> Path:
        return self.folder / AIRFLOW_LOG

    @property
    def services(self) -> dict[str, Path]:
        return {name: service_log(self.folder, name) for name in SERVICES}


@dataclass(frozen=True)
class LocalRun:
    """A run about to start here: its conf as given, its context, the logical date that names it."""

    conf: dict
    ctx: RunContext
    logical_date: datetime.datetime
    logs: RunLogs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def service(name: str, allowed: list[str], log_dir: Path):
    """Start one service with uvicorn on a free loopback port; yield its base URL."""
    port = free_port()
    env = dict(os.environ, EMPROCESS_ALLOWED_PREFIXES=",".join(allowed))
    log_file = open(service_log(log_dir, name), "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", SERVICES[name].app, "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning"],
        env=env, stdout=log_file, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RunFailed(f"the {name} service exited at start; see {service_log(log_dir, name)}")
            try:
                if requests.get(url + "/healthz", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RunFailed(f"the {name} service did not start within 120 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()


def allowed_prefixes(conf) -> list[str]:
    """The run reads its source and writes the locations named after it, plus the segmentation inputs."""
    prefixes = run_layout.run_prefixes(conf.source)
    if conf.segmentation is not None:
        for url in (conf.segmentation.watershed, conf.segmentation.agglomeration):
            if url:
                prefixes.append(str(storage.parse(url).parent()))
    return prefixes


def check_slices_within_reach(ctx: RunContext) -> None:
    """This run's services read only under ``allowed_prefixes``, symlinks resolved: a slice that resolves
    outside them (a link, or a linked source folder) is refused now, not by its worker mid-run. Not a
    check of the DAG's ``validate``: a deployment's services may be allowed more."""
    if not (ctx.wants("align") or ctx.wants("pyramid")):
        return
    allowed = allowed_prefixes(ctx.conf)
    for z in ctx.conf.z_range:
        url = ctx.conf.slice_url(z)
        if not storage.is_under(url, allowed):
            raise ConfError(f"slice {url} resolves to {os.path.realpath(storage.parse(url).path)}, outside "
                            f"{', '.join(allowed)}, where the run's services may read; give the folder the "
                            f"slices are in as the source, or copy them there")


def manual_run_id(logical_date: datetime.datetime) -> str:
    """The id Airflow gives the manual run of ``logical_date`` (``DagRun.generate_run_id``)."""
    return f"manual__{logical_date.isoformat()}"


def logical_date_of(run_id: str) -> datetime.datetime:
    """The logical date encoded in a manual run id (``manual__<iso date>``), to resume that run."""
    try:
        return datetime.datetime.fromisoformat(run_id.split("__", 1)[1])
    except (IndexError, ValueError):
        raise ConfError(f"--resume: {run_id!r} is not a run id of the form manual__<ISO date>") from None


def _prepare_airflow(home: Path) -> None:
    dags = home / "dags"
    dags.mkdir(parents=True, exist_ok=True)
    (dags / "emprocess_dags.py").write_text(DAG_FILE)
    os.environ.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(home / "logs"),
    )


HOME_PREFIX = "emprocess-airflow-"
HOME_LOCK = "owner.lock"

_home: Path | None = None
_home_lock: int | None = None  # the lock's descriptor, open (and the lock held) until the process ends


def airflow_home() -> Path:
    """This process's temporary Airflow home (see the module docstring)."""
    global _home
    if _home is None:
        remove_stale_homes()
        _home = _locked_home()
        atexit.register(shutil.rmtree, _home, True)
        _prepare_airflow(_home)
    return _home


def _locked_home() -> Path:
    """A new home locked by this process. The kernel drops a ``flock`` when its holder dies, however
    it dies, so a free lock means a dead owner (no PID that could be reused). The lock is taken under
    another name and then renamed, so no cleaner ever finds the lock file free while its owner lives."""
    global _home_lock
    home = Path(tempfile.mkdtemp(prefix=HOME_PREFIX))
    taking = home / (HOME_LOCK + ".new")
    _home_lock = os.open(taking, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)  # not inherited by children
    fcntl.flock(_home_lock, fcntl.LOCK_EX)
    os.rename(taking, home / HOME_LOCK)
    return home


def remove_stale_homes() -> None:
    """Remove this user's homes whose owner is gone (a killed ``emprocess run`` cannot remove its own).
    Homes without a lock file, made before homes had one, are left alone: one may be a long run of
    an older version still going, and its age would not tell."""
    with os.scandir(tempfile.gettempdir()) as entries:
        for entry in entries:
            if entry.name.startswith(HOME_PREFIX) and _own_directory(entry):
                _remove_if_unlocked(Path(entry.path))


def _own_directory(entry: os.DirEntry) -> bool:
    """A real directory (not a symlink) of this user: the only kind a cleaner may remove."""
    try:
        return entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == os.getuid()
    except OSError:  # removed meanwhile
        return False


def _remove_if_unlocked(home: Path) -> None:
    """Remove a home whose lock can be taken; it is held while removing, so two cleaners don't race."""
    try:
        lock = os.open(home / HOME_LOCK, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # no lock file: an older version's home, or removed meanwhile
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # its owner lives
        pass
    else:
        log.info("removing %s, the Airflow home of an earlier run that was killed", home)
        shutil.rmtree(home, ignore_errors=True)
    finally:
        os.close(lock)


def prepare_run(conf_dict: dict, resume: str | None = None) -> LocalRun:
    """Check the run and name it before anything starts: a refused conf or input fails here in seconds,
    before any write (the DAG's ``validate`` checks the same again), and the run id places its logs,
    so their folder is there from the start."""
    from emprocess.validate import validate_run

    conf = parse_conf(conf_dict)
    logical_date = logical_date_of(resume) if resume else datetime.datetime.now(datetime.timezone.utc)
    ctx = RunContext.create(conf, manual_run_id(logical_date))
    validate_run(ctx)
    check_slices_within_reach(ctx)
    logs = RunLogs(run_log_folder(ctx.locations.process))
    logs.folder.mkdir(parents=True, exist_ok=True)
    return LocalRun(conf_dict, ctx, logical_date, logs)


@contextmanager
def output_to(log_file: Path, echo: bool = False) -> Iterator[TextIO]:
    """Send all this process writes to stdout and stderr to ``log_file`` (appended) while the block
    runs, with ``echo`` also to stderr; yields a stream to the stdout of before, for what is meant to
    be seen. File descriptors 1 and 2 are redirected, not ``sys.stdout``: Airflow's structlog, Python
    logging, warnings, C libraries and child processes each reach them their own way."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    console = open(os.dup(saved[0]), "w", buffering=1, encoding=sys.stdout.encoding, errors="replace")
    echoing = None
    with open(log_file, "ab") as logged:
        if echo:
            source, sink = os.pipe()
            echoing = threading.Thread(target=_tee, args=(source, [os.dup(logged.fileno()), os.dup(saved[1])]),
                                       name="emprocess-log-echo", daemon=True)
            echoing.start()
        else:
            sink = os.dup(logged.fileno())
        for fd in (1, 2):
            os.dup2(sink, fd)
        os.close(sink)
    try:
        yield console
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, original in zip((1, 2), saved):
            os.dup2(original, fd)
            os.close(original)
        if echoing is not None:  # the pipe is closed now, unless a child process still holds it
            echoing.join(ECHO_JOIN_SECONDS)
        console.close()


def _tee(source: int, targets: list[int]) -> None:
    """Copy ``source`` to every target until its end, then close them all: they are this thread's own
    descriptors, so none is closed, or its number reused, while it still writes. A target that fails
    (a closed terminal) is dropped; the others still get everything, and the run's writes never block."""
    try:
        while chunk := os.read(source, 1 << 16):
            for target in list(targets):
                try:
                    _write_all(target, chunk)
                except OSError:
                    targets.remove(target)
                    os.close(target)
    finally:
        for fd in (source, *targets):
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    unwritten = memoryview(data)
    while unwritten:
        unwritten = unwritten[os.write(fd, unwritten):]


def run_local(run: LocalRun, width: int = 1) -> RunResult:
    """The run, its services logging to its log folder."""
    with ExitStack() as stack:
        home = airflow_home()
        allowed = allowed_prefixes(run.ctx.conf)
        for svc in SERVICES.values():
            url = stack.enter_context(service(svc.name, allowed, run.logs.folder))
            os.environ[f"AIRFLOW_CONN_{svc.connection}"] = url
        log.info("services up; initialising Airflow in %s", home)

        from airflow.models.pool import Pool
        from airflow.utils import db

        from emprocess.workflow.dag_factory import POOLS, build_dag

        db.resetdb(skip_init=False)
        for pool, description in POOLS.items():
            Pool.create_or_update_pool(pool, POOL_SLOTS, description, include_deferred=False)
        dag = build_dag(width)
        log.info("running %s", dag.dag_id)
        return run_dag_test(dag, run.conf, run.logical_date)


def run_dag_test(dag, conf: dict, logical_date: datetime.datetime | None = None) -> RunResult:
    """``dag.test`` with each failed task's exception collected. Locally a failure ends the run at
    once (no retries; resume instead); tasks run in-process, so the callback sees the exception."""
    failed: list[tuple[str, str]] = []

    def on_failure(context) -> None:
        ti = context["ti"]
        failed.append((task_name(ti.task_id, ti.map_index), _describe(context.get("exception"))))
        _end_run(context["dag_run"].dag_id, context["dag_run"].run_id, teardowns)

    teardowns = [task.task_id for task in dag.tasks if task.is_teardown]
    for task in dag.tasks:
        task.retries = 0
        task.on_failure_callback = [on_failure]
    # run_after names the run (manual__<run_after>): the same date again resumes the same run id
    when = logical_date or datetime.datetime.now(datetime.timezone.utc)
    with _exit_handlers_kept(dag):
        dag_run = dag.test(run_conf=conf, logical_date=when, run_after=when)
    return RunResult(dag_run.run_id, str(dag_run.state), failed)


@contextmanager
def _exit_handlers_kept(dag):
    """Keep the caller's SIGTERM and SIGHUP handlers in force during ``dag.test`` (``emprocess run``
    exits through them), and put them back after. Airflow's in-process task runner sets its own
    SIGTERM handler at every task start, one that only calls the task's ``on_kill``, so a SIGTERM
    would no longer end the process. A task-start callback, which runs after that, chains the two
    for both signals: the task is stopped first, then the caller's handler runs (in a task, Airflow
    takes its SystemExit for the task's failure, which ends the run). Callers without handlers of
    their own (the default action) see no change."""
    callers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
    callers = {signum: handler for signum, handler in callers.items() if callable(handler)}

    def keep(context) -> None:
        stop_task = signal.getsignal(signal.SIGTERM)
        for signum, caller in callers.items():
            signal.signal(signum, _chained(stop_task, caller))

    if callers:
        for task in dag.tasks:
            task.on_execute_callback = [*task.on_execute_callback, keep]
    try:
        yield
    finally:
        for signum, caller in callers.items():
            signal.signal(signum, caller)


def _chained(first, then):
    """A signal handler that runs ``first`` (when it is a function), then ``then``."""
    def both(signum, frame) -> None:
        if callable(first):
            first(signum, frame)
        then(signum, frame)

    return both


def _end_run(dag_id: str, run_id: str, teardowns: list[str]) -> None:
    """Mark every task that has not started upstream_failed, so ``dag.test`` ends the run now
    instead of walking the failure down the DAG one level per second. Teardowns (the mail) still run."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    with create_session() as session:
        session.query(TaskInstance).filter(
            TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.state.is_(None),
            TaskInstance.task_id.not_in(teardowns),
        ).update({TaskInstance.state: TaskInstanceState.UPSTREAM_FAILED}, synchronize_session=False)


def _describe(error: BaseException | None) -> str:
    """The error a task failed with: for a task that failed without retries, the error it was given."""
    from airflow.sdk.exceptions import AirflowFailException

    if isinstance(error, AirflowFailException) and error.__cause__ is not None:
        error = error.__cause__
    return "unknown error" if error is None else f"{type(error).__name__}: {error}"
