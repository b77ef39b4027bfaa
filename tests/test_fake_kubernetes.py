"""The fake Kubernetes API (``support.fake_kubernetes``) against the real ``kubernetes`` client and the
real KubernetesPodOperator: what passes here is what a pod task would see from a cluster."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from support.fake_kubernetes import FakeKubernetes, selector_matches

CONN_ID = "fake_k8s"
SECRET_VALUE = "s3cr3t-value-7f1c"
RFC3339_NANO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")


@pytest.fixture
def kube() -> Iterator[FakeKubernetes]:
    with FakeKubernetes(base_env={"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1"}) as api:
        yield api


def new_core(api: FakeKubernetes, tmp_path):
    """A kubernetes client for ``api``, configured the way a user's would be: from a kubeconfig."""
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(str(api.kubeconfig(tmp_path / "kubeconfig")),
                                                          context="fake"))


@pytest.fixture
def core(kube, tmp_path):
    return new_core(kube, tmp_path)


@pytest.fixture
def airflow_conn(kube, tmp_path, monkeypatch) -> str:
    """An Airflow connection ``fake_k8s`` to the fake, as a deployment would give one: an env var."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", kube.airflow_connection(kube.kubeconfig(tmp_path / "kc")))
    return CONN_ID


def wait_for(condition: Callable[[], object], timeout: float = 15) -> object:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def python_pod(name: str, code: str, env: list | None = None, labels: dict | None = None):
    from kubernetes import client

    container = client.V1Container(name="base", image="x", command=[sys.executable], args=["-c", code], env=env)
    return client.V1Pod(metadata=client.V1ObjectMeta(name=name, labels=labels),
                        spec=client.V1PodSpec(restart_policy="Never", containers=[container]))


def secret_env(name: str, secret: str, key: str, optional: bool | None = None):
    from kubernetes import client

    ref = client.V1SecretKeySelector(name=secret, key=key, optional=optional)
    return client.V1EnvVar(name=name, value_from=client.V1EnvVarSource(secret_key_ref=ref))


def phase(core, name: str) -> str:
    return core.read_namespaced_pod(name, "default").status.phase


def pod_log(core, name: str) -> str:
    """The pod's whole log (unpreloaded: the client turns a preloaded ``str`` reply into "b'...'")."""
    return core.read_namespaced_pod_log(name, "default", container="base", _preload_content=False).data.decode()


# ---- through the kubernetes client -------------------------------------------------------------------

def test_a_pod_gets_its_secret_in_its_env_and_the_recorded_spec_only_the_reference(kube, core):
    from kubernetes import client

    core.create_namespaced_secret("default", client.V1Secret(metadata=client.V1ObjectMeta(name="creds"),
                                                             string_data={"x": SECRET_VALUE}))
    assert core.read_namespaced_secret("creds", "default").data == {"x": "czNjcjN0LXZhbHVlLTdmMWM="}
    code = "import os; print(os.environ['X']); print('done')"
    created = core.create_namespaced_pod("default", python_pod("reader", code, [secret_env("X", "creds", "x")]))
    assert created.status.phase == "Pending" and created.metadata.uid
    wait_for(lambda: phase(core, "reader") == "Succeeded")
    status = core.read_namespaced_pod("reader", "default").status
    [container] = status.container_statuses
    assert (container.state.terminated.exit_code, container.state.terminated.reason) == (0, "Completed")
    assert pod_log(core, "reader") == f"{SECRET_VALUE}\ndone\n"
    [started] = kube.started
    assert started.env["X"] == SECRET_VALUE and started.argv == [sys.executable, "-c", code]
    [recorded] = kube.created_pods
    assert recorded["spec"]["containers"][0]["env"] == [
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "x"}}}]
    assert SECRET_VALUE not in json.dumps(kube.created_pods)


def test_a_missing_secret_fails_the_pod_unless_optional(kube, core):
    from kubernetes import client

    code = "import os; print(os.environ.get('X', 'unset'), os.environ['POD'])"
    pod_name = client.V1EnvVar(name="POD", value_from=client.V1EnvVarSource(
        field_ref=client.V1ObjectFieldSelector(field_path="metadata.name")))
    core.create_namespaced_pod("default", python_pod("optional", code, [secret_env("X", "nope", "x", True), pod_name]))
    core.create_namespaced_pod("default", python_pod("required", code, [secret_env("X", "nope", "x"), pod_name]))
    wait_for(lambda: phase(core, "optional") == "Succeeded")
    assert pod_log(core, "optional") == "unset optional\n"
    status = core.read_namespaced_pod("required", "default").status
    assert (status.phase, status.reason) == ("Failed", "CreateContainerConfigError")
    assert status.container_statuses[0].state.waiting.message == 'secret "nope" not found'
    kube.add_secret("partial", {"other": "value"})
    core.create_namespaced_pod("default", python_pod("keyless", code, [secret_env("X", "partial", "x")]))
    waiting = core.read_namespaced_pod("keyless", "default").status.container_statuses[0].state.waiting
    assert waiting.message == "couldn't find key x in Secret default/partial"
    assert [p.pod for p in kube.started] == ["optional"]  # the failed pods never ran


