"""``freshen edit`` (one batch of fact changes into a model, once, outside the service),
``freshen bench suite`` (a public benchmark's protocol on a real model) and ``freshen demo``
(the main job on the embedded ToyWorld default)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from feeds.benchmarks import FORMATS as BENCHMARKS
from freshen.cli.common import HOME, JSON, settings


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


def bench_suite(args: argparse.Namespace) -> int:
    from validation.suite import run_suite

    if args.batch is not None and args.batch < 1:
        raise SystemExit("freshen bench suite: --batch must be at least 1")
    results = run_suite(args.format, args.file, args.model, args.out, args.clip, args.captions,
                        fid_reference=args.fid_reference, batch=args.batch, seeds=args.seeds, steps=args.steps,
                        baseline=args.baseline, hparams=args.hparams, ner_model=args.ner, limit=args.limit,
                        progress=not args.json)
    if args.json:
        print(json.dumps({k: results[k] for k in ("benchmark", "prompts", "unedited", "edited", "fid", "seconds")
                          if k in results}, indent=1, ensure_ascii=False))
    else:
        print((args.out / "results.md").read_text())
        print(f"wrote {args.out / 'results.json'}")
    return 0


def add_parsers(sub) -> None:
    e = sub.add_parser("edit", help="apply one batch of fact changes to a model, once")
    e.add_argument("--facts", type=Path, required=True,
                   help="JSON Lines: id, source, target, optional entities [{text,start,end,label}]")
    e.add_argument("--out", type=Path, required=True, help="directory for factors and diagnostics")
    e.add_argument("--model", default=None, help="pipeline path or hub id (default: ToyWorld)")
    e.add_argument("--ner", default=None, help="NER model for facts without entities")
    e.add_argument("--hparams", type=Path, default=None, help="EditHParams as JSON (default: the model's preset)")
    e.add_argument("--captions", type=Path, default=None,
                   help="caption corpus for C0, one per line (default: ToyWorld's)")
    e.add_argument("--save-model", action="store_true", help="also save the edited pipeline")
    e.set_defaults(func=edit_run)

    b = sub.add_parser("bench", help="public benchmarks on a real model")
    bs = b.add_subparsers(dest="action", required=True)
    su = bs.add_parser("suite", parents=[JSON], help="a benchmark's edits applied and judged with CLIP "
                       "(efficacy, generality, specificity; CAKE also kgemap and compo; FID)")
    su.add_argument("format", choices=BENCHMARKS)
    su.add_argument("file", type=Path, help="the benchmark's published file")
    su.add_argument("--model", required=True, help="Stable Diffusion pipeline: local path or cached hub id")
    su.add_argument("--out", type=Path, required=True, help="directory for results.json, results.md, efficacy.png")
    su.add_argument("--clip", default="openai/clip-vit-large-patch14",
                    help="CLIP judge: local path or cached hub id (default %(default)s)")
    su.add_argument("--captions", type=Path, required=True, help="caption corpus for C0, one per line")
    su.add_argument("--fid-reference", type=Path, default=None, help="folder of reference images for FID")
    su.add_argument("--batch", type=int, default=None,
                    help="apply the edits in sequential batches of this many (default: all at once)")
    su.add_argument("--seeds", type=int, default=1, help="images per prompt (default %(default)s)")
    su.add_argument("--steps", type=int, default=None, help="sampling steps (default: the pipeline's)")
    su.add_argument("--baseline", action="store_true", help="also judge the unedited model on the same prompts")
    su.add_argument("--hparams", type=Path, default=None, help="EditHParams as JSON (default: the model's preset)")
    su.add_argument("--ner", default=None, help="NER model for edits the benchmark names no entity for "
                    "(RoAD, TIMED); production: dslim/bert-large-NER")
    su.add_argument("--limit", type=int, default=None, help="only the first N edits (and their probes)")
    su.set_defaults(func=bench_suite)

    d = sub.add_parser("demo", parents=[HOME], help="the main job on the embedded ToyWorld default")
    d.add_argument("--feed", type=Path, default=None, help="feed file to drop (default: the sample feed)")
    d.add_argument("--policy", type=Path, default=None, help="approval policy (default: the demo's)")
    d.set_defaults(func=demo_run)
