"""The audit trail: for every version, which facts landed, who approved them, which run
made it, what the gate measured and who promoted it; for every fact, its whole history.

Two sources, joined here and nowhere else: the MLflow registry (version manifests, tags,
artifacts) and the ledger (change events, version events).
"""

from __future__ import annotations

import csv
import io
import json
from typing import TYPE_CHECKING

from common.errors import InvalidInput

if TYPE_CHECKING:
    from feeds.ledger import Ledger
    from registry.versions import Registry


def _event_json(e) -> dict:
    return {"at": e.at.isoformat(timespec="seconds"), "event": e.event, "actor": e.actor, "detail": e.detail}


def audit_version(reg: Registry, ledger: Ledger, number: int) -> dict:
    v = reg.version(number)
    events = [_event_json(e) for e in ledger.version_events(reg.name, v.number)]
    gate = next((e for e in reversed(events) if e["event"].startswith("gate_")), None)
    promotions = [e for e in events if e["event"] == "promoted"]
    run = reg.client.get_run(v.run_id)
    m = v.manifest
    return {
        "model": reg.name, "version": v.number, "aliases": v.aliases, "parent": v.parent,
        "run_id": v.run_id, "artifact_uri": run.info.artifact_uri, "code_version": m.get("code_version"),
        "created_at": m.get("created_at"), "created_by": m.get("created_by"),
        "base": m["base"], "chain_length": len(m["chain"]),
        "facts": [{k: getattr(f, k) for k in ("key", "source", "target", "entities", "approved_by", "approved_at",
                                              "ref", "observed_at")} for f in v.facts],
        "hparams": m.get("hparams"),
        "live_facts": len(reg.live_facts(v.number)),  # the latest fact of each source along the lineage
        # ||W_l - W0_l|| / ||W0_l|| per edit layer once this version's edit is applied
        "update_norm": m.get("update_norm"),
        "gate": {"status": v.gate or None, "reasons": v.tags.get("freshen.gate_reasons"),
                 "table": gate["detail"].get("table") if gate else None,
                 "failed": gate["detail"].get("failed") if gate else None,
                 "docs_page": gate["detail"].get("docs_page") if gate else None,
                 "champion_at_gate": gate["detail"].get("champion") if gate else None},
        "promotions": [{"at": e["at"], "by": e["actor"], **e["detail"]} for e in promotions],
        "grid": f"{run.info.artifact_uri}/grid/before_after.png" if v.number > 1 else None,
        "events": events,
    }


def audit_fact(reg: Registry, ledger: Ledger, key: str) -> dict:
    row = ledger.change(key)
    history = []
    for e in ledger.history(key):
        item = _event_json(e)
        if e.event == "received":
            item["detail"] = f"{e.detail} (passed the contract and the GX feed rules)"
        history.append(item)
    versions = []
    for n in reg.versions():
        v = reg.version(n)
        if any(f.key == row.key for f in v.facts):
            versions.append({"version": n, "gate": v.gate, "aliases": v.aliases})
    return {"key": row.key, "feed": row.feed, "id": row.change_id, "revision": row.revision,
            "source": row.source, "target": row.target, "entities": row.entities, "ref": row.ref,
            "status": row.status, "decided_by": row.decided_by,
            "decided_at": row.decided_at.isoformat(timespec="seconds") if row.decided_at else None,
            "version": row.version, "in_versions": versions, "history": history}


EXPORT_FIELDS = ("version", "parent", "gate", "aliases", "run_id", "created_at", "fact", "source", "target",
                 "approved_by", "approved_at", "fact_status_now")


def audit_export(reg: Registry, ledger: Ledger, fmt: str = "json") -> str:
    """One row per (version, fact) — the base version has one row with no fact."""
    if fmt not in ("json", "csv"):
        raise InvalidInput(f"audit export: format must be json or csv, got {fmt!r}")
    rows = []
    for n in reg.versions():
        v = reg.version(n)
        head = {"version": n, "parent": v.parent, "gate": v.gate, "aliases": ",".join(v.aliases),
                "run_id": v.run_id, "created_at": v.manifest.get("created_at")}
        for f in v.facts or [None]:
            rows.append(head | ({"fact": f.key, "source": f.source, "target": f.target,
                                 "approved_by": f.approved_by, "approved_at": f.approved_at,
                                 "fact_status_now": ledger.change(f.key).status} if f else
                                {k: None for k in EXPORT_FIELDS[6:]}))
    if fmt == "json":
        return json.dumps(rows, indent=1)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=EXPORT_FIELDS)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def format_fact(a: dict) -> str:
    lines = [f"{a['key']}: {a['source']!r} -> {a['target']!r}  now {a['status']}"
             + (f" (v{a['version']})" if a["version"] else "")]
    for e in a["history"]:
        who = f" by {e['actor']}" if e["actor"] else ""
        lines.append(f"  {e['at']}  {e['event']:11}{who}  {e['detail'] or ''}")
    for v in a["in_versions"]:
        lines.append(f"  in v{v['version']} (gate {v['gate']}{', ' + ', '.join(v['aliases']) if v['aliases'] else ''})")
    return "\n".join(lines)


def format_version(a: dict) -> str:
    lines = [f"{a['model']} v{a['version']}  aliases: {', '.join(a['aliases']) or '-'}  parent: v{a['parent']}"
             if a["parent"] else f"{a['model']} v{a['version']} (base {a['base']['ref']})  "
                                 f"aliases: {', '.join(a['aliases']) or '-'}",
             f"  run {a['run_id']}  code {a['code_version']}  made {a['created_at']} by {a['created_by']}"]
    if a["facts"]:
        lines.append(f"  facts ({len(a['facts'])}):")
        for f in a["facts"]:
            ents = ", ".join(f"{e['text']} [{e['label']}]" for e in f["entities"] or [])
            lines.append(f"    {f['key']}: {f['source']!r} -> {f['target']!r}  approved by {f['approved_by']} "
                         f"at {f['approved_at']}" + (f"  entities: {ents}" if ents else ""))
    if a.get("live_facts") is not None and a["parent"]:
        lines.append(f"  live facts (latest change of each source along the lineage): {a['live_facts']}")
    if a.get("update_norm"):
        norms = sorted(a["update_norm"].items(), key=lambda x: int(x[0]))
        lines.append("  update norm ||W - W0|| / ||W0|| per edit layer: "
                     + ", ".join(f"layer {l} {v:.3f}" for l, v in norms))
    g = a["gate"]
    if g["table"]:
        lines.append(f"  gate: {g['status']} (against champion v{g['champion_at_gate']})")
        for r in g["table"]:
            base = (f"  base {r['base']:.4f} ({r['vs_base']:+.1%})"
                    if r.get("base") is not None and r.get("vs_base") is not None else "")
            lines.append(f"    {r['metric']:24} candidate {r['candidate']:.4f}  champion {r['champion']:.4f}  "
                         f"delta {r['delta']:+.4f}" + base)
        for f in g["failed"] or []:
            lines.append(f"    FAILED: {f['reason']} (observed {f['observed']})")
        if g["docs_page"]:
            lines.append(f"    GX Data Docs: {g['docs_page']}")
    for p in a["promotions"]:
        lines.append(f"  promoted {p['at']} by {p['by']}: {p.get('reason')} (champion was v{p.get('from')})")
    if a["grid"]:
        lines.append(f"  before/after grid: {a['grid']}")
    return "\n".join(lines)
