"""Chooses ToyWorld's edit preset: a small sweep of the null-space cut and the ridge beta.

One batch of fact changes is edited with each setting; the shipped judge measures efficacy
(the edited source prompts), generality and specificity (entity alone, the entity's other
relations, unrelated facts and attribute prompts); ``corpus_change`` is how much the edit
moves fc2 outputs of the caption corpus (relative). Writes research/results/tune_toyworld.json.

    python -m research.tune_toyworld [--facts 20] [--steps 100]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.edit_quality import edit_stream, editable, judge_probes, probes, request_for, reserved_facts
from editing.api import edit, preservation
from editing.hparams import EditHParams
from editing.model import load_model
from toyworld.judge import ToyJudge
from toyworld.paths import world_paths
from toyworld.world import World

THREE_TEMPLATES = ["{}", "a photo of {}", "an image of {}"]  # EditHParams' default
SETTINGS = [
    dict(nullspace_mode="none", beta=1.0),
    dict(nullspace_mode="relative", nullspace_threshold=1e-2, beta=1.0, exclude_sources_from_c0=False),
    dict(nullspace_mode="relative", nullspace_threshold=1e-2, beta=1.0),
    dict(nullspace_mode="relative", nullspace_threshold=1e-2, beta=0.1),
    dict(nullspace_mode="relative", nullspace_threshold=1e-3, beta=0.1),
    dict(nullspace_mode="energy", nullspace_threshold=1e-2, beta=0.1),
    dict(nullspace_mode="energy", nullspace_threshold=1e-3, beta=0.1),
    dict(nullspace_mode="energy", nullspace_threshold=1e-3, beta=0.01),
    dict(nullspace_mode="energy", nullspace_threshold=1e-3, beta=1.0),
    dict(nullspace_mode="energy", nullspace_threshold=1e-4, beta=1.0),
    # 2026-11-24: where the keys are read (the preset reads the bare prompt only)
    dict(layers=[2], context_templates=THREE_TEMPLATES),
    dict(layers=[1, 2], context_templates=THREE_TEMPLATES),
    dict(context_templates=THREE_TEMPLATES),
    # 2026-11-24: one key column per (fact, template) instead of their mean
    dict(context_templates=THREE_TEMPLATES, key_columns="per_template"),
    dict(protect_entities=True),
    dict(context_templates=THREE_TEMPLATES, key_columns="per_template", protect_entities=True),
    # 2026-11-24: soft preservation of the batch entities' mentions in the corpus
    dict(mention_weight=0.1),
    dict(mention_weight=1.0),
    dict(mention_weight=10.0),
    dict(context_templates=THREE_TEMPLATES, key_columns="per_template", mention_weight=1.0),
    # 2026-11-24: EMCID's lambda on ToyWorld (4000 is the published value, for SD)
    dict(method="emcid", emcid_lambda=4000.0),
    dict(method="emcid", emcid_lambda=400.0),
    dict(method="emcid", emcid_lambda=40.0),
    dict(method="emcid", emcid_lambda=4.0),
    dict(method="emcid", emcid_lambda=0.4),
    dict(mention_weight=0.01),
    dict(mention_weight=0.03),
    # 2026-11-28: EMCID's C0 term inside the null-space solve (and with P = I: EMCID + memory)
    dict(c0_weight=40.0),
    dict(c0_weight=400.0),
    dict(c0_weight=4000.0),
    dict(nullspace_mode="none", c0_weight=40.0),
]


def corpus_change(model, base, world: World, layers) -> float:
    caps = world.captions()[::9][:250]
    total = 0.0
    for layer in layers:
        keys, _ = base.capture_fc2(caps, layer)
        mask = torch.arange(keys.shape[1])[None] <= base.encode(caps, pad_to_max=False).eos_index[:, None]
        k = keys[mask]
        w0, w1 = base.fc2(layer).weight, model.fc2(layer).weight
        total += float((k @ (w1 - w0).T).norm() / (k @ w0.T).norm())
    return total / len(layers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", choices=("small", "large"), default="small")
    ap.add_argument("--facts", type=int, default=20)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--only", type=int, nargs="*", default=None, help="indices of SETTINGS to run")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "tune_toyworld.json")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    where = world_paths(args.world)
    world = World.read(where.data_dir)
    judge = ToyJudge.from_pretrained(where.judge_dir).eval()
    base = load_model(where.diffusion_dir)
    reserved = reserved_facts(world)
    # distinct facts only: one batch changes a fact once
    batch = list(dict(edit_stream(world, editable(world, reserved), args.facts, seed=0)).items())
    by_id = {f.id: f for f in world.facts}
    reqs = [request_for(world, by_id[i], v) for i, v in batch]
    current = dict(batch)
    rows = []
    for i, setting in enumerate(SETTINGS):
        if args.only is not None and i not in args.only:
            continue
        hp = EditHParams.preset("toyworld", steps=args.steps, **setting)
        model = load_model(where.diffusion_dir)
        pres = preservation(model, model.default_edit_layers, world.captions(), hp, requests=reqs)
        t0 = time.time()
        res = edit(model, reqs, hp=hp, preserved=pres)
        metrics, _ = judge_probes(model, judge, probes(world, current, reserved), args.seeds)
        row = {"index": i, **setting, **{k: round(v, 3) for k, v in metrics.items()},
               "corpus_change": round(corpus_change(model, base, world, model.default_edit_layers), 4),
               "reached": round(sum(d["reached"] for d in res.diagnostics) / len(reqs), 3),
               "seconds": round(time.time() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    unedited = {i: by_id[i].visual for i in current}
    base_metrics, _ = judge_probes(base, judge, probes(world, unedited, reserved), args.seeds)
    command = (f"python -m research.tune_toyworld --world {args.world} --facts {args.facts} --steps {args.steps} "
               f"--seeds {args.seeds}")
    if args.only is not None:
        command += " --only " + " ".join(map(str, args.only))
    out = {"command": command, "world": args.world,
           "unedited": {k: round(v, 3) for k, v in base_metrics.items()}, "settings": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["unedited"]))


if __name__ == "__main__":
    main()
