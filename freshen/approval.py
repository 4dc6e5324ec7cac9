"""Steward approval as an Airflow human-in-the-loop task (providers-standard HITLOperator).

At run time the task lists the changes waiting for a steward (status ``pending``) with
their source, target, NER entities and provenance. The steward picks the changes to approve
(any subset; ``Reject all`` alone rejects every one; ``Reject all`` with changes is refused,
see ``record_answer``). Changes not picked are rejected in the ledger under the steward's
name. No answer before ``response_timeout``: the default option ``Reject all`` is taken, so
silence never approves anything. Changes approved by a policy (trusted feeds) are already
``approved`` and are not asked about. Nothing waiting: the task returns at once without
asking. Headless runs (``make demo`` with ``dag.test``, where no one can answer) set
``FRESHEN_STEWARD=skip``: pending changes then stay pending for a later run, and only
policy approvals go ahead.

Who may answer: the Airflow users named in ``FRESHEN_STEWARDS`` (comma-separated user ids;
the task's ``assigned_users``); anyone else gets 403 from the HITL endpoint. Unset, every
user allowed to see the task may answer; production mode (``FRESHEN_PRODUCTION``) refuses
to parse the DAG without stewards.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.providers.standard.operators.hitl import HITLOperator

REJECT_ALL = "Reject all"


def _ledger():
    from freshen.config import Settings

    return Settings.from_env().open_ledger()


def describe(rows, previews: dict[str, dict] | None = None, link=None) -> str:
    """The changes as Markdown tables: what each says, then (where a preview was made,
    ``freshen.preview``) what it does alone on the champion, with its grid as an image where
    ``link`` makes a URL of a preview file."""
    from freshen.preview import THRESHOLD, summary_line

    lines = ["| change | source | target | entities | provenance |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        ents = ", ".join(f"{e['text']} ({e['label']})" for e in r.entities) or "-"
        prov = f"{r.ref or '-'}; observed {r.observed_at or '-'}; {r.file}:{r.line}"
        lines.append(f"| {r.key} | {r.source} | {r.fact().destination} | {ents} | {prov} |")
    shown = [(r.key, previews[r.key]) for r in rows if previews and previews.get(r.key)]
    if shown:
        lines += ["", f"Each change tried alone on champion v{shown[0][1]['champion']} (the source's images, "
                  f"judged; key overlaps with live facts and probes at cosine >= {THRESHOLD} through P; "
                  "the images before and after):", "",
                  "| change | source drawn before -> after | overlaps flagged | images |", "| --- | --- | --- | --- |"]
        lines += [f"| {key} | {summary_line(p, link)} |" for key, p in shown]
    return "\n".join(lines)


def record_answer(ledger, asked: list[str], chosen: set[str], by: str, timed_out: bool, run_id: str) -> dict:
    """A steward's answer to one approval task, into the ledger: the changes ``asked``
    about and ``chosen`` are approved by ``by``, the others rejected (all of them when
    ``REJECT_ALL`` is chosen); on a timeout the rejections are recorded as the timeout's,
    with that reason. Returns what was asked, approved and rejected, and by whom.

    An answer that picks ``REJECT_ALL`` together with changes can mean either (the form opens
    with ``REJECT_ALL`` selected, since it is also the timeout's default, and a steward may add
    changes without clearing it): it is refused, nothing is decided, and the changes stay
    pending for the next run."""
    if REJECT_ALL in chosen and chosen & set(asked) and not timed_out:
        from freshen.errors import FreshenError

        raise FreshenError(f"the answer of {by} picks {REJECT_ALL!r} and changes "
                           f"({', '.join(sorted(chosen & set(asked)))}); it can mean either, so nothing was "
                           f"decided and the changes stay pending: answer again in the next run, with "
                           f"{REJECT_ALL!r} cleared to approve the changes picked, or alone to reject all")
    approve = [] if REJECT_ALL in chosen else [k for k in asked if k in chosen]
    reject = [k for k in asked if k not in approve]
    if approve:
        ledger.decide(approve, "approved", by=by, comment=f"Airflow run {run_id}")
    if reject:
        why = ("no answer before the approval timeout" if timed_out
               else f"not approved by {by} in Airflow run {run_id}")
        ledger.decide(reject, "rejected", by="timeout" if timed_out else by, comment=why)
    return {"asked": asked, "approved": approve, "rejected": reject, "by": by}


def stewards() -> list[dict] | None:
    """The Airflow users who may answer (``FRESHEN_STEWARDS``), as HITL users; None: anyone."""
    from freshen.config import Settings

    return [{"id": n, "name": n} for n in Settings.from_env().steward_ids] or None


class StewardApproval(HITLOperator):
    def __init__(self, *, response_timeout: timedelta | None = timedelta(hours=24), **kwargs):
        super().__init__(subject="Approve fact changes for the next model version", options=[REJECT_ALL],
                         defaults=[REJECT_ALL], multiple=True, response_timeout=response_timeout,
                         assigned_users=stewards(), **kwargs)

    def execute(self, context):
        from freshen.airflow_plugin import preview_url
        from freshen.config import Settings
        from freshen.preview import read_preview

        settings = Settings.from_env()
        rows = settings.open_ledger().changes("pending")
        if not rows:
            return {"asked": [], "approved": [], "rejected": [], "by": None}
        if os.environ.get("FRESHEN_STEWARD", "ask") == "skip":
            return {"asked": [], "approved": [], "rejected": [], "by": None,
                    "left_pending": [r.key for r in rows]}
        self.options = [r.key for r in rows] + [REJECT_ALL]
        # the task resumes in a new process, from the DAG file: keep what was asked
        context["ti"].xcom_push(key="asked", value=self.options)
        self.body = (f"Pick the changes to approve and clear {REJECT_ALL!r} (it starts selected: it is what "
                     "no answer before the timeout means); the changes not picked are rejected. "
                     f"{REJECT_ALL!r} alone rejects every change; picked together with changes, the answer "
                     f"is refused and nothing is decided.\n\n"
                     + describe(rows, {r.key: read_preview(settings, r.key) for r in rows}, preview_url))
        return super().execute(context)

    def execute_complete(self, context, event):
        self.options = context["ti"].xcom_pull(task_ids=self.task_id, key="asked") or self.options
        payload = super().execute_complete(context, event)
        chosen = set(payload["chosen_options"])
        user = payload.get("responded_by_user") or {}
        timed_out = "error_type" in self.hitl_summary_extra or not user
        by = user.get("name") or user.get("id") or "steward"
        asked = [o for o in self.options if o != REJECT_ALL]
        return record_answer(_ledger(), asked, chosen, by, timed_out, context["run_id"])
