"""The auditor's report: the audit trail as a static HTML site to hand to someone who does
not run the CLI (``freshen audit report --out DIR``).

``index.html`` lists the versions, the champion's history (who moved it, when, why) and every
fact; ``versions/vN.html`` a version's lineage, facts with their approvers, the gate's table
against the champion and the base, update norms and before/after grid; ``facts/*.html`` one
fact's history from receipt to the version it lives in. The GX Data Docs (feed validations
and gate runs) are copied beside the pages, so every link stays inside ``DIR``.

The content is what ``registry.audit`` reads from the registry and the ledger; this module
only lays it out.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from jinja2 import DictLoader, Environment, select_autoescape

from common.hashing import key_file_name
from registry.audit import audit_fact, audit_version

if TYPE_CHECKING:
    from feeds.ledger import Ledger
    from registry.versions import Registry

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; } td, th { border: 1px solid #ddd; padding: .25em .6em; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.passed { color: #17692a; font-weight: 600; } .failed { color: #a11; font-weight: 600; }
.muted { color: #777; } nav { margin-bottom: 1em; } code { background: #f4f4f4; padding: 0 .2em; }
img.grid { max-width: 100%; border: 1px solid #ddd; }
"""

LAYOUT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<link rel="stylesheet" href="{{ root }}style.css"></head><body>
<nav><a href="{{ root }}index.html">{{ model }}: audit report</a>{% if docs %} ·
<a href="{{ root }}{{ docs }}">GX Data Docs</a>{% endif %}</nav>
{% block body %}{% endblock %}
<p class="muted">Written {{ written }} by <code>freshen audit report</code>.</p>
</body></html>"""

INDEX = """{% extends "layout" %}{% block body %}
<h1>{{ model }}: audit report</h1>
<p>Champion: {% if champion %}<a href="versions/v{{ champion }}.html">v{{ champion }}</a>{% else %}none{% endif %}.
{{ versions | length }} versions, {{ facts | length }} fact changes in the ledger.</p>
<h2>Versions</h2>
<table><tr><th>version</th><th>parent</th><th>facts</th><th>gate</th><th>aliases</th><th>made</th><th>by</th></tr>
{% for v in versions %}<tr><td><a href="versions/v{{ v.version }}.html">v{{ v.version }}</a></td>
<td>{% if v.parent %}v{{ v.parent }}{% else %}<span class="muted">base</span>{% endif %}</td>
<td class="num">{{ v.facts | length }}</td><td class="{{ v.gate.status or '' }}">{{ v.gate.status or '-' }}</td>
<td>{{ v.aliases | join(', ') }}</td><td>{{ v.created_at or '' }}</td><td>{{ v.created_by or '' }}</td></tr>
{% endfor %}</table>
<h2>Champion history</h2>
{% if promotions %}<table><tr><th>at</th><th>champion</th><th>was</th><th>by</th><th>why</th></tr>
{% for p in promotions %}<tr><td>{{ p.at }}</td><td><a href="versions/v{{ p.version }}.html">v{{ p.version }}</a></td>
<td>{% if p.get('from') %}v{{ p['from'] }}{% endif %}</td><td>{{ p.by }}</td>
<td>{{ p.reason }}{% if p.manual %} (by hand){% endif %}</td></tr>{% endfor %}</table>
{% else %}<p>The base has been champion since registration.</p>{% endif %}
<h2>Facts</h2>
<table><tr><th>fact</th><th>source</th><th>target</th><th>status</th><th>decided by</th><th>version</th></tr>
{% for f in facts %}<tr><td><a href="facts/{{ f.page }}">{{ f.key }}</a></td><td>{{ f.source }}</td>
<td>{{ f.target }}</td><td>{{ f.status }}</td><td>{{ f.decided_by or '' }}</td>
<td>{% if f.version %}<a href="versions/v{{ f.version }}.html">v{{ f.version }}</a>{% endif %}</td></tr>
{% endfor %}</table>
{% endblock %}"""

VERSION = """{% extends "layout" %}{% block body %}
<h1>{{ model }} v{{ v.version }}{% if v.aliases %} ({{ v.aliases | join(', ') }}){% endif %}</h1>
<p>Lineage: {% for n in lineage %}<a href="v{{ n }}.html">v{{ n }}</a>{% if not loop.last %} &rarr; {% endif %}
{% endfor %}{% if not v.parent %}(base <code>{{ v.base.ref }}</code>){% endif %}</p>
<p>Made {{ v.created_at or '' }} by {{ v.created_by or '' }}; MLflow run <code>{{ v.run_id }}</code>,
code <code>{{ v.code_version }}</code>; {{ v.live_facts }} live facts along the lineage.</p>
<h2>Facts ({{ v.facts | length }})</h2>
{% if v.facts %}<table><tr><th>fact</th><th>source</th><th>target</th><th>approved by</th><th>approved at</th>
<th>entities</th><th>ref</th></tr>
{% for f in v.facts %}<tr><td><a href="../facts/{{ f.page }}">{{ f.key }}</a></td><td>{{ f.source }}</td>
<td>{{ f.target }}</td><td class="approver">{{ f.approved_by }}</td><td>{{ f.approved_at }}</td>
<td>{% for e in f.entities or [] %}{{ e.text }} [{{ e.label }}]{% if not loop.last %}, {% endif %}{% endfor %}</td>
<td>{{ f.ref or '' }}</td></tr>{% endfor %}</table>
{% else %}<p>The base model: no facts edited.</p>{% endif %}
<h2>Gate</h2>
{% if v.gate.table %}<p class="{{ v.gate.status }}">{{ v.gate.status }}</p>
<p>Against champion v{{ v.gate.champion_at_gate }} and the unedited base:</p>
<table><tr><th>metric</th><th>candidate</th><th>champion</th><th>delta</th><th>relative</th><th>base</th>
<th>vs base</th></tr>
{% for r in v.gate.table %}<tr><td>{{ r.metric }}</td><td class="num">{{ fmt(r.candidate) }}</td>
<td class="num">{{ fmt(r.champion) }}</td><td class="num">{{ fmt(r.delta, '+.4f') }}</td>
<td class="num">{{ fmt(r.relative, '+.1%') }}</td><td class="num">{{ fmt(r.get('base')) }}</td>
<td class="num">{{ fmt(r.get('vs_base'), '+.1%') }}</td></tr>{% endfor %}</table>
{% for f in v.gate.failed or [] %}<p class="failed">Failed: {{ f.reason }} (observed {{ f.observed }})</p>{% endfor %}
{% if gate_page %}<p><a href="../{{ gate_page }}">The gate's GX validation result</a></p>{% endif %}
{% elif v.parent %}<p>Not gated.</p>{% else %}<p>The base is not gated.</p>{% endif %}
{% if v.update_norm %}<h2>Update norms</h2>
<p>||W<sub>l</sub> &minus; W0<sub>l</sub>|| / ||W0<sub>l</sub>|| per edit layer once this version's edit is applied.</p>
<table><tr><th>layer</th>{% for l, x in norms %}<td class="num">{{ l }}</td>{% endfor %}</tr>
<tr><th>norm</th>{% for l, x in norms %}<td class="num">{{ fmt(x, '.3f') }}</td>{% endfor %}</tr></table>{% endif %}
{% if grid %}<h2>Before and after</h2><img class="grid" src="../{{ grid }}" alt="before/after grid of v{{ v.version }}">
{% endif %}
<h2>Events</h2>
<table><tr><th>at</th><th>event</th><th>by</th><th>detail</th></tr>
{% for e in v.events %}<tr><td>{{ e.at }}</td><td>{{ e.event }}</td><td>{{ e.actor or '' }}</td>
<td>{{ brief(e.detail) }}</td></tr>{% endfor %}</table>
{% endblock %}"""

FACT = """{% extends "layout" %}{% block body %}
<h1>{{ f.key }}</h1>
<p><q>{{ f.source }}</q> &rarr; <q>{{ f.target }}</q> (revision {{ f.revision }}){% if f.ref %}, ref
<code>{{ f.ref }}</code>{% endif %}.</p>
<p>Now <b>{{ f.status }}</b>{% if f.version %} in <a href="../versions/v{{ f.version }}.html">v{{ f.version }}</a>
{% endif %}{% if f.decided_by %}; decided by {{ f.decided_by }} at {{ f.decided_at }}{% endif %}.</p>
{% if f.entities %}<p>Entities: {% for e in f.entities %}{{ e.text }} [{{ e.label }}]{% if not loop.last %}, {% endif %}
{% endfor %}</p>{% endif %}
<h2>History</h2>
<table><tr><th>at</th><th>event</th><th>by</th><th>detail</th></tr>
{% for e in f.history %}<tr><td>{{ e.at }}</td><td>{{ e.event }}</td><td>{{ e.actor or '' }}</td>
<td>{{ e.detail or '' }}</td></tr>{% endfor %}</table>
<h2>In versions</h2>
{% if f.in_versions %}<ul>{% for v in f.in_versions %}
<li><a href="../versions/v{{ v.version }}.html">v{{ v.version }}</a>
(gate {{ v.gate or '-' }}{% if v.aliases %}; {{ v.aliases | join(', ') }}{% endif %})</li>{% endfor %}</ul>
{% else %}<p>Not edited into any version.</p>{% endif %}
{% endblock %}"""


def page_name(key: str) -> str:
    """A fact's page (its key made a safe file name)."""
    return f"{key_file_name(key)}.html"


