"""The demo's batch (feeds/samples/newsroom.jsonl, 10 changes on the small world) under
hyperparameter variants, scored as the promotion gate scores it.

Stage I runs on the base with each variant's Stage I settings (``EditHParams.stage1_settings``:
the preset's unless the variant overrides one, as a variant with other context templates
does), once per distinct settings, for the whole batch (the service runs it per fact, so its
targets differ a little from these); each variant's Stage II
starts from the base; ``validation.evaluate.evaluate`` compares the edited model with the
base under the default ``GateConfig``. Prints one JSON row per variant (efficacy, the
specificity drop and the relative FID change the gate checks, and the protected rank per
edit layer) and writes them to research/results/demo_gate_variants.json.

    python -m research.demo_gate_variants '{"name": {"hparam": value, ...}, ...}'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.edit_quality import request_for
from editing.api import apply_targets, preservation
from editing.hparams import EditHParams
from editing.model import load_model
from editing.stage1 import compute_zs
from editing.state import EditState
from toyworld.paths import world_paths
from toyworld.world import World
from validation.evaluate import FactCase, ToyWorldJudge, evaluate
from validation.gate import GateConfig

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "demo_gate_variants.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", help="JSON object: variant name -> overrides of the ToyWorld preset")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    where = world_paths("small")
    world = World.read(where.data_dir)
    rows = [json.loads(line) for line in (PROJECT / "feeds/samples/newsroom.jsonl").read_text().splitlines()
            if line.strip()]
    by_prompt = {f.prompt: f for f in world.facts}
    visuals = {v.prompt: v for v in world.visuals}
    reqs = [request_for(world, by_prompt[r["source"]], visuals[r["target"]]) for r in rows]
    for q in reqs:
        q.related = []  # the service knows no paraphrases of a feed's change
    base = load_model(where.diffusion_dir)
    targets: dict[str, torch.Tensor] = {}  # Stage I's z per distinct Stage I settings
    cfg = GateConfig()
    judge = ToyWorldJudge(where.judge_dir, where.data_dir)
    facts = [FactCase(q.id, q.source, q.target, [e.text for e in q.entities]) for q in reqs]
    probes = judge.probes(facts, n_unrelated=cfg.unrelated_probes, fid_seeds=cfg.fid_seeds, seed=0)
    captions = world.captions()
    out = json.loads(args.out.read_text()) if args.out.is_file() else {"variants": {}}
    for name, overrides in json.loads(args.variants).items():
        hp = EditHParams.preset("toyworld", **overrides)
        settings = json.dumps(hp.stage1_settings())
        if settings not in targets:
            targets[settings] = compute_zs(base, reqs, hp, hp.edit_layers(base.n_layers)[-1]).z
        z = targets[settings]
        model = load_model(where.diffusion_dir)
        t0 = time.time()
        pres = preservation(model, hp.edit_layers(model.n_layers), captions, hp, requests=reqs)
        e = apply_targets(model, reqs, z, hp, EditState(), pres)
        ev = evaluate(model, base, facts, judge, probes, fact_seeds=cfg.fact_seeds, probe_seeds=cfg.probe_seeds,
                      seed=0)
        c, p = ev.candidate, ev.champion
        row = {"overrides": overrides, "efficacy": round(c["efficacy"], 3),
               "specificity_drop": round(c["specificity"] - p["specificity"], 3),
               "fid_change": round(c["fid"] / p["fid"] - 1, 3),
               "specificity_entity": [round(p["specificity_entity"], 3), round(c["specificity_entity"], 3)],
               "generality": round(c["generality"], 3),
               "update_norm": round(max(e.meta["update_norm"].values()), 3),
               "protected_rank": [v["protected_rank"] for v in pres.report().values()],
               "seconds": round(time.time() - t0, 1)}
        print(json.dumps({"variant": name, **row}), flush=True)
        out["variants"][name] = row
        out["gate"] = {"efficacy_min": cfg.efficacy_min, "specificity_drop_max": cfg.specificity_drop_max,
                       "fid_increase_max": cfg.fid_increase_max}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
