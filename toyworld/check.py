"""``freshen toyworld check``: how well the shipped ToyWorld models know their world.

Every figure comes from running the shipped models now: generated images are labelled
by the shipped judge, NER is scored entity by entity against held-out sentences.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from toyworld.judge import ToyJudge
from toyworld.paths import DATA_DIR, DIFFUSION_DIR, JUDGE_DIR, NER_DIR
from toyworld.pipeline import ToyDiffusionPipeline
from toyworld.world import Visual, World

DEFAULT_STEPS = 50  # DDPM sampling steps used by the check and the demo


def generate_images(pipe: ToyDiffusionPipeline, prompts: list[str], seed: int,
                    batch_size: int = 96, num_inference_steps: int = DEFAULT_STEPS,
                    progress: bool = False) -> np.ndarray:
    """Images for ``prompts`` in fixed chunks; chunk i uses generator seed (seed, i), so the
    same call always gives the same images."""
    from tqdm.auto import tqdm

    out = []
    chunks = range(0, len(prompts), batch_size)
    for i in tqdm(chunks, desc="generating", disable=not progress, unit="batch"):
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        out.append(pipe(prompts[i:i + batch_size], generator=g,
                        num_inference_steps=num_inference_steps))
    return np.concatenate(out) if out else np.zeros((0, 16, 16, 3), np.uint8)


def accuracy(pipe: ToyDiffusionPipeline, judge: ToyJudge, pairs: list[tuple[str, Visual]],
             seeds: int, seed: int = 0, progress: bool = False, **kw) -> float:
    """Fraction of (prompt, seed) images that the judge labels as the expected visual
    (shape and colour both right)."""
    if not pairs:
        return float("nan")
    prompts = [p for p, _ in pairs for _ in range(seeds)]
    truth = [v for _, v in pairs for _ in range(seeds)]
    seen = judge.classify(generate_images(pipe, prompts, seed, progress=progress, **kw))
    return sum(a == b for a, b in zip(seen, truth, strict=True)) / len(truth)


def quick_accuracy(pipe: ToyDiffusionPipeline, judge: ToyJudge, world: World, seed: int) -> dict:
    """A one-seed look used during training to draw the curve."""
    return {
        "attribute_accuracy": accuracy(pipe, judge, world.attribute_prompts(), 1, seed),
        "fact_accuracy": accuracy(pipe, judge, world.heldout_fact_prompts()[::4], 1, seed),
        "paraphrase_accuracy": accuracy(pipe, judge, world.heldout_paraphrase_prompts()[::4], 1, seed),
    }


def ner_entities(model_dir: Path | str, texts: list[str]) -> list[set[tuple[int, int, str]]]:
    from transformers import pipeline

    ner = pipeline("token-classification", model=str(model_dir), aggregation_strategy="simple")
    return [{(e["start"], e["end"], e["entity_group"]) for e in found} for found in ner(texts)]


def ner_f1(model_dir: Path | str, rows: list[dict]) -> float:
    """Entity-level micro F1: an entity counts only with its exact span and label."""
    predicted = ner_entities(model_dir, [r["text"] for r in rows])
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
    pipe = ToyDiffusionPipeline.from_pretrained(diffusion_dir)
    pipe.set_progress_bar_config(disable=True)
    judge = ToyJudge.from_pretrained(judge_dir).eval()
    result = {
        "attribute_accuracy": accuracy(pipe, judge, world.attribute_prompts(), seeds, seed, progress),
        "fact_accuracy": accuracy(pipe, judge, world.heldout_fact_prompts(), seeds, seed, progress),
        "paraphrase_accuracy": accuracy(pipe, judge, world.heldout_paraphrase_prompts(), seeds,
                                        seed, progress),
        "ner_f1": ner_f1(ner_dir, world.ner_heldout),
        "classifier_accuracy": judge_accuracy(judge, world, n_per_visual=20, seed=seed + 7),
        "seeds": seeds,
    }
    result = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
    result["seconds"] = round(time.time() - t0, 1)
    return result
