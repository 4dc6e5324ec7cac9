"""``freshen dev toyworld check``: how well the shipped ToyWorld models know their world.

Every figure comes from running the shipped models now: generated images are labelled
by the shipped judge, NER is scored entity by entity against held-out sentences.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from editing.model import DiffusionModel, load_model
from toyworld.judge import ToyJudge
from toyworld.paths import world_paths
from toyworld.pipeline import ToyDiffusionPipeline
from toyworld.world import Visual, World


def hits(model: DiffusionModel, judge: ToyJudge, pairs: list[tuple[str, Visual]],
         seeds: int, seed: int = 0, progress: bool = False, **kw) -> list[float]:
    """Per prompt, the fraction of its ``seeds`` images that the judge labels as the
    expected visual (shape and colour both right)."""
    prompts = [p for p, _ in pairs for _ in range(seeds)]
    seen = judge.classify(model.generate_many(prompts, seed=seed, progress=progress, **kw))
    return [sum(v == want for v in seen[i * seeds:(i + 1) * seeds]) / seeds
            for i, (_, want) in enumerate(pairs)]


def accuracy(model: DiffusionModel, judge: ToyJudge, pairs: list[tuple[str, Visual]],
             seeds: int, seed: int = 0, progress: bool = False, **kw) -> float:
    """Fraction of (prompt, seed) images showing the expected visual."""
    h = hits(model, judge, pairs, seeds, seed, progress, **kw)
    return sum(h) / len(h) if h else float("nan")


def quick_accuracy(pipe: ToyDiffusionPipeline, judge: ToyJudge, world: World, seed: int) -> dict:
    """A one-seed look used during training to draw the curve."""
    model = DiffusionModel(pipe, "training", "toyworld")
    return {
        "attribute_accuracy": accuracy(model, judge, world.attribute_prompts(), 1, seed),
        "fact_accuracy": accuracy(model, judge, world.heldout_fact_prompts()[::4], 1, seed),
        "paraphrase_accuracy": accuracy(model, judge, world.heldout_paraphrase_prompts()[::4], 1, seed),
    }


def ner_f1(model_dir: Path | str, rows: list[dict]) -> float:
    """Entity-level micro F1: an entity counts only with its exact span and label."""
    from feeds.ner import NerTagger

    found = NerTagger(str(model_dir), min_score=0.0)([r["text"] for r in rows])
    predicted = [{(e.start, e.end, e.label) for e in ents} for ents in found]
    tp = fp = fn = 0
    for pred, r in zip(predicted, rows, strict=True):
        gold = {(e["start"], e["end"], e["label"]) for e in r["entities"]}
        tp += len(pred & gold)
        fp += len(pred - gold)
        fn += len(gold - pred)
    return 2 * tp / max(2 * tp + fp + fn, 1)


# The large world's check samples this many held-out prompts of each kind (fixed by the
# check's seed), so that it stays under five minutes on 2 CPU cores.
LARGE_SAMPLE = 300


def _sample(pairs: list, n: int | None, seed: int) -> list:
    if n is None or len(pairs) <= n:
        return pairs
    return [pairs[i] for i in sorted(random.Random(seed).sample(range(len(pairs)), n))]


def run_check(seeds: int = 4, seed: int = 0, progress: bool = False, world_name: str = "small",
              sample: int | None = None, data_dir: Path | None = None, diffusion_dir: Path | None = None,
              ner_dir: Path | None = None, judge_dir: Path | None = None) -> dict:
    """Every figure of one shipped world's models. ``sample``: at most that many held-out
    prompts of each kind (the large world's default: ``LARGE_SAMPLE``, 2 seeds)."""
    from toyworld.train import judge_accuracy

    t0 = time.time()
    where = world_paths(world_name)
    world = World.read(data_dir or where.data_dir)
    model = load_model(diffusion_dir or where.diffusion_dir)
    judge = ToyJudge.from_pretrained(judge_dir or where.judge_dir).eval()
    paraphrases = _sample(world.heldout_paraphrase_prompts(), sample, seed)
    para = hits(model, judge, paraphrases, seeds, seed, progress)
    possessive = [h for h, (p, _) in zip(para, paraphrases, strict=True) if "'s " in p]
    synonym = [h for h, (p, _) in zip(para, paraphrases, strict=True) if "'s " not in p]
    size = world.size()
    result = {
        "entities": size["entities"],
        "concepts": size["concepts"],
        "attribute_accuracy": accuracy(model, judge, world.attribute_prompts(), seeds, seed, progress),
        "fact_accuracy": accuracy(model, judge, _sample(world.heldout_fact_prompts(world.relation_facts),
                                                        sample, seed), seeds, seed, progress),
        "paraphrase_accuracy": sum(para) / len(para),
        # "the emblem of X" (a synonym of the relation) vs "X's logo" (entity first)
        "paraphrase_accuracy_synonym": sum(synonym) / len(synonym) if synonym else float("nan"),
        "paraphrase_accuracy_possessive": sum(possessive) / len(possessive) if possessive else float("nan"),
        "ner_f1": ner_f1(ner_dir or where.ner_dir, world.ner_heldout),
        "classifier_accuracy": judge_accuracy(judge, world, n_per_visual=20, seed=seed + 7),
        "seeds": seeds,
    }
    if world.concept_facts:
        result["concept_accuracy"] = accuracy(
            model, judge, _sample(world.heldout_fact_prompts(world.concept_facts), sample, seed), seeds, seed,
            progress)
    if sample is not None:
        result["sampled_per_kind"] = sample
    result = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
    result["seconds"] = round(time.time() - t0, 1)
    return result
