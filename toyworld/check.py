"""``freshen toyworld check``: how well the shipped ToyWorld models know their world.

Every figure comes from running the shipped models now: generated images are labelled
by the shipped judge, NER is scored entity by entity against held-out sentences.
"""

from __future__ import annotations

import time
from pathlib import Path

from editing.model import DiffusionModel, load_model
from toyworld.judge import ToyJudge
from toyworld.paths import DATA_DIR, DIFFUSION_DIR, JUDGE_DIR, NER_DIR
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


def run_check(seeds: int = 4, seed: int = 0, progress: bool = False,
              data_dir: Path = DATA_DIR, diffusion_dir: Path = DIFFUSION_DIR,
              ner_dir: Path = NER_DIR, judge_dir: Path = JUDGE_DIR) -> dict:
    from toyworld.train import judge_accuracy

    t0 = time.time()
    world = World.read(data_dir)
    model = load_model(diffusion_dir)
    judge = ToyJudge.from_pretrained(judge_dir).eval()
    paraphrases = world.heldout_paraphrase_prompts()
    para = hits(model, judge, paraphrases, seeds, seed, progress)
    possessive = [h for h, (p, _) in zip(para, paraphrases, strict=True) if "'s " in p]
    synonym = [h for h, (p, _) in zip(para, paraphrases, strict=True) if "'s " not in p]
    result = {
        "attribute_accuracy": accuracy(model, judge, world.attribute_prompts(), seeds, seed, progress),
        "fact_accuracy": accuracy(model, judge, world.heldout_fact_prompts(), seeds, seed, progress),
        "paraphrase_accuracy": sum(para) / len(para),
        # "the emblem of X" (a synonym of the relation) vs "X's logo" (entity first)
        "paraphrase_accuracy_synonym": sum(synonym) / len(synonym),
        "paraphrase_accuracy_possessive": sum(possessive) / len(possessive),
        "ner_f1": ner_f1(ner_dir, world.ner_heldout),
        "classifier_accuracy": judge_accuracy(judge, world, n_per_visual=20, seed=seed + 7),
        "seeds": seeds,
    }
    result = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
    result["seconds"] = round(time.time() - t0, 1)
    return result
