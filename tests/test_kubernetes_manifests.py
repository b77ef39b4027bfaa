"""What execution mode ``kubernetes`` asks of a cluster, checked without one: every manifest
``emprocess k8s render`` writes validates against Kubernetes 1.30's OpenAPI schema (strict: an
unknown field is an error), credentials appear only as references to Secrets, GPU stages carry their
limit, tolerations and node selector, each stage's resources come from the measured table, and the
committed ``deploy/kubernetes/`` is what the code renders."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from emprocess import registry
from emprocess.errors import ConfError
from emprocess.kubernetes import resources
from emprocess.kubernetes.deploy import deploy_manifests
from emprocess.kubernetes.pods import label_value, worker_pod
from emprocess.kubernetes.render import DEPLOY, PODS, render, run_pods
from emprocess.kubernetes.settings import KubernetesSettings, load_settings
from support.emprocess_cli import emprocess

ROOT = Path(__file__).resolve().parents[1]
K8S_VERSION = "1.30.0"
RUN_ID = "manual__2026-12-04T03:00:00.123456+00:00"
SECRET_VALUES = {"AWS_SECRET_ACCESS_KEY": "s3cr3t-never-in-a-manifest", "AWS_ACCESS_KEY_ID": "AKIA-not-in-one-either"}
LAB_SETTINGS = {
    "namespace": "lab-em",
    "image": "registry.lab.example/emprocess:0.1.0",
    "image_pull_secrets": ["lab-registry"],
    "s3_secret": "lab-ceph",
    "gcs_key_secret": "lab-gcs-key",
    "labels": {"team": "connectomics"},
    "resources": {"pyramid": {"memory": "12Gi"}, "pyramid.top": {"threads": 1, "memory": "6Gi"}},
    "gpu": {"stages": ["align.pairs"], "count": 1, "node_selector": {"node-pool": "gpu-a100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present",
                             "effect": "NoSchedule"}]},
    "allowed_prefixes": ["s3://em-bucket", "s3://em-bucket-*"],
}


@pytest.fixture
def lab_settings(tmp_path) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(LAB_SETTINGS))
    return path


def documents(folder: Path) -> list[tuple[Path, dict]]:
    return [(path, doc) for path in sorted(folder.rglob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())]


def test_every_rendered_manifest_validates_against_the_kubernetes_schema(small_sample, lab_settings, tmp_path,
                                                                          monkeypatch):
    for name, value in SECRET_VALUES.items():  # in the renderer's environment: it must not copy them
        monkeypatch.setenv(name, value)
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps(small_sample))
    for settings in (None, lab_settings):
        out = tmp_path / ("lab" if settings else "default")
        args = ["k8s", "render", str(conf), "--width", "4", "--run-id", RUN_ID, "--out", str(out)]
        result = emprocess(*args, *(["--settings", str(settings)] if settings else []))
        assert result.returncode == 0, result.stderr
        docs = documents(out)
        assert {doc["kind"] for _, doc in docs} >= {"Pod", "ServiceAccount", "Role", "RoleBinding", "ConfigMap",
                                                     "Deployment", "Service", "HorizontalPodAutoscaler"}
        for path, doc in docs:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on any schema violation
        text = "".join(path.read_text() for path in out.rglob("*.yaml")) + result.stdout + result.stderr
        for value in SECRET_VALUES.values():
            assert value not in text


def test_the_validator_refuses_a_broken_pod():
    pod = worker_pod("align.pairs", 0, 4, {"source": "file:///x"}, RUN_ID, "d", KubernetesSettings())
    pod["spec"]["containers"][0]["resources"]["limits"]["cpu"] = {"two": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    pod = worker_pod("align.pairs", 0, 4, {"source": "file:///x"}, RUN_ID, "d", KubernetesSettings())
    pod["spec"]["containers"][0]["secretEnv"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_one_pod_per_stage_worker_the_conf_asks_for(small_sample, tmp_path):
    written = render(small_sample, 4, RUN_ID, tmp_path, KubernetesSettings())
    pods = [path for path in written if path.parent.name == PODS]
    expected = sum(registry.stage_width(stage, 4) for group in ("align", "pyramid")
                   for stage in registry.group_facts(group))
    assert len(pods) == expected == len(set(pods))
    with_graph = dict(small_sample, segmentation={"watershed": "file:///ws", "chunk_size": [64, 64, 16]},
                      stages=["chunkedgraph", "meshing"])
    stages = {pod["spec"]["containers"][0]["args"][1] for pod in run_pods(with_graph, 4, RUN_ID, KubernetesSettings())}
    assert stages == {stage.name for group in ("chunkedgraph", "meshing") for stage in registry.group_facts(group)}
    assert sorted(path.name for path in (tmp_path / DEPLOY).iterdir()) == sorted(deploy_manifests(KubernetesSettings()))


def test_a_pod_runs_its_worker_share_with_the_conf_as_an_argument_and_secrets_by_reference(small_sample):
    settings = KubernetesSettings(**{k: v for k, v in LAB_SETTINGS.items()})
    pod = worker_pod("align.warp", 3, 4, small_sample, RUN_ID, "emprocess_width4_v0.1", settings)
    container = pod["spec"]["containers"][0]
    command = container["command"] + container["args"]
    assert command[:9] == ["emprocess", "work", "align.warp", "--worker", "3", "--of", "4", "--threads", "2"]
    assert command[command.index("--run-id") + 1] == RUN_ID
    assert json.loads(command[command.index("--conf-json") + 1]) == small_sample
    refs = {env["name"]: env["valueFrom"]["secretKeyRef"] for env in container["env"] if "valueFrom" in env}
    assert {name: ref["name"] for name, ref in refs.items()} == {
        "AWS_ACCESS_KEY_ID": "lab-ceph", "AWS_SECRET_ACCESS_KEY": "lab-ceph", "AWS_ENDPOINT_URL": "lab-ceph",
        "AWS_DEFAULT_REGION": "lab-ceph"}
    assert not refs["AWS_SECRET_ACCESS_KEY"]["optional"] and refs["AWS_ENDPOINT_URL"]["optional"]
    assert {"name": "gcs-key", "secret": {"secretName": "lab-gcs-key"}} in pod["spec"]["volumes"]
    labels = pod["metadata"]["labels"]
    assert labels["emprocess/stage"] == "align.warp" and labels["emprocess/worker"] == "3"
    assert labels["emprocess/run"] == label_value(RUN_ID) and len(labels["emprocess/run"]) <= 63
    assert pod["metadata"]["annotations"]["emprocess/run-id"] == RUN_ID and labels["team"] == "connectomics"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "lab-registry"}]


def test_gpu_stages_get_the_gpu_limit_tolerations_and_node_pool(small_sample):
    settings = KubernetesSettings(**LAB_SETTINGS)
    gpu = worker_pod("align.pairs", 0, 4, small_sample, RUN_ID, "d", settings)
    cpu = worker_pod("align.warp", 0, 4, small_sample, RUN_ID, "d", settings)
    assert gpu["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["spec"]["nodeSelector"] == {"node-pool": "gpu-a100"}
    assert gpu["spec"]["tolerations"] == LAB_SETTINGS["gpu"]["tolerations"]
    assert "nvidia.com/gpu" not in cpu["spec"]["containers"][0]["resources"]["limits"]
    assert "tolerations" not in cpu["spec"] and "nodeSelector" not in cpu["spec"]
    by_group = KubernetesSettings(gpu={"stages": ["align"]})
    assert all(resources.pod_resources(stage.name, by_group).gpu for stage in registry.group_facts("align"))
    assert not resources.pod_resources("pyramid.shard", by_group).gpu


def test_resources_come_from_the_measured_table_and_settings_override_group_then_stage():
    defaults = KubernetesSettings()
    for stage in registry.FACTS:  # every stage has a measured peak
        res = resources.pod_resources(stage.name, defaults)
        expected = resources.gibibytes(resources.BASE_GIB + res.threads * resources.peak_gib(stage.name))
        assert res.requests == {"cpu": str(res.threads), "memory": expected} == res.limits
    assert resources.peak_gib("cg.layer7") == resources.PEAK_GIB["cg.layer"]
    assert resources.peak_gib("cg.layer2") == resources.PEAK_GIB["cg.layer2"]
    lab = KubernetesSettings(**LAB_SETTINGS)
    assert resources.pod_resources("pyramid.shard", lab).requests["memory"] == "12Gi"
    top = resources.pod_resources("pyramid.top", lab)
    assert (top.threads, top.requests) == (1, {"cpu": "1", "memory": "6Gi"})


def test_bad_settings_are_named(small_sample, tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text("namespace: x\nimage_pull_policy: Sometimes\nsecrets_inline: {a: b}\n")
    with pytest.raises(ConfError) as refused:
        load_settings(path)
    assert "image_pull_policy" in str(refused.value) and "secrets_inline" in str(refused.value)
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps(small_sample))
    result = emprocess("k8s", "render", str(conf), "--run-id", "r", "--out", str(tmp_path / "out"),
                       "--settings", str(path))
    assert result.returncode == 2 and "image_pull_policy" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_refused_conf_renders_nothing(small_sample, tmp_path):
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps(dict(small_sample, maxz=-1)))
    result = emprocess("k8s", "render", str(conf), "--run-id", "r", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "maxz" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_committed_deploy_manifests_are_what_the_code_renders():
    for name, docs in deploy_manifests(KubernetesSettings()).items():
        assert list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / name).read_text())) == docs, name


def test_the_readme_pod_resources_table_is_the_code_s():
    readme = (ROOT / "README.md").read_text()
    marker = "<!-- pod resources: generated by `emprocess k8s resources` -->\n"
    assert readme.split(marker)[1].split("<!-- end of pod resources -->")[0] == resources.markdown()


def test_mode_kubernetes_keeps_the_dag_s_shape_and_makes_every_worker_a_pod(monkeypatch, tmp_path):
    from emprocess.workflow.dag_factory import build_dag
    from emprocess.workflow.operators import BatchStageOperator
    from emprocess.workflow.pods import StageWorkerPodOperator

    def shape(dag) -> dict:
        return {task.task_id: (sorted(task.upstream_task_ids), getattr(task, "expand_input", None) and
                               task.expand_input.value["worker"]) for task in dag.tasks}

    http = build_dag(4)
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"namespace": "lab-em", "keep_failed_pods": False, "pool": "pods"}))
    monkeypatch.setenv("EMPROCESS_EXECUTION", "kubernetes")
    monkeypatch.setenv("EMPROCESS_KUBERNETES_SETTINGS", str(settings))
    pods = build_dag(4)
    assert shape(pods) == shape(http)
    workers = {stage.name for stage in registry.FACTS}
    launched = set()
    for task in pods.tasks:
        stage = task.partial_kwargs.get("stage") if hasattr(task, "partial_kwargs") else None
        if stage in workers:
            launched.add(stage)
            assert task.operator_class is StageWorkerPodOperator
            assert task.partial_kwargs["namespace"] == "lab-em" and task.partial_kwargs["pool"] == "pods"
            assert task.partial_kwargs["on_finish_action"] == "delete_pod"
            assert http.get_task(task.task_id).operator_class is BatchStageOperator
    assert launched == workers
    monkeypatch.setenv("EMPROCESS_EXECUTION", "cloud")
    with pytest.raises(ConfError, match="EMPROCESS_EXECUTION"):
        build_dag(4)
