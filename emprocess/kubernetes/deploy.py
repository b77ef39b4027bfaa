"""The manifests a namespace needs before a run: who may launch pods, a submitter inside the cluster,
and the two services for clusters that run them as HTTP services instead of pods per worker.

- ``rbac.yaml``: the submitter's ServiceAccount with a Role to create, watch, patch and delete pods
  and read their logs and events (what the Airflow provider calls), bound to it; and the workers'
  ServiceAccount, which may do nothing in the cluster (with Workload Identity, it maps to a GCP
  account).
- ``submitter.yaml``: a pod running Airflow standalone as the submitter, in-cluster
  (``in_cluster: true``), with execution mode ``kubernetes``; runs are triggered in it.
- ``services.yaml``: fiji and emwrite as Deployments, Services and HorizontalPodAutoscalers, for
  execution mode ``http`` inside the cluster (connections ``http://fiji:8080``,
  ``http://emwrite:8080``).
"""

from __future__ import annotations

import json

from emprocess import registry
from emprocess.kubernetes.pods import credentials_env
from emprocess.kubernetes.settings import EXECUTION_ENV, SETTINGS_ENV, KubernetesSettings
from emprocess.workflow import DAG_FILE

SERVICE_PORT = 8080
SERVICE_CPU = "2"  # as on Cloud Run: 2 CPUs and 4 GiB for one call at a time (README's memory table)
SERVICE_MEMORY = "4Gi"
SERVICE_MAX_REPLICAS = 8
POD_MANAGER_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "watch", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
]
SETTINGS_MOUNT = "/etc/emprocess"


def _meta(name: str, settings: KubernetesSettings, **extra) -> dict:
    labels = {**settings.labels, "app.kubernetes.io/name": "emprocess", **extra.pop("labels", {})}
    return {"name": name, "namespace": settings.namespace, "labels": labels, **extra}


def rbac(settings: KubernetesSettings) -> list[dict]:
    submitter, role = settings.submitter_service_account, "emprocess-pod-manager"
    workload_identity = ({"annotations": {"iam.gke.io/gcp-service-account": settings.gcp_service_account}}
                         if settings.gcp_service_account else {})
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(submitter, settings)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta(role, settings),
         "rules": POD_MANAGER_RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": _meta(role, settings),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
         "subjects": [{"kind": "ServiceAccount", "name": submitter, "namespace": settings.namespace}]},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": _meta(settings.worker_service_account, settings, **workload_identity),
         "automountServiceAccountToken": False},
    ]


def submitter(settings: KubernetesSettings) -> list[dict]:
    """A ConfigMap with the settings and the DAG file, and the pod that submits from inside the cluster."""
    env, volumes, mounts = credentials_env(settings)
    connection = {"conn_type": "kubernetes", "extra": {"in_cluster": True, "namespace": settings.namespace}}
    env = [
        {"name": EXECUTION_ENV, "value": "kubernetes"},
        {"name": SETTINGS_ENV, "value": f"{SETTINGS_MOUNT}/settings.yaml"},
        {"name": f"AIRFLOW_CONN_{settings.connection.upper()}", "value": json.dumps(connection)},
        {"name": "AIRFLOW__CORE__LOAD_EXAMPLES", "value": "False"},
        {"name": "AIRFLOW__CORE__DAGS_FOLDER", "value": SETTINGS_MOUNT},
        *env,
    ]
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("emprocess-settings", settings),
              "data": {"settings.yaml": settings_yaml(settings), "emprocess_dags.py": DAG_FILE}}
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": _meta("emprocess-submitter", settings, labels={"app.kubernetes.io/component": "submitter"}),
        "spec": {
            "serviceAccountName": settings.submitter_service_account,
            "containers": [{
                "name": "airflow", "image": settings.image, "imagePullPolicy": settings.image_pull_policy,
                "command": ["airflow", "standalone"],
                "ports": [{"containerPort": 8080, "name": "http"}],
                "env": env,
                "volumeMounts": [{"name": "settings", "mountPath": SETTINGS_MOUNT, "readOnly": True}, *mounts],
                "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
            }],
            "volumes": [{"name": "settings", "configMap": {"name": "emprocess-settings"}}, *volumes],
        },
    }
    return [config, pod]


def services(settings: KubernetesSettings) -> list[dict]:
    env, volumes, mounts = credentials_env(settings)
    env = [{"name": "EMPROCESS_ALLOWED_PREFIXES", "value": ",".join(settings.allowed_prefixes)}, *env]
    docs = []
    for service in registry.SERVICES.values():
        selector = {"app.kubernetes.io/name": "emprocess", "app.kubernetes.io/component": service.name}
        container = {
            "name": service.name, "image": settings.image, "imagePullPolicy": settings.image_pull_policy,
            "command": ["uvicorn", service.app, "--host", "0.0.0.0", "--port", str(SERVICE_PORT), "--workers", "1"],
            "ports": [{"containerPort": SERVICE_PORT, "name": "http"}],
            "env": env,
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
            "resources": {"requests": {"cpu": SERVICE_CPU, "memory": SERVICE_MEMORY},
                          "limits": {"cpu": SERVICE_CPU, "memory": SERVICE_MEMORY}},
        }
        if mounts:
            container["volumeMounts"] = mounts
        pod_spec = {"serviceAccountName": settings.worker_service_account, "containers": [container]}
        if volumes:
            pod_spec["volumes"] = volumes
        docs += [
            {"apiVersion": "apps/v1", "kind": "Deployment",
             "metadata": _meta(service.name, settings, labels=selector),
             "spec": {"replicas": 1, "selector": {"matchLabels": selector},
                      "template": {"metadata": {"labels": {**settings.labels, **selector}}, "spec": pod_spec}}},
            {"apiVersion": "v1", "kind": "Service", "metadata": _meta(service.name, settings, labels=selector),
             "spec": {"selector": selector, "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http"}]}},
            {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
             "metadata": _meta(service.name, settings, labels=selector),
             "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": service.name},
                      "minReplicas": 1, "maxReplicas": SERVICE_MAX_REPLICAS,
                      "metrics": [{"type": "Resource", "resource": {
                          "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]}},
        ]
    return docs


def settings_yaml(settings: KubernetesSettings) -> str:
    import yaml

    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)


def deploy_manifests(settings: KubernetesSettings) -> dict[str, list[dict]]:
    """File name -> the objects it holds, in the order ``kubectl apply -f DIR`` should create them."""
    return {"rbac.yaml": rbac(settings), "submitter.yaml": submitter(settings), "services.yaml": services(settings)}
