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
    before = max(settings.open_registry().versions(), default=0)
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
    ledger = settings.open_ledger()
    summary = {"dag_run": run.run_id, "state": str(run.state), "tasks": states, "champion": champion,
               "lineage": lineage(reg, champion), "latest_version": newest, "new_version": newest > before,
               "feed": feed_account(ledger, dropped, since=t0), "policy": str(policy),
               "audit": audit_version(reg, ledger, newest), "seconds": round(time.time() - t0, 1),
               "home": str(settings.home),
               "versions_dir": str(settings.out_dir / "versions")}  # gate.json, before_after.png per version
    out = settings.out_dir / "demo"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    summary["summary_file"] = str(out / "summary.json")
    return summary


def feed_account(ledger, dropped: Path, since: float) -> dict:
    """What the dropped feed file brought: changes by status, lines quarantined, and when it
    was ingested (``new``: by this run, which started at ``since``, a Unix time)."""
    from collections import Counter

    path = str(dropped.resolve())
    statuses = Counter(r.status for r in ledger.changes() if r.file == path)
    quarantined = [q for q in ledger.quarantined() if q.file == path]
    done = ledger.ingested_file(dropped)
    at = done.ingested_at if done is not None else None
    return {"file": path, "accepted": sum(statuses.values()), "rejected": len(quarantined),
            "status": dict(sorted(statuses.items())), "ingested_at": at.isoformat(timespec="seconds") if at else None,
            "new": at is not None and _unix(at) >= since}


def _unix(at) -> float:
    from datetime import UTC

    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def account(s: dict) -> str:
    """The demo's closing account for a person: what came in, who approved it, the version, the
    gate's verdict and why, the champion, where the pictures and reports are (under 30 lines)."""
    a, g, feed = s["audit"], s["audit"]["gate"], s["feed"]
    approvers = sorted({f["approved_by"] for f in a["facts"]})
    lines = [f"freshen demo: Airflow ran knowledge_refresh ({s['dag_run']}): {s['state']}, "
             f"{len(s['tasks'])} task instances, {s['seconds']:.0f} s",
             f"  came in   {Path(feed['file']).name}" + ("" if feed["new"] else
                                                     f" (already in the ledger since {feed['ingested_at']})")
             + f": {feed['accepted']} changes accepted, {feed['rejected']} lines rejected; now "
             + ", ".join(f"{n} {k}" for k, n in feed["status"].items())]
    if not s["new_version"]:
        lines.append(f"  version   none made: no approved change was waiting (newest v{a['version']}, "
                     f"gate {g['status'] or '-'})")
    else:
        by_policy = f" (policy file {Path(s['policy']).name})" if any(str(b).startswith("policy:")
                                                                      for b in approvers) else ""
        lines += [f"  approved  {len(a['facts'])} changes, by {', '.join(map(str, approvers))}{by_policy}",
                  f"  version   v{a['version']} on top of v{a['parent']}: {len(a['facts'])} facts written, "
                  f"{a.get('live_facts') or len(a['facts'])} live along the lineage"]
        if g["table"]:
            lines.append(f"  gate      {g['status'].upper()} against v{g['champion_at_gate']}"
                         + (": " + "; ".join(f["reason"] for f in g["failed"]) if g["failed"] else ""))
            rule = _rules(Path(s["versions_dir"]) / f"v{a['version']}" / "gate.json")
            for r in g["table"]:
                if r["metric"] in rule:
                    base = f"   base {r['base']:8.3f}" if r.get("base") is not None else ""
                    lines.append(f"              {r['metric']:16} v{a['version']} {r['candidate']:8.3f}   "
                                 f"v{g['champion_at_gate']} {r['champion']:8.3f}{base}   {rule[r['metric']]}")
    lines.append(f"  champion  v{s['champion']} (lineage {' -> '.join(f'v{n}' for n in s['lineage'])})")
    grid = Path(s["versions_dir"]) / f"v{a['version']}" / "before_after.png"
    if a.get("grid"):
        lines.append(f"  grid      {grid if grid.is_file() else a['grid']}  (before | after | target, per fact)")
    if g.get("docs_page"):
        lines.append(f"  GX report {g['docs_page']}")
    lines += [f"  audit     freshen audit report --out report --home {s['home']}  (HTML; or audit version "
              f"{a['version']})",
              f"  a change  freshen facts show {a['facts'][0]['key'] if a['facts'] else 'FEED:ID'} --home {s['home']}"
              "  (history, and the preview the steward saw)",
              f"  summary   {s['summary_file']}"]
    return "\n".join(lines)


def _rules(gate_json: Path) -> dict[str, str]:
    """The gate's thresholds as a person reads them, per metric (from the version's gate.json)."""
    t = json.loads(gate_json.read_text())["thresholds"] if gate_json.is_file() else {}
    rules = {"efficacy": f"needs >= {t['efficacy_min']:.2f}" if "efficacy_min" in t else "",
             "specificity": f"may drop {t['specificity_drop_max']:.2f}" if "specificity_drop_max" in t else "",
             "fid": f"may rise {t['fid_increase_max']:.0%}" if "fid_increase_max" in t else "",
             "specificity_base": f"keeps {t['base_specificity_min']:.0%} of the base's"
             if "base_specificity_min" in t else ""}
    if "base_fid_increase_max" in t:
        rules["fid"] += f" ({t['base_fid_increase_max']:.0%} over the base)"
    return rules
