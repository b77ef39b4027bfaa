"""Execution mode ``kubernetes`` under a real Airflow deployment (``support.airflow_deployment``): every
stage worker task is the provider's real ``KubernetesPodOperator`` code path, against the fake
Kubernetes API of ``support.fake_kubernetes`` (no cluster here: it runs each pod's command as a local
process with the pod's environment). The stack and every output are on the moto S3 server, and the
pods get its endpoint and keys only from a Secret. The run's outputs are byte for byte those of a
run in mode ``http`` (``emprocess run``: the services); a warp pod killed in the middle of its share
is retried by Airflow and its new pod skips the mini-tasks the first finished; succeeded pods are
deleted, the failed one kept; no secret value reaches a pod spec or a log.

Slow (minutes): a whole deployment and two runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from support.airflow_deployment import deployment, postgres_bin
from support.emprocess_cli import emprocess, run_id_of
from support.fake_kubernetes import FakeKubernetes

from emprocess import registry, storage
from emprocess.kubernetes.pods import CONTAINER, worker_pod
from emprocess.kubernetes.settings import KubernetesSettings
from emprocess.sample import write_sample
from emprocess.stages import RunContext
from emprocess.workflow import dag_id

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL is not installed (make test installs it)")]
WIDTH = 4
NAMESPACE = "emprocess"
SECRET = "lab-s3"
SETTINGS = {"namespace": NAMESPACE, "image": "emprocess:test", "s3_secret": SECRET, "startup_timeout_s": 60,
            "resources": {"align.warp": {"threads": 1}}}  # one slice after another: a kill lands mid-share
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sample(s3_server, tmp_path_factory) -> dict:
    """12 slices of 1024² in an S3 bucket: each warp worker has 3 mini-tasks of ~0.1 s."""
    local = write_sample(tmp_path_factory.mktemp("k8s") / "sample", size=1024, n_slices=12, seed=11)
    source = f"s3://{s3_server.bucket_name('k8s-stack')}"
    upload = [sys.executable, str(ROOT / "scripts" / "upload_stack.py"), storage.parse(local["source"]).path,
              source, "--pattern", "img*.png"]
    uploaded = subprocess.run(upload, capture_output=True, text=True)
    assert uploaded.returncode == 0, uploaded.stderr
    return dict(local, source=source, id="k8s")


@pytest.fixture(scope="module")
def credentials(s3_server) -> dict[str, str]:
    """What the lab's Secret holds: the S3 endpoint and keys (moto takes any keys; these are unique so
    a leak would show)."""
    return {"AWS_ACCESS_KEY_ID": f"k8s-key-{uuid.uuid4().hex[:8]}",
            "AWS_SECRET_ACCESS_KEY": f"k8s-secret-{uuid.uuid4().hex}",
            "AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def cluster(credentials, tmp_path_factory):
    """The fake API; a pod's process starts from PATH and HOME only (no AWS_* of this process), with
    the image's ``emprocess`` command standing for the venv's."""
    home = tmp_path_factory.mktemp("pod-home")
    base_env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(home)}
    with FakeKubernetes(base_env, executables={"emprocess": str(Path(sys.executable).parent / "emprocess")}) as api:
        api.add_secret(SECRET, credentials, namespace=NAMESPACE)
        yield api


@pytest.fixture(scope="module")
def airflow(cluster, tmp_path_factory):
    """A deployment in execution mode kubernetes, submitting from outside the cluster (a kubeconfig
    and its context); a failed task is retried after 1 s."""
    folder = tmp_path_factory.mktemp("k8s-deploy")
    settings = folder / "settings.yaml"
    settings.write_text(yaml.safe_dump(SETTINGS))
    env = {"EMPROCESS_EXECUTION": "kubernetes", "EMPROCESS_KUBERNETES_SETTINGS": str(settings),
           "AIRFLOW_CONN_KUBERNETES_DEFAULT": cluster.airflow_connection(cluster.kubeconfig(folder / "kubeconfig")),
           "AIRFLOW__CORE__PARALLELISM": "4", "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "1"}
    with deployment(env) as running:
        yield running


def files(url: str) -> dict[str, bytes]:
    """Every file of a volume but its ``provenance``, which records the run's id."""
    return {name: storage.read(storage.join(url, name)) for name in storage.listdir(url) if name != "provenance"}


