"""Execution mode ``kubernetes``: each stage worker task launches its pod (``emprocess work``) with the
cncf.kubernetes provider's ``KubernetesPodOperator``, instead of calling the services.

The pod is ``emprocess.kubernetes.pods.worker_pod``'s, built when the task runs (it carries the run's
conf and id), so it is the one ``emprocess k8s render`` writes. The result cache is the same as in
mode ``http``: a retried or cleared worker's new pod skips the mini-tasks its predecessor finished.
A pod that exits 2 met bad input and fails its task without retries, as the error policy says.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from emprocess.kubernetes.settings import KubernetesSettings, load_settings
from emprocess.workflow.operators import failing_at_once

try:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
except ImportError as err:  # the optional extra
    raise ImportError("execution mode kubernetes needs the cncf.kubernetes provider: "
                      "pip install 'emprocess[kubernetes]'") from err

BAD_INPUT_EXIT = 2  # what ``emprocess work`` exits with on bad input


def exit_code(pod, container: str) -> int | None:
    statuses = (pod.status.container_statuses if pod is not None and pod.status else None) or []
    for status in statuses:
        if status.name == container and status.state and status.state.terminated:
            return status.state.terminated.exit_code
    return None


class StageWorkerPodOperator(KubernetesPodOperator):
    """Worker ``worker`` of ``width`` for one stage, as a pod on the deployment's cluster."""

    ui_color = "#d8f0e0"

    def __init__(self, *, stage: str, worker: int, width: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stage = stage
        self.worker = worker
        self.width = width

    def execute(self, context):
        from emprocess.kubernetes.pods import worker_pod

        with failing_at_once():
            conf = context["dag_run"].conf or {}
            self.pod_template_dict = worker_pod(self.stage, self.worker, self.width, conf, context["run_id"],
                                                context["dag"].dag_id, load_settings())
            try:
                return super().execute(context)
            except AirflowException as err:
                if exit_code(self.remote_pod, self.base_container_name) == BAD_INPUT_EXIT:
                    raise AirflowFailException(f"{self.stage} worker {self.worker} met bad input: {err}") from err
                raise


def pod_workers(stage: str, width: int, task_id: str, settings: KubernetesSettings, **options):
    """One mapped pod-launching task whose instance i is worker i of ``width`` for ``stage``. Succeeded
    pods are deleted, failed ones kept (``keep_failed_pods``) for ``kubectl logs``; a killed task
    deletes its pod."""
    return StageWorkerPodOperator.partial(
        task_id=task_id,
        stage=stage,
        width=width,
        kubernetes_conn_id=settings.connection,
        namespace=settings.namespace,
        on_finish_action="delete_succeeded_pod" if settings.keep_failed_pods else "delete_pod",
        startup_timeout_seconds=settings.startup_timeout_s,
        get_logs=True,
        do_xcom_push=False,
        durable=True,  # an Airflow worker that dies mid-pod: the retry follows the same pod
        log_pod_spec_on_failure=False,
        pool=settings.pool,
        **options,
    ).expand(worker=list(range(width)))
