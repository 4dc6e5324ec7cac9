"""``freshen registry ...``, ``freshen refresh`` and ``freshen audit ...``: the model side of
the service from the command line (thin wrappers over freshen.refresh and registry.audit)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from freshen.cli.common import BY, BY_DEFAULT, HOME, JSON, settings


def _stores(args: argparse.Namespace) -> tuple:
    """The registry and the ledger of the home ``args`` names (what the audit reads)."""
    s = settings(args)
    return s.open_registry(), s.open_ledger()


def registry_init(args: argparse.Namespace) -> int:
    from freshen.refresh import init_registry

    v = init_registry(settings(args, model=args.base), by=args.by)
    print(f"{v.manifest['name']} v{v.number}: base {v.manifest['base']['ref']} "
          f"(sha256 {v.manifest['base']['hash'][:16]}...), aliases {', '.join(v.aliases)}")
    return 0


def registry_list(args: argparse.Namespace) -> int:
    from registry.versions import Registry

    reg = Registry.from_settings(settings(args))
    rows = [reg.version(n).summary() for n in reg.versions()]
    if args.json:
        print(json.dumps(rows, indent=1))
    for r in [] if args.json else rows:
        print(f"v{r['version']:<4} parent {str(r['parent'] or '-'):4} facts {r['facts']:4} gate {r['gate']:9} "
              f"{', '.join(r['aliases'])}")
    return 0


def registry_promote(args: argparse.Namespace) -> int:
    from freshen.refresh import promote

    r = promote(settings(args), args.version, by=args.by, reason=args.reason)
    print(f"champion: v{r.champion} (was v{r.previous}), by {r.by}: {r.reason}")
    if r.dropped_versions:
        print(f"facts of v{', v'.join(map(str, r.dropped_versions))} went back to pending")
    return 0


def refresh_run(args: argparse.Namespace) -> int:
    from freshen.refresh import refresh

    r = refresh(settings(args), by=args.by, limit=args.limit)
    print(json.dumps(r.to_json(), indent=1, default=str))
    return 0


def audit_version(args: argparse.Namespace) -> int:
    from registry import audit

    a = audit.audit_version(*_stores(args), args.version)
    print(json.dumps(a, indent=1, default=str) if args.json else audit.format_version(a))
    return 0


def audit_fact(args: argparse.Namespace) -> int:
    from registry import audit

    a = audit.audit_fact(*_stores(args), args.key)
    print(json.dumps(a, indent=1, default=str) if args.json else audit.format_fact(a))
    return 0


def audit_export(args: argparse.Namespace) -> int:
    from registry import audit

    text = audit.audit_export(*_stores(args), args.format)
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    return 0


def audit_report(args: argparse.Namespace) -> int:
    from registry.report import write_report
    from validation.gx import data_docs_site, file_context

    s = settings(args)
    _, ctx = file_context(s.gx_dir)
    index = write_report(s.open_registry(), s.open_ledger(), args.out, data_docs_site(ctx))
    print(f"wrote {index} (open it in a browser; the directory is self-contained)")
    return 0


def add_parsers(sub) -> None:
    r = sub.add_parser("registry", help="model versions on MLflow: init, list, promote (rollback)")
    rs = r.add_subparsers(dest="action", required=True)
    i = rs.add_parser("init", parents=[HOME, BY_DEFAULT], help="register the base model as version 1")
    i.add_argument("--base", default=None, help="pipeline path or hub id (default: ToyWorld)")
    i.set_defaults(func=registry_init)
    ls = rs.add_parser("list", parents=[HOME, JSON], help="versions with parent, facts, gate status, aliases")
    ls.set_defaults(func=registry_list)
    pr = rs.add_parser("promote", parents=[HOME, BY], help="move the champion to a version (rollback), recorded")
    pr.add_argument("version", type=int)
    pr.add_argument("--reason", required=True)
    pr.set_defaults(func=registry_promote)

    f = sub.add_parser("refresh", parents=[HOME, BY_DEFAULT],
                       help="edit the approved changes into a new version, gate it")
    f.add_argument("--limit", type=int, default=None, help="at most this many facts")
    f.set_defaults(func=refresh_run)

    a = sub.add_parser("audit", help="what changed in a version, the history of a fact, an export")
    as_ = a.add_subparsers(dest="action", required=True)
    v = as_.add_parser("version", parents=[HOME, JSON], help="facts, approvers, parent, gate, promotions of a version")
    v.add_argument("version", type=int)
    v.set_defaults(func=audit_version)
    fa = as_.add_parser("fact", parents=[HOME, JSON], help="the whole history of one change (FEED:ID)")
    fa.add_argument("key")
    fa.set_defaults(func=audit_fact)
    ex = as_.add_parser("export", parents=[HOME], help="every (version, fact) as CSV or JSON")
    ex.add_argument("--format", choices=("csv", "json"), default="json")
    ex.add_argument("--out", type=Path, default=None)
    ex.set_defaults(func=audit_export)
    rp = as_.add_parser("report", parents=[HOME], help="the audit trail as a static HTML site for auditors")
    rp.add_argument("--out", type=Path, required=True, help="directory to write (index.html and its pages)")
    rp.set_defaults(func=audit_report)
