"""``freshen edit``: one batch of fact changes applied once, outside the service (no
ledger, no registry): for trying an edit on ToyWorld or on a real Stable Diffusion path."""

from __future__ import annotations

import json
import time
from pathlib import Path

from common.errors import InvalidInput, read_user_file
from feeds.contract import Fact, entities, normalised_source
from freshen.config import Settings


def read_fact_file(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(read_user_file(path, "facts file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{path}:{n}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise InvalidInput(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        for f in ("id", "source", "target"):
            if not isinstance(row.get(f), str) or not row[f].strip():
                raise InvalidInput(f"{path}:{n}: field {f!r} must be a non-empty string")
        if "entities" in row:  # the feed contract's rule (feeds.contract.entities); absent: NER tags
            row["source"] = normalised_source(row["source"])
            row["entities"], problem = entities(row["entities"], row["source"])
            if problem:
                raise InvalidInput(f"{path}:{n}: field 'entities': {problem}")
        rows.append(row)
    if not rows:
        raise InvalidInput(f"{path}: no facts")
    return rows


def edit_from_file(settings: Settings, facts: Path, out: Path, hparams: Path | None = None,
                   captions: Path | None = None, save_model: bool = False) -> dict:
    from editing.api import edit
    from editing.hparams import EditHParams
    from editing.model import load_model
    from toyworld.world import World

    rows = read_fact_file(facts)
    model = load_model(settings.model, device=settings.device)
    if captions is not None:
        corpus = [c for c in read_user_file(captions, "caption corpus").splitlines() if c.strip()]
    elif model.family == "toyworld":
        corpus = World.read(settings.world).captions()
    else:
        raise InvalidInput("freshen edit: a real model needs --captions (a caption corpus for C0)")
    untagged = [r for r in rows if "entities" not in r]
    if untagged:
        from feeds.ner import NerTagger

        tagger = NerTagger(settings.ner_model, device=settings.device)
        for r, ents in zip(untagged, tagger([r["source"] for r in untagged]), strict=True):
            r["entities"] = [e.__dict__ for e in ents]
    requests = [Fact(r["id"], Path(facts).stem, r["id"], r["source"], r["target"],
                     entities=r["entities"]).request() for r in rows]
    hp = EditHParams.load(hparams) if hparams else EditHParams.for_model(model, seed=settings.seed)
    t0 = time.time()
    result = edit(model, requests, hp=hp, captions=corpus, cache_dir=settings.home / "cache",
                  model_hash=model.base_hash, progress=True)
    out.mkdir(parents=True, exist_ok=True)
    result.edit.meta["base_hash"] = model.base_hash
    result.edit.save(out / "edit")
    if save_model:
        model.save(out / "model")
    summary = {"facts": len(requests), "out": str(out.resolve()), "seconds": result.seconds,
               "wall_seconds": round(time.time() - t0, 1), "diagnostics": result.diagnostics}
    (out / "diagnostics.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
