"""Airflow plugin: macros that tell where a run's outputs are, for templated fields and notifications.

In a template: ``{{ macros.emprocess.run_locations(dag_run.conf, run_id) }}``.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


def run_locations(conf: dict, run_id: str) -> dict:
    """The run's process, viewing, chunk and tmp locations (ARCHITECTURE §3)."""
    from emprocess.stages import RunContext

    ctx = RunContext.create(conf, run_id)
    return {**vars(ctx.locations), "jpeg": ctx.locations.jpeg, "raw": ctx.locations.raw}


class EmprocessPlugin(AirflowPlugin):
    name = "emprocess"
    macros = [run_locations]
