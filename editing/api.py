"""The editing engine's entry point: ``edit(model, requests, state) -> EditResult``.

Stage I finds one target residual per fact; Stage II writes the batch into the text
encoder's fc2 weights of every edit layer, on top of whatever ``model`` already carries
(the chain of earlier versions), projected so that preserved keys keep their values.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from editing.hparams import EditHParams
from editing.keys import compute_hs, layer_stats, null_space_projection
from editing.model import DiffusionModel
from editing.requests import EditRequest, without_sources
from editing.stage1 import compute_zs
from editing.stage2 import execute_stage2
from editing.state import Edit, EditState

log = logging.getLogger(__name__)


@dataclass
class EditResult:
    model: DiffusionModel  # the same object, now edited
    state: EditState  # what the next sequential batch starts from
    edit: Edit  # this batch's low-rank factors
    diagnostics: list[dict] = field(default_factory=list)  # one per fact
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Preservation:
    """C0 per layer and the projections cut from it, for one base model and corpus."""

    c0: dict[int, torch.Tensor]
    projections: dict[int, torch.Tensor]
    captions: list[str] = field(default_factory=list)  # the corpus C0 was taken over


def preserved_corpus(captions: Sequence[str], requests: Sequence[EditRequest]) -> list[str]:
    """The caption corpus minus every caption that contains a batch source (case and spacing
    ignored). Beyond the papers: their C0 comes from 100k generic captions where an edited
    prompt is one of many; in a small closed world (ToyWorld) the corpus *is* the facts, and
    keeping the edited prompts in C0 puts the very keys to change into the preserved span."""
    return without_sources(captions, [r.source for r in requests])


def preservation(model: DiffusionModel, layers: list[int], captions: Sequence[str],
                 hp: EditHParams, cache_dir: Path | None = None, model_hash: str = "",
                 progress: bool = False, requests: Sequence[EditRequest] = ()) -> Preservation:
    """C0 statistics of the *base* model (cached on disk) and the null-space projections.
    With ``hp.exclude_sources_from_c0``, captions containing a source of ``requests`` are
    left out of C0 (``preserved_corpus``; the cache key follows the corpus)."""
    if hp.exclude_sources_from_c0 and requests:
        captions = preserved_corpus(captions, requests)
    c0 = layer_stats(model, layers, captions, cache_dir=cache_dir, model_hash=model_hash,
                     progress=progress)
    mode = hp.nullspace_mode if hp.method == "nullspace" else "none"
    return Preservation(c0, {l: null_space_projection(c0[l], mode, hp.nullspace_threshold)
                             for l in layers}, list(captions))


def edit(model: DiffusionModel, requests: Sequence[EditRequest], state: EditState | None = None,
         hp: EditHParams | None = None, preserved: Preservation | None = None,
         captions: Sequence[str] | None = None, cache_dir: Path | None = None,
         model_hash: str = "", progress: bool = False) -> EditResult:
    """Edit ``model`` in place with a batch of requests; see the module docstring.

    ``preserved`` (C0 and P) is computed from ``captions`` when not given; compute it once
    per base model and pass it to every batch.
    """
    hp = hp or EditHParams.preset(model.kind)
    state = state or EditState()
    if not requests:
        raise ValueError("edit: the batch has no requests")
    ids = [r.id for r in requests]
    if len(set(ids)) != len(ids):
        raise ValueError(f"edit: request ids repeat within the batch: {ids}")
    # ascending (ALGORITHMS.md, Stage II): the last is where Stage I's targets live
    layers = sorted(hp.layers) if hp.layers is not None else model.default_edit_layers
    if preserved is None:
        if captions is None:
            raise ValueError("edit: pass `preserved` or the caption corpus `captions`")
        preserved = preservation(model, layers, captions, hp, cache_dir, model_hash, progress, requests)

    t0 = time.perf_counter()
    s1 = compute_zs(model, requests, hp, layers[-1], progress=progress)
    t1 = time.perf_counter()
    batch = execute_stage2(model, requests, s1.z, hp, layers, state, preserved.projections,
                           preserved.c0, preserved.captions)
    t2 = time.perf_counter()
    reached = compute_hs(model, requests, layers[-1], hp.context_templates)
    # fraction of the Stage I step that the closed form delivered at the last edit layer
    gap = (s1.z - reached).norm(dim=1) / s1.delta.norm(dim=1).clamp_min(1e-12)
    diagnostics = [{
        "id": r.id,
        "delta_norm": round(float(s1.delta[i].norm()), 5),
        "h_norm": round(float(s1.h[i].norm()), 5),
        "reached": round(float(1 - gap[i]), 5),
        **{f"loss_{k}": v[i] for k, v in s1.losses.items()},
    } for i, r in enumerate(requests)]
    batch.meta["hparams"] = hp.to_json()
    return EditResult(model, state.after(batch), batch, diagnostics,
                      {"stage1": round(t1 - t0, 3), "stage2": round(t2 - t1, 3)})
