"""The ``freshen`` command line. Each subcommand is a thin wrapper over a library function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _toyworld_generate(args: argparse.Namespace) -> int:
    from toyworld.world import WORLDS, generate

    spec = {**WORLDS[args.world], **({} if args.seed is None else {"seed": args.seed})}
    world = generate(**spec)
    world.write(args.out)
    print(f"wrote ToyWorld {args.world} (seed {spec['seed']}, {world.size()}) to {args.out}")
    return 0


def _toyworld_train(args: argparse.Namespace) -> int:
    import torch

    from toyworld import paths, train
    from toyworld.world import World

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # tiny activations late in training are slow on CPU otherwise
    where = paths.world_paths(args.world)
    world = World.read(where.data_dir)
    kw = {} if args.seed is None else {"seed": args.seed}
    if args.steps is not None:
        kw["epochs" if args.model == "ner" else "steps"] = args.steps
    out = args.out
    if args.model == "judge":
        result = train.train_judge(world, out or paths.JUDGE_DIR, **kw)
    elif args.model == "ner":
        result = train.train_ner(world, out or where.ner_dir, **kw)
    elif args.world == "large":
        if args.lr is not None:
            kw["lr"] = args.lr
        result = train.train_distilled(world, out or where.diffusion_dir, teacher_dir=paths.DIFFUSION_DIR,
                                       judge_dir=paths.JUDGE_DIR, init_from=args.init_from,
                                       attribute_weight=args.attribute_weight,
                                       paraphrase_weight=args.paraphrase_weight, stop_after=args.stop_after,
                                       **kw)
    else:
        if args.lr is not None:
            kw["lr"] = args.lr
        result = train.train_diffusion(world, out or paths.DIFFUSION_DIR, judge_dir=paths.JUDGE_DIR,
                                       init_from=args.init_from, attribute_weight=args.attribute_weight,
                                       paraphrase_weight=args.paraphrase_weight,
                                       content_tokens_only=args.content_tokens_only, **kw)
    print(json.dumps(result))
    return 0


def _large_defaults(args: argparse.Namespace) -> None:
    """The large world's check samples held-out prompts, at 2 seeds, unless told otherwise."""
    from toyworld.check import LARGE_SAMPLE

    if args.world == "large":
        args.sample = LARGE_SAMPLE if args.sample is None else args.sample
        args.seeds = 2 if args.seeds is None else args.seeds
    elif args.seeds is None:
        args.seeds = 4


def _toyworld_check(args: argparse.Namespace) -> int:
    from toyworld.check import run_check

    _large_defaults(args)
    result = run_check(seeds=args.seeds, seed=args.seed, progress=not args.json, world_name=args.world,
                       sample=args.sample)
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return 0


def _toyworld_release(args: argparse.Namespace) -> int:
    from toyworld.check import run_check
    from toyworld.release import release

    _large_defaults(args)
    check = run_check(seeds=args.seeds, progress=True, world_name=args.world, sample=args.sample)
    release(check, args.world)
    print(json.dumps(check))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from freshen.config import Settings
    from freshen.demo import run_demo
    from registry.audit import format_version

    kw = {k: v for k, v in (("feed", args.feed), ("policy", args.policy)) if v is not None}
    s = run_demo(Settings.from_env(home=args.home), **kw)
    ran = sorted(k for k, v in s["tasks"].items() if v == "success")
    print(f"Airflow run {s['dag_run']}: {s['state']} ({len(ran)} tasks ran: {', '.join(ran)})")
    print(format_version(s["audit"]))
    print(f"champion: v{s['champion']} (lineage {' -> '.join(f'v{n}' for n in s['lineage'])}); "
          f"{s['seconds']} s; summary {s['summary_file']}")
    return 0


def _edit(args: argparse.Namespace) -> int:
    from freshen.config import Settings
    from freshen.oneoff import edit_from_file

    settings = Settings.from_env(model=args.model, ner_model=args.ner)
    summary = edit_from_file(settings, args.facts, args.out, hparams=args.hparams,
                             captions=args.captions, save_model=args.save_model)
    print(json.dumps(summary, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="freshen", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    tw = sub.add_parser("toyworld", help="the embedded ToyWorld: data, models, checks")
    tws = tw.add_subparsers(dest="action", required=True)
    g = tws.add_parser("generate", help="write the world's data files from a seed")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--out", type=Path, default=None)
    g.add_argument("--world", choices=("small", "large"), default="small")
    g.set_defaults(func=_toyworld_generate)
    t = tws.add_parser("train", help="train one shipped model (by hand; slow)")
    t.add_argument("model", choices=("judge", "ner", "diffusion"))
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--steps", type=int, default=None, help="steps (epochs for ner)")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--world", choices=("small", "large"), default="small",
                   help="which shipped world (large: its encoder is distilled through the small "
                        "model's frozen U-Net)")
    t.add_argument("--out", type=Path, default=None)
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (diffusion)")
    t.add_argument("--stop-after", type=int, default=None,
                   help="end after this many steps of the --steps schedule (diffusion, large world)")
    t.add_argument("--init-from", type=Path, default=None, help="continue from a saved pipeline (diffusion)")
    t.add_argument("--attribute-weight", type=float, default=1.0,
                   help="how much more often attribute prompts are drawn (diffusion)")
    t.add_argument("--paraphrase-weight", type=float, default=1.0,
                   help="how much more often training paraphrases are drawn (diffusion)")
    t.add_argument("--content-tokens-only", action=argparse.BooleanOptionalAction, default=None,
                   help="the U-Net reads the prompt's words only, not [EOS] and padding, in training "
                        "and in the saved pipeline (diffusion; default: as --init-from, else off)")
    t.set_defaults(func=_toyworld_train)
    c = tws.add_parser("check", help="measure the shipped models on held-out prompts")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--seeds", type=int, default=None, help="images per prompt (default 4; large world 2)")
    c.add_argument("--seed", type=int, default=0)
    r = tws.add_parser("release", help="after training: check, then write manifest and model cards")
    r.add_argument("--seeds", type=int, default=None)
    for q in (c, r):
        q.add_argument("--world", choices=("small", "large"), default="small")
        q.add_argument("--sample", type=int, default=None,
                       help="held-out prompts per kind (default: all; the large world: "
                            "toyworld.check.LARGE_SAMPLE at 2 seeds)")
    c.set_defaults(func=_toyworld_check)
    r.set_defaults(func=_toyworld_release)

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
    e.set_defaults(func=_edit)

    from freshen import facts_cli, service_cli

    facts_cli.add_parsers(sub)
    service_cli.add_parsers(sub)

    d = sub.add_parser("demo", help="the main job on the embedded ToyWorld default")
    d.add_argument("--home", type=Path, default=None, help="state directory (default ./var)")
    d.add_argument("--feed", type=Path, default=None, help="feed file to drop (default: the sample feed)")
    d.add_argument("--policy", type=Path, default=None, help="approval policy (default: the demo's)")
    d.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "toyworld" and args.action == "generate":
        from toyworld import paths

        args.out = (args.out or paths.world_paths(args.world).data_dir).resolve()
    from editing.model import ModelLoadError
    from freshen.errors import FreshenError
    from registry.versions import RegistryError

    try:
        return args.func(args)
    except (ValueError, KeyError, ModelLoadError, FileNotFoundError, RegistryError, FreshenError) as exc:
        print(f"freshen: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
