"""``make bench-edit``: edit quality at 10, 100 and 1000 sequential edits on ToyWorld.

For each method (the main null-space + entity-alignment method and its baselines) and each
edit count n, a seeded stream of n fact changes (fact -> a new visual) is applied in
sequential batches; a fact changed twice must end at its latest target. Then efficacy,
generality, specificity (same-entity other relations, entity alone, unrelated) are judged
by the shipped judge, next to the unedited model's, and FID in the judge's feature space.

    python -m bench.edit_quality [--sizes 10,100,1000] [--batch 50] [--steps 200] [--baseline-max N] [--full K]

Writes bench/results/edit_quality.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from editing.api import edit, preservation
from editing.hparams import EditHParams
from editing.model import DiffusionModel, load_model
from editing.requests import EditRequest, Entity
from editing.state import EditState
from toyworld.judge import ToyJudge
from toyworld.paths import DATA_DIR, DIFFUSION_DIR, JUDGE_DIR
from toyworld.world import SELF, Visual, World
from validation.toyworld_eval import (
    Probe,
    clean_renders,
    fid,
    judged,
    probes_for,
    score,
)

RESULTS = Path(__file__).resolve().parent / "results"

# overrides of the ToyWorld preset, named by what they add to it or take away; the first
# is the main method (the preset itself)
METHODS = {
    "nullspace+entity": {},  # the papers' method as ALGORITHMS.md gives it
    "nullspace+entity+mentions": dict(mention_weight=0.03),
    "nullspace+entity+protect": dict(protect_entities=True),
    "nullspace": dict(alpha_e=0.0),
    "emcid-alpha": dict(method="emcid"),
    "no-nullspace": dict(nullspace_mode="none"),
    # session 7: EMCID's C0 term inside Eq. 7 (c0_weight 40 = EMCID's lambda (1-alpha)/alpha);
    # with P = I and beta 0 it is EMCID's closed form with the memory Kp Kp^T of earlier batches
    "nullspace+entity+c0": dict(c0_weight=40.0),
    "emcid-alpha+memory": dict(nullspace_mode="none", c0_weight=40.0, beta=0.0),
}


def edit_stream(world: World, n: int, seed: int) -> list[tuple[str, Visual]]:
    """n (fact id, new visual) changes; relations only (the entity alone is kept for
    specificity); each change differs from the fact's visual at that point."""
    rng = random.Random(seed)
    facts = [f for f in world.facts if f.relation != SELF]
    current = {f.id: f.visual for f in facts}
    out = []
    for _ in range(n):
        f = rng.choice(facts)
        v = rng.choice([v for v in world.visuals if v != current[f.id]])
        current[f.id] = v
        out.append((f.id, v))
    return out


def batches(stream: list[tuple[str, Visual]], size: int) -> list[list[tuple[str, Visual]]]:
    """Consecutive batches of at most ``size`` changes, each fact at most once per batch
    (a repeated fact starts a new batch, so the order of changes is kept)."""
    out: list[list[tuple[str, Visual]]] = [[]]
    for fact_id, v in stream:
        if len(out[-1]) >= size or any(fact_id == g for g, _ in out[-1]):
            out.append([])
        out[-1].append((fact_id, v))
    return out


def requests_for(world: World, batch: list[tuple[str, Visual]]) -> list[EditRequest]:
    by_id = {f.id: f for f in world.facts}
    kinds = {e.name: e.kind for e in world.entities}
    reqs = []
    for fact_id, v in batch:
        f = by_id[fact_id]
        start = f.prompt.index(f.entity)
        reqs.append(EditRequest(fact_id, f.prompt, v.prompt, entities=[
            Entity(f.entity, kinds[f.entity], start, start + len(f.entity))]))
    return reqs


def evaluate(model, judge, world: World, current: dict[str, Visual], seeds: int) -> tuple[dict, list]:
    probes = probes_for(world, current)
    probes += [Probe(p, "specificity_unrelated", "attribute", v) for p, v in world.attribute_prompts()]
    images, labels = judged(model, judge, [p.prompt for p in probes], seeds)
    return score(probes, labels, seeds), images


@dataclass
class _Run:
    """One method's sequential chain so far."""

    hp: EditHParams
    model: DiffusionModel
    state: EditState = field(default_factory=EditState)
    current: dict[str, Visual] = field(default_factory=dict)
    done: int = 0
    t1: float = 0.0
    t2: float = 0.0
    rows: dict = field(default_factory=dict)


