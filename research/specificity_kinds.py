"""Where the large world's specificity goes at 1,000 edits: the benchmark's reserved probes
(``bench.edit_quality``: the seed-0 stream, its Stage I targets from the cache, the same 250
reserved facts at 4 seeds each) judged per kind of fact (the entity alone, its logo, flag
and mascot, a standalone concept; and the attribute prompts), on the unedited model and on the version the preset's
form makes at ``--edits``; and the relation facts split by how many live facts name an
entity with the same final word ("Kortov Foods" while "Ashethist Foods" is reserved) and
the same relation: is what gives way the name-alike neighbours or every fact of a kind?

``--width``: the model with every MLP widened to that many units by silent units first
(``toyworld.pipeline.widen_mlps``, as ``research.key_width``), 0 for the shipped model (grown
to 3,072 units since 2026-12-07; the rows of width 768 were measured on the encoder as trained).
Writes research/results/specificity_kinds.json (one entry per width and method).

    python -m research.specificity_kinds [--width 0] [--edits 1000]
        [--method consolidate-c0-templates-w4000-layer5] [--stage1-cache bench/cache/stage1_large]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch

from bench.edit_quality import METHODS, Probes, judge_probes, reserved_facts, sample, stream_batches
from editing.api import apply_targets, preservation
from editing.hparams import EditHParams
from editing.keys import key_moments
from editing.model import DiffusionModel, load_model
from editing.state import EditState, LiveFact
from research.key_width import load_widened
from toyworld.judge import ToyJudge
from toyworld.paths import world_paths
from toyworld.world import SELF, Fact, World

RESULTS = Path(__file__).resolve().parent / "results"


def final_word(f: Fact) -> str:
    """The word an edit's key is read at: the last of the entity's name (of the prompt for a concept)."""
    return (f.entity or f.prompt).split()[-1]


def kind_probes(reserved: list[Fact], live: list[Fact]) -> Probes:
    """The reserved facts by kind, relation facts also by whether a live fact of the same
    relation names an entity with the same final word ("shared") or none does ("apart")."""
    alike = Counter((final_word(f), f.relation) for f in live)
    kinds: dict[str, list] = {}
    for f in reserved:
        kind = f.relation
        if f.entity and f.relation != SELF:
            kind += "/shared" if alike[final_word(f), f.relation] else "/apart"
        kinds.setdefault(kind, []).append((f.prompt, f.visual))
    return Probes(dict(sorted(kinds.items())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=0)
    ap.add_argument("--edits", type=int, default=1000)
    ap.add_argument("--method", default="consolidate-c0-templates-w4000-layer5")
    ap.add_argument("--stage1-cache", type=Path, default=Path("bench/cache/stage1_large"))
    ap.add_argument("--out", type=Path, default=RESULTS / "specificity_kinds.json")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    t0 = time.time()
    where = world_paths("large")
    world = World.read(where.data_dir)

    def load() -> DiffusionModel:
        return load_widened(where.diffusion_dir, args.width) if args.width else load_model(where.diffusion_dir)

    base, model = load(), load()
    shipped = load_model(where.diffusion_dir) if args.width else base  # what Stage I's targets were made on
    hp = EditHParams.preset(base.family, steps=200, seed=0, **METHODS[args.method])
    layers = hp.edit_layers(base.n_layers)
    by_id = {f.id: f for f in world.facts}
    # the benchmark's batches and Stage I targets (on the shipped model: a widened one computes
    # the same, so its targets are the same); a consolidated version solves its live set once
    segment = list(stream_batches(world, shipped, hp, args.edits, args.stage1_cache, seed=0,
                                  sizes=(10, 100, args.edits)))
    state, current = EditState(), {}
    for batch, reqs, z in segment[:-1]:
        state = state.with_facts([LiveFact(q.id, q.source, zz, tuple(q.entities))
                                  for q, zz in zip(reqs, z.float(), strict=True)])
        current.update(dict(batch))
    batch, reqs, z = segment[-1]
    current.update(dict(batch))
    captions = world.captions()
    live = [p for i in current for p in (by_id[i].prompt, *by_id[i].paraphrases)]
    pres = preservation(base, layers, captions, hp, requests=reqs, live=live,
                        moments=key_moments(base, layers, captions, skip_bos=hp.c0_skip_bos))
    t2 = time.perf_counter()
    edit = apply_targets(model, reqs, z, hp, state, pres)
    t2 = time.perf_counter() - t2  # Stage II of the 1,000-edit version alone
    reserved = sample(reserved_facts(world), 250)  # the benchmark's reserved probes (--probe-facts 250)
    pr = kind_probes(reserved, [by_id[i] for i in current])
    pr.kinds["specificity_attributes"] = world.attribute_prompts()  # the benchmark's attribute probes
    judge = ToyJudge.from_pretrained(where.judge_dir).eval()
    edited, _ = judge_probes(model, judge, pr, 4)
    unedited, _ = judge_probes(base, judge, pr, 4)
    count = {k: len(v) for k, v in pr.kinds.items()}
    row = {
        "width": args.width or base.text_encoder.config.intermediate_size, "method": args.method,
        "edits": args.edits, "facts_live": len(current), "update_norm": edit.meta["update_norm"],
        "kinds": {k: {"probes": count[k], "edited": round(edited[k], 4), "unedited": round(unedited[k], 4)}
                  for k in count},
        "command": (f"python -m research.specificity_kinds --width {args.width} --edits {args.edits} "
                    f"--method {args.method} --stage1-cache {args.stage1_cache}"),
        "stage2_seconds": round(t2, 1), "wall_seconds": round(time.time() - t0, 1),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(row, indent=1), flush=True)
    out = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
    out["runs"][f"{row['width']}/{args.method}/{args.edits}"] = row
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