def test_a_followed_log_streams_timestamped_lines_as_they_come_and_ends_with_the_process(core):
    code = "import time\nfor i in range(3):\n    print('line', i); time.sleep(0.4)"
    core.create_namespaced_pod("default", python_pod("slow", code))
    wait_for(lambda: phase(core, "slow") == "Running")
    response = core.read_namespaced_pod_log("slow", "default", container="base", follow=True, timestamps=True,
                                            _preload_content=False)
    arrivals = [(time.monotonic(), line) for line in response.stream(amt=None)]
    stamps, lines = zip(*(line.split(b" ", 1) for _, line in arrivals))
    assert lines == (b"line 0\n", b"line 1\n", b"line 2\n")
    assert all(RFC3339_NANO.fullmatch(stamp.decode()) for stamp in stamps) and list(stamps) == sorted(stamps)
    assert arrivals[-1][0] - arrivals[0][0] > 0.6  # streamed while running, not read at the end
    assert phase(core, "slow") == "Succeeded"


def test_list_patch_and_delete_answer_like_the_api_server(kube, core):
    from kubernetes.client import ApiException

    core.create_namespaced_pod("default", python_pod("a", "pass", labels={"app": "x", "try": "1"}))
    core.create_namespaced_pod("default", python_pod("b", "pass", labels={"app": "x", "airflow-worker": "1"}))

    def names(selector: str) -> list[str]:
        return sorted(p.metadata.name for p in core.list_namespaced_pod("default", label_selector=selector).items)

    assert names("app=x") == ["a", "b"] and names("app=x,!airflow-worker") == ["a"]
    core.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"already_checked": "True"}}})
    assert names("app==x,already_checked!=True") == ["b"] and names("already_checked") == ["a"]
    core.delete_namespaced_pod("a", "default", grace_period_seconds=5)
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_pod("a", "default")
    assert missing.value.status == 404 and json.loads(missing.value.body)["reason"] == "NotFound"
    assert [(d.name, d.grace_period_seconds) for d in kube.deletions] == [("a", 5)]
    with pytest.raises(ApiException) as twice:
        core.create_namespaced_pod("default", python_pod("b", "pass"))
    assert twice.value.status == 409
    imageless = python_pod("c", "pass")
    imageless.spec.containers[0].command = None
    with pytest.raises(ApiException) as refused:  # no image to take an entrypoint from: refused, not faked
        core.create_namespaced_pod("default", imageless)
    assert refused.value.status == 422 and "command" in json.loads(refused.value.body)["message"]


def test_a_deleted_pod_that_ignores_sigterm_is_killed_after_its_grace_period(kube, core):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up'); time.sleep(60)"
    core.create_namespaced_pod("default", python_pod("stubborn", code))
    wait_for(lambda: pod_log(core, "stubborn") == "up\n")
    asked = time.monotonic()
    deleting = core.delete_namespaced_pod("stubborn", "default", grace_period_seconds=1)
    assert deleting.metadata.deletion_timestamp and deleting.status.phase == "Running"  # terminating
    wait_for(lambda: kube.pod("stubborn") is None)
    assert time.monotonic() - asked >= 1
    with pytest.raises(ProcessLookupError):
        os.kill(kube.started[0].pid, 0)


def test_a_command_runs_as_the_executable_it_maps_to_or_from_path(tmp_path):
    with FakeKubernetes(executables={"emprocess": sys.executable}) as api:
        core = new_core(api, tmp_path)
        mapped = python_pod("mapped", "import sys; print(sys.argv[0])")
        mapped.spec.containers[0].command = ["emprocess"]
        core.create_namespaced_pod("default", mapped)
        missing = python_pod("missing", "")
        missing.spec.containers[0].command = ["no-such-command-here"]
        core.create_namespaced_pod("default", missing)
        wait_for(lambda: phase(core, "mapped") == "Succeeded")
        assert pod_log(core, "mapped") == "-c\n" and api.started[0].argv[0] == sys.executable
        terminated = core.read_namespaced_pod("missing", "default").status.container_statuses[0].state.terminated
        assert (terminated.exit_code, terminated.reason) == (128, "StartError")
        assert "no-such-command-here" in terminated.message


