"""knowledge_refresh: feed -> validation + NER -> preview -> steward approval -> Stage I per fact ->
Stage II + candidate -> gate -> promote or hold -> audit.

Scheduled (cron, FRESHEN_REFRESH_CRON, default daily at 03:00 UTC; "none": no timed runs)
and triggered by the feed drop Asset (a producer, or the REST API, emits an event after
writing a feed file).
Every task calls one library function (freshen.refresh, freshen.approval); XCom carries
ids and paths only; nothing heavy is imported at the top of this file.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable, get_current_context, task

from freshen.approval import StewardApproval

FEED_DROP = Asset(os.environ.get("FRESHEN_FEED_ASSET", "file:///freshen/feeds/drop"), group="freshen")
POOL = os.environ.get("FRESHEN_STAGE1_POOL", "gpu")
QUEUE = os.environ.get("FRESHEN_STAGE1_QUEUE", "gpu")  # the Celery queue of the GPU workers
CRON = os.environ.get("FRESHEN_REFRESH_CRON", "0 3 * * *")
APPROVAL_TIMEOUT = timedelta(minutes=float(os.environ.get("FRESHEN_APPROVAL_TIMEOUT_MINUTES", 24 * 60)))


def _settings():
    from freshen.config import Settings

    return Settings.from_env()


with DAG(
    dag_id="knowledge_refresh",
    schedule=(AssetOrTimeSchedule(timetable=CronTriggerTimetable(CRON, timezone="UTC"), assets=FEED_DROP)
              if CRON.lower() != "none" else FEED_DROP),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # edits are sequential: one refresh at a time
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    tags=["freshen"],
    doc_md=__doc__,
) as dag:

    @task
    def ingest() -> list[dict]:
        """Every new file of the drop directory: contract + GX rules (Data Docs), recorded."""
        from freshen.refresh import ingest_feeds

        return ingest_feeds(_settings(), ner=False)

    @task
    def ner() -> int:
        """Entities of every change that has none yet (bert-large-NER in production)."""
        from freshen.refresh import tag_new_entities

        return tag_new_entities(_settings())

    @task
    def preview() -> list[str]:
        """A trial edit of each waiting change alone on the champion, with its key overlaps,
        for the steward (its Stage I is reused by the refresh)."""
        from freshen.preview import preview_waiting

        return preview_waiting(_settings())

    approval = StewardApproval(task_id="steward_approval", response_timeout=APPROVAL_TIMEOUT, retries=0)

    @task
    def plan() -> dict:
        """The approved changes on top of the champion, as a batch directory (a version an
        earlier run registered and never gated is gated first)."""
        from freshen.refresh import gate_pending, init_registry, plan_batch

        s = _settings()
        init_registry(s)
        gate_pending(s)
        batch = plan_batch(s)
        if batch is None:
            return {"dir": None, "facts": []}
        return {"dir": str(batch.dir), "facts": [f.key for f in batch.facts]}

    @task
    def fan_out(batch: dict) -> list[dict]:
        return [{"batch_dir": batch["dir"], "index": i, "key": k} for i, k in enumerate(batch["facts"])]

    @task(pool=POOL, queue=QUEUE, retries=2, map_index_template="{{ fact_key }}",
          retry_delay=timedelta(seconds=float(os.environ.get("FRESHEN_STAGE1_RETRY_DELAY_SECONDS", 30))))
    def stage1(item: dict) -> str:
        """Stage I for one fact (a mapped task per fact)."""
        from pathlib import Path

        from freshen.refresh import stage1 as run

        get_current_context()["fact_key"] = item["key"]
        run(_settings(), Path(item["batch_dir"]), [item["index"]])
        return item["key"]

    @task
    def stage2(batch: dict, done: list[str]) -> int | None:
        """Stage II on top of the champion; registered as the candidate."""
        from pathlib import Path

        from freshen.refresh import stage2 as run

        return run(_settings(), Path(batch["dir"]), by="airflow") if batch["dir"] else None

    @task
    def gate(version: int | None) -> dict:
        """Candidate vs champion; GX suite; promote or hold."""
        from freshen.refresh import gate as run
        from freshen.results import GateResult

        if version is None:
            return GateResult("nothing to do", None).to_json()
        return run(_settings(), version).to_json()

    @task
    def audit(verdict: dict) -> dict:
        """Summary of the run for the UI: champion, facts added, gate verdict, grid path."""
        from freshen.refresh import audit_summary
        from freshen.results import GateResult

        return audit_summary(_settings(), GateResult.from_json(verdict))

    batch = plan()
    approval_done = ingest() >> ner() >> preview() >> approval
    approval_done >> batch
    done = stage1.expand(item=fan_out(batch))
    audit(gate(stage2(batch, done)))
