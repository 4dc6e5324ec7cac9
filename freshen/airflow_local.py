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

import pluggy

from freshen.config import PROJECT_DIR, Settings
from freshen.errors import FreshenError

DAG_ID = "knowledge_refresh"
hookimpl = pluggy.HookimplMarker("airflow")  # the marker of Airflow's listener hooks


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
    dag = bag.dags[DAG_ID]
    with TaskProgress(len(dag.tasks)):
        return dag.test(run_conf=conf or {})


class TaskProgress:
    """A progress bar over the DAG run's task instances while ``dag.test`` runs them in this
    process: an Airflow task listener (the Task SDK's ``on_task_instance_*`` hooks) moves it;
    the bar's text names the task running. Mapped tasks add their instances as they start."""

    def __init__(self, tasks: int):
        self.tasks = tasks

    def __enter__(self):
        from airflow.sdk.listener import get_listener_manager
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.tasks, desc="knowledge_refresh", unit="task", leave=True)
        self.manager = get_listener_manager()
        self.manager.add_listener(self)
        return self

    def __exit__(self, *exc):
        self.manager.pm.unregister(self)
        self.bar.total = self.bar.n  # tasks skipped by the scheduler (nothing to do) never run
        self.bar.set_postfix_str("done" if exc[0] is None else "stopped", refresh=True)
        self.bar.close()

    @staticmethod
    def _name(ti) -> str:
        return ti.task_id + (f"[{ti.map_index}]" if getattr(ti, "map_index", -1) >= 0 else "")

    @hookimpl
    def on_task_instance_running(self, previous_state, task_instance):
        if getattr(task_instance, "map_index", -1) > 0:
            self.bar.total += 1
        self.bar.set_postfix_str(self._name(task_instance), refresh=True)

    @hookimpl
    def on_task_instance_success(self, previous_state, task_instance):
        self.bar.update(1)

    @hookimpl
    def on_task_instance_skipped(self, previous_state, task_instance):
        self.bar.update(1)

    @hookimpl
    def on_task_instance_failed(self, previous_state, task_instance, error):
        self.bar.set_postfix_str(f"{self._name(task_instance)} failed", refresh=True)
