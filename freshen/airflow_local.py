"""A local Airflow for the demo and the tests: AIRFLOW_HOME under freshen's home, SQLite,
the project's ``dags/`` folder, the ``gpu`` pool; and the refresh DAG run in-process with
``dag.test()``. Production deploys Airflow its own way (docker/, README).

Environment must be set before Airflow is first imported: call ``airflow_env`` first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from freshen.config import PROJECT_DIR, Settings
from freshen.errors import FreshenError

DAG_ID = "knowledge_refresh"


def airflow_env(settings: Settings) -> dict[str, str]:
    """The variables a local Airflow needs, set in this process and returned for children."""
    home = settings.home / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_DIR / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "FRESHEN_HOME": str(settings.home),
        "FRESHEN_FEED_ASSET": settings.drop_dir.as_uri(),
    }
    os.environ.update(env)
    return env


def _airflow(*args: str, env: dict[str, str]) -> None:
    exe = shutil.which("airflow", path=str(Path(sys.executable).parent)) or "airflow"
    subprocess.run([exe, *args], check=True, env=os.environ | env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, text=True)


def prepare(settings: Settings, pool_slots: int = 1) -> dict[str, str]:
    """Migrate the metadata database (first use) and create the ``gpu`` pool Stage I uses."""
    env = airflow_env(settings)
    stamp = settings.home / "airflow" / ".migrated"
    if not stamp.exists():
        _airflow("db", "migrate", env=env)
        stamp.touch()
    _airflow("pools", "set", os.environ.get("FRESHEN_STAGE1_POOL", "gpu"), str(pool_slots),
             "Stage I workers (GPU in production)", env=env)
    return env


def run_dag(settings: Settings, conf: dict | None = None):
    """The refresh DAG, end to end, in this process (``dag.test``). Returns the DagRun."""
    prepare(settings)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_DIR / "dags"))
    if bag.import_errors:
        raise FreshenError(f"DAG import errors: {bag.import_errors}")
    return bag.dags[DAG_ID].test(run_conf=conf or {})
