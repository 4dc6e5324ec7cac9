"""What a steward sees before approving a change: a trial edit of that change alone on the
champion, and the other facts and probes its keys overlap.

``make_previews`` runs Stage I for the changes (on the base, with the refresh's settings: the
result is cached, so the refresh that applies the change reuses it) and Stage II of each
change alone on a copy of the champion; draws its source and one other prompt of its entity
before and after; and measures, at each edit layer, the cosine between the change's key and
the keys of the champion's live facts and of the gate's probes (same-entity and unrelated
prompts), both seen through the preservation projection P of the refresh (the part of a key
a null-space edit writes through), averaged over the layers. Overlaps at or above
``THRESHOLD`` are flagged: a key that close is written to along with the change's
(research/results/key_overlap.json, through P: facts of one entity average 0.16-0.22 on the
ToyWorld model, of one relation 0.02-0.03, neither 0.003-0.007).

Everything lands in ``home/previews/<change>/``: ``preview.json``, the images of every
prompt before and after (PNG) and a grid of them.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from common.errors import InvalidInput
from common.hashing import key_file_name
from freshen.config import Settings
from freshen.grid import comparison_grid, label_text

log = logging.getLogger(__name__)

THRESHOLD = 0.1  # mean cosine through P over the edit layers at which an overlap is flagged
LISTED = 10  # overlaps listed, most first
DECIDABLE = ("pending", "approved", "conflict")  # statuses a preview is made for


def preview_dir(settings: Settings, key: str) -> Path:
    return settings.home / "previews" / key_file_name(key)


def read_preview(settings: Settings, key: str) -> dict | None:
    path = preview_dir(settings, key) / "preview.json"
    return json.loads(path.read_text()) if path.is_file() else None


def make_previews(settings: Settings, keys: list[str], seeds: int = 2) -> list[dict]:
    """The previews of changes ``keys`` on the current champion (see the module doc): Stage I
    for all of them in one batched run, then each tried alone."""
    import copy

    import torch
    from PIL import Image
    from safetensors.torch import load_file

    from editing.keys import compute_ks
    from editing.requests import EditRequest, normalise
    from freshen.refresh import hparams_for, judge_for, on_version, targets, write_facts
    from validation.evaluate import FactCase
    from validation.gate import GateConfig

    t0 = time.time()
    reg, ledger = settings.open_registry(), settings.open_ledger()
    rows = [ledger.change(k) for k in keys]
    for row in rows:
        if row.status not in DECIDABLE:
            raise InvalidInput(f"preview: {row.key} is {row.status}; previews are of changes waiting for a "
                               f"decision or a refresh ({', '.join(DECIDABLE)})")
    if not rows:
        return []
    facts = [r.fact() for r in rows]
    champion = reg.champion()
    base = reg.version(champion).manifest["base"]
    hp = hparams_for(settings, base)
    outs = [preview_dir(settings, f.key) for f in facts]
    targets(settings, facts, hp, base, lambda: reg.base_model(champion), [o / "stage1.safetensors" for o in outs])
    stage1_seconds = round(time.time() - t0, 1)  # shared by the batch (0 where the cache held them)
    model, state, kept = on_version(settings, reg, champion, hp, facts)
    judge = judge_for(settings, base["family"])
    n_unrelated = GateConfig.load(settings.gate).unrelated_probes
    live = [(f.key, f.source) for _, f in reg.live_facts(champion)]
    layers = hp.edit_layers(model.n_layers)
    results = []
    for fact, out in zip(facts, outs, strict=True):
        t1 = time.time()
        case = FactCase.of(fact)
        probes = judge.probes([case], n_unrelated=n_unrelated, fid_seeds=0, seed=settings.seed)
        others = [p for p in probes.same_entity if normalise(p) != normalise(fact.source)]
        # another prompt of the entity: one of its other relations where the world has one
        other = next((p for p in others if normalise(p) not in {normalise(e) for e in case.entities}),
                     others[0] if others else None)
        prompts = [fact.source] + ([other] if other else [])
        judge.prepare(prompts + [case.target] + probes.same_entity + probes.unrelated)

        # overlaps: the change's key against the live facts' and the probes' keys, on the champion
        mine = normalise(fact.source)
        near = [("live fact", k, s) for k, s in live if normalise(s) != mine]
        taken = {mine} | {normalise(s) for _, _, s in near}
        near += [("probe", None, p) for p in dict.fromkeys(probes.same_entity + probes.unrelated)
                 if normalise(p) not in taken]
        cosines = torch.zeros(len(near))
        if near:
            reqs = [EditRequest("change", fact.source, "-")] + [EditRequest(f"n{i}", p, "-")
                                                                for i, (_, _, p) in enumerate(near)]
            for layer in layers:
                k = kept.project(layer, compute_ks(model, reqs, layer, hp.context_templates))
                unit = k / k.norm(dim=0, keepdim=True).clamp_min(1e-12)
                cosines += (unit[:, 1:].T @ unit[:, 0]).float() / len(layers)
        order = torch.argsort(cosines, descending=True).tolist()
        interference = [{"kind": near[i][0], "key": near[i][1], "prompt": near[i][2],
                         "cosine": round(float(cosines[i]), 4), "flagged": bool(cosines[i] >= THRESHOLD)}
                        for i in order[:LISTED]]

        def draw(m, prompts=prompts) -> tuple[np.ndarray, list]:
            images = m.generate_many([p for p in prompts for _ in range(seeds)], seed=settings.seed,
                                     num_inference_steps=settings.num_inference_steps,
                                     guidance_scale=settings.guidance_scale)
            return images, judge.classify(images)

        before = draw(model)
        trial = copy.deepcopy(model)
        edit = write_facts(trial, [fact], load_file(out / "stage1.safetensors")["z"][None], hp, state, kept)
        after = draw(trial)
        del trial

        shown = []
        for i, p in enumerate(prompts):
            entry = {"prompt": p}
            for when, (images, labels) in (("before", before), ("after", after)):
                entry[when] = []
                for j in range(seeds):
                    path = out / f"{when}_{i}_{j}.png"
                    Image.fromarray(images[i * seeds + j]).save(path)
                    entry[when].append(str(path))
                entry[f"labels_{when}"] = [label_text(x) for x in labels[i * seeds:(i + 1) * seeds]]
            shown.append(entry)
        grid = out / "grid.png"
        comparison_grid([(p, [(imgs[i * seeds:(i + 1) * seeds], labs[i * seeds:(i + 1) * seeds])
                              for imgs, labs in (before, after)]) for i, p in enumerate(prompts)],
                        [f"before: champion v{champion}", "after: this change alone"]).save(grid)
        result = {"key": fact.key, "source": fact.source, "destination": fact.destination, "champion": champion,
                  "made_at": datetime.now(UTC).isoformat(timespec="seconds"), "images": shown, "grid": str(grid),
                  "interference": interference, "threshold": THRESHOLD,
                  "flagged": sum(x["flagged"] for x in interference),
                  "update_norm": edit.meta.get("update_norm"), "stage1_batch_seconds": stage1_seconds,
                  "seconds": round(time.time() - t1, 1)}
        (out / "preview.json").write_text(json.dumps(result, indent=1) + "\n")
        results.append(result)
    return results


def preview_waiting(settings: Settings) -> list[str]:
    """Previews of every change waiting for a decision or a refresh that has none on the
    current champion yet (what the DAG runs when changes arrive); returns their keys. A
    preview is an aid, not a step of the refresh: a change whose preview fails (a destination
    image gone, say) gets a ``preview.json`` saying why, and the others theirs."""
    from freshen.refresh import init_registry

    init_registry(settings)
    champion = settings.open_registry().champion()
    keys = [r.key for r in settings.open_ledger().changes() if r.status in DECIDABLE
            and (read_preview(settings, r.key) or {}).get("champion") != champion]
    batches = [keys]  # all together (one batched Stage I); one at a time if that fails
    done: list[str] = []
    while batches:
        group = batches.pop(0)
        try:
            done += [p["key"] for p in make_previews(settings, group)]
        except Exception as exc:  # noqa: BLE001 - a preview never stops the refresh
            if len(group) > 1:
                batches += [[k] for k in group]
                continue
            (key,) = group
            log.warning("preview of %s failed: %s", key, exc)
            out = preview_dir(settings, key)
            out.mkdir(parents=True, exist_ok=True)
            (out / "preview.json").write_text(json.dumps(
                {"key": key, "champion": champion, "error": f"{type(exc).__name__}: {exc}",
                 "made_at": datetime.now(UTC).isoformat(timespec="seconds")}, indent=1) + "\n")
    return done


def summary_line(p: dict, link=None) -> str:
    """A preview as cells of a Markdown table row (the approval form); ``link`` turns the
    grid's path into an image URL (then the cell shows the image)."""
    if "error" in p:
        return f"preview failed: {p['error']} | - | -"
    src = p["images"][0]
    flagged = [x for x in p["interference"] if x["flagged"]]
    near = "; ".join(f"{x['key'] or x['prompt']} ({x['cosine']:.2f})" for x in flagged[:3])
    return (f"{', '.join(src['labels_before'])} -> {', '.join(src['labels_after'])} | "
            f"{len(flagged)}{': ' + near if near else ''} | "
            + (f"![{p['key']} before and after]({link(p['grid'])})" if link else p["grid"]))


def format_preview(p: dict) -> str:
    if "error" in p:
        return f"{p['key']}: preview on champion v{p['champion']} failed ({p['made_at']}): {p['error']}"
    lines = [f"{p['key']}: {p['source']!r} -> {p['destination']!r}, tried alone on champion v{p['champion']} "
             f"({p['made_at']})"]
    for e in p["images"]:
        lines.append(f"  {e['prompt']!r}: before {', '.join(e['labels_before'])}; after {', '.join(e['labels_after'])}")
    lines.append(f"  grid: {p['grid']}")
    lines.append(f"  key overlaps (cosine through P, mean over the edit layers; flagged at >= {p['threshold']}):")
    for x in p["interference"]:
        flag = "  FLAGGED" if x["flagged"] else ""
        lines.append(f"    {x['cosine']:.3f}  {x['kind']:9} {x['key'] or '':24} {x['prompt']!r}{flag}")
    return "\n".join(lines)
