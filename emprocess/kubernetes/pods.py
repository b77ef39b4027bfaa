"""The pod a stage worker runs in: ``emprocess work STAGE --worker i --of W`` in the project's image.

One function builds it, for the DAG's pod operator and for ``emprocess k8s render`` alike, so what a
user inspects is what the DAG launches. The command is an argument list (no shell reads the conf);
credentials reach the container only as references to Secrets.
"""

from __future__ import annotations

import hashlib
import json
import re

from emprocess.kubernetes.resources import pod_resources
from emprocess.kubernetes.settings import S3_SECRET_KEYS, KubernetesSettings

CONTAINER = "base"  # the container name the Airflow provider follows the logs of
GCS_KEY_DIR = "/var/run/secrets/emprocess/gcs"
LABEL_MAX = 63


def label_value(text: str) -> str:
    """``text`` as a label value: allowed characters only, and a hash suffix when it had to be cut."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-_.")
    if len(value) <= LABEL_MAX and value == text:
        return value
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return f"{value[:LABEL_MAX - 9].rstrip('-_.')}-{digest}"


def pod_name(stage: str, worker: int) -> str:
    return f"emprocess-{stage.replace('.', '-')}-{worker}"


def conf_argument(conf: dict) -> str:
    return json.dumps(conf, sort_keys=True, separators=(",", ":"))


def worker_command(stage: str, worker: int, width: int, threads: int, conf: dict, run_id: str) -> list[str]:
    return ["emprocess", "work", stage, "--worker", str(worker), "--of", str(width), "--threads", str(threads),
            "--run-id", run_id, "--conf-json", conf_argument(conf)]


def credentials_env(settings: KubernetesSettings) -> tuple[list[dict], list[dict], list[dict]]:
    """(env, volumes, volume mounts) that give the worker its storage credentials: S3 keys and
    endpoint from a Secret, a GCS key file mounted from a Secret (Workload Identity needs none)."""
    env, volumes, mounts = [], [], []
    if settings.s3_secret:
        env += [{"name": var, "valueFrom": {"secretKeyRef": {"name": settings.s3_secret, "key": var,
                                                             "optional": not required}}}
                for var, required in S3_SECRET_KEYS.items()]
    if settings.gcs_key_secret:
        volumes.append({"name": "gcs-key", "secret": {"secretName": settings.gcs_key_secret}})
        mounts.append({"name": "gcs-key", "mountPath": GCS_KEY_DIR, "readOnly": True})
        env.append({"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": f"{GCS_KEY_DIR}/key.json"})
    return env, volumes, mounts


def worker_pod(stage: str, worker: int, width: int, conf: dict, run_id: str, dag: str,
               settings: KubernetesSettings) -> dict:
    """Worker ``worker`` of ``width`` of ``stage`` for run ``run_id`` of DAG ``dag``, as a Pod manifest."""
    resources = pod_resources(stage, settings)
    env, volumes, mounts = credentials_env(settings)
    labels = {**settings.labels, "app.kubernetes.io/name": "emprocess", "app.kubernetes.io/component": "worker",
              "emprocess/dag": label_value(dag), "emprocess/run": label_value(run_id),
              "emprocess/stage": stage, "emprocess/worker": str(worker)}
    annotations = {**settings.annotations, "emprocess/dag": dag, "emprocess/run-id": run_id,
                   "emprocess/worker": f"{worker} of {width}"}
    command = worker_command(stage, worker, width, resources.threads, conf, run_id)
    container = {
        "name": CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command[:1],
        "args": command[1:],
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}, *env],
        "resources": resources.manifest(),
        "terminationMessagePolicy": "FallbackToLogsOnError",  # a failed worker's last lines name its error
    }
    if mounts:
        container["volumeMounts"] = mounts
    spec = {
        "restartPolicy": "Never",  # a failed worker is Airflow's to retry, from the result cache
        "serviceAccountName": settings.worker_service_account,
        "containers": [container],
    }
    node_selector = dict(settings.node_selector)
    tolerations = list(settings.tolerations)
    if resources.gpu:
        node_selector.update(settings.gpu.node_selector)
        tolerations += settings.gpu.tolerations
        if settings.gpu.affinity:
            spec["affinity"] = settings.gpu.affinity
    if node_selector:
        spec["nodeSelector"] = node_selector
    if tolerations:
        spec["tolerations"] = tolerations
    if volumes:
        spec["volumes"] = volumes
    if settings.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in settings.image_pull_secrets]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name(stage, worker), "namespace": settings.namespace,
                     "labels": labels, "annotations": annotations},
        "spec": spec,
    }
