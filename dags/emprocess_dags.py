"""Airflow DAG file: registers the emprocess DAGs (one per width) built by emprocess.workflow."""

from emprocess.workflow.dag_factory import build_all

globals().update(build_all())
