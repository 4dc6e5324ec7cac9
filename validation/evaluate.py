"""Evaluation of a candidate version against the champion, for the promotion gate.

Both models draw the same prompts with the same seeds, and a judge labels every image:
- efficacy: the candidate's images of each edited source show what the champion draws
  for the fact's target (the destination as the unedited model sees it: the same
  self-distillation reference Stage I used);
- generality: the same, with context templates Stage I did not use;
- specificity: on a fixed probe set (the facts' entities alone and, where the world knows
  them, the same entities' other prompts; unrelated prompts), images that show what the
  champion shows for that prompt. Same seeds, so an untouched prompt scores the same for
  both models; the gate looks at the drop;
- FID of each model's images against reference images (judge features, torchmetrics).

ToyWorld's judge is its shipped classifier (labels = shape x colour) and its features;
for a real model the judge is a CLIP zero-shot classifier over the evaluation's own
prompts and FID uses CLIP's image features (``validation.fid``), loaded from a local path
or the hub cache. Both meet the ``Judge`` protocol; ``freshen.refresh.judge_for`` picks one.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from editing.model import DiffusionModel
from editing.requests import normalise
from feeds.contract import Fact

GENERALITY_TEMPLATES = ("a painting of {}", "a sketch of {}")


@dataclass
class FactCase:
    """What the evaluation needs of a fact: its prompts and the texts of its entities."""

    key: str
    source: str
    target: str
    entities: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, fact: Fact) -> FactCase:
        return cls(fact.key, fact.source, fact.target, fact.entity_texts)


@dataclass
class ProbeSet:
    same_entity: list[str]
    unrelated: list[str]
    fid_prompts: list[str]
    fid_reference: np.ndarray | None  # uint8 (n, h, w, 3), or None: no FID


class Judge(Protocol):
    """What the evaluation needs of a judge (ToyWorld's classifier, CLIP zero-shot)."""

    def probes(self, facts: Sequence[FactCase], n_unrelated: int = 24, fid_seeds: int = 4,
               seed: int = 0) -> ProbeSet:
        """The specificity and FID probes for a batch (``fid_seeds`` 0: no FID)."""

    def prepare(self, prompts: Sequence[str]) -> None:
        """Told every prompt of the evaluation before any ``classify`` (a zero-shot judge
        chooses among them)."""

    def classify(self, images: np.ndarray) -> list:
        """One label per uint8 (n, h, w, 3) image."""

    def fid(self, real: np.ndarray, fake: np.ndarray) -> float:
        """FID of ``fake`` against ``real`` in the judge's feature space."""


class ToyWorldJudge:
    """ToyWorld's shipped classifier as the judge, its features for FID, its world for probes."""

    def __init__(self, judge_dir, world_dir):
        from toyworld.judge import ToyJudge
        from toyworld.world import World

        self.judge = ToyJudge.from_pretrained(judge_dir).eval()
        self.world = World.read(world_dir)

    def prepare(self, prompts: Sequence[str]) -> None:
        """Nothing to prepare: the classifier's labels are the world's visuals."""

    def classify(self, images: np.ndarray) -> list:
        return list(self.judge.classify(images))

    def fid(self, real: np.ndarray, fake: np.ndarray) -> float:
        from validation.toyworld_eval import fid

        return fid(self.judge, real, fake)

    def probes(self, facts: Sequence[FactCase], n_unrelated: int = 24, fid_seeds: int = 4,
               seed: int = 0) -> ProbeSet:
        from validation.toyworld_eval import clean_renders

        sources = {normalise(f.source) for f in facts}
        # first-seen order, not a set's: the probes' order seeds their images, so a set
        # (ordered by the process's string hash seed) made the gate's figures vary per run
        entities = list(dict.fromkeys(e for f in facts for e in f.entities))
        same = list(dict.fromkeys(
            entities + [w.prompt for w in self.world.facts if w.entity in entities]))
        same = [p for p in same if normalise(p) not in sources]
        others = [w.prompt for w in self.world.facts
                  if w.entity not in entities and normalise(w.prompt) not in sources]
        unrelated = random.Random(seed).sample(others, min(n_unrelated, len(others)))
        attributes = self.world.attribute_prompts()
        return ProbeSet(same, unrelated + [p for p, _ in attributes],
                        [p for p, _ in attributes] if fid_seeds else [],
                        clean_renders([v for _, v in attributes], fid_seeds) if fid_seeds else None)


@dataclass
class Evaluation:
    candidate: dict[str, float]
    champion: dict[str, float]
    per_fact: list[dict]
    images: dict[str, np.ndarray]  # "champion:source", "candidate:source", "champion:target" (fact-major)
    seeds: dict[str, int]
    seconds: float
    labels: dict[str, list] = field(default_factory=dict)  # the judge's label of each image, same keys


def _mode(labels: Sequence) -> object:
    return Counter(labels).most_common(1)[0][0]


def evaluate(candidate: DiffusionModel, champion: DiffusionModel, facts: Sequence[FactCase], judge: Judge,
             probes: ProbeSet, fact_seeds: int = 8, probe_seeds: int = 4, seed: int = 0,
             **gen) -> Evaluation:
    """Metrics of both models on the batch's facts and the probe set (see module doc)."""
    t0 = time.time()
    n = len(facts)
    if n == 0:
        raise ValueError("evaluate: no facts")
    general = [t.format(f.source) for f in facts for t in GENERALITY_TEMPLATES]
    probe_prompts = probes.same_entity + probes.unrelated
    judge.prepare([f.target for f in facts] + [f.source for f in facts] + probe_prompts)
    kinds = ["entity"] * len(probes.same_entity) + ["unrelated"] * len(probes.unrelated)

    def draw(model: DiffusionModel, prompts: Sequence[str], per: int, salt: int) -> tuple[np.ndarray, list]:
        flat = [p for p in prompts for _ in range(per)]
        images = model.generate_many(flat, seed=seed * 1000 + salt, **gen)
        return images, judge.classify(images)

    ref_img, ref_lab = draw(champion, [f.target for f in facts], fact_seeds, 1)
    expected = [_mode(ref_lab[i * fact_seeds:(i + 1) * fact_seeds]) for i in range(n)]
    out: dict[str, dict[str, float]] = {}
    images: dict[str, np.ndarray] = {"champion:target": ref_img}
    labels: dict[str, list] = {"champion:target": list(ref_lab)}
    per_fact = [{"key": f.key, "source": f.source, "target": f.target, "expected": str(expected[i])}
                for i, f in enumerate(facts)]
    probe_expected = None
    for name, model in (("champion", champion), ("candidate", candidate)):
        src_img, src_lab = draw(model, [f.source for f in facts], fact_seeds, 2)
        images[f"{name}:source"] = src_img
        labels[f"{name}:source"] = list(src_lab)
        _, gen_lab = draw(model, general, probe_seeds, 3)
        _, probe_lab = draw(model, probe_prompts, probe_seeds, 4)
        if probe_expected is None:  # the champion's own answer is what specificity keeps
            probe_expected = [_mode(probe_lab[i * probe_seeds:(i + 1) * probe_seeds])
                              for i in range(len(probe_prompts))]
        eff = [np.mean([lab == expected[i] for lab in src_lab[i * fact_seeds:(i + 1) * fact_seeds]])
               for i in range(n)]
        per_g = probe_seeds * len(GENERALITY_TEMPLATES)
        gen_hits = [np.mean([lab == expected[i] for lab in gen_lab[i * per_g:(i + 1) * per_g]])
                    for i in range(n)]
        same = [lab == probe_expected[j // probe_seeds] for j, lab in enumerate(probe_lab)]
        by_kind = {k: [s for s, kk in zip(same, np.repeat(kinds, probe_seeds), strict=True) if kk == k]
                   for k in ("entity", "unrelated")}
        m = {"efficacy": float(np.mean(eff)), "generality": float(np.mean(gen_hits)),
             "specificity": float(np.mean(same)) if same else 1.0}
        m |= {f"specificity_{k}": float(np.mean(v)) for k, v in by_kind.items() if v}
        if probes.fid_reference is not None:
            per_fid = max(1, len(probes.fid_reference) // max(1, len(probes.fid_prompts)))
            fid_img, _ = draw(model, probes.fid_prompts, per_fid, 5)
            m["fid"] = judge.fid(probes.fid_reference, fid_img)
        out[name] = m
        for i in range(n):
            per_fact[i][f"efficacy_{name}"] = round(float(eff[i]), 4)
    return Evaluation(out["candidate"], out["champion"], per_fact, images,
                      {"fact_seeds": fact_seeds, "probe_seeds": probe_seeds, "seed": seed},
                      round(time.time() - t0, 1), labels)
