"""A deployment's Kubernetes settings: one file, named by ``EMPROCESS_KUBERNETES_SETTINGS``.

Whether stage workers run as pods is the deployment's choice (``EMPROCESS_EXECUTION=kubernetes``), not
a run's: a run conf cannot send work to a cluster. Credentials are never settings: the settings name
the Kubernetes Secrets that hold them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emprocess import __version__
from emprocess.errors import ConfError

EXECUTION_ENV = "EMPROCESS_EXECUTION"
EXECUTION_MODES = ("http", "kubernetes")  # http: the services (Cloud Run), the default
SETTINGS_ENV = "EMPROCESS_KUBERNETES_SETTINGS"
S3_SECRET_KEYS = {  # the worker's environment variables, each from the S3 Secret's key of its name: required?
    "AWS_ACCESS_KEY_ID": True,
    "AWS_SECRET_ACCESS_KEY": True,
    "AWS_ENDPOINT_URL": False,  # an S3-compatible store's endpoint (MinIO, Ceph, a research cloud)
    "AWS_DEFAULT_REGION": False,
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageResources(Strict):
    """Overrides of a stage's pod resources (Kubernetes quantities: ``"2"``, ``"500m"``, ``"6Gi"``)."""

    threads: int | None = Field(None, ge=1, le=64)  # mini-tasks the pod runs at once
    cpu: str | None = None
    memory: str | None = None
    cpu_limit: str | None = None
    memory_limit: str | None = None


class Gpu(Strict):
    """Stages whose pods go to a GPU node pool: a GPU limit, and the pool's taints tolerated."""

    stages: list[str] = []  # stage names (``align.pairs``) or groups (``align``)
    count: int = Field(1, ge=1)
    resource: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = {}
    tolerations: list[dict] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    affinity: dict | None = None  # a Pod affinity, when a node selector cannot say it


class KubernetesSettings(Strict):
    namespace: str = "emprocess"
    image: str = f"emprocess:{__version__}"  # the project's image (it has the ``emprocess`` command)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: list[str] = []
    connection: str = "kubernetes_default"  # the Airflow connection: kubeconfig + context, or in-cluster
    worker_service_account: str = "emprocess-worker"  # what the worker pods run as
    submitter_service_account: str = "emprocess-submitter"  # what may create pods (the Airflow worker)
    keep_failed_pods: bool = True  # a failed worker's pod stays for ``kubectl logs``; succeeded ones go
    startup_timeout_s: int = Field(600, ge=10)  # a pod still Pending after this fails its task
    pool: str = "default_pool"  # the Airflow pool the pod-launching tasks take a slot of
    s3_secret: str | None = "emprocess-s3"  # keys: those of S3_SECRET_KEYS
    gcs_key_secret: str | None = None  # a Secret whose key.json is a GCP service-account key
    gcp_service_account: str | None = None  # GKE Workload Identity: the worker account's GCP account
    node_selector: dict[str, str] = {}
    tolerations: list[dict] = []
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    resources: dict[str, StageResources] = {}  # stage name or group -> overrides
    gpu: Gpu | None = None
    allowed_prefixes: list[str] = []  # the services' EMPROCESS_ALLOWED_PREFIXES (Deployments only)


def execution_mode(environ=os.environ) -> str:
    mode = environ.get(EXECUTION_ENV, "http") or "http"
    if mode not in EXECUTION_MODES:
        raise ConfError(f"{EXECUTION_ENV}={mode!r}: expected one of {', '.join(EXECUTION_MODES)}")
    return mode


def load_settings(path: str | Path | None = None, environ=os.environ) -> KubernetesSettings:
    """The settings in ``path`` (YAML or JSON), else in the file ``EMPROCESS_KUBERNETES_SETTINGS``
    names, else the defaults; a key that is unknown or of the wrong type is named."""
    path = path or environ.get(SETTINGS_ENV)
    if not path:
        return KubernetesSettings()
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ConfError(f"Kubernetes settings {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfError(f"Kubernetes settings {path} are not YAML: {err}") from None
    try:
        return KubernetesSettings.model_validate(raw or {})
    except ValidationError as err:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
        raise ConfError(f"Kubernetes settings {path}: {'; '.join(problems)}", problems) from None
