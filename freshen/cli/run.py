"""``freshen edit`` (one batch of fact changes into a model, once, outside the service) and
``freshen demo`` (the main job on the embedded ToyWorld default)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from freshen.cli.common import HOME, settings


def demo_run(args: argparse.Namespace) -> int:
    from freshen.demo import account, run_demo

    kw = {k: v for k, v in (("feed", args.feed), ("policy", args.policy)) if v is not None}
    print(account(run_demo(settings(args), **kw)))
    return 0


def edit_run(args: argparse.Namespace) -> int:
    from freshen.oneoff import edit_from_file

    summary = edit_from_file(settings(args, model=args.model, ner_model=args.ner), args.facts, args.out,
                             hparams=args.hparams, captions=args.captions, save_model=args.save_model)
    print(json.dumps(summary, indent=1))
    return 0


def add_parsers(sub) -> None:
    e = sub.add_parser("edit", help="apply one batch of fact changes to a model, once")
    e.add_argument("--facts", type=Path, required=True,
                   help="JSON Lines: id, source, target, optional entities [{text,label,start,end}]")
    e.add_argument("--out", type=Path, required=True, help="directory for factors and diagnostics")
    e.add_argument("--model", default=None, help="pipeline path or hub id (default: ToyWorld)")
    e.add_argument("--ner", default=None, help="NER model for facts without entities")
    e.add_argument("--hparams", type=Path, default=None, help="EditHParams as JSON")
    e.add_argument("--captions", type=Path, default=None,
                   help="caption corpus for C0, one per line (default: ToyWorld's)")
    e.add_argument("--save-model", action="store_true", help="also save the edited pipeline")
    e.set_defaults(func=edit_run)

    d = sub.add_parser("demo", parents=[HOME], help="the main job on the embedded ToyWorld default")
    d.add_argument("--feed", type=Path, default=None, help="feed file to drop (default: the sample feed)")
    d.add_argument("--policy", type=Path, default=None, help="approval policy (default: the demo's)")
    d.set_defaults(func=demo_run)
