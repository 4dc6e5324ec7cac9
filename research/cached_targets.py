"""Are the Stage I targets in the benchmark's cache the shipped model's? The first batch of a
stream (``bench.edit_quality``'s cut: ``--sizes 10,100,1000``, batches of 50), its targets
read from ``--stage1-cache`` under the shipped large world's model hash and computed afresh
on that model, compared. The large world's cache directory of its grown model holds copies
of the trained model's targets (bench/cache/README.md); this measures how far they are from
the grown model's own. Prints one JSON line; nothing is written.

    python -m research.cached_targets [--method preset] [--seed 0] [--stage1-cache bench/cache/stage1_large]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.edit_quality import METHODS, model_method, stage1_dir, stream_batches
from editing.hparams import EditHParams
from editing.model import load_model
from toyworld.paths import world_paths
from toyworld.world import World


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="preset", choices=list(METHODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stage1-cache", type=Path, default=Path("bench/cache/stage1_large"))
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    where = world_paths("large")
    world, model = World.read(where.data_dir), load_model(where.diffusion_dir)
    name = model_method(model) if args.method == "preset" else args.method
    hp = EditHParams.preset(model.family, steps=200, seed=args.seed, **METHODS[name])  # as the benchmark's
    mine = stage1_dir(model, args.stage1_cache)
    before = set(mine.glob("*.safetensors")) if mine.is_dir() else set()
    _, reqs, cached = next(stream_batches(world, model, hp, 10, args.stage1_cache, seed=args.seed))
    if set(mine.glob("*.safetensors")) != before:
        raise SystemExit(f"the first batch's targets were not in {mine}: computed now, nothing to compare")
    _, _, fresh = next(stream_batches(world, model, hp, 10, None, seed=args.seed))
    print(json.dumps({"model": mine.name, "method": name, "seed": args.seed, "facts": len(reqs),
                      "largest_difference": float((fresh - cached).abs().max()),
                      "mean_target_norm": round(float(cached.norm(dim=-1).mean()), 3)}))


if __name__ == "__main__":
    main()
