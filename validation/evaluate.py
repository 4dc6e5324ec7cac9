"""Evaluation of a candidate version against the champion, for the promotion gate.

Both models draw the same prompts with the same seeds, and a judge labels every image:
- efficacy: the candidate's images of each edited source show the fact's target: its
  ground truth where the judge's world knows it (ToyWorld: the visual of "a red circle"),
  else what the champion draws for the target prompt (the self-distillation reference
  Stage I used); a revert's target is its own source as the unedited base draws it (or as
  the world knows it);
- generality: the same, with context templates Stage I did not use (or, for a real model
  with a benchmark's prompts as its probes, that benchmark's generality prompts of the fact);
- specificity: on a fixed probe set (the facts' entities alone and, where the world knows
  them, the same entities' other prompts; unrelated prompts), images that show what the
  champion shows for that prompt. Same seeds, so an untouched prompt scores the same for
  both models; the gate looks at the drop;
- FID of each model's images against reference images (judge features, torchmetrics);
- against the unedited base as well (cumulative drift, which a chain of versions each
  within the per-version allowance can pile up): ``specificity_base``, the share of probe
  images labelled as the base labels them, and the base's FID on the same prompts.

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
    target: str  # a revert's is its source: what the unedited base draws for it is the aim
    entities: list[str] = field(default_factory=list)
    revert: bool = False

    @classmethod
    def of(cls, fact: Fact) -> FactCase:
        revert = fact.kind == "revert"
        return cls(fact.key, fact.source, fact.source if revert else fact.target, fact.entity_texts, revert)


@dataclass
class ProbeSet:
    same_entity: list[str]
    unrelated: list[str]
    fid_prompts: list[str]
    fid_reference: np.ndarray | None  # uint8 (n, h, w, 3), or None: no FID
    generality: dict[str, list[str]] = field(default_factory=dict)  # fact key -> its prompts (else templates)

    def general(self, fact: FactCase) -> list[str]:
        """The generality prompts of ``fact``: its own, or the context templates Stage I did not use."""
        return self.generality.get(fact.key) or [t.format(fact.source) for t in GENERALITY_TEMPLATES]


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

    def truth(self, prompt: str) -> object | None:
        """The label a prompt's images should get where the judge's world knows it (ToyWorld:
        a visual's prompt), else None: the champion's rendering of the prompt stands in."""


class ToyWorldJudge:
    """ToyWorld's shipped classifier as the judge, its features for FID, its world for probes."""

    def __init__(self, judge_dir, world_dir, device: str | None = None):
        from editing.model import resolve_device
        from toyworld.judge import ToyJudge
        from toyworld.world import World

        self.judge = ToyJudge.from_pretrained(judge_dir).eval().to(resolve_device(device))
        self.world = World.read(world_dir)

    def prepare(self, prompts: Sequence[str]) -> None:
        """Nothing to prepare: the classifier's labels are the world's visuals."""

    def classify(self, images: np.ndarray) -> list:
        return list(self.judge.classify(images))

    def fid(self, real: np.ndarray, fake: np.ndarray) -> float:
        from validation.toyworld_eval import fid

        return fid(self.judge, real, fake)

    def truth(self, prompt: str) -> object | None:
        """The world's visual of an attribute prompt ("a red circle") or of a fact's prompt."""
        if not hasattr(self, "_truth"):
            self._truth = {normalise(p): v for p, v in self.world.attribute_prompts()}
            self._truth |= {normalise(f.prompt): f.visual for f in self.world.facts}
        return self._truth.get(normalise(prompt))

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
    base: dict[str, float]  # the unedited base on the same probes (the champion's, when it is the base)
    per_fact: list[dict]
    images: dict[str, np.ndarray]  # "champion:source", "candidate:source", "champion:target" (fact-major)
    seeds: dict[str, int]
    seconds: float
    labels: dict[str, list] = field(default_factory=dict)  # the judge's label of each image, same keys


def _mode(labels: Sequence) -> object:
    return Counter(labels).most_common(1)[0][0]


def evaluate(candidate: DiffusionModel, champion: DiffusionModel, facts: Sequence[FactCase], judge: Judge,
             probes: ProbeSet, fact_seeds: int = 8, probe_seeds: int = 4, seed: int = 0,
             base: DiffusionModel | None = None, **gen) -> Evaluation:
    """Metrics of both models on the batch's facts and the probe set (see module doc), and
    how far each has drifted from the unedited ``base`` (None: the champion is the base):
    ``specificity_base`` is the share of probe images labelled as the base labels them."""
    t0 = time.time()
    n = len(facts)
    if n == 0:
        raise ValueError("evaluate: no facts")
    per_fact_general = [probes.general(f) for f in facts]
    general = [p for prompts in per_fact_general for p in prompts]
    bounds = np.cumsum([0, *(len(g) * probe_seeds for g in per_fact_general)])
    probe_prompts = probes.same_entity + probes.unrelated
    judge.prepare([f.target for f in facts] + [f.source for f in facts] + probe_prompts)
    kinds = ["entity"] * len(probes.same_entity) + ["unrelated"] * len(probes.unrelated)

    def draw(model: DiffusionModel, prompts: Sequence[str], per: int, salt: int) -> tuple[np.ndarray, list]:
        flat = [p for p in prompts for _ in range(per)]
        images = model.generate_many(flat, seed=seed * 1000 + salt, **gen)
        return images, judge.classify(images)

    ref_img, ref_lab = draw(champion, [f.target for f in facts], fact_seeds, 1)
    if any(f.revert for f in facts):  # a revert's reference is the base's own rendering of its source
        rev_img, rev_lab = draw(base or champion, [f.target for f in facts], fact_seeds, 1)
        mine = np.repeat([f.revert for f in facts], fact_seeds)
        ref_img = np.where(mine[:, None, None, None], rev_img, ref_img)
        ref_lab = [b if m else a for a, b, m in zip(ref_lab, rev_lab, mine, strict=True)]
    truth = [judge.truth(f.target) for f in facts]
    expected = [t if t is not None else _mode(ref_lab[i * fact_seeds:(i + 1) * fact_seeds])
                for i, t in enumerate(truth)]
    out: dict[str, dict[str, float]] = {}
    images: dict[str, np.ndarray] = {"champion:target": ref_img}
    labels: dict[str, list] = {"champion:target": list(ref_lab)}
    per_fact = [{"key": f.key, "source": f.source, "target": f.target, "expected": str(expected[i]),
                 "expected_from": "truth" if truth[i] is not None else "champion"}
                for i, f in enumerate(facts)]

    def answers(lab: Sequence) -> list:  # each probe's most common label
        return [_mode(lab[i * probe_seeds:(i + 1) * probe_seeds]) for i in range(len(probe_prompts))]

    def agree(lab: Sequence, reference: list) -> list[bool]:  # each probe image against a probe's answer
        return [x == reference[j // probe_seeds] for j, x in enumerate(lab)]

    def share(hits: list[bool]) -> float:
        return float(np.mean(hits)) if hits else 1.0

    def fid_of(model: DiffusionModel) -> float:
        per_fid = max(1, len(probes.fid_reference) // max(1, len(probes.fid_prompts)))
        fid_img, _ = draw(model, probes.fid_prompts, per_fid, 5)
        return judge.fid(probes.fid_reference, fid_img)

    base_m: dict[str, float] = {}
    base_expected = None
    if base is not None:  # the unedited model's own answers: what cumulative specificity keeps
        _, base_lab = draw(base, probe_prompts, probe_seeds, 4)
        base_expected = answers(base_lab)
        base_m["specificity_base"] = share(agree(base_lab, base_expected))
        if probes.fid_reference is not None:
            base_m["fid"] = fid_of(base)
    probe_expected = None
    for name, model in (("champion", champion), ("candidate", candidate)):
        src_img, src_lab = draw(model, [f.source for f in facts], fact_seeds, 2)
        images[f"{name}:source"] = src_img
        labels[f"{name}:source"] = list(src_lab)
        _, gen_lab = draw(model, general, probe_seeds, 3)
        _, probe_lab = draw(model, probe_prompts, probe_seeds, 4)
        if probe_expected is None:  # the champion's own answer is what specificity keeps
            probe_expected = answers(probe_lab)
            if base_expected is None:  # the champion is the base
                base_expected = probe_expected
        eff = [np.mean([lab == expected[i] for lab in src_lab[i * fact_seeds:(i + 1) * fact_seeds]])
               for i in range(n)]
        gen_hits = [np.mean([lab == expected[i] for lab in gen_lab[bounds[i]:bounds[i + 1]]])
                    for i in range(n)]
        same = agree(probe_lab, probe_expected)
        by_kind = {k: [s for s, kk in zip(same, np.repeat(kinds, probe_seeds), strict=True) if kk == k]
                   for k in ("entity", "unrelated")}
        m = {"efficacy": float(np.mean(eff)), "generality": float(np.mean(gen_hits)),
             "specificity": share(same)}
        m |= {f"specificity_{k}": float(np.mean(v)) for k, v in by_kind.items() if v}
        m["specificity_base"] = share(agree(probe_lab, base_expected))
        if probes.fid_reference is not None:
            m["fid"] = fid_of(model)
        out[name] = m
        for i in range(n):
            per_fact[i][f"efficacy_{name}"] = round(float(eff[i]), 4)
    if base is None:  # the champion is the base
        base_m = {k: out["champion"][k] for k in ("specificity_base", "fid") if k in out["champion"]}
    return Evaluation(out["candidate"], out["champion"], base_m, per_fact, images,
                      {"fact_seeds": fact_seeds, "probe_seeds": probe_seeds, "seed": seed},
                      round(time.time() - t0, 1), labels)
