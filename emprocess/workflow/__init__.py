"""Airflow-only code: the batch operator, task groups and the DAG factory (this module itself imports
no Airflow: the CLI and the Kubernetes manifests read its names)."""

from emprocess import MAJOR_MINOR

WIDTHS = (1, 4, 16, 32, 64, 128)  # the DAGs built: emprocess_width{W}, W workers per wide stage
DAG_FILE = "from emprocess.workflow.dag_factory import build_all\n\nglobals().update(build_all())  # airflow dag\n"
THREADS_PER_WORKER = 4  # calls one worker task has in flight; it takes as many slots of its service's pool
SMTP_CONNECTION = "smtp_default"  # where the run-ended mail goes out (AIRFLOW_CONN_SMTP_DEFAULT)
REPORT_TASK = "report"  # the DAG's report task: its result is a refused run's report


def dag_id(width: int) -> str:
    return f"emprocess_width{width}_v{MAJOR_MINOR}"


def task_name(task_id: str, map_index: int) -> str:
    """How a failed task is named to people: ``task[i]`` for worker i of a mapped stage."""
    return task_id if map_index < 0 else f"{task_id}[{map_index}]"
