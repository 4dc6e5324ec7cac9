"""How far Stage I alone gets: the judge's verdict on source prompts drawn with each
fact's optimised delta hooked in at the last edit layer (no Stage II, no null space).

This separates the two halves of the method: if Stage I's targets do not draw the
destination, no closed form can; if they do, what Stage II loses is Stage II's. For n
fact changes of the edit-quality stream, prints the fraction of images (``--seeds`` per
prompt) that show the old visual before the edit and the new one with the deltas.

    python -m research.stage1_reach [--world small|large] [--facts 10] [--steps 200] [--set lambda_txt=0.001 ...]

Writes nothing; the figures quoted in docs/editing.md name the command that printed them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.edit_quality import edit_stream, editable, request_for, reserved_facts
from editing.hparams import EditHParams
from editing.model import load_model
from editing.stage1 import compute_zs
from toyworld.judge import ToyJudge
from toyworld.paths import world_paths
from toyworld.world import World


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", choices=("small", "large"), default="large")
    ap.add_argument("--model", type=Path, default=None, help="a diffusion model directory (default: the world's)")
    ap.add_argument("--facts", type=int, default=10)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON", help="hparams overrides")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    where = world_paths(args.world)
    world, judge = World.read(where.data_dir), ToyJudge.from_pretrained(where.judge_dir).eval()
    model = load_model(args.model or where.diffusion_dir)
    batch = edit_stream(world, editable(world, reserved_facts(world)), args.facts, seed=0)
    by_id = {f.id: f for f in world.facts}
    reqs = [request_for(world, by_id[i], v) for i, v in batch]
    old = {f.id: f.visual for f in world.facts}
    prompts = [r.source for r in reqs for _ in range(args.seeds)]
    expected_new = [v for _, v in batch for _ in range(args.seeds)]
    expected_old = [old[f] for f, _ in batch for _ in range(args.seeds)]

    def rate(labels, expected) -> float:
        return round(sum(a == b for a, b in zip(labels, expected, strict=True)) / len(labels), 4)

    before = judge.classify(model.generate_many(prompts, seed=1))
    hp = EditHParams.preset("toyworld", steps=args.steps, **overrides)
    layer = hp.edit_layers(model.n_layers)[-1]
    s1 = compute_zs(model, reqs, hp, layer)
    pos = torch.as_tensor(model.subject_last_token(prompts, [(0, len(p)) for p in prompts]))
    delta = s1.delta.repeat_interleave(args.seeds, 0)

    def add_delta(_m, _inp, out):
        hidden = out[0] if isinstance(out, tuple) else out
        if hidden.shape[0] != len(prompts):  # the empty prompt of classifier-free guidance
            return out
        hidden = hidden.clone()
        hidden[torch.arange(len(prompts)), pos] += delta
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    handle = model.layers[layer].register_forward_hook(add_delta)
    try:
        after = judge.classify(model.generate_many(prompts, seed=1, batch_size=len(prompts)))
    finally:
        handle.remove()
    print(json.dumps({
        "world": args.world, "layer": layer, "facts": args.facts, "steps": args.steps, "overrides": overrides,
        "before_old": rate(before, expected_old), "before_new": rate(before, expected_new),
        "stage1_new": rate(after, expected_new),
        "delta_over_h": round(float((s1.delta.norm(dim=1) / s1.h.norm(dim=1)).mean()), 4),
        "losses": {k: round(sum(v) / len(v), 6) for k, v in s1.losses.items()},
    }))


if __name__ == "__main__":
    main()