def stage_and_worker(pod: dict) -> tuple[str, int]:
    labels = pod["metadata"]["labels"]
    return labels["emprocess/stage"], int(labels["emprocess/worker"])


def test_the_sample_runs_as_pods_like_the_services_and_a_killed_pod_resumes(airflow, cluster, sample, credentials,
                                                                           tmp_path):
    warp0 = {"emprocess/stage": "align.warp", "emprocess/worker": "0"}
    cluster.fail_next(warp0, after_text="align.warp: 1/3 done")
    dag = dag_id(WIDTH)
    run_id = airflow.trigger(dag, sample)
    run = airflow.wait_for(dag, run_id)
    states = airflow.task_states(dag, run_id)
    assert run["state"] == "success", states

    # every worker that ran was a pod, built as emprocess k8s render builds it
    ran = {(task, index) for (task, index), state in states.items() if state == "success"
           and task.startswith(("align.", "pyramid.")) and not task.endswith(".wanted")}
    pods = [pod for pod in cluster.created_pods if pod["metadata"]["namespace"] == NAMESPACE]
    tasks = {stage.name: f"{stage.group}.{stage.task}" for stage in registry.FACTS}
    launched = [stage_and_worker(pod) for pod in pods]
    assert {(tasks[stage], worker) for stage, worker in launched} == ran
    assert sorted(launched).count(("align.warp", 0)) == 2 and len(launched) == len(ran) + 1
    settings = KubernetesSettings(**SETTINGS)
    for pod in pods:
        stage, worker = stage_and_worker(pod)
        width = registry.stage_width(next(f for f in registry.FACTS if f.name == stage), WIDTH)
        rendered = worker_pod(stage, worker, width, sample, run_id, dag, settings)["spec"]["containers"][0]
        sent = next(c for c in pod["spec"]["containers"] if c["name"] == CONTAINER)
        for key in ("image", "command", "args", "env", "resources"):
            assert sent[key] == rendered[key], (stage, worker, key)

    # the killed pod was kept, every other one deleted; its retry skipped what it had finished
    deleted = {deletion.name for deletion in cluster.deletions}
    names = [pod["metadata"]["name"] for pod in pods]
    kept = [name for name in names if name not in deleted]
    assert len(kept) == 1 and stage_and_worker(pods[names.index(kept[0])]) == ("align.warp", 0)
    logs = airflow.task_logs()
    resumed = [int(n) for n in re.findall(r"align\.warp worker 0/4: 3 mini-tasks, (\d+) already done", logs)]
    assert 0 in resumed and len(set(resumed)) == 2 and max(resumed) >= 1, resumed  # the first pod's, the retry's

    # no secret value in a pod spec, a request or a log; the pods had them from the Secret
    recorded = json.dumps([request.body for request in cluster.requests], default=str) + json.dumps(pods)
    everything = recorded + logs + airflow.log("scheduler")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert credentials[name] not in everything
    assert all(process.env.get("AWS_SECRET_ACCESS_KEY") == credentials["AWS_SECRET_ACCESS_KEY"]
               for process in cluster.started)

    # the same outputs as the services give
    conf_path = tmp_path / "conf.json"
    conf_path.write_text(json.dumps(sample))
    local = emprocess("run", str(conf_path), "--width", str(WIDTH))
    assert local.returncode == 0, local.stderr[-3000:]
    expected = RunContext.create(sample, run_id_of(local.stdout)).locations
    got = RunContext.create(sample, run_id).locations
    for volume in ("jpeg", "raw"):
        want = files(getattr(expected, volume))
        assert want and files(getattr(got, volume)) == want, volume
    assert storage.exists(storage.join(got.process, "report.html"))
