"""Stage II: the multi-layer closed-form edit (docs/method.md "Stage II"; Eq. 7 of 004_...).

For each edit layer l, ascending (i = 0..m-1):
  1. K1 = compute_ks(l) on the model with the layers below already edited (read off one
     residual stream that moves up with the edit, ``keys.SubjectStream``);
  2. R = (Z - h_last) / (m - i)                        (MEMIT's spread of the residual);
     h_last read on the model as edited so far (``hp.h_tracking="exact"``); with "stream",
     read so at the first edit layer and the top ``hp.exact_top`` ones, and between them
     h_last before the batch plus h leaving layer l now less h leaving it before the batch
     (the stream is run through l for K1 anyway: no extra forward); with "direct", h_last
     of the first layer plus each edited layer's Delta K1, read exactly again at the last
     edit layer (which writes all that is left: i = m - 1);
     with ``key_columns="per_template"`` K1 has a column per (fact, template) and Z a
     target per column: that template's h_last before the batch plus the fact's delta;
  3. P = null-space projection of C0, kept as I - Q Q^T (keys.protected_basis);
  4. Delta = R K1^T P (Kp Kp^T P + K1 K1^T P + beta I)^-1, as R times
     B = K1^T P A^-1 with A = M P + beta I, M = Kp Kp^T + K1 K1^T. B^T solves
     (P M + beta I) B^T = P K1; its columns lie in P's range (apply I - P: beta (I - P) B^T = 0),
     so B^T = P B^T and the system is the symmetric positive definite
     (P M P + beta I) B^T = P K1, solved by a float64 Cholesky factorisation, P M P formed
     from Q in O(d_k^2 q) (``right_factor``);
  5. W_l += Delta.
Kp Kp^T is the state's, less the earlier keys of facts this batch changes again
(``EditState.kp``) or, with ``hp.refresh_kp``, the live facts' keys read on the model as
it is now (``EditState.live``, a ``SubjectStream`` moving up with the edit), plus, with
``hp.mention_weight``, the keys at the batch entities'
mentions in the corpus (``keys.entity_mentions``; soft preservation, beyond the papers; with
``hp.protect_mentions`` their leading directions also leave P's range: hard preservation),
plus, with ``hp.entity_weight``, that multiple of the batch entities' keys (soft entity
preservation; ``hp.protect_entities`` takes them out of P's range instead, all of them or,
with ``hp.entity_energy`` < 1, the directions holding that share of their energy),
plus, with ``hp.c0_weight``, that multiple of C0 (EMCID's term inside Eq. 7, beyond the
papers: with P = I it is EMCID's closed form with the memory Kp Kp^T and beta); with
``hp.c0_refresh`` that C0 is read at each layer above the first on the model as edited so
far (the preserved corpus's keys as the layers below now make them, ``keys.CorpusStream``: its
residual stream moves up with the edit as the batch's does).
EMCID's closed form is the same loop with B = K1^T (lambda (1-alpha)/alpha C0 + K1 K1^T)^-1.
With ``hp.max_update_norm`` the ridge is raised, layer by layer, until ||W_l - W0_l||_F stays
within that share of ||W0_l||_F (docs/method.md "The update measured, and bounded"); what a bounded layer does
not write is left to the layers above it (step 2 recomputes R from the stream).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from editing.hparams import EditHParams
from editing.keys import CorpusStream, SpanStream, SubjectStream, compute_entity_ks, directions_holding, entity_mentions
from editing.model import DiffusionModel
from editing.preservation import Preservation, fact_prompts
from editing.requests import EditRequest
from editing.state import Edit, EditState, LayerEdit


def protect_entity_keys(q: torch.Tensor, entity_keys: torch.Tensor, tol: float = 1e-6,
                        energy: float = 1.0) -> torch.Tensor:
    """Remove from P's range the directions of the entity keys P sees (beyond the papers):
    with P = I - Q Q^T, P' = P - U U^T, U an orthonormal basis of P K_ent (its singular
    directions above ``tol`` of the largest and, with ``energy`` < 1, only the leading ones
    that hold that share of P K_ent's energy). Returns Q' = [Q U] (U lies in P's range, so
    Q' is orthonormal): P' = I - Q' Q'^T is again a projector, inside P."""
    k = entity_keys.double()
    pk = k - q @ (q.T @ k)
    u, s, _ = torch.linalg.svd(pk, full_matrices=False)
    keep = s > tol * s.max().clamp_min(1e-30)
    if energy < 1.0:
        keep &= torch.arange(len(s)) < directions_holding(s, energy)
    return torch.cat([q, u[:, keep]], 1)


@dataclass
class ClosedForm:
    """One layer's system for B^T, built once for every ridge tried: ``solve(ridge)`` adds
    the ridge to the diagonal of ``matrix`` and solves for ``rhs`` (``symmetric``: by
    Cholesky, ``spd_solve``; else the transposed system, AlphaEdit's A^T B^T = P K1)."""
    matrix: torch.Tensor
    rhs: torch.Tensor
    symmetric: bool
    ridge: float = 0.0  # the method's own (beta for the null space)

    def solve(self, extra_ridge: float = 0.0) -> torch.Tensor:
        """B (e x d_k), with ``extra_ridge`` joining the method's ridge (the update bound)."""
        m = self.matrix.clone()
        m.diagonal().add_(self.ridge + extra_ridge)
        return spd_solve(m, self.rhs).T if self.symmetric else torch.linalg.solve(m.T, self.rhs).T


def closed_form(hp: EditHParams, k1: torch.Tensor, kp_cov: torch.Tensor, q: torch.Tensor | None,
                c0: torch.Tensor | None) -> ClosedForm:
    """The system whose solution gives B (Delta = R B). Both forms are symmetric positive
    definite, solved by Cholesky: null space (P = I - Q Q^T): P M P + beta I, rhs P K1 (module
    docstring, step 4), while Q has at most d_k / 4 columns (beyond that, forming P M P from
    Q costs more than the non-symmetric solve as written, which is then used); EMCID:
    lambda (1 - alpha) / alpha C0 + K1 K1^T, rhs K1."""
    if hp.method == "nullspace":
        s = torch.addmm(kp_cov, k1, k1.T)  # M
        rhs = k1 - q @ (q.T @ k1)  # P K1
        d_k = s.shape[0]
        if q.shape[1] > d_k // 4:
            # many protected directions: P M P from Q would cost more than AlphaEdit's
            # non-symmetric solve as written, A^T B^T = P K1 with A = M P + beta I
            return ClosedForm(s @ (torch.eye(d_k, dtype=s.dtype) - q @ q.T), rhs, False, hp.beta)
        n = s @ q  # P M P = M - Q N^T - N Q^T + Q (Q^T N) Q^T with N = M Q
        s.addmm_(q @ (q.T @ n), q.T).addmm_(q, n.T, alpha=-1).addmm_(n, q.T, alpha=-1)
        return ClosedForm(s, rhs, True, hp.beta)
    s = (k1 @ k1.T).add_(c0, alpha=hp.emcid_lambda * (1 - hp.emcid_alpha) / hp.emcid_alpha)
    return ClosedForm(s, k1, True)


def right_factor(hp: EditHParams, k1: torch.Tensor, kp_cov: torch.Tensor, q: torch.Tensor | None,
                 c0: torch.Tensor | None, extra_ridge: float = 0.0) -> torch.Tensor:
    """B (e x d_k) such that Delta = R B (``closed_form``); ``extra_ridge`` joins beta I."""
    return closed_form(hp, k1, kp_cov, q, c0).solve(extra_ridge)


def spd_solve(s: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """S^-1 rhs for a symmetric positive definite S (float64 Cholesky of its lower triangle;
    an LU solve where rounding leaves S short of positive definite, as a ridge of 0 can)."""
    chol, info = torch.linalg.cholesky_ex(s)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, chol)
    return torch.linalg.solve(s, rhs)


def bounded_right_factor(hp: EditHParams, k1: torch.Tensor, kp_cov: torch.Tensor, q: torch.Tensor | None,
                         c0: torch.Tensor | None, r: torch.Tensor, offset: torch.Tensor,
                         w0_norm: float, iterations: int = 40) -> tuple[torch.Tensor, float]:
    """B as ``right_factor``, with the smallest extra ridge (bisection in log space) that
    keeps ||offset + R B||_F <= hp.max_update_norm * ||W0||_F; ``offset`` = W - W0 before
    this batch. Returns B and the extra ridge (0 when the bound already holds). The system
    is built once; each ridge tried is one more solve of it."""
    bound = hp.max_update_norm * w0_norm
    system = closed_form(hp, k1, kp_cov, q, c0)
    b = system.solve()
    if (offset + r @ b).norm() <= bound:
        return b, 0.0
    scale = float(torch.diagonal(kp_cov + k1 @ k1.T).mean().clamp_min(1e-12))
    lo, hi = -12.0, 12.0  # log10 of the extra ridge relative to the keys' scale
    if (offset + r @ system.solve(scale * 10 ** hi)).norm() > bound:
        return system.solve(scale * 10 ** hi), scale * 10 ** hi  # earlier batches hold it
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if (offset + r @ system.solve(scale * 10 ** mid)).norm() > bound:
            lo = mid
        else:
            hi = mid
    return system.solve(scale * 10 ** hi), scale * 10 ** hi


@torch.no_grad()
def execute_stage2(model: DiffusionModel, requests: Sequence[EditRequest], zs: torch.Tensor,
                   hp: EditHParams, layers: list[int], state: EditState, preserved: Preservation,
                   timings: dict[str, float] | None = None) -> Edit:
    """Apply the batch to ``model`` in place, layer by layer; return its factors (with the
    extra ridge each bounded layer needed in ``meta["extra_ridge"]``). ``requests``: anything
    with ``id``, ``source`` and ``entities`` (``EditRequest``, ``state.LiveFact``). With
    ``timings``, the seconds spent in the closed form's solves are added to its
    ``"solve_seconds"`` (the rest of the time is reading keys and h)."""
    c0, captions = preserved.c0, preserved.captions
    if hp.max_update_norm > 0 and not preserved.base_weights:
        raise ValueError("hparams.max_update_norm needs the base weights in the Preservation")
    templates, last = hp.context_templates, layers[-1]
    extra_ridge: dict[str, float] = {}
    entities = sorted({e.text for r in requests for e in r.entities})
    sources = [r.source for r in requests]
    mentions = None
    if (hp.mention_weight > 0 or hp.protect_mentions) and hp.method == "nullspace":
        # captions with a batch source or one of its related prompts (paraphrases) are the
        # batch's own: not mentions to hold
        found = entity_mentions(captions, entities, fact_prompts(requests), hp.mention_max)
        mentions = SpanStream(model, *found) if found[0] else None
    out: dict[int, LayerEdit] = {}
    subjects = SubjectStream(model, sources, templates, hp.key_columns)
    # Kp from the live facts' keys on the model as it is now, moving up with the edit, instead
    # of the keys frozen when each landed (the batch's own sources are revised: left out)
    live = state.live_facts(replacing=sources) if hp.refresh_kp else []
    live_keys = SubjectStream(model, [f.source for f in live], templates, hp.key_columns) if live else None
    # the preserved corpus's keys as the layers below now make them (C0 read on the model as edited so far)
    refresh_c0 = hp.method == "nullspace" and hp.c0_weight > 0 and hp.c0_refresh and len(layers) > 1
    corpus = CorpusStream(model, captions, skip_bos=hp.c0_skip_bos) if refresh_c0 else None
    targets = zs.double()
    start, before = None, {}  # h, and h leaving each layer, before the batch ("stream")
    # the first edit layer at which h is read exactly again (the first one always is)
    exact_from = {"exact": 0, "direct": len(layers) - 1,
                  "stream": len(layers) - hp.exact_top(model.n_layers)}[hp.h_tracking]
    for i, layer in enumerate(layers):
        if i == 0 or i >= exact_from:
            keep = before if i == 0 and hp.h_tracking == "stream" else None
            k1, cur = subjects.states(key_layer=layer, out_layer=last, every=keep)
            k1, cur = k1.double(), cur.double()
            if i == 0:
                start = cur  # h before the batch
        elif hp.h_tracking == "direct":  # h moved by the layer just edited, at the subject: its Delta K1
            cur = cur + (out[layers[i - 1]].r.double() @ (out[layers[i - 1]].b.double() @ k1)).T
            k1 = subjects.states(key_layer=layer)[0].double()
        else:  # "stream": h before the batch plus the change leaving this layer so far
            k1, here = subjects.states(key_layer=layer, out_layer=layer)
            k1, cur = k1.double(), start + (here.double() - before[layer].double())
        if i == 0 and hp.key_columns == "per_template":
            # Stage I's z_i = mean_t h_it + delta_i, and delta_i was added at every template:
            # template t of fact i aims at h_it + delta_i (nothing of the batch is applied yet)
            n_t = len(templates)
            delta = targets - cur.view(len(requests), n_t, -1).mean(1)
            targets = cur + delta.repeat_interleave(n_t, 0)
        r = ((targets - cur) / (len(layers) - i)).T
        q = preserved.protected[layer] if hp.method == "nullspace" else None  # Q: P = I - Q Q^T
        ke = None  # the batch entities' keys on the model as edited so far
        if entities and hp.method == "nullspace" and (hp.protect_entities or hp.entity_weight > 0):
            ke = compute_entity_ks(model, entities, layer, hp.entity_templates).double()
            if hp.protect_entities:
                q = protect_entity_keys(q, ke, energy=hp.entity_energy)
        if hp.refresh_kp:
            kl = live_keys.states(key_layer=layer)[0].double() if live_keys is not None else k1[:, :0]
            kp = kl @ kl.T
        else:
            kp = state.kp(layer, k1.shape[0], replacing=sources)
        if hp.entity_weight > 0 and ke is not None:
            kp = kp + hp.entity_weight * ke @ ke.T
        if mentions is not None:  # keys on the model as it is now: the layers below already edited
            km = mentions.keys(layer).double()
            kp = kp + hp.mention_weight * km @ km.T
            if hp.protect_mentions:
                q = protect_entity_keys(q, km, energy=0.99)
        if hp.method == "nullspace" and hp.c0_weight > 0:
            c0_here = corpus.moments(layer).c0()[layer] if corpus is not None and i > 0 else c0[layer]
            kp = kp + hp.c0_weight_for(k1.shape[1]) * c0_here
        w = model.fc2(layer).weight
        t_solve = time.perf_counter()
        if hp.max_update_norm > 0:
            w0 = preserved.base_weights[layer].double()
            b, extra = bounded_right_factor(hp, k1, kp, q, c0.get(layer), r, w.double().cpu() - w0,
                                            float(w0.norm()))
            if extra:
                extra_ridge[str(layer)] = extra
        else:
            b = right_factor(hp, k1, kp, q, c0.get(layer))
        if timings is not None:
            timings["solve_seconds"] = timings.get("solve_seconds", 0.0) + time.perf_counter() - t_solve
        # applied exactly as stored (float32 factors): a version loaded from its factors is
        # then bit-for-bit the model edited here
        r, b = r.float(), b.float()
        w += (r.double() @ b.double()).to(w.device, w.dtype)
        # K1 of layer l is also its key on the fully edited model: edits at l and above do
        # not change the inputs of layer l's fc2, and the layers below are already edited.
        out[layer] = LayerEdit(r, b, k1.float())
    return Edit(out, [r.id for r in requests], sources=sources, templates=templates,
                key_columns=hp.key_columns, meta={"extra_ridge": extra_ridge} if extra_ridge else {},
                entities=[[asdict(e) for e in r.entities] for r in requests])