def run(sizes: list[int], batch_size: int, steps: int, seeds: int, methods: list[str],
        seed: int = 0, model_dir: Path = DIFFUSION_DIR, out: Path | None = None, command: str = "",
        baseline_max: int | None = None, full: int = 1) -> dict:
    """Every method on the same stream, size by size: all methods reach n edits before any
    goes on (so a stopped run still compares them side by side). ``baseline_max``: methods
    after the first ``full`` stop at that many edits. With ``out``, the results so far are written
    after every row (``complete`` says whether the run finished)."""
    world = World.read(DATA_DIR)
    judge = ToyJudge.from_pretrained(JUDGE_DIR).eval()
    base = load_model(model_dir)
    attr_prompts = [p for p, _ in world.attribute_prompts()]
    fid_seeds = 8
    renders = clean_renders([v for _, v in world.attribute_prompts()], fid_seeds)
    base_attr = base.generate_many([p for p in attr_prompts for _ in range(fid_seeds)], seed=7)
    fid_base = fid(judge, renders, base_attr)
    stream = edit_stream(world, max(sizes), seed)
    runs = {name: _Run(EditHParams.preset("toyworld", steps=steps, seed=seed, **METHODS[name]), load_model(model_dir))
            for name in methods}
    results: dict = {"command": command, "config": {"sizes": sizes, "batch_size": batch_size, "stage1_steps": steps,
                                "seeds": seeds, "seed": seed, "baseline_max": baseline_max, "full": full},
                     "hparams": {name: r.hp.to_json() for name, r in runs.items()}, "methods": {}}
    for n in sorted(sizes):
        base_metrics = None  # every method edits the same stream: judge the base once per size
        for i, (name, r) in enumerate(runs.items()):
            if i >= full and baseline_max is not None and n > baseline_max:
                continue
            for batch in batches(stream[r.done:n], batch_size):
                reqs = requests_for(world, batch)
                pres = preservation(base, base.default_edit_layers, world.captions(), r.hp, requests=reqs)
                res = edit(r.model, reqs, r.state, hp=r.hp, preserved=pres)
                r.state = res.state
                r.t1 += res.seconds["stage1"]
                r.t2 += res.seconds["stage2"]
                r.current.update(dict(batch))
            r.done = n
            metrics, _ = evaluate(r.model, judge, world, r.current, seeds)
            if base_metrics is None:
                base_metrics, _ = evaluate(base, judge, world, r.current, seeds)
            attr = r.model.generate_many([p for p in attr_prompts for _ in range(fid_seeds)], seed=7)
            fid_edit = fid(judge, renders, attr)
            row = {
                **{k: round(v, 4) for k, v in metrics.items()},
                "unedited": {k: round(v, 4) for k, v in base_metrics.items()},
                "specificity_vs_unedited": round(metrics["specificity"] / base_metrics["specificity"], 4),
                "fid_to_renders": round(fid_edit, 4),
                "fid_to_renders_unedited": round(fid_base, 4),
                "fid_increase": round(fid_edit / fid_base - 1, 4),
                "fid_to_unedited_images": round(fid(judge, base_attr, attr), 4),
                "stage1_seconds": round(r.t1, 1),
                "stage2_seconds": round(r.t2, 1),
                "facts_edited": len(r.current),
            }
            r.rows[str(n)] = row
            results["methods"][name] = r.rows
            print(json.dumps({"method": name, "edits": n, **row}), flush=True)
            if out is not None:
                out.write_text(json.dumps({**results, "complete": False}, indent=1) + "\n")
    return {**results, "complete": True}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS), help="the first is the main method")
    ap.add_argument("--baseline-max", type=int, default=None,
                    help="methods after the first --full stop at this many edits (default: every size)")
    ap.add_argument("--full", type=int, default=1, help="how many methods, from the first, run at every size")
    ap.add_argument("--out", type=Path, default=RESULTS / "edit_quality.json")
    ap.add_argument("--model", type=Path, default=DIFFUSION_DIR, help="ToyWorld pipeline (default: shipped)")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_flush_denormal(True)
    command = "python -m bench.edit_quality " + " ".join(
        f"--{k} {v}" for k, v in (("sizes", args.sizes), ("batch", args.batch), ("steps", args.steps),
                                 ("seeds", args.seeds), ("methods", args.methods)))
    if args.baseline_max is not None:
        command += f" --baseline-max {args.baseline_max} --full {args.full}"
    if args.model != DIFFUSION_DIR:
        command += f" --model {args.model}"
    t0 = time.time()
    results = run([int(s) for s in args.sizes.split(",")], args.batch, args.steps, args.seeds,
                  args.methods.split(","), model_dir=args.model, out=args.out, command=command,
                  baseline_max=args.baseline_max, full=args.full)
    results["wall_seconds"] = round(time.time() - t0, 1)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
