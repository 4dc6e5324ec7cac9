"""``freshen dev toyworld ...``: the embedded world's data, training and checks, for the
project's developers (training is by hand, never in CI)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from freshen.cli.common import JSON

WORLD_NAMES = ("small", "large")


def toyworld_generate(args: argparse.Namespace) -> int:
    from toyworld import paths
    from toyworld.world import WORLDS, generate

    spec = {**WORLDS[args.world], **({} if args.seed is None else {"seed": args.seed})}
    world = generate(**spec)
    out = (args.out or paths.world_paths(args.world).data_dir).resolve()
    world.write(out)
    print(f"wrote ToyWorld {args.world} (seed {spec['seed']}, {world.size()}) to {out}")
    return 0


def toyworld_train(args: argparse.Namespace) -> int:
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
        if args.mlp_width is not None:
            kw["intermediate_size"] = args.mlp_width
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


def toyworld_grow(args: argparse.Namespace) -> int:
    from toyworld import paths, train
    from toyworld.world import World

    where = paths.world_paths(args.world)
    print(json.dumps(train.grow_encoder(World.read(where.data_dir), where.diffusion_dir, args.width, args.seed)))
    return 0


def _large_defaults(args: argparse.Namespace) -> None:
    """The large world's check samples held-out prompts, at 2 seeds, unless told otherwise."""
    from toyworld.check import LARGE_SAMPLE

    if args.world == "large":
        args.sample = LARGE_SAMPLE if args.sample is None else args.sample
        args.seeds = 2 if args.seeds is None else args.seeds
    elif args.seeds is None:
        args.seeds = 4


def toyworld_check(args: argparse.Namespace) -> int:
    from toyworld.check import run_check

    _large_defaults(args)
    result = run_check(seeds=args.seeds, seed=args.seed, progress=not args.json, world_name=args.world,
                       sample=args.sample)
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return 0


def toyworld_release(args: argparse.Namespace) -> int:
    from toyworld.check import run_check
    from toyworld.release import release

    _large_defaults(args)
    check = run_check(seeds=args.seeds, progress=True, world_name=args.world, sample=args.sample)
    release(check, args.world)
    print(json.dumps(check))
    return 0


def add_parsers(sub) -> None:
    dv = sub.add_parser("dev", help="for the project's developers: ToyWorld data, training, checks")
    dvs = dv.add_subparsers(dest="group", required=True)
    tw = dvs.add_parser("toyworld", help="the embedded ToyWorld: data, models, checks")
    tws = tw.add_subparsers(dest="action", required=True)
    g = tws.add_parser("generate", help="write the world's data files from a seed")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--out", type=Path, default=None)
    g.add_argument("--world", choices=WORLD_NAMES, default="small")
    g.set_defaults(func=toyworld_generate)
    t = tws.add_parser("train", help="train one shipped model (by hand; slow)")
    t.add_argument("model", choices=("judge", "ner", "diffusion"))
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--steps", type=int, default=None, help="steps (epochs for ner)")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--world", choices=WORLD_NAMES, default="small",
                   help="which shipped world (large: its encoder is distilled through the small "
                        "model's frozen U-Net)")
    t.add_argument("--out", type=Path, default=None)
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (diffusion)")
    t.add_argument("--stop-after", type=int, default=None,
                   help="end after this many steps of the --steps schedule (diffusion, large world)")
    t.add_argument("--init-from", type=Path, default=None, help="continue from a saved pipeline (diffusion)")
    t.add_argument("--mlp-width", type=int, default=None,
                   help="the encoder's MLP units per layer (large world; default 768): a fresh encoder's "
                        "width, or with --init-from the width the loaded encoder grows to (new units silent "
                        "at first)")
    t.add_argument("--attribute-weight", type=float, default=1.0,
                   help="how much more often attribute prompts are drawn (diffusion)")
    t.add_argument("--paraphrase-weight", type=float, default=1.0,
                   help="how much more often training paraphrases are drawn (diffusion)")
    t.add_argument("--content-tokens-only", action=argparse.BooleanOptionalAction, default=None,
                   help="the U-Net reads the prompt's words only, not [EOS] and padding, in training "
                        "and in the saved pipeline (diffusion; default: as --init-from, else off)")
    t.set_defaults(func=toyworld_train)
    gr = tws.add_parser("grow", help="grow the shipped diffusion model's text-encoder MLPs by silent units "
                                     "(the same outputs, a wider key space for edits; in place)")
    gr.add_argument("--world", choices=WORLD_NAMES, default="large")
    gr.add_argument("--width", type=int, required=True, help="MLP units per layer after growing")
    gr.add_argument("--seed", type=int, default=0, help="draws the new units' input weights")
    gr.set_defaults(func=toyworld_grow)
    c = tws.add_parser("check", parents=[JSON], help="measure the shipped models on held-out prompts")
    c.add_argument("--seeds", type=int, default=None, help="images per prompt (default 4; large world 2)")
    c.add_argument("--seed", type=int, default=0)
    r = tws.add_parser("release", help="after training: check, then write manifest and model cards")
    r.add_argument("--seeds", type=int, default=None)
    for q in (c, r):
        q.add_argument("--world", choices=WORLD_NAMES, default="small")
        q.add_argument("--sample", type=int, default=None,
                       help="held-out prompts per kind (default: all; the large world: "
                            "toyworld.check.LARGE_SAMPLE at 2 seeds)")
    c.set_defaults(func=toyworld_check)
    r.set_defaults(func=toyworld_release)
