"""Keys, layer outputs and key statistics (docs/method.md "Where a fact lives", Stage II
steps 1 and 3). Named after MEMIT's ``compute_ks`` and ``layer_stats``."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from editing.hparams import KEY_COLUMNS
from editing.model import DiffusionModel, first_eos
from editing.requests import EditRequest, subject_spans, templated, without_sources

log = logging.getLogger(__name__)


def subject_batch(model: DiffusionModel, sources: Sequence[str],
                  templates: list[str]) -> tuple[list[str], list[int]]:
    """Every source in every template, and its subject's last token (the subject is the
    whole source)."""
    prompts = [p for s in sources for p in templated(s, templates)]
    spans = [span for s in sources for span in subject_spans(s, templates)]
    return prompts, model.subject_last_token(prompts, spans)


@torch.no_grad()
def subject_states(model: DiffusionModel, requests: Sequence[EditRequest], templates: list[str],
                   key_layer: int | None = None, out_layer: int | None = None
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Both quantities Stage II needs at a layer, from one forward pass that stops at the
    highest layer needed: K1 (d_k x e), fc2 input of ``key_layer`` at each subject's last
    token, and h (e x d), the residual stream leaving ``out_layer`` there; both averaged
    over the context templates."""
    return SubjectStream(model, [r.source for r in requests], templates).states(key_layer, out_layer)


