"""``freshen feeds ...`` and ``freshen facts ...``: the front door, from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from freshen.cli.common import BY, HOME, JSON, settings


def feeds_ingest(args: argparse.Namespace) -> int:
    from freshen.refresh import ingest_feeds

    summaries = ingest_feeds(settings(args), args.path, feed=args.feed)
    if args.json:
        print(json.dumps(summaries, indent=1))
        return 0
    for s in summaries:
        state = " (already ingested: nothing added)" if s["already_ingested"] else ""
        print(f"{s['feed']}: {s['lines']} lines: {s['accepted']} accepted, {s['rejected']} rejected, "
              f"{s['conflicts']} conflicts, {s['duplicates']} duplicates{state}")
        for r in s["rejections"]:
            print(f"  line {r['line']} id {r['id']!r} field {r['field']!r}: {r['reason']}")
    if summaries:
        print(f"validation report: {summaries[-1]['report']}")
    return 0


def facts_list(args: argparse.Namespace) -> int:
    rows = settings(args).open_ledger().changes(args.status)
    out = [{"key": r.key, "status": r.status, "source": r.source, "target": r.target,
            "entities": [(e["text"], e["label"]) for e in r.entities], "ref": r.ref,
            "decided_by": r.decided_by, "decided_at": r.decided_at.isoformat() if r.decided_at else None,
            "comment": r.comment, "version": r.version} for r in rows]
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for r in out:
            who = f" by {r['decided_by']}" if r["decided_by"] else ""
            print(f"{r['key']:28} {r['status']:11}{who:22} {r['source']!r} -> {r['target']!r}")
    return 0


def facts_decide(args: argparse.Namespace) -> int:
    decision = "approved" if args.action == "approve" else "rejected"
    import getpass

    done = settings(args).open_ledger().decide(args.ids, decision, by=args.by, comment=args.comment,
                                               via=f"freshen CLI, OS user {getpass.getuser()}")
    for key in done:
        print(f"{key}: {decision} by {args.by}")
    return 0


def add_parsers(sub) -> None:
    f = sub.add_parser("feeds", help="take in feeds of fact changes")
    fs = f.add_subparsers(dest="action", required=True)
    i = fs.add_parser("ingest", parents=[HOME, JSON], help="ingest a feed file or every file of a drop directory")
    i.add_argument("path", type=Path)
    i.add_argument("--feed", default=None, help="feed name (default: the file name without suffix)")
    i.set_defaults(func=feeds_ingest)

    fa = sub.add_parser("facts", help="list, approve and reject fact changes")
    fas = fa.add_subparsers(dest="action", required=True)
    ls = fas.add_parser("list", parents=[HOME, JSON], help="the ledger's changes, by status")
    ls.add_argument("--status", default=None)
    ls.set_defaults(func=facts_list)
    for action in ("approve", "reject"):
        d = fas.add_parser(action, parents=[HOME, BY], help=f"{action} changes (FEED:ID ...)")
        d.add_argument("ids", nargs="+", help="FEED:ID")
        d.add_argument("--comment", required=action == "reject", default=None)
        d.set_defaults(func=facts_decide)
