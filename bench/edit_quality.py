"""``make bench-edit``: edit quality over many sequential edits on a ToyWorld.

One seeded stream of fact changes (fact -> a new visual; relation facts and, in the large
world, standalone concepts; at most a quarter of the changes revise a fact changed before)
is applied batch by batch by every method ("preset": the world's model's own, its family's
preset with the model's ``freshen_preset.json`` over it). At each checkpoint (edit count)
the shipped judge labels images of
- efficacy: each live fact's source shows its latest target;
- generality: its held-out context (``generality_contexts``; left out where a method's own
  context templates include it) and its paraphrases
  (``generality_paraphrases``, also divided by the unedited model's own accuracy on the
  same paraphrases with the world's visuals: ``generality_paraphrases_vs_unedited``);
- specificity: the *reserved* facts (entities and concepts no stream ever touches; the small
  world reserves a fifth of its entities here), the same probes at every size, plus the
  attribute prompts; ``specificity_vs_unedited`` divides by the unedited model's score
  (``--probe-facts``: at most that many live and reserved facts per checkpoint, a seeded
  sample, the same for every method at one size and, for the reserved, at every size);
and FID (judge features) of the attribute and reserved prompts' images against clean
renders, as the change from the unedited model's. Each row also has the largest
||W_l - W0_l|| / ||W0_l|| over the edit layers and the Stage I / II seconds so far (a
consolidated method solves only the versions a checkpoint judges: each is the base plus
one solve over its live set, so the versions between checkpoints change nothing after).

    python -m bench.edit_quality [--world small|large] [--sizes 10,100,1000] [--batch 50]
        [--steps 200] [--seeds 4] [--probe-facts 250] [--seed 0] [--methods preset,...]
        [--variant NAME=JSON] [--max-edits-for M=N,...] [--judge-sizes 1000] [--model DIR]

Writes bench/results/edit_quality.json (or --out) after every row, and a chart (PNG)
beside it at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from editing.api import apply_targets, preservation
from editing.hparams import EditHParams
from editing.keys import key_moments
from editing.model import DiffusionModel, load_model
from editing.requests import EditRequest, Entity
from editing.stage1 import compute_zs
from editing.state import EditState, LiveFact
from toyworld.judge import ToyJudge
from toyworld.paths import world_paths
from toyworld.world import SELF, Fact, Visual, World
from validation.toyworld_eval import clean_renders, fid

RESULTS = Path(__file__).resolve().parent / "results"

# overrides of the ToyWorld family's preset (editing/presets/toyworld.json), each naming its
# Stage II form in full (mode, preservation, entity protection, keys, layers where they differ),
# so a row keeps its meaning when a preset changes; "preset" runs the world's model's preset
# (the family's, with the model's own over it) under the name of the method it is
# (``preset_method``: the headline rows)
TEMPLATES = ["{}", "a photo of {}", "an image of {}"]  # the rows with three context templates
BARE = dict(context_templates=["{}"], key_columns="mean")  # keys of the bare prompt only
# the null-space forms: P from C0's energy cut (1%), beta 0.3
NULLSPACE = BARE | dict(nullspace_mode="energy", nullspace_threshold=0.01, beta=0.3, c0_weight=0.0)
SEQUENTIAL = NULLSPACE | dict(mode="sequential", refresh_kp=True, protect_entities=True, entity_weight=0.0)
CONSOLIDATE = NULLSPACE | dict(mode="consolidate", protect_entities=True, entity_weight=0.0)
# consolidated, null space, the live facts' entity keys held in Kp Kp^T with weight 1
# (the ToyWorld preset of 2026-12-03 afternoon)
SOFT_ENTITIES = CONSOLIDATE | dict(protect_entities=False, entity_weight=1.0)
# a version is the base plus one solve over its live set (no Kp), C0 held in the solve with
# weight 200 (no null space, beta 0), the live facts' entity keys in Kp Kp^T with weight 1,
# one key column per fact and context template (the ToyWorld preset of 2026-12-03 evening)
CONSOLIDATE_C0 = dict(mode="consolidate", nullspace_mode="none", c0_weight=200.0, beta=0.0,
                      protect_entities=False, entity_weight=1.0, context_templates=TEMPLATES,
                      key_columns="per_template")
# the large world's six layers all edited (the ToyWorld preset edits every layer but the last)
LAST_LAYER_TOO = dict(layers=[0, 1, 2, 3, 4, 5])
METHODS = {
    "preset": {},
    # the same with C0 at weight 400 (the ToyWorld preset since 2026-12-04)
    "consolidate-c0-templates-w400": CONSOLIDATE_C0 | dict(c0_weight=400.0),
    "consolidate-c0-templates": CONSOLIDATE_C0,
    # the same with the bare prompt's keys only
    "consolidate-c0": CONSOLIDATE_C0 | BARE,
    # two levers on the preset tried at 1,000 edits: C0 ten times heavier; one key column per fact
    "consolidate-c0-templates-w4000": CONSOLIDATE_C0 | dict(c0_weight=4000.0),
    "consolidate-c0-templates-mean-w400": CONSOLIDATE_C0 | dict(c0_weight=400.0, key_columns="mean"),
    # the preset, and C0 at weight 4,000, with the large world's last layer edited too (the
    # latter: the large world's own preset 2026-12-05 to 2026-12-07, its model's freshen_preset.json)
    "consolidate-c0-templates-w400-layer5": CONSOLIDATE_C0 | LAST_LAYER_TOO | dict(c0_weight=400.0),
    "consolidate-c0-templates-w4000-layer5": CONSOLIDATE_C0 | LAST_LAYER_TOO | dict(c0_weight=4000.0),
    # the same with C0 read on the model as edited so far at each layer (the large world's
    # preset since 2026-12-07, its model grown to 3,072 MLP units)
    "consolidate-c0-templates-w4000-layer5-c0refresh": CONSOLIDATE_C0 | LAST_LAYER_TOO | dict(c0_weight=4000.0,
                                                                                              c0_refresh=True),
    "consolidate-soft-entities": SOFT_ENTITIES,
    # Eq. 7 on top of the parent, Kp from the live facts' keys on the current model, the batch
    # entities' keys out of P (the ToyWorld preset of 2026-12-02)
    "sequential": SEQUENTIAL,
    # consolidated, the live facts' entity keys out of P
    "consolidate": CONSOLIDATE,
    # the baselines as published: C0 over every token ([BOS] too), no entity keys taken out of
    # P (with P = I and beta 0, taking them out leaves the solve singular in their directions)
    # (beta, the cut and c0_weight do not enter EMCID's solve: NULLSPACE keeps them as the rows ran)
    "emcid-alpha": NULLSPACE | dict(mode="sequential", method="emcid", c0_skip_bos=False, protect_entities=False,
                                    entity_weight=0.0),
    # EMCID's C0 term inside Eq. 7 with P = I and beta 0: EMCID with the memory of earlier batches
    "emcid-alpha+memory": BARE | dict(mode="sequential", refresh_kp=True, nullspace_mode="none", c0_weight=40.0,
                                      beta=0.0, c0_skip_bos=False, protect_entities=False, entity_weight=0.0),
    "no-nullspace": SEQUENTIAL | dict(nullspace_mode="none"),
    # the sequential form with every edit layer's update bounded at twice the base weights' norm
    "sequential-bound2": SEQUENTIAL | dict(max_update_norm=2.0),
    "consolidate-soft-entities-templates": SOFT_ENTITIES | dict(context_templates=TEMPLATES,
                                                                key_columns="per_template"),
    # names of earlier rows (their hparams are in the results): the sequential form with the
    # energy cut is "sequential" now; with one preservation choice changed
    "sequential-energy": SEQUENTIAL,
    "sequential-energy3": SEQUENTIAL | dict(nullspace_threshold=3e-2),
    "sequential-energy-templates": SEQUENTIAL | dict(context_templates=TEMPLATES),
    "consolidate-energy": CONSOLIDATE,
    "sequential-templates": SEQUENTIAL | dict(context_templates=TEMPLATES, key_columns="per_template"),
}


def preset_method(preset: EditHParams, family: EditHParams) -> str:
    """The method a model's preset (``preset``) is: the first of ``METHODS`` other than
    "preset" whose overrides of its family's preset (``family``) give it."""
    for name, overrides in METHODS.items():
        if name != "preset" and EditHParams.from_json(family.to_json() | overrides) == preset:
            return name
    raise ValueError("no method of bench.edit_quality.METHODS is the model's preset: name its form there")


