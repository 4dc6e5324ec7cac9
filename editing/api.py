"""The editing engine's entry points.

- ``edit(model, requests, state, base=...) -> EditResult``: Stage I on the *base* model (one
  target per fact), then Stage II on ``model``;
- ``apply_targets(model, facts, zs, hp, state, preserved) -> Edit``: Stage II alone, the one
  path by which targets reach weights (``edit``, the service's Stage II task, the
  benchmarks and the tests all go through it).

``hp.mode`` decides what Stage II solves: "sequential" writes the batch on top of whatever
``model`` already carries (the chain of earlier versions), holding earlier batches' keys
with Kp Kp^T (Eq. 7 of 004_...); "consolidate" sets the edit layers back to the base and
solves once over the whole live fact set (the state's live facts, less the ones the batch
revises, plus the batch) with their stored targets: a revision replaces its predecessor
and the version is the base plus one edit (docs/method.md "The live fact set").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.errors import InvalidInput
from editing.hparams import EditHParams
from editing.keys import compute_hs
from editing.model import DiffusionModel
from editing.preservation import Preservation, preservation, preserved_corpus
from editing.requests import EditRequest, normalise
from editing.stage1 import compute_zs
from editing.stage2 import execute_stage2
from editing.state import Edit, EditState, LiveFact

__all__ = ["EditResult", "Preservation", "apply_targets", "edit", "preservation", "preserved_corpus", "revert"]

log = logging.getLogger(__name__)


@dataclass
class EditResult:
    model: DiffusionModel  # the same object, now edited
    state: EditState  # what the next batch starts from
    edit: Edit  # this batch's low-rank factors (with ``mode="consolidate"``: the live set's, from the base)
    diagnostics: list[dict] = field(default_factory=list)  # one per fact of the batch
    seconds: dict[str, float] = field(default_factory=dict)


def apply_targets(model: DiffusionModel, facts: Sequence[EditRequest | LiveFact], zs: torch.Tensor,
                  hp: EditHParams, state: EditState, preserved: Preservation) -> Edit:
    """Stage II: write ``facts`` with their targets ``zs`` (e x d, at the last edit layer)
    into ``model`` in place, as ``hp.mode`` says; the Edit carries the targets and, per edit
    layer, ||W_l - W0_l|| / ||W0_l|| afterwards (``meta["update_norm"]``)."""
    layers = hp.edit_layers(model.n_layers)
    if hp.mode == "consolidate":
        if not preserved.base_weights:
            raise ValueError("apply_targets: mode 'consolidate' starts from the base weights; build the "
                             "Preservation with editing.preservation.preservation on the base model")
        kept = state.live_facts(replacing=[f.source for f in facts])
        facts = [*kept, *facts]
        zs = torch.cat([torch.stack([f.z for f in kept]).to(zs), zs]) if kept else zs
        preserved.restore(model)
        state = EditState()
        if not facts:  # nothing live: the version is the base
            return Edit({}, [], from_base=True, meta={"update_norm": {str(l): 0.0 for l in layers}})
    batch = execute_stage2(model, facts, zs, hp, layers, state, preserved)
    batch.targets = zs.detach().float()
    batch.from_base = hp.mode == "consolidate"
    if preserved.base_weights:
        batch.meta["update_norm"] = {str(l): round(v, 6) for l, v in preserved.update_norms(model).items()}
    return batch


def revert(model: DiffusionModel, sources: Sequence[str], hp: EditHParams, state: EditState,
           preserved: Preservation) -> Edit:
    """Take the facts of ``sources`` out of a consolidated version: ``model`` becomes the
    base plus one solve over the other live facts (their stored targets), the weights of a
    version that never had them. Sequential versions cannot revert exactly (their updates
    stack), so this needs ``hp.mode == "consolidate"``."""
    if hp.mode != "consolidate":
        raise InvalidInput("revert: needs hparams.mode 'consolidate' (a sequential chain's updates stack "
                         "and cannot be taken back exactly)")
    missing = [s for s in sources if normalise(s) not in state.live]
    if missing:
        raise InvalidInput(f"revert: {missing} are not live facts of this version")
    d = next(iter(state.live.values())).z.shape[-1]
    batch = apply_targets(model, [], torch.zeros(0, d), hp, state.dropping(sources), preserved)
    batch.meta["reverted"] = list(sources)
    return batch


def edit(model: DiffusionModel, requests: Sequence[EditRequest], state: EditState | None = None,
         hp: EditHParams | None = None, preserved: Preservation | None = None,
         captions: Sequence[str] | None = None, cache_dir: Path | None = None,
         model_hash: str = "", progress: bool = False, base: DiffusionModel | None = None) -> EditResult:
    """Edit ``model`` in place with a batch of requests; see the module docstring.

    ``base``: the unedited model, on which Stage I draws the destinations and finds the
    targets (docs/method.md "Stage I anchored to the base"); ``model`` itself when None (the
    first batch, or a model without a registry behind it). ``preserved`` (C0, P and the base
    weights) is computed from ``captions`` on ``base`` when not given; compute it once per
    base model (and corpus) and pass it to every batch.
    """
    hp = hp or EditHParams.for_model(model)
    state = state or EditState()
    base = base or model
    if not requests:
        raise InvalidInput("edit: the batch has no requests")
    ids = [r.id for r in requests]
    if len(set(ids)) != len(ids):
        raise InvalidInput(f"edit: request ids repeat within the batch: {ids}")
    layers = hp.edit_layers(model.n_layers)
    if preserved is None:
        if captions is None:
            raise ValueError("edit: pass `preserved` or the caption corpus `captions`")
        preserved = preservation(base, layers, captions, hp, cache_dir, model_hash, progress, requests)

    t0 = time.perf_counter()
    s1 = compute_zs(base, requests, hp, layers[-1], progress=progress)
    t1 = time.perf_counter()
    batch = apply_targets(model, requests, s1.z, hp, state, preserved)
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
