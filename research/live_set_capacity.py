"""How much of a large live set one consolidated solve can write, on the large world: the
seed-0 stream of ``bench.edit_quality`` up to N edits (the benchmark's batches, so its Stage I
cache applies), its live facts solved once from the base with their stored targets, under
several preservation settings. Per setting: how far each fact's h at the last edit layer got
from the base's toward its target (``reached`` = 1 - |z - h| / |z - h_base|: the median, and
the share of facts at >= 0.8), and ||W_l - W0_l|| / ||W0_l|| per edit layer; per edit layer,
the key directions P leaves free and the rank of the live keys inside P's range. No images:
what the solve delivers, which bounds what the judge can see.
Writes research/results/live_set_capacity.json.

    python -m research.live_set_capacity [--edits 1000] [--stage1-cache bench/cache/stage1_large]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.edit_quality import METHODS, stream_batches
from editing.api import apply_targets, preservation
from editing.hparams import EditHParams
from editing.keys import SubjectStream, compute_hs, key_moments
from editing.model import load_model
from editing.state import EditState
from toyworld.paths import world_paths
from toyworld.world import World

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = {  # overrides of the consolidated form with the entity keys out of P
    "entities out of P": {},
    "entities out of P, 90% of their energy": {"entity_energy": 0.9},
    "entities in Kp (weight 1)": {"protect_entities": False, "entity_weight": 1.0},
    "entities in Kp (weight 0.3)": {"protect_entities": False, "entity_weight": 0.3},
    "entities in Kp (weight 0.1)": {"protect_entities": False, "entity_weight": 0.1},
    "no entity protection": {"protect_entities": False},
    "no entity protection, beta 0.03": {"protect_entities": False, "beta": 0.03},
    "no entity protection, no null space": {"protect_entities": False, "nullspace_mode": "none"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edits", type=int, default=1000)
    ap.add_argument("--stage1-cache", type=Path, default=Path("bench/cache/stage1_large"))
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    where = world_paths("large")
    world, base = World.read(where.data_dir), load_model(where.diffusion_dir)
    preset = EditHParams.preset("toyworld", steps=200, seed=0, **METHODS["consolidate"])
    layers = preset.edit_layers(base.n_layers)
    live: dict = {}  # source -> (request, z), the latest change of each fact, in order of landing
    for _, reqs, zs in stream_batches(world, base, preset, args.edits, args.stage1_cache):
        for q, z in zip(reqs, zs, strict=True):
            live.pop(q.source, None)
            live[q.source] = (q, z)
    reqs, zs = [q for q, _ in live.values()], torch.stack([z for _, z in live.values()])
    h_base = compute_hs(base, reqs, layers[-1], preset.context_templates)
    moments = key_moments(base, layers, world.captions(), skip_bos=preset.c0_skip_bos)  # C0 by subtraction
    out: dict = {"command": f"python -m research.live_set_capacity --edits {args.edits}", "edits": args.edits,
                 "live_facts": len(reqs), "d_k": base.fc2(0).in_features, "settings": {}}
    keys = SubjectStream(base, [q.source for q in reqs], preset.context_templates)
    base_keys = {layer: keys.states(key_layer=layer)[0] for layer in layers}  # the live keys on the base
    kept: dict = {}  # C0 and P, per null-space mode (no other setting changes them)
    for name, overrides in SETTINGS.items():
        hp = EditHParams.from_json(preset.to_json() | overrides)
        if hp.nullspace_mode not in kept:
            kept[hp.nullspace_mode] = preservation(base, layers, world.captions(), hp, requests=reqs, moments=moments)
        pres = kept[hp.nullspace_mode]
        model = load_model(where.diffusion_dir)
        t0 = time.perf_counter()
        e = apply_targets(model, reqs, zs, hp, EditState(), pres)
        seconds = time.perf_counter() - t0
        h = compute_hs(model, reqs, layers[-1], hp.context_templates)
        reached = 1 - (zs - h).norm(dim=1) / (zs - h_base).norm(dim=1).clamp_min(1e-12)
        free = {}
        for layer in layers:
            s = torch.linalg.svdvals(pres.project(layer, base_keys[layer]))
            # P as C0 cuts it (the entity protection takes more out inside the solve)
            free[str(layer)] = {"free_directions": int(base.fc2(layer).in_features - pres.protected[layer].shape[1]),
                                "live_key_rank_in_P": int((s > 1e-6 * s.max()).sum())}
        row = {"overrides": overrides, "reached_median": round(float(reached.median()), 4),
               "reached_at_least_0.8": round(float((reached >= 0.8).double().mean()), 4),
               "update_norm": e.meta["update_norm"], "seconds": round(seconds, 1), "layers": free}
        out["settings"][name] = row
        print(json.dumps({"setting": name, **row}), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "live_set_capacity.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