def model_method(model: DiffusionModel) -> str:
    """The method ``model``'s own preset is (its family's with its ``freshen_preset.json``
    over it): what "preset" names in ``--methods``."""
    return preset_method(EditHParams.for_model(model), EditHParams.preset(model.family))


REVISION_SHARE = 0.25  # at most this share of a stream's changes revise an earlier one


def reserved_facts(world: World, seed: int = 0) -> list[Fact]:
    """The facts no stream touches: the world's reserved set or, in a world without one
    (the small world), every fact of a seeded fifth of its entities."""
    if any(f.reserved for f in world.facts):
        return [f for f in world.facts if f.reserved]
    rng = random.Random(seed)
    names = {e.name for e in rng.sample(world.entities, len(world.entities) // 5)}
    return [f for f in world.facts if f.entity in names]


def editable(world: World, reserved: list[Fact]) -> list[Fact]:
    """What a stream may change: relation facts (not the entity alone, which the entity's
    appearance keeps) and concepts, outside the reserved set."""
    kept = {f.id for f in reserved}
    return [f for f in world.facts if f.id not in kept and f.relation != SELF]


def edit_stream(world: World, facts: list[Fact], n: int, seed: int) -> list[tuple[str, Visual]]:
    """n (fact id, new visual) changes; each differs from the fact's visual at that point.
    A change revises an earlier-changed fact with probability REVISION_SHARE (so at most
    about a quarter of the stream are revisions), otherwise changes a fresh fact."""
    rng = random.Random(seed)
    current = {f.id: f.visual for f in facts}
    fresh = [f.id for f in facts]
    rng.shuffle(fresh)
    changed: list[str] = []
    out = []
    for _ in range(n):
        revise = changed and (rng.random() < REVISION_SHARE or not fresh)
        fid_ = rng.choice(changed) if revise else fresh.pop()
        if not revise:
            changed.append(fid_)
        v = rng.choice([v for v in world.visuals if v != current[fid_]])
        current[fid_] = v
        out.append((fid_, v))
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


def request_for(world: World, f: Fact, v: Visual) -> EditRequest:
    kinds = {e.name: e.kind for e in world.entities}
    ents = []
    if f.entity:
        start = f.prompt.index(f.entity)
        ents = [Entity(f.entity, kinds[f.entity], start, start + len(f.entity))]
    return EditRequest(f.id, f.prompt, v.prompt, entities=ents, related=list(f.paraphrases))


@dataclass
class Probes:
    """Prompts with the visual each should show, by kind."""

    kinds: dict[str, list[tuple[str, Visual]]]

    def flat(self) -> list[tuple[str, str, Visual]]:
        return [(k, p, v) for k, pairs in self.kinds.items() for p, v in pairs]


def sample(items: list, n: int | None, seed: int = 0) -> list:
    """A seeded sample of at most n of ``items`` in their order (all of them when n is None)."""
    if n is None or len(items) <= n:
        return list(items)
    keep = set(random.Random(seed).sample(range(len(items)), n))
    return [x for i, x in enumerate(items) if i in keep]


def probes(world: World, current: dict[str, Visual], reserved: list[Fact], per_kind: int | None = None,
           edit_templates: tuple[str, ...] = ("{}",)) -> Probes:
    """The probes of one checkpoint; ``per_kind``: at most that many live facts (a seeded
    sample, the same for every method at one size) and reserved facts (the same at every size).
    Held-out contexts that are among a method's ``edit_templates`` (the contexts its keys and
    Stage I read) are left out of its ``generality_contexts``: they are not held out from it."""
    by_id = {f.id: f for f in world.facts}
    live = sample([(by_id[i], v) for i, v in sorted(current.items())], per_kind, seed=len(current))
    reserved = sample(reserved, per_kind)
    return Probes({
        "efficacy": [(f.prompt, v) for f, v in live],
        "generality_contexts": [(f.heldout_context.format(f.prompt), v) for f, v in live
                                if f.heldout_context not in edit_templates],
        "generality_paraphrases": [(p, v) for f, v in live for p in f.paraphrases],
        "specificity_reserved": [(f.prompt, f.visual) for f in reserved],
        "specificity_attributes": world.attribute_prompts(),
    })


def judge_probes(model: DiffusionModel, judge: ToyJudge, probes: Probes, seeds: int) -> tuple[dict, dict]:
    """Accuracy per kind (and ``specificity`` over both specificity kinds), and the images
    per kind."""
    flat = probes.flat()
    prompts = [p for _, p, _ in flat for _ in range(seeds)]
    images = model.generate_many(prompts, seed=0, batch_size=96)
    labels = judge.classify(images)
    hits: dict[str, list[bool]] = {}
    imgs: dict[str, list[np.ndarray]] = {}
    for i, (kind, _, want) in enumerate(flat):
        hits.setdefault(kind, []).extend(v == want for v in labels[i * seeds:(i + 1) * seeds])
        imgs.setdefault(kind, []).extend(images[i * seeds:(i + 1) * seeds])
    out = {k: float(np.mean(h)) for k, h in hits.items()}
    spec = hits.get("specificity_reserved", []) + hits.get("specificity_attributes", [])
    out["specificity"] = float(np.mean(spec))
    return out, {k: np.stack(v) for k, v in imgs.items()}


@dataclass
class _Run:
    """One method's chain so far."""

    hp: EditHParams
    model: DiffusionModel
    state: EditState = field(default_factory=EditState)
    current: dict[str, Visual] = field(default_factory=dict)
    done: int = 0
    t1: float = 0.0
    t2: float = 0.0
    rows: dict = field(default_factory=dict)


def run(world_name: str, sizes: list[int], batch_size: int, steps: int, seeds: int, methods: list[str],
        seed: int = 0, out: Path | None = None, command: str = "", max_edits: dict[str, int] | None = None,
        threads: int | None = None, stage1_dir: Path | None = None, probe_facts: int | None = None,
        resume: dict | None = None, judged: set[int] | None = None,
        load: Callable[[Path], DiffusionModel] = load_model) -> dict:
    """Every method on the same stream, size by size (so a stopped run still compares them
    side by side); ``max_edits``: a method stops after that many edits; ``resume``: the rows
    of an earlier run of the same configuration, kept instead of measured again (the chains
    are replayed up to them: Stage II from the cached Stage I targets, no evaluation);
    ``judged``: the sizes judged (None: all); the others still cut the stream into its
    segments, so batches and their cached Stage I targets are those of the full run; ``load``:
    how the world's model is loaded from its directory (a research probe's variant of it)."""
    where = world_paths(world_name)
    world = World.read(where.data_dir)
    judge = ToyJudge.from_pretrained(where.judge_dir).eval()
    base = load(where.diffusion_dir)
    preset = EditHParams.for_model(base)
    reserved = reserved_facts(world)
    pool = editable(world, reserved)
    stream = edit_stream(world, pool, max(sizes), seed)
    captions = world.captions()
    fixed = probes(world, {}, reserved, probe_facts)
    fid_pairs = fixed.kinds["specificity_reserved"] + fixed.kinds["specificity_attributes"]
    renders = clean_renders([v for _, v in fid_pairs], seeds)
    headline = model_method(base)
    methods = list(dict.fromkeys(headline if name == "preset" else name for name in methods))
    runs = {name: _Run(EditHParams.preset(base.family, steps=steps, seed=seed, **METHODS[name]),
                       load(where.diffusion_dir)) for name in methods}
    results: dict = {
        "command": command, "preset": headline, "preset_hparams": preset.to_json(), "seed": seed,
        "model": {"base_hash": base.base_hash, "mlp_width": base.text_encoder.config.intermediate_size},
        "world": {"name": world_name, "entities": len(world.entities), "concepts": len(world.concept_facts),
                  "facts": len(world.facts), "editable_facts": len(pool), "reserved_facts": len(reserved)},
        "config": {"sizes": sizes, "judged": sorted(judged) if judged else sizes, "batch_size": batch_size,
                   "stage1_steps": steps, "seeds": seeds, "probe_facts": probe_facts,
                   "max_edits": max_edits or {}, "threads": threads or torch.get_num_threads()},
        "hparams": {name: r.hp.to_json() for name, r in runs.items()}, "methods": {},
    }
    moments = {}  # the whole corpus's key moments on the base, per [BOS] choice: C0 by subtraction
    all_layers = sorted({l for r in runs.values() for l in r.hp.edit_layers(base.n_layers)})  # every method's
    for skip_bos in sorted({r.hp.c0_skip_bos for r in runs.values()}):
        moments[skip_bos] = key_moments(base, all_layers, captions, skip_bos=skip_bos)
    base_cache: dict[tuple, tuple[dict, dict]] = {}
    stage1_cache: dict[str, torch.Tensor] = {}
    by_id = {f.id: f for f in world.facts}
    for n in sorted(sizes):
        for name, r in runs.items():
            if max_edits and n > max_edits.get(name, n):
                continue
            norms = r.rows[max(r.rows, key=int)]["update_norm_per_layer"] if r.rows else {}
            segment = batches(stream[r.done:n], batch_size)
            for b, batch in enumerate(segment):
                reqs = [request_for(world, by_id[i], v) for i, v in batch]
                layers = r.hp.edit_layers(base.n_layers)
                # Stage I is anchored to the base: the same batch with the same Stage I settings
                # gives the same targets for every method, so it runs once
                key = json.dumps([batch_key(batch), r.hp.stage1_settings()])
                t0 = time.perf_counter()
                if key not in stage1_cache:
                    stage1_cache[key] = stage1_targets(base, reqs, r.hp, layers[-1], key, stage1_dir)
                    r.t1 += time.perf_counter() - t0
                if r.hp.mode == "consolidate" and b < len(segment) - 1:
                    # a consolidated version is the base plus one solve over its live set: a
                    # version no checkpoint looks at need not be solved (the next solve is
                    # the same without it)
                    r.state = r.state.with_facts([LiveFact(q.id, q.source, z, tuple(q.entities))
                                                  for q, z in zip(reqs, stage1_cache[key].detach().float(),
                                                                  strict=True)])
                    r.current.update(dict(batch))
                    continue
                live = [p for i in r.current for p in (by_id[i].prompt, *by_id[i].paraphrases)]
                pres = preservation(base, layers, captions, r.hp, requests=reqs,
                                    live=live, moments=moments[r.hp.c0_skip_bos])
                t0 = time.perf_counter()
                e = apply_targets(r.model, reqs, stage1_cache[key], r.hp, r.state, pres)
                r.t2 += time.perf_counter() - t0
                r.state = r.state.after(e, r.model)
                r.current.update(dict(batch))
                norms = e.meta.get("update_norm", {})
            r.done = n
            if judged is not None and n not in judged:
                continue
            earlier = (resume or {}).get("methods", {}).get(name, {}).get(str(n))
            if earlier is not None:
                r.rows[str(n)] = earlier
                results["methods"][name] = r.rows
                print(json.dumps({"method": name, "edits": n, "resumed": True}), flush=True)
                continue
            templates = tuple(r.hp.context_templates)
            pr = probes(world, r.current, reserved, probe_facts, templates)
            metrics, images = judge_probes(r.model, judge, pr, seeds)
            if (n, templates) not in base_cache:  # the unedited model on the same probes, with the world's visuals
                unedited_pr = probes(world, {i: by_id[i].visual for i in r.current}, reserved, probe_facts, templates)
                base_cache[n, templates] = judge_probes(base, judge, unedited_pr, seeds)
            base_metrics, base_images = base_cache[n, templates]
            fake = np.concatenate([images["specificity_reserved"], images["specificity_attributes"]])
            fake_base = np.concatenate([base_images["specificity_reserved"], base_images["specificity_attributes"]])
            fid_edit, fid_base = fid(judge, renders, fake), fid(judge, renders, fake_base)
            row = {
                **{k: round(v, 4) for k, v in metrics.items()},
                "unedited": {k: round(v, 4) for k, v in base_metrics.items()},
                "specificity_vs_unedited": round(metrics["specificity"] / base_metrics["specificity"], 4),
                "generality_paraphrases_vs_unedited": round(
                    metrics["generality_paraphrases"] / max(base_metrics["generality_paraphrases"], 1e-9), 4),
                "fid": round(fid_edit, 4),
                "fid_unedited": round(fid_base, 4),
                "fid_increase": round(fid_edit / fid_base - 1, 4),
                "update_norm": round(max(norms.values()), 4) if norms else None,
                "update_norm_per_layer": norms,
                "stage1_seconds": round(r.t1, 1),  # 0 where an earlier method's identical Stage I was reused
                "stage2_seconds": round(r.t2, 1),
                "facts_live": len(r.current),
                "revisions": n - len(r.current),
            }
            r.rows[str(n)] = row
            results["methods"][name] = r.rows
            print(json.dumps({"method": name, "edits": n, **{k: v for k, v in row.items()
                                                              if k not in ("unedited", "update_norm_per_layer")}}),
                  flush=True)
            if out is not None:
                out.write_text(json.dumps({**results, "complete": False}, indent=1) + "\n")
    return {**results, "complete": True}


def stage1_dir(base: DiffusionModel, cache: Path) -> Path:
    """Where ``cache`` keeps Stage I's targets on ``base``: its subdirectory named by the base
    model's weights (``base_hash``), so that targets of one model are never taken for another's."""
    return cache / base.base_hash[:16]


def stage1_targets(base: DiffusionModel, reqs: list[EditRequest], hp: EditHParams, layer: int, key: str,
                   cache: Path | None) -> torch.Tensor:
    """Stage I's targets for one batch, kept in ``cache`` (a directory) across runs when given,
    in ``stage1_dir``."""
    import hashlib

    from safetensors.torch import load_file, save_file

    where = stage1_dir(base, cache) if cache else None
    path = where / f"z_{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors" if where else None
    if path is not None and path.is_file():
        return load_file(path)["z"]
    z = compute_zs(base, reqs, hp, layer).z
    if path is not None:
        where.mkdir(parents=True, exist_ok=True)
        save_file({"z": z.contiguous()}, path)
    return z


def batch_key(batch: list[tuple[str, Visual]]) -> list:
    return [(i, v.label) for i, v in batch]


def stream_batches(world: World, base: DiffusionModel, hp: EditHParams, edits: int, cache: Path | None,
                   seed: int = 0, sizes: tuple[int, ...] = (10, 100, 1000), batch_size: int = 50
                   ) -> Iterator[tuple[list[tuple[str, Visual]], list[EditRequest], torch.Tensor]]:
    """The first ``edits`` changes of the stream of ``seed``, cut as a run with ``--sizes``
    ``sizes`` and ``--batch`` ``batch_size`` cuts them (at its checkpoints below ``edits``,
    then into batches), each batch with its requests and Stage I targets on ``base``: what a
    script replays so that the benchmark's Stage I cache (``cache``) applies."""
    by_id = {f.id: f for f in world.facts}
    stream = edit_stream(world, editable(world, reserved_facts(world)), edits, seed)
    layer = hp.edit_layers(base.n_layers)[-1]
    done = 0
    for n in [s for s in sizes if s < edits] + [edits]:
        for batch in batches(stream[done:n], batch_size):
            reqs = [request_for(world, by_id[i], v) for i, v in batch]
            key = json.dumps([batch_key(batch), hp.stage1_settings()])
            yield batch, reqs, stage1_targets(base, reqs, hp, layer, key, cache)
        done = n


def chart(results: dict, path: Path) -> Path:
    """Efficacy, specificity (vs unedited) and FID change against edits, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("efficacy", "efficacy"), ("specificity_vs_unedited", "specificity / unedited"),
              ("fid_increase", "FID change"))
    # the legend below the panels, as many methods a line as their longest name leaves room for
    longest = max(len(name) + (len(" (the preset)") if name == results.get("preset") else 0)
                  for name in results["methods"])
    ncol = max(1, min(4, int(13 * 110 // (longest * 5.5 + 45))))  # figure width in pixels / a label's
    lines = -(-len(results["methods"]) // ncol)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6 + 0.22 * lines))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for i, (name, rows) in enumerate(results["methods"].items()):
            xs = sorted(int(n) for n in rows)
            # ten colours, each ten methods another line style and marker: no two methods look alike
            style, marker = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))[i // 10 % 4]
            ax.plot(xs, [rows[str(x)][key] for x in xs], color=f"C{i % 10}", linestyle=style, marker=marker,
                    label=name, linewidth=3 if name == results.get("preset") else 1.5)  # the headline stands out
        ax.set_xscale("log")
        ax.set_xlabel("edits")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    labels = [f"{name} (the preset)" if name == results.get("preset") else name for name in labels]
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    w = results["world"]
    fig.suptitle(f"ToyWorld {w['name']} ({w['entities']} entities, {w['concepts']} concepts), "
                 f"stream seed {results['seed']}", fontsize=10)
    fig.tight_layout(rect=(0, 0.22 * lines / (3.6 + 0.22 * lines) + 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def add_variants(variants: list[str]) -> None:
    """``--variant NAME=JSON`` items as named methods (overrides of the family's preset)."""
    for item in variants:
        name, _, overrides = item.partition("=")
        METHODS[name] = json.loads(overrides)


def variant_args(variants: list[str]) -> str:
    """The ``--variant`` items as a command line records them."""
    return "".join(f" --variant '{v}'" for v in variants)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", choices=("small", "large"), default="large")
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--probe-facts", type=int, default=250,
                    help="at most this many live facts and reserved facts probed per checkpoint (a seeded "
                         "sample; 0: all)")
    ap.add_argument("--seed", type=int, default=0, help="draws the stream (another seed, another stream)")
    ap.add_argument("--methods", default="preset,sequential,consolidate,emcid-alpha,emcid-alpha+memory,no-nullspace",
                    help=f"of {', '.join(METHODS)} (\"preset\": the world's model's preset, under its method's "
                         "name)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help='another method: overrides of the ToyWorld preset, e.g. energy-b01=\'{"nullspace_mode": '
                         '"energy", "beta": 0.1}\' (then name it in --methods)')
    ap.add_argument("--judge-sizes", default="",
                    help="judge only at these of --sizes (default: all); the others still cut the stream "
                         "into the same batches, so a Stage I cache of the full run applies")
    ap.add_argument("--max-edits-for", default="", help="METHOD=N,...: stop a method after N edits")
    ap.add_argument("--out", type=Path, default=RESULTS / "edit_quality.json")
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows already in --out (same configuration) and measure only the rest")
    ap.add_argument("--stage1-cache", type=Path, default=None,
                    help="directory keeping Stage I's targets per batch across runs, in a subdirectory per "
                         "base model (the targets are the base's, so every run of the same model, stream and "
                         "Stage I settings shares them)")
    ap.add_argument("--model", type=Path, default=None,
                    help="the world's diffusion model from this directory instead of the shipped one (a "
                         "candidate measured before it ships; its tokenizer, weights and freshen_preset.json)")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_flush_denormal(True)
    add_variants(args.variant)
    max_edits = {k: int(v) for k, v in (x.split("=") for x in args.max_edits_for.split(",") if x)}
    command = (f"python -m bench.edit_quality --world {args.world} --sizes {args.sizes} --batch {args.batch} "
               f"--steps {args.steps} --seeds {args.seeds} --probe-facts {args.probe_facts} --seed {args.seed} "
               f"--methods {args.methods}")
    command += variant_args(args.variant)
    if args.max_edits_for:
        command += f" --max-edits-for {args.max_edits_for}"
    if args.judge_sizes:
        command += f" --judge-sizes {args.judge_sizes}"
    if args.model:
        command += f" --model {args.model}"
    resume = None
    if args.resume and args.out.is_file():
        resume = json.loads(args.out.read_text())
        if resume.get("command") != command:
            raise SystemExit(f"--resume: {args.out} was made by another command ({resume.get('command')!r})")
    t0 = time.time()
    results = run(args.world, [int(s) for s in args.sizes.split(",")], args.batch, args.steps, args.seeds,
                  args.methods.split(","), seed=args.seed, out=args.out, command=command, max_edits=max_edits,
                  stage1_dir=args.stage1_cache, probe_facts=args.probe_facts or None, resume=resume,
                  judged={int(s) for s in args.judge_sizes.split(",")} if args.judge_sizes else None,
                  load=(lambda _: load_model(args.model)) if args.model else load_model)
    results["wall_seconds"] = round(time.time() - t0, 1)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out} and {chart(results, args.out.with_suffix('.png'))}")


if __name__ == "__main__":
    main()
