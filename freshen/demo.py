"""``freshen demo``: the main job on the embedded ToyWorld default.

At this stage it shows ToyWorld itself: the shipped model draws a handful of fact prompts
over several seeds, the shipped judge names what each image shows, and a labelled PNG
grid is written. (The full refresh - feed, approval, edit, registry, gate, audit - is
built on top of this by the following issues.)
"""

from __future__ import annotations

import json
import time

import numpy as np

from freshen.config import Settings
from freshen.grid import save_grid


def run_demo(settings: Settings, n_facts: int = 8, seeds: int = 4) -> dict:
    from editing.model import load_model
    from toyworld.judge import ToyJudge
    from toyworld.world import World

    t0 = time.time()
    world = World.read(settings.world)
    model = load_model(settings.model)
    judge = ToyJudge.from_pretrained(settings.judge).eval()
    # a few facts of every relation, spread over the entities
    facts = world.facts[:: max(1, len(world.facts) // n_facts)][:n_facts]
    prompts = [f.prompt for f in facts for _ in range(seeds)]
    images = model.generate(prompts, seed=settings.seed,
                            num_inference_steps=settings.num_inference_steps,
                            guidance_scale=settings.guidance_scale)
    seen = judge.classify(images)
    rows, report = [], []
    for i, f in enumerate(facts):
        got = seen[i * seeds:(i + 1) * seeds]
        right = sum(v == f.visual for v in got)
        rows.append((f"{f.prompt}\n-> {f.visual.label} ({right}/{seeds})",
                     np.asarray(images[i * seeds:(i + 1) * seeds])))
        report.append({"prompt": f.prompt, "expected": f.visual.label,
                       "judged": [v.label for v in got], "correct": right})
    grid = save_grid(settings.out_dir / "demo" / "toyworld_grid.png", rows,
                     header=[f"seed {settings.seed} #{j}" for j in range(seeds)])
    summary = {"grid": str(grid), "model": settings.model, "facts": report,
               "accuracy": sum(r["correct"] for r in report) / (len(report) * seeds),
               "seconds": round(time.time() - t0, 1)}
    (grid.parent / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
