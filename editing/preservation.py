"""What an edit must leave alone, for one base model: C0 per edit layer, the null-space
projections cut from it (docs/method.md Stage II step 3) and the base's fc2 weights (the
anchor that update norms are measured against and consolidated versions start from)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from editing.hparams import EditHParams
from editing.keys import KeyMoments, key_moments, layer_stats, projector, protected_basis, protected_share
from editing.model import DiffusionModel
from editing.requests import EditRequest, without_sources


@dataclass
class Preservation:
    """C0 per layer and the null spaces cut from it, for one base model and corpus."""

    c0: dict[int, torch.Tensor]
    protected: dict[int, torch.Tensor]  # Q (d_k x q) per layer: P = I - Q Q^T (keys.protected_basis)
    captions: list[str] = field(default_factory=list)  # the corpus C0 was taken over
    base_weights: dict[int, torch.Tensor] = field(default_factory=dict)  # W0 of fc2 per edit layer (CPU)

    @property
    def projections(self) -> dict[int, torch.Tensor]:
        """P = I - Q Q^T per layer, dense (d_k x d_k)."""
        return {l: projector(q) for l, q in self.protected.items()}

    def project(self, layer: int, keys: torch.Tensor) -> torch.Tensor:
        """P K at ``layer`` (float64), as K - Q (Q^T K)."""
        q, keys = self.protected[layer], keys.double()
        return keys - q @ (q.T @ keys)

    def report(self) -> dict[int, dict[str, float]]:
        """Per layer: the rank and the share of C0's energy that P protects."""
        return {l: protected_share(self.c0[l], projector(q)) for l, q in sorted(self.protected.items())}

    def update_norms(self, model: DiffusionModel) -> dict[int, float]:
        """||W_l - W0_l||_F / ||W0_l||_F of ``model`` at every edit layer (docs/method.md
        "The update measured, and bounded")."""
        return {l: relative_update(model.fc2(l).weight, w0) for l, w0 in sorted(self.base_weights.items())}

    @torch.no_grad()
    def restore(self, model: DiffusionModel) -> None:
        """Set the edit layers' fc2 weights of ``model`` back to the base's."""
        for l, w0 in self.base_weights.items():
            w = model.fc2(l).weight
            w.copy_(w0.to(w.dtype))

    @contextmanager
    def at_base(self, model: DiffusionModel) -> Iterator[DiffusionModel]:
        """``model`` with the base's weights at the edit layers for the duration, its own
        afterwards: Stage I and C0 anchored to the base without a second copy of the model."""
        with torch.no_grad():
            own = {l: model.fc2(l).weight.detach().clone() for l in self.base_weights}
        self.restore(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for l, w in own.items():
                    model.fc2(l).weight.copy_(w)


def relative_update(w: torch.Tensor, w0: torch.Tensor) -> float:
    w0 = w0.double()
    return float((w.detach().double().to(w0.device) - w0).norm() / w0.norm().clamp_min(1e-30))


def fact_prompts(requests: Sequence[EditRequest]) -> list[str]:
    """Every prompt of the requests' facts: sources and related prompts."""
    return [p for r in requests for p in (r.source, *getattr(r, "related", ()))]


def preserved_corpus(captions: Sequence[str], requests: Sequence[EditRequest]) -> list[str]:
    """The caption corpus minus every caption that contains a batch source or one of its
    related prompts (case and spacing ignored). Beyond the papers: their C0 comes from 100k
    generic captions where an edited prompt is one of many; in a small closed world
    (ToyWorld) the corpus *is* the facts, and keeping the edited prompts (or their
    paraphrases) in C0 puts the very keys to change into the preserved span."""
    return without_sources(captions, fact_prompts(requests))


def preservation(model: DiffusionModel, layers: list[int], captions: Sequence[str],
                 hp: EditHParams, cache_dir: Path | None = None, model_hash: str = "",
                 progress: bool = False, requests: Sequence[EditRequest] = (),
                 live: Sequence[str] = (), moments: KeyMoments | None = None) -> Preservation:
    """C0 statistics of the *base* model ``model`` (cached on disk), the null-space
    projections and the base weights. With ``hp.exclude_sources_from_c0``, captions
    containing a source (or related prompt) of ``requests`` are left out of C0
    (``preserved_corpus``; the cache key follows the corpus), and with ``hp.mode``
    "consolidate" also those containing ``live`` (the earlier live facts' prompts, which the
    consolidated solve writes again). ``moments``: the whole corpus's ``KeyMoments`` on this
    model (``hp.c0_skip_bos`` as they were taken), from which C0 is had by subtracting the
    left-out captions' instead of a pass over the rest (the same C0, for many batches)."""
    full = list(captions)
    if hp.exclude_sources_from_c0 and (requests or live):
        drop = fact_prompts(requests) + (list(live) if hp.mode == "consolidate" else [])
        captions = without_sources(captions, drop)
    if moments is not None:
        moments = moments.at(layers)
        kept = set(captions)
        gone = [c for c in full if c not in kept]
        c0 = (moments - key_moments(model, layers, gone, skip_bos=hp.c0_skip_bos)).c0() if gone else moments.c0()
    else:
        c0 = layer_stats(model, layers, captions, cache_dir=cache_dir, model_hash=model_hash,
                         progress=progress, skip_bos=hp.c0_skip_bos)
    mode = hp.nullspace_mode if hp.method == "nullspace" else "none"
    return Preservation(c0, {l: protected_basis(c0[l], mode, hp.nullspace_threshold) for l in layers},
                        list(captions), {l: model.fc2(l).weight.detach().to("cpu", copy=True) for l in layers})