def _fmt(x, spec: str = ".4f") -> str:
    return "" if x is None else format(x, spec)


def _brief(detail) -> str:
    """A version event's detail in one line (the gate's table is shown on its own)."""
    if isinstance(detail, dict):
        return "; ".join(f"{k}: {v}" for k, v in detail.items() if k not in ("table", "failed") and v is not None)
    return "" if detail is None else str(detail)


def _copy_artifact(uri: str, dest: Path) -> bool:
    """One registry artifact (a file) copied to ``dest``; False where the version has none."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        try:
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except (OSError, mlflow.exceptions.MlflowException):
            return False
        if not got.is_file():
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(got, dest)
    return True


def write_report(reg: Registry, ledger: Ledger, out: Path, gx_site: Path | None = None) -> Path:
    """The site in ``out`` (created or refreshed); returns ``out/index.html``."""
    out = Path(out)
    for sub in ("versions", "facts", "img"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    docs = None
    if gx_site is not None and (gx_site / "index.html").is_file():
        shutil.copytree(gx_site, out / "datadocs", dirs_exist_ok=True)
        docs = "datadocs/index.html"
    env = Environment(loader=DictLoader({"layout": LAYOUT, "index": INDEX, "version": VERSION, "fact": FACT}),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    common = dict(model=reg.name, docs=docs, fmt=_fmt, brief=_brief,
                  written=datetime.now(UTC).isoformat(timespec="seconds"))
    (out / "style.css").write_text(CSS)

    versions = [audit_version(reg, ledger, n) for n in reg.versions()]
    parents = {v["version"]: v["parent"] for v in versions}
    promotions = sorted(({"version": v["version"], **p} for v in versions for p in v["promotions"]),
                        key=lambda p: p["at"])
    for v in versions:
        for f in v["facts"]:
            f["page"] = page_name(f["key"])
        lineage, n = [], v["version"]
        while n:
            lineage.insert(0, n)
            n = parents.get(n)
        grid = None
        if v["grid"] and _copy_artifact(v["grid"], out / "img" / f"v{v['version']}_grid.png"):
            grid = f"img/v{v['version']}_grid.png"
        gate_page = None
        if docs and v["gate"]["docs_page"] and gx_site is not None:
            page = Path(v["gate"]["docs_page"])
            if page.is_relative_to(gx_site) and (out / "datadocs" / page.relative_to(gx_site)).is_file():
                gate_page = f"datadocs/{page.relative_to(gx_site).as_posix()}"
        norms = sorted((v["update_norm"] or {}).items(), key=lambda x: int(x[0]))
        html = env.get_template("version").render(
            v=v, lineage=lineage, grid=grid, gate_page=gate_page, norms=norms, root="../",
            title=f"{reg.name} v{v['version']}", **common)
        (out / "versions" / f"v{v['version']}.html").write_text(html)

    facts = []
    for row in ledger.changes():
        f = audit_fact(reg, ledger, row.key)
        f["page"] = page_name(row.key)
        facts.append(f)
        (out / "facts" / f["page"]).write_text(
            env.get_template("fact").render(f=f, root="../", title=f["key"], **common))
    index = out / "index.html"
    index.write_text(env.get_template("index").render(
        versions=versions, promotions=promotions, facts=facts, champion=reg.alias("champion"), root="",
        title=f"{reg.name}: audit report", **common))
    return index