def test_stopping_the_fake_kills_the_processes_of_its_pods(tmp_path):
    with FakeKubernetes() as api:
        new_core(api, tmp_path).create_namespaced_pod("default", python_pod("forever", "import time; time.sleep(600)"))
        [started] = wait_for(lambda: api.started)
    with pytest.raises(ProcessLookupError):
        os.kill(started.pid, 0)


def test_selector_terms():
    labels = {"a": "1", "b": "2"}
    assert selector_matches("a=1,b==2,c!=3,a,!c", labels)
    assert not selector_matches("a!=1", labels) and not selector_matches("!a", labels)
    assert not selector_matches("c", labels) and not selector_matches("a=2", labels)


def test_fail_next_kills_the_matching_pod_after_its_lines(kube, core):
    kube.fail_next({"app": "victim"}, after_lines=2)
    code = "import time\nfor i in range(20):\n    print(i); time.sleep(0.5)"
    core.create_namespaced_pod("default", python_pod("other", "print('fine')", labels={"app": "bystander"}))
    core.create_namespaced_pod("default", python_pod("victim", code, labels={"app": "victim"}))
    wait_for(lambda: phase(core, "victim") == "Failed")
    terminated = core.read_namespaced_pod("victim", "default").status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (137, "Error")
    assert pod_log(core, "victim") == "0\n1\n"
    wait_for(lambda: phase(core, "other") == "Succeeded")
    kube.fail_next({"app": "marked"}, after_text="3")
    core.create_namespaced_pod("default", python_pod("marked", code, labels={"app": "marked"}))
    wait_for(lambda: phase(core, "marked") == "Failed")
    assert pod_log(core, "marked") == "0\n1\n2\n3\n"
    kube.fail_next({"app": "doomed"})
    core.create_namespaced_pod("default", python_pod("doomed", "print('never')", labels={"app": "doomed"}))
    terminated = core.read_namespaced_pod("doomed", "default").status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason, pod_log(core, "doomed")) == (1, "Error", "")
    assert [p.pod for p in kube.started] == ["other", "victim", "marked"]  # doomed's command never ran


def test_unauthenticated_and_unknown_requests_get_status_objects(kube):
    import urllib.request
    from urllib.error import HTTPError

    with pytest.raises(HTTPError) as unauthorized:
        urllib.request.urlopen(f"{kube.url}/api/v1/namespaces/default/pods")
    assert unauthorized.value.code == 401
    request = urllib.request.Request(f"{kube.url}/apis/batch/v1/jobs",
                                     headers={"Authorization": f"Bearer {kube.token}"})
    with pytest.raises(HTTPError) as unknown:
        urllib.request.urlopen(request)
    assert unknown.value.code == 404 and json.loads(unknown.value.read())["kind"] == "Status"


# ---- the real KubernetesPodOperator --------------------------------------------------------------------

def pod_task_dag(dag_id: str, code: str, **operator_args):
    """One KubernetesPodOperator task, synchronous; ``reattach_on_restart`` is left at its default, True
    (on Airflow 3.3 passing it only warns that it is deprecated for ``durable``, also True by default)."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk import DAG

    with DAG(dag_id, schedule=None, catchup=False) as dag:
        task = KubernetesPodOperator(task_id="pod", image="x", cmds=[sys.executable], arguments=["-c", code],
                                     kubernetes_conn_id=CONN_ID, namespace="default", get_logs=True,
                                     do_xcom_push=False, deferrable=False, **operator_args)
    assert task.reattach_on_restart is True
    return dag


def run_dag(dag):
    """``dag.test()`` for a DAG built in a test: ``dag.test`` runs only DAGs it finds in the metadata DB
    after parsing the DAGs folder, so this one is written there first, as parsing its file would."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    DagBundlesManager().sync_bundles_to_db()
    with create_session() as session:
        update_dag_parsing_results_in_db("dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(),
                                         session=session)
    return dag.test()


def task_state(dag_run) -> str:
    [ti] = dag_run.get_task_instances()
    return str(ti.state)


def request_index(kube: FakeKubernetes, method: str, path_end: str) -> int:
    return next(i for i, r in enumerate(kube.requests) if r.method == method and r.path.endswith(path_end))


def test_the_pod_operator_runs_a_pod_to_completion_and_deletes_it(airflow_db, kube, airflow_conn, capfd):
    dag = pod_task_dag("fake_k8s_hello", "print('hello from pod')", on_finish_action="delete_pod")
    dag_run = run_dag(dag)
    assert str(dag_run.state) == "success" and task_state(dag_run) == "success"
    [pod] = kube.created_pods
    name = pod["metadata"]["name"]
    container = pod["spec"]["containers"][0]
    assert container["command"] == [sys.executable] and container["args"] == ["-c", "print('hello from pod')"]
    assert pod["metadata"]["labels"]["dag_id"] == "fake_k8s_hello" and pod["metadata"]["labels"]["task_id"] == "pod"
    assert [d.name for d in kube.deletions] == [name]
    log_read = request_index(kube, "GET", f"/pods/{name}/log")
    assert kube.requests[log_read].query["follow"].lower() == "true"
    assert request_index(kube, "POST", "/pods") < log_read < request_index(kube, "DELETE", f"/pods/{name}")
    assert "[base] hello from pod" in capfd.readouterr().out  # the followed log reached the task's log
    assert kube.pod(name) is None


