"""``freshen demo`` (``make demo``): the main job on the embedded ToyWorld default, run by
Airflow: the ``knowledge_refresh`` DAG end to end, in-process (``dag.test``), with a local
Airflow home and MLflow store under ``--home`` (default ./var).

The sample feed (feeds/samples/newsroom.jsonl, 10 changes) is dropped into the feed drop
directory; the DAG ingests it (contract + GX rules), tags entities (NER), takes the demo's
approvals from the demo policy (feeds/samples/demo_policy.json: the feed is trusted, each
approval is recorded as ``policy:demo``; the steward task then has nothing to ask), runs
Stage I per fact, Stage II on top of the champion, registers the candidate, gates it and
promotes or holds it. The demo then prints the champion, the facts the run added, the
gate's verdict and the before/after grid. Running it again adds nothing: the feed file is
already ingested, no change is approved (changes of a gate-rejected version wait, pending,
for a steward: the headless demo does not ask), and the champion is printed again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from freshen.config import PROJECT_DIR, Settings
from freshen.errors import FreshenError

SAMPLES = PROJECT_DIR / "feeds" / "samples"


def run_demo(settings: Settings, feed: Path = SAMPLES / "newsroom.jsonl",
             policy: Path = SAMPLES / "demo_policy.json") -> dict:
    from freshen import airflow_local

    t0 = time.time()
    settings.policy = str(policy)
    os.environ["FRESHEN_POLICY"] = str(policy)
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")  # task logs stay in the files
    os.environ["FRESHEN_STEWARD"] = "skip"  # dag.test is headless: no one to answer the steward task
    env = airflow_local.airflow_env(settings)
    settings.drop_dir.mkdir(parents=True, exist_ok=True)
    dropped = settings.drop_dir / feed.name
    if not dropped.exists():
        shutil.copyfile(feed, dropped)
    print(f"running the knowledge_refresh DAG with dag.test() (Airflow home {env['AIRFLOW_HOME']}) ...",
          flush=True)
    run = airflow_local.run_dag(settings)

    from freshen.refresh import lineage
    from registry.audit import audit_version

    states = {f"{ti.task_id}" + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): str(ti.state)
              for ti in run.get_task_instances()}
    if str(run.state) != "success":
        raise FreshenError(f"the refresh DAG run {run.run_id} ended {run.state}: {states}; "
                           f"task logs under {env['AIRFLOW_HOME']}/logs")
    reg = settings.open_registry()
    champion = reg.champion()
    newest = max(reg.versions())
    summary = {"dag_run": run.run_id, "state": str(run.state), "tasks": states, "champion": champion,
               "lineage": lineage(reg, champion), "latest_version": newest,
               "audit": audit_version(reg, settings.open_ledger(), newest), "seconds": round(time.time() - t0, 1)}
    out = settings.out_dir / "demo"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    summary["summary_file"] = str(out / "summary.json")
    return summary
