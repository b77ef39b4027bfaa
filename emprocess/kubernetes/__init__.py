"""Stage workers as pods on a lab's own Kubernetes cluster: the deployment's settings, each stage's
resources, the pod a worker runs in and the manifests a namespace needs. Plain Python that builds
Kubernetes objects as dicts; the Airflow operator that launches the pods is in ``emprocess.workflow``."""