def test_a_failed_pod_fails_the_task_and_delete_succeeded_pod_keeps_it_marked_checked(
        airflow_db, kube, airflow_conn):
    dag_id = "fake_k8s_fails"
    kube.fail_next({"dag_id": dag_id}, after_lines=1)
    code = "import time\nfor i in range(100):\n    print('working', i); time.sleep(0.1)"
    dag_run = run_dag(pod_task_dag(dag_id, code, on_finish_action="delete_succeeded_pod"))
    assert str(dag_run.state) == "failed" and task_state(dag_run) == "failed"
    [pod] = kube.created_pods
    name = pod["metadata"]["name"]
    assert kube.deletions == []
    patches = [r.body for r in kube.requests if r.method == "PATCH" and r.path.endswith(f"/pods/{name}")]
    assert patches == [{"metadata": {"labels": {"already_checked": "True"}}}]
    kept = kube.pod(name)
    assert kept["metadata"]["labels"]["already_checked"] == "True" and kept["status"]["phase"] == "Failed"
    assert kept["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137


class TaskInstanceStandIn:
    """What ``KubernetesPodOperator.execute`` reads of a task instance, and where it pushes its XComs."""

    dag_id, task_id, run_id, map_index, try_number = "fake_k8s_direct", "pod", "manual__direct", -1, 1

    def __init__(self):
        self.xcoms: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcoms[key] = value


def test_on_kill_deletes_the_running_pod_and_its_process_ends(kube, airflow_conn):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk import DAG
    from kubernetes.client import ApiException

    dag = DAG(TaskInstanceStandIn.dag_id, schedule=None)
    operator = KubernetesPodOperator(task_id="pod", dag=dag, image="x", cmds=[sys.executable], namespace="default",
                                     arguments=["-c", "import time; print('sleeping'); time.sleep(60)"],
                                     kubernetes_conn_id=CONN_ID, get_logs=True)
    assert operator.reattach_on_restart is True and not operator.deferrable
    ti = TaskInstanceStandIn()
    outcome: list[BaseException | None] = []

    def execute() -> None:
        try:
            operator.execute({"ti": ti, "run_id": ti.run_id, "dag": dag})
            outcome.append(None)
        except BaseException as error:  # what the task would have failed with
            outcome.append(error)

    thread = threading.Thread(target=execute)
    thread.start()
    [started] = wait_for(lambda: kube.started)
    wait_for(lambda: (kube.pod(started.pod) or {}).get("status", {}).get("phase") == "Running")
    wait_for(lambda: any(r.path.endswith(f"/pods/{started.pod}/log") for r in kube.requests))
    operator.on_kill()
    assert [(d.name, d.grace_period_seconds) for d in kube.deletions] == [(started.pod, 30)]
    wait_for(lambda: kube.pod(started.pod) is None)  # gone once its process has exited
    with pytest.raises(ProcessLookupError):
        os.kill(started.pid, 0)
    thread.join(timeout=20)
    assert not thread.is_alive() and ti.xcoms["pod_name"] == started.pod
    [error] = outcome  # the killed execute ends reading a pod that is gone
    assert isinstance(error, ApiException) and error.status == 404


def test_a_pod_task_whose_secret_is_missing_fails_at_once(kube, airflow_conn):
    """Where a kubelet would keep the pod Pending until the task's startup timeout (see the fake's notes)."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk import DAG
    from airflow.sdk.exceptions import AirflowException

    dag = DAG(TaskInstanceStandIn.dag_id, schedule=None)
    operator = KubernetesPodOperator(task_id="pod", dag=dag, image="x", cmds=[sys.executable], namespace="default",
                                     arguments=["-c", "print('never')"], kubernetes_conn_id=CONN_ID,
                                     env_vars=[secret_env("KEY", "absent", "key")], on_finish_action="delete_pod")
    ti = TaskInstanceStandIn()
    started = time.monotonic()
    with pytest.raises(AirflowException, match="returned a failure"):
        operator.execute({"ti": ti, "run_id": ti.run_id, "dag": dag})
    assert time.monotonic() - started < 10
    assert kube.started == [] and [d.name for d in kube.deletions] == [ti.xcoms["pod_name"]]
