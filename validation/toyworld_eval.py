"""Measuring an edit in ToyWorld (docs/method.md "Measuring an edit").

Probes are prompts with the visual they should show: efficacy (the edited source),
generality (its held-out context and paraphrases), specificity (the entity's other
relations, the entity alone, unrelated facts). The shipped judge labels each generated
image; FID uses the judge's pooled features through torchmetrics.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from editing.model import DiffusionModel
from toyworld.judge import ToyJudge
from toyworld.world import SELF, Visual, World, render

KINDS = ("efficacy", "generality", "specificity_relation", "specificity_entity",
         "specificity_unrelated")


@dataclass(frozen=True)
class Probe:
    prompt: str
    kind: str
    fact_id: str
    expected: Visual


def probes_for(world: World, current: dict[str, Visual], n_unrelated: int = 60,
               seed: int = 0) -> list[Probe]:
    """Probes for the facts in ``current`` (fact id -> the visual it should now show).
    Facts not in ``current`` are expected to show what the world says."""
    by_id = {f.id: f for f in world.facts}
    truth = {f.id: f.visual for f in world.facts} | current
    probes: list[Probe] = []
    touched_entities = set()
    for fid, visual in current.items():
        f = by_id[fid]
        touched_entities.add(f.entity)
        probes.append(Probe(f.prompt, "efficacy", fid, visual))
        probes.append(Probe(f.heldout_context.format(f.prompt), "generality", fid, visual))
        probes += [Probe(p, "generality", fid, visual) for p in f.paraphrases]
        for other in world.facts:
            if other.entity == f.entity and other.id not in current:
                kind = "specificity_entity" if other.relation == SELF else "specificity_relation"
                probes.append(Probe(other.prompt, kind, other.id, truth[other.id]))
    rng = random.Random(seed)
    unrelated = [f for f in world.facts if f.entity not in touched_entities]
    for f in rng.sample(unrelated, min(n_unrelated, len(unrelated))):
        probes.append(Probe(f.prompt, "specificity_unrelated", f.id, f.visual))
    return list(dict.fromkeys(probes))  # unique, in order


def judged(model: DiffusionModel, judge: ToyJudge, prompts: Sequence[str], seeds: int,
           seed: int = 0, batch_size: int = 96, **gen) -> tuple[np.ndarray, list[Visual]]:
    """Images (seeds per prompt, same noise for the same call) and the judge's labels."""
    flat = [p for p in prompts for _ in range(seeds)]
    images = model.generate_many(flat, seed=seed, batch_size=batch_size, **gen)
    return images, judge.classify(images)


def score(probes: Sequence[Probe], labels: Sequence[Visual], seeds: int) -> dict[str, float]:
    hits: dict[str, list[bool]] = defaultdict(list)
    for i, p in enumerate(probes):
        hits[p.kind] += [v == p.expected for v in labels[i * seeds:(i + 1) * seeds]]
    out = {k: float(np.mean(hits[k])) for k in KINDS if hits[k]}
    spec = [h for k in KINDS if k.startswith("specificity") for h in hits[k]]
    if spec:
        out["specificity"] = float(np.mean(spec))
    return out


def fid(judge: ToyJudge, real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance in the ToyWorld judge's feature space (``validation.fid``)."""
    from validation import fid as fid_

    def embed(images: np.ndarray) -> torch.Tensor:
        return judge.features(torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1)

    return fid_.fid(fid_.Features(embed, judge.config.feature_dim), real, fake)


def clean_renders(visuals: Sequence[Visual], per: int, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([render(v, rng) for v in visuals for _ in range(per)])
