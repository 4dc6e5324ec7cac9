"""``freshen bench suite``: a public benchmark's protocol (CAKE, RoAD, TIMED) on a real Stable
Diffusion model, through the service's own engine.

1. The benchmark's edits (``feeds.benchmarks``) are applied to the model in passes that each
   hold one target per source (``Benchmark.passes``; CAKE and RoAD: one pass), every pass from
   the unedited model: in sequential batches of ``batch`` edits, or all at once (``batch``
   None). Each batch goes through ``editing.api.apply_targets`` with Stage I and C0 on the
   base weights (``Preservation.at_base``), as a refresh does.
2. After a pass, each of its probes is drawn ``seeds`` times and judged by CLIP: a probe holds
   on an image when the image is closer to the probe's ``expect`` text than to its ``versus``
   text (the benchmark's evaluation prompt against the old one: ``feeds.benchmarks``). A
   metric is the share of (probe, seed) pairs that hold.
3. FID (in CLIP's image-feature space, ``validation.fid``) of the specificity images against a
   reference image folder, when one is given.
4. With ``baseline``, the unedited model is judged on the same probes first.

Writes ``results.json``, ``results.md`` (a table) and ``efficacy.png`` (the efficacy prompts
before and after, when the baseline is drawn) in ``out``.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from common.errors import InvalidInput, read_user_file
from feeds.benchmarks import METRICS, Benchmark, BenchmarkEdit, Probe, load


def requests_of(edits: list[BenchmarkEdit], ner=None) -> list:
    """The engine's requests (``Fact.request``, as the service makes them); edits without
    entities get the NER model's, when one is given."""
    from feeds.contract import Fact

    untagged = [e for e in edits if not e.entities]
    found = dict(zip((e.id for e in untagged), ner([e.source for e in untagged]), strict=True)) \
        if ner is not None and untagged else {}
    return [Fact(e.id, "", e.id, e.source, e.target,
                 entities=e.entities or [x.__dict__ for x in found.get(e.id, [])]).request() for e in edits]