class SubjectStream:
    """Stage II's K1 and h (as ``subject_states``) for one batch at ascending layers, read
    off one ``ResidualStream`` that moves up with the edit: m edit layers cost about
    m(m+1)/2 + m - 1 layer forwards instead of m re-encodings up to the last edit layer.

    ``columns``: "mean" gives one column per source, averaged over the templates (MEMIT,
    EMCID); "per_template" one column per (source, template), source-major (e * T)."""

    def __init__(self, model: DiffusionModel, sources: Sequence[str], templates: list[str],
                 columns: str = "mean"):
        if columns not in KEY_COLUMNS:
            raise ValueError(f"key columns {columns!r} is not one of {KEY_COLUMNS}")
        prompts, pos = subject_batch(model, sources, templates)
        self.stream = model.residual_stream(prompts)
        self.rows = torch.arange(len(prompts), device=model.device)
        self.idx = torch.as_tensor(pos, device=model.device)
        self.shape = (len(sources), len(templates))
        self.columns = columns

    def _at_subjects(self, tensor: torch.Tensor) -> torch.Tensor:
        at = tensor[self.rows, self.idx]
        return at if self.columns == "per_template" else at.view(*self.shape, -1).mean(1)

    @torch.no_grad()
    def states(self, key_layer: int | None = None, out_layer: int | None = None,
               every: dict[int, torch.Tensor] | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """K1 (d_k x e) of ``key_layer`` and h (e x d) leaving ``out_layer`` (either may be
        None), on the model as it is now, on the CPU (the closed form's algebra runs there);
        the layers below the lower of the two must not change afterwards. ``every`` receives
        h leaving each layer run on the way, by layer."""
        wanted = [layer for layer in (key_layer, out_layer) if layer is not None]
        self.stream.advance_to(min(wanted))
        each = None if every is None else lambda layer, hidden: every.update({layer: self._at_subjects(hidden).cpu()})
        keys, hidden = self.stream.run(key_layer, max(wanted), each)
        return (None if key_layer is None else self._at_subjects(keys).T.cpu(),
                None if out_layer is None else self._at_subjects(hidden).cpu())


def compute_ks(model: DiffusionModel, requests: Sequence[EditRequest], layer: int,
               templates: list[str]) -> torch.Tensor:
    """K1 (d_k x e): fc2 input of ``layer`` at each subject's last token, averaged over the
    context templates."""
    return subject_states(model, requests, templates, key_layer=layer)[0]


def compute_hs(model: DiffusionModel, requests: Sequence[EditRequest], layer: int,
               templates: list[str]) -> torch.Tensor:
    """h (e x d): residual stream after ``layer`` at each subject's last token, averaged over
    the context templates."""
    return subject_states(model, requests, templates, out_layer=layer)[1]


@torch.no_grad()
def span_keys(model: DiffusionModel, prompts: Sequence[str], spans: Sequence[tuple[int, int]],
              layer: int) -> torch.Tensor:
    """Keys (d_k x n) of ``layer``'s fc2 at every token of each prompt's character span (CPU)."""
    toks = model.span_tokens(prompts, spans)
    keys, _ = model.capture_fc2(prompts, layer)
    return torch.cat([keys[i, p] for i, p in enumerate(toks)]).T.cpu()


def compute_entity_ks(model: DiffusionModel, entities: Sequence[str], layer: int,
                      templates: list[str]) -> torch.Tensor:
    """Keys (d_k x n) of every token of each entity in prompts made from it alone
    ("{entity}", "a photo of {entity}"): the directions an entity-protected edit preserves."""
    prompts = [p for e in entities for p in templated(e, templates)]
    spans = [span for e in entities for span in subject_spans(e, templates)]
    return span_keys(model, prompts, spans, layer)


def entity_mentions(captions: Sequence[str], entities: Sequence[str], sources: Sequence[str],
                    per_entity: int) -> tuple[list[str], list[tuple[int, int]]]:
    """Captions of the corpus that mention one of ``entities`` and contain none of
    ``sources`` (case and spacing ignored), with the first mention's character span; at most
    ``per_entity`` per entity, in corpus order. What soft preservation holds still: the
    entity as the rest of the corpus uses it ("the flag of X" while "the logo of X" changes)."""
    kept = without_sources(captions, sources)
    prompts, spans = [], []
    for entity in dict.fromkeys(entities):
        found = [(c, c.find(entity)) for c in kept if entity in c][:per_entity]
        prompts += [c for c, _ in found]
        spans += [(at, at + len(entity)) for _, at in found]
    return prompts, spans


class SpanStream:
    """Keys at every token of each prompt's character span, at ascending layers, read off
    one ``ResidualStream`` that moves up with the edit (as ``SubjectStream``)."""

    def __init__(self, model: DiffusionModel, prompts: Sequence[str], spans: Sequence[tuple[int, int]]):
        toks = model.span_tokens(prompts, spans)
        self.rows = torch.as_tensor([i for i, t in enumerate(toks) for _ in t], device=model.device)
        self.idx = torch.as_tensor([j for t in toks for j in t], device=model.device)
        self.stream = model.residual_stream(prompts)

    @torch.no_grad()
    def keys(self, layer: int) -> torch.Tensor:
        """(d_k x n) at ``layer`` on the model as it is now (CPU); layers below must not change after."""
        self.stream.advance_to(layer)
        keys, _ = self.stream.run(layer, layer)
        return keys[self.rows, self.idx].T.cpu()


def corpus_hash(captions: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(captions).encode()).hexdigest()


@dataclass
class KeyMoments:
    """Per layer, the sum of k k^T (float64) over a corpus's counted tokens, and their count:
    C0 = sums / count. Moments add and subtract, so C0 of a corpus less a few captions is
    the whole corpus's moments minus theirs, without another pass over the corpus."""

    sums: dict[int, torch.Tensor]
    count: int

    def c0(self) -> dict[int, torch.Tensor]:
        return {l: s / self.count for l, s in self.sums.items()}

    def at(self, layers: Sequence[int]) -> KeyMoments:
        """The moments of ``layers`` only."""
        return KeyMoments({l: self.sums[l] for l in layers}, self.count)

    def __sub__(self, other: KeyMoments) -> KeyMoments:
        return KeyMoments({l: s - other.sums[l] for l, s in self.sums.items()}, self.count - other.count)


def counted_tokens(eos_index: torch.Tensor, length: int, skip_bos: bool) -> torch.Tensor:
    """(n, length) bool: the tokens C0 counts, every one up to and including the first [EOS]
    (the rest is padding), but the [BOS] at position 0 with ``skip_bos``."""
    mask = torch.arange(length, device=eos_index.device)[None, :] <= eos_index[:, None]
    if skip_bos:
        mask[:, 0] = False
    return mask


@dataclass
class CountedChunk:
    """One chunk of a corpus as C0 counts it: its token ids (padded to the chunk's longest)
    and per token the weight of its key in C0's sums."""

    input_ids: torch.Tensor  # (n, L)
    weights: torch.Tensor  # (n, L) float64


def counted_chunks(model: DiffusionModel, captions: Sequence[str], batch_size: int = 256,
                   skip_bos: bool = False) -> list[CountedChunk]:
    """The corpus in chunks, each counted token weighted so that every distinct prefix is
    counted once with the number of captions that share it (``counted_tokens``' tokens, in
    total). The text encoder is causal with absolute positions, so a token's key depends only
    on the tokens up to it: captions that begin alike ("the logo of ...") give their shared
    prefix the same keys, and C0's sums need them once, weighted. The captions are chunked
    shortest first, so that a chunk pads little (C0 is a sum: their order is no matter)."""
    eos_id, captions = model.tokenizer.eos_token_id, list(captions)
    lengths = [len(ids) for ids in model.tokenizer(captions, truncation=True,
                                                   max_length=model.max_length)["input_ids"]]
    captions = [captions[i] for i in sorted(range(len(captions)), key=lengths.__getitem__)]
    chunks, nodes, first, times = [], {}, [], []  # prefix trie: (parent, token) -> node
    for i in range(0, len(captions), batch_size):
        part = captions[i:i + batch_size]
        ids = model.tokenize(part, pad_to_max=False)["input_ids"]
        mask = counted_tokens(first_eos(ids, eos_id), ids.shape[1], skip_bos)
        c = len(chunks)
        for row, (seq, counted) in enumerate(zip(ids.tolist(), mask.tolist(), strict=True)):
            node = -1
            for pos, token in enumerate(seq):
                node = nodes.setdefault((node, token), len(nodes))
                if node == len(first):
                    first.append(None)
                    times.append(0)
                if counted[pos]:
                    first[node] = first[node] or (c, row, pos)
                    times[node] += 1
                if token == eos_id and pos > 0:
                    break
        chunks.append(CountedChunk(ids, torch.zeros(ids.shape, dtype=torch.float64)))
    for at, n in zip(first, times, strict=True):
        if at is not None:
            chunks[at[0]].weights[at[1], at[2]] = n
    return chunks


def _second_moment(keys: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sum of w k k^T (float64, CPU) over the tokens of nonzero weight (computed on the keys'
    device)."""
    weights = weights.to(keys.device)
    kept = weights > 0
    k = keys[kept].double() * weights[kept].sqrt()[:, None]
    return (k.T @ k).cpu()


@torch.no_grad()
def key_moments(model: DiffusionModel, layers: Sequence[int], captions: Sequence[str], batch_size: int = 256,
                progress: bool = False, skip_bos: bool = False) -> KeyMoments:
    """``KeyMoments`` of fc2 inputs at each layer over every non-padding token of
    ``captions`` (``skip_bos``: but the [BOS] at position 0), in one pass for all layers;
    each distinct prefix's keys once, weighted (``counted_chunks``)."""
    d_k = model.fc2(layers[0]).in_features
    sums = {l: torch.zeros(d_k, d_k, dtype=torch.float64) for l in layers}
    chunks = counted_chunks(model, captions, batch_size, skip_bos)
    hooks, got = [], {}
    for l in layers:
        hooks.append(model.fc2(l).register_forward_hook(
            lambda _m, inp, _o, l=l: got.__setitem__(l, inp[0].detach())))
    try:
        for chunk in tqdm(chunks, desc="C0 statistics", unit="batch", disable=not progress):
            model.encode(input_ids=chunk.input_ids)
            for l in layers:
                sums[l] += _second_moment(got[l], chunk.weights)
    finally:
        for h in hooks:
            h.remove()
    return KeyMoments(sums, int(sum(float(c.weights.sum()) for c in chunks)))


class CorpusStream:
    """``KeyMoments`` of a caption corpus at ascending layers on the model as it is now
    (Stage II's ``hp.c0_refresh``), read off one ``ResidualStream`` per chunk of captions
    that moves up with the edit, as ``SubjectStream`` does for the batch: C0 refreshed at m
    edit layers up to layer L costs about L + m layer forwards of the corpus (every layer up
    to L once, and each edit layer once more to read its keys before it is edited) instead
    of one whole encoding per edit layer. It holds the corpus's residual stream,
    (tokens x d) floats; the keys, d_k wide, are read a chunk at a time and not kept."""

    def __init__(self, model: DiffusionModel, captions: Sequence[str], batch_size: int = 256,
                 skip_bos: bool = False):
        self.chunks = [(model.residual_stream(input_ids=c.input_ids), c.weights)
                       for c in counted_chunks(model, captions, batch_size, skip_bos)]
        self.count = int(sum(float(w.sum()) for _, w in self.chunks))

    @torch.no_grad()
    def moments(self, layer: int) -> KeyMoments:
        """The corpus's moments of ``layer``'s fc2 inputs on the model as it is now; the
        layers below ``layer`` must not change afterwards."""
        total = None
        for stream, weights in self.chunks:
            stream.advance_to(layer)
            keys, _ = stream.run(layer, layer, keep=False)
            part = _second_moment(keys, weights)
            total = part if total is None else total.add_(part)
        return KeyMoments({layer: total}, self.count)


def layer_stats(model: DiffusionModel, layers: Sequence[int], captions: Sequence[str],
                cache_dir: Path | None = None, model_hash: str = "", batch_size: int = 256,
                progress: bool = True, skip_bos: bool = False) -> dict[int, torch.Tensor]:
    """C0 = E[k k^T] (d_k x d_k, float64) of fc2 inputs at each layer over every
    non-padding token of a caption corpus (``key_moments``). Results are cached on disk
    keyed by model hash, layer, corpus hash and the tokens counted."""
    key = f"{model_hash[:16]}_{corpus_hash(captions)[:16]}" + ("_nobos" if skip_bos else "")
    paths = {l: cache_dir / f"c0_{key}_layer{l}.safetensors" for l in layers} if cache_dir else {}
    if paths and all(p.exists() for p in paths.values()):
        return {l: load_file(p)["c0"] for l, p in paths.items()}
    moments = key_moments(model, layers, captions, batch_size, progress, skip_bos)
    c0 = moments.c0()
    if paths:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for l, p in paths.items():
            save_file({"c0": c0[l]}, p)
    log.info("C0 over %d tokens of %d captions for layers %s", moments.count, len(captions), list(layers))
    return c0


def null_space_projection(c0: torch.Tensor, mode: str, threshold: float) -> torch.Tensor:
    """P = U0 U0^T from the eigenvectors of C0 whose eigenvalues are small
    (docs/method.md Stage II step 3; AlphaEdit), as I - Q Q^T with Q = ``protected_basis``."""
    return projector(protected_basis(c0, mode, threshold))


def projector(q: torch.Tensor) -> torch.Tensor:
    """I - Q Q^T: the orthogonal projection onto the complement of Q's (orthonormal) columns."""
    return torch.eye(q.shape[0], dtype=torch.float64) - q @ q.T


def protected_basis(c0: torch.Tensor, mode: str, threshold: float) -> torch.Tensor:
    """Q (d_k x q, orthonormal): the eigenvectors of C0 that the null space leaves out (its
    large eigenvalues), so that P = U0 U0^T = I - Q Q^T. ``mode`` says which are small:
    - "relative": eigenvalue < threshold * largest eigenvalue (default);
    - "energy": the smallest eigenvalues that together hold <= threshold of the trace;
    - "absolute": eigenvalue < threshold (AlphaEdit's 2e-2, tuned for LLMs);
    - "none": none protected, P = I (no null space; a baseline).
    Stage II works with Q: the protected rank q is a few to a few hundred of d_k, so P's
    products cost O(d_k^2 q) instead of O(d_k^3)."""
    n = c0.shape[0]
    if mode == "none":
        return torch.zeros(n, 0, dtype=torch.float64)
    evals, evecs = torch.linalg.eigh(c0.double())  # ascending
    evals = evals.clamp_min(0)
    if mode == "relative":
        keep = evals < threshold * evals[-1]
    elif mode == "energy":
        keep = torch.cumsum(evals, 0) <= threshold * evals.sum()
    elif mode == "absolute":
        keep = evals < threshold
    else:
        raise ValueError(f"unknown null-space mode {mode!r}")
    return evecs[:, ~keep].contiguous()


def directions_holding(s: torch.Tensor, energy: float) -> int:
    """How many leading singular values of ``s`` (descending) it takes to hold ``energy``
    of their total energy, sum s^2."""
    share = torch.cumsum(s ** 2, 0) / (s ** 2).sum().clamp_min(1e-30)
    return int(torch.searchsorted(share, torch.tensor(energy, dtype=share.dtype))) + 1


def protected_share(c0: torch.Tensor, p: torch.Tensor) -> dict[str, float]:
    """What a projection P leaves protected of C0: the rank of I - P and the share of C0's
    energy (trace) outside P's range."""
    c0 = c0.double()
    free = float(torch.trace(p @ c0 @ p) / torch.trace(c0).clamp_min(1e-30))
    return {"protected_rank": int(round(c0.shape[0] - float(torch.trace(p)))),
            "protected_energy": round(1 - free, 6)}
