"""``freshen feeds ...`` and ``freshen facts ...``: the front door, from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from feeds.benchmarks import FORMATS as BENCHMARKS
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


def feeds_import(args: argparse.Namespace) -> int:
    from feeds.benchmarks import load

    bench = load(args.format, args.file)
    out = bench.write_feed(args.out)
    summary = {**bench.summary(), "out": str(out.resolve())}
    if args.json:
        print(json.dumps(summary, indent=1, ensure_ascii=False))
        return 0
    print(f"{bench.file}: {summary['edits']} edits: {summary['written']} written to {out}, "
          f"{len(summary['merged'])} merged into the single edits they repeat, {len(summary['skipped'])} skipped")
    for s in summary["skipped"]:
        print(f"  skipped {s['entry']}: {s['reason']}")
    for source, ids in summary["repeated_sources"].items():
        print(f"  {source!r} is edited {len(ids)} ways ({', '.join(ids)}): the ledger holds them as conflicts")
    print("probes: " + ", ".join(f"{k} {v}" for k, v in summary["probes"].items()))
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


def facts_revert(args: argparse.Namespace) -> int:
    from freshen.refresh import request_revert

    r = request_revert(settings(args), args.key, by=args.by, reason=args.reason)
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print(f"{r['key']}: revert of {r['reverts']} requested by {args.by}; now {r['status']}")
        if r["status"] in ("pending", "conflict"):
            rival = (" (another change of the same source waits too: approving one rejects the other)"
                     if r["status"] == "conflict" else "")
            print(f"  a steward approves it (freshen facts approve {r['key']} --by NAME){rival}; the next refresh "
                  "applies it")
    return 0


def facts_preview(args: argparse.Namespace) -> int:
    from freshen.preview import format_preview, make_previews

    done = make_previews(settings(args), args.keys, seeds=args.seeds)
    print(json.dumps(done, indent=1) if args.json else "\n".join(format_preview(p) for p in done))
    return 0


def facts_show(args: argparse.Namespace) -> int:
    from freshen.preview import DECIDABLE, format_preview, read_preview
    from registry import audit

    s = settings(args)
    a = audit.audit_fact(s.open_registry(), s.open_ledger(), args.key)
    a["preview"] = read_preview(s, a["key"])
    a["interference"] = (a["preview"] or {}).get("interference")
    if args.json:
        print(json.dumps(a, indent=1, default=str))
        return 0
    print(audit.format_fact(a))
    if a["preview"]:
        print(format_preview(a["preview"]))
    elif a["status"] in DECIDABLE:
        print(f"  no preview yet (freshen facts preview {a['key']})")
    return 0


def add_parsers(sub) -> None:
    f = sub.add_parser("feeds", help="take in feeds of fact changes")
    fs = f.add_subparsers(dest="action", required=True)
    i = fs.add_parser("ingest", parents=[HOME, JSON], help="ingest a feed file or every file of a drop directory")
    i.add_argument("path", type=Path)
    i.add_argument("--feed", default=None, help="feed name (default: the file name without suffix)")
    i.set_defaults(func=feeds_ingest)
    im = fs.add_parser("import", parents=[JSON],
                       help="a public benchmark's edits (CAKE, RoAD, TIMED) as a feed file of fact changes")
    im.add_argument("--format", required=True, choices=BENCHMARKS)
    im.add_argument("file", type=Path, help="the benchmark's published file (CAKE.json, RoAD_test.csv, "
                    "TIMED_test_set*.csv)")
    im.add_argument("--out", type=Path, required=True, help="the feed to write (JSON Lines)")
    im.set_defaults(func=feeds_import)

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
    pv = fas.add_parser("preview", parents=[HOME, JSON],
                        help="a trial edit of each change alone on the champion, and its key overlaps")
    pv.add_argument("keys", nargs="+", help="FEED:ID")
    pv.add_argument("--seeds", type=int, default=2, help="images per prompt, before and after")
    pv.set_defaults(func=facts_preview)
    sh = fas.add_parser("show", parents=[HOME, JSON], help="one change: its history, versions and preview")
    sh.add_argument("key", help="FEED:ID")
    sh.set_defaults(func=facts_show)
    rv = fas.add_parser("revert", parents=[HOME, BY, JSON],
                        help="take a change live in the champion back out (a revert change, approved like any)")
    rv.add_argument("key", help="FEED:ID of the change to revert")
    rv.add_argument("--reason", required=True)
    rv.set_defaults(func=facts_revert)