def judge_probes(model, judge, probes: list[Probe], seeds: int, steps: int | None,
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(holds (probes x seeds) bool, images (probes x seeds x h x w x 3)) of ``model``."""
    prompts = [p.prompt for p in probes]
    images = np.stack([model.generate_many(prompts, seed=s, batch_size=8, progress=progress,
                                           num_inference_steps=steps) for s in range(seeds)], axis=1)
    img = judge.image_embeds(images.reshape(-1, *images.shape[2:])).reshape(len(probes), seeds, -1)
    expect = judge.text_embeds([p.expect for p in probes])
    versus = judge.text_embeds([p.versus for p in probes])
    holds = torch.einsum("psd,pd->ps", img, expect) > torch.einsum("psd,pd->ps", img, versus)
    return holds.numpy(), images


def scores(bench: Benchmark, probes: list[Probe], holds: np.ndarray) -> dict[str, float]:
    by_metric = defaultdict(list)
    for p, h in zip(probes, holds, strict=True):
        by_metric[p.metric].append(h)
    return {m: round(float(np.mean(by_metric[m])), 4) for m in METRICS[bench.format] if by_metric[m]}


def run_suite(fmt: str, file: Path, model_path: str, out: Path, clip: str, captions: Path,
              fid_reference: Path | None = None, batch: int | None = None, seeds: int = 1,
              steps: int | None = None, baseline: bool = False, hparams: Path | None = None,
              ner_model: str | None = None, limit: int | None = None, progress: bool = True) -> dict:
    from editing.api import apply_targets
    from editing.hparams import EditHParams
    from editing.keys import key_moments
    from editing.model import load_model
    from editing.preservation import preservation
    from editing.stage1 import compute_zs
    from editing.state import EditState
    from validation.clip_judge import ClipJudge

    t_start = time.time()
    bench = load(fmt, file)
    if limit:
        kept = {e.id for e in bench.edits[:limit]}
        bench.edits = bench.edits[:limit]
        bench.probes = [p for p in bench.probes if set(p.edits) <= kept]
    if fid_reference is not None:  # said before any work, not after it
        reference_images(fid_reference)
        if not any(p.metric == "specificity" for p in bench.probes):
            raise InvalidInput(f"{bench.file}: no specificity prompts among the edits evaluated: no images for FID")
    corpus = [c for c in read_user_file(captions, "caption corpus").splitlines() if c.strip()]
    if not corpus:
        raise InvalidInput(f"caption corpus {captions} is empty (C0 needs captions)")
    model = load_model(model_path)
    hp = EditHParams.load(hparams) if hparams else EditHParams.for_model(model)
    judge = ClipJudge(clip)
    ner = None
    if ner_model and any(not e.entities for e in bench.edits):
        from feeds.ner import NerTagger

        ner = NerTagger(ner_model)
    layers = hp.edit_layers(model.n_layers)
    moments = key_moments(model, layers, corpus, skip_bos=hp.c0_skip_bos)
    anchor = preservation(model, layers, corpus, hp, moments=moments)  # the base weights
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"benchmark": bench.summary(), "model": model_path, "clip": clip, "seeds": seeds,
                     "inference_steps": steps, "mode": f"batches of {batch}" if batch else "all at once",
                     "hparams": hp.to_json(), "passes": [len(p) for p in bench.passes()],
                     "prompts": {m: sum(p.metric == m for p in bench.probes) for m in METRICS[fmt]}}
    holds_before = images_before = None
    if baseline:
        holds_before, images_before = judge_probes(model, judge, bench.probes, seeds, steps, progress)
        results["unedited"] = scores(bench, bench.probes, holds_before)
    holds_after = np.zeros((len(bench.probes), seeds), bool)
    images_after: dict[int, np.ndarray] = {}
    seconds = defaultdict(float)
    norms: list[dict] = []
    for edits in bench.passes():
        anchor.restore(model)
        state = EditState()
        size = batch or len(edits)
        for i in range(0, len(edits), size):
            reqs = requests_of(edits[i:i + size], ner)
            t0 = time.perf_counter()
            with anchor.at_base(model):
                kept = preservation(model, layers, corpus, hp, requests=reqs, moments=moments)
                zs = compute_zs(model, reqs, hp, layers[-1], progress=progress).z
            t1 = time.perf_counter()
            e = apply_targets(model, reqs, zs, hp, state, kept)
            state = state.after(e, model)
            seconds["stage1_and_c0"] += t1 - t0
            seconds["stage2"] += time.perf_counter() - t1
            norms.append(e.meta.get("update_norm", {}))
        ids = {e.id for e in edits}
        mine = [j for j, p in enumerate(bench.probes) if set(p.edits) <= ids]
        h, imgs = judge_probes(model, judge, [bench.probes[j] for j in mine], seeds, steps, progress)
        for k, j in enumerate(mine):
            holds_after[j], images_after[j] = h[k], imgs[k]
    anchor.restore(model)
    results["edited"] = scores(bench, bench.probes, holds_after)
    results["update_norm"] = round(max((v for n in norms for v in n.values()), default=0.0), 4)
    results["per_edit"] = [{"id": e.id, "source": e.source, "target": e.target,
                            **scores(bench, [p for p in bench.probes if e.id in p.edits],
                                     holds_after[[j for j, p in enumerate(bench.probes) if e.id in p.edits]])}
                           for e in bench.edits]
    if fid_reference is not None:
        results["fid"] = _fid(judge, bench, fid_reference, images_after, images_before)
    results["seconds"] = {k: round(v, 1) for k, v in seconds.items()} | {"wall": round(time.time() - t_start, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    (out / "results.md").write_text(table(results))
    if images_before is not None:
        _grid(bench, (images_before, holds_before), (images_after, holds_after), out / "efficacy.png")
    return results


def reference_images(reference: Path) -> list[Path]:
    files = sorted(p for p in Path(reference).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")) \
        if Path(reference).is_dir() else []
    if len(files) < 2:
        raise InvalidInput(f"FID reference folder {reference} needs at least 2 .png/.jpg images, has {len(files)}")
    return files


def _fid(judge, bench: Benchmark, reference: Path, after: dict[int, np.ndarray],
         before: np.ndarray | None) -> dict:
    from PIL import Image

    files = reference_images(reference)
    spec = [j for j, p in enumerate(bench.probes) if p.metric == "specificity"]
    fake = np.concatenate([after[j] for j in spec])
    real = np.stack([np.asarray(Image.open(p).convert("RGB").resize(fake.shape[2:0:-1])) for p in files])
    out = {"reference_images": len(files), "images": len(fake), "edited": round(judge.fid(real, fake), 4)}
    if before is not None:
        out["unedited"] = round(judge.fid(real, np.concatenate([before[j] for j in spec])), 4)
    return out


def _grid(bench: Benchmark, before: tuple, after: tuple, path: Path, rows: int = 12) -> None:
    """The first efficacy prompts, the unedited model's images beside the edited one's, each
    captioned with what CLIP saw in it (the target, or what the edit should have replaced)."""
    from freshen.grid import comparison_grid

    eff = [j for j, p in enumerate(bench.probes) if p.metric == "efficacy"][:rows]

    def panel(side: tuple, j: int) -> tuple:
        images, holds = side
        p = bench.probes[j]
        return images[j], [p.expect if h else f"not {p.expect}" for h in holds[j]]

    facts = [(f"{bench.probes[j].prompt} -> {bench.probes[j].expect}", [panel(before, j), panel(after, j)])
             for j in eff]
    if facts:
        size = before[0].shape[2]
        comparison_grid(facts, ["unedited model", "edited model"], scale=max(1, 128 // size)).save(path)


def table(results: dict) -> str:
    """The results as a markdown table: one row per metric."""
    b = results["benchmark"]
    lines = [f"# {b['format'].upper()} ({b['file']}): {b['written']} edits, {results['mode']}, "
             f"{results['seeds']} seed(s) per prompt", "",
             "| metric | prompts | unedited | edited |", "| --- | ---: | ---: | ---: |"]
    for m, n in results["prompts"].items():
        before = results.get("unedited", {}).get(m)
        lines.append(f"| {m} | {n} | {'' if before is None else f'{before:.3f}'} | "
                     f"{results['edited'].get(m, float('nan')):.3f} |")
    if "fid" in results:
        f = results["fid"]
        lines.append(f"| FID (CLIP features, specificity images vs {f['reference_images']} reference) | "
                     f"{f['images']} | {f.get('unedited', '')} | {f['edited']} |")
    lines += ["", f"largest update ||W - W0|| / ||W0|| over the edit layers: {results['update_norm']}", ""]
    return "\n".join(lines)
