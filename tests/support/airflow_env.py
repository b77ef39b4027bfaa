"""Pytest plugin (loaded with ``-p support.airflow_env``): a temp SQLite AIRFLOW_HOME for the whole session.

It must run before anything imports Airflow, which reads its configuration at import. The DAGs
folder holds the real emprocess DAG file and the test-only DAGs of ``support.airflow_dags``; the plugins
folder is the project's.
"""

import os
import secrets
import tempfile
from pathlib import Path

import pytest

HOME = Path(tempfile.mkdtemp(prefix="emprocess-test-airflow-"))
DAGS = HOME / "dags"
DAGS.mkdir()
os.environ.update(
    AIRFLOW_HOME=str(HOME),
    AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
    AIRFLOW__CORE__LOAD_EXAMPLES="False",
    AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{HOME / 'airflow.db'}",
    AIRFLOW__CORE__PLUGINS_FOLDER=str(Path(__file__).parents[2] / "plugins"),  # as a deployment installs it
    AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(32),  # the API server's session tokens (64 bytes)
)
(DAGS / "emprocess_dags.py").write_text((Path(__file__).parents[2] / "dags" / "emprocess_dags.py").read_text())
(DAGS / "test_dags.py").write_text(
    "from support.airflow_dags import build_test_dags\n\nglobals().update(build_test_dags())  # airflow dag\n")


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """An initialised Airflow metadata DB with the emprocess pools."""
    from airflow.models.pool import Pool
    from airflow.utils import db

    from emprocess.workflow.dag_factory import POOLS

    db.resetdb()
    for name, description in POOLS.items():
        Pool.create_or_update_pool(name, 64, description, include_deferred=False)
    return HOME
