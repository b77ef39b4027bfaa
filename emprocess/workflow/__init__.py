"""Airflow-only code: the batch operator, task groups and the DAG factory."""
