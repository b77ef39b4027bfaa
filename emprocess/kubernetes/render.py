"""``emprocess k8s render``: the pods a run's DAG would launch and the namespace's manifests, as
YAML files a user can read or ``kubectl apply --dry-run=server``."""

from __future__ import annotations

from pathlib import Path

import yaml

from emprocess import config, registry
from emprocess.kubernetes.deploy import deploy_manifests
from emprocess.kubernetes.pods import worker_pod
from emprocess.kubernetes.settings import KubernetesSettings
from emprocess.stages import RunContext
from emprocess.workflow import dag_id

PODS = "pods"
DEPLOY = "deploy"


def run_pods(conf: dict, width: int, run_id: str, settings: KubernetesSettings) -> list[dict]:
    """Every stage worker's pod of the run, in the DAG's order: the stages the conf asks for, every
    graph and mesh layer (the DAG launches those the graph has)."""
    ctx = RunContext.create(conf, run_id)  # refuses a bad conf before anything is written
    dag = dag_id(width)
    return [worker_pod(stage.name, worker, registry.stage_width(stage, width), conf, run_id, dag, settings)
            for group in config.STAGES if ctx.wants(group)
            for stage in registry.group_facts(group)
            for worker in range(registry.stage_width(stage, width))]


class _Dumper(yaml.SafeDumper):
    """Writes a string of several lines (a ConfigMap's file) as a literal block, as a person would."""


def _string(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_Dumper.add_representer(str, _string)


def write_yaml(path: Path, docs: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False))


def render(conf: dict, width: int, run_id: str, out: Path, settings: KubernetesSettings) -> list[Path]:
    """Write ``out/pods/<pod>.yaml`` (one per stage worker) and ``out/deploy/*.yaml``."""
    pods = run_pods(conf, width, run_id, settings)
    written = []
    for pod in pods:
        written.append(out / PODS / f"{pod['metadata']['name']}.yaml")
        write_yaml(written[-1], [pod])
    for name, docs in deploy_manifests(settings).items():
        written.append(out / DEPLOY / name)
        write_yaml(written[-1], docs)
    return written
