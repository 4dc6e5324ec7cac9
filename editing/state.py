"""Edits as low-rank factors, and the sequential edit state.

A batch's update at layer l is Delta_l = R_l B_l with R_l (d x e) and B_l (e x d_k)
(docs/method.md: Stage II, the factors). A version of the model is the base weights plus
the chain of its batches' factors. The state the next batch starts from is, per layer,
Kp Kp^T = sum over the chain of K1 K1^T of every batch, each K1 taken on the model right
after its batch. A batch's keys are either stored with its factors or, to keep a
version small (issue 3's storage target), recomputed from its sources when the chain is
replayed on the base model: the same forward pass that made them, on the same weights.

A fact changed again (same source, case and spacing ignored) is no longer held at its
earlier target: its earlier key columns leave Kp Kp^T when the new batch is solved and
when it lands, so the preserved set holds each source's latest key only (beyond the
papers, whose sequential setting never revisits a fact; issue 3: "a fact changed twice
must end at its latest target").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from editing.model import DiffusionModel
from editing.requests import Entity, normalise

EDIT_FILE = "edit.safetensors"
EDIT_MANIFEST = "edit.json"


@dataclass
class LayerEdit:
    r: torch.Tensor  # (d, e) residuals spread to this layer (e * T with a key column per template)
    b: torch.Tensor  # (e, d_k) right factor: K1^T P A^-1 (or EMCID's)
    keys: torch.Tensor | None  # (d_k, e) K1 at this layer, on the edited model (None: not stored)

    def dense(self) -> torch.Tensor:
        return self.r.double() @ self.b.double()


@dataclass
class Edit:
    """One batch's update of the text encoder, kept as factors per layer."""

    layers: dict[int, LayerEdit]  # keys: (d_k, e) or, one column per template, (d_k, e * T)
    request_ids: list[str]
    sources: list[str] = field(default_factory=list)  # each request's source (its subject)
    templates: list[str] = field(default_factory=list)  # context templates K1 is read in
    meta: dict = field(default_factory=dict)
    key_columns: str = "mean"  # K1 averaged over the templates, or one column per template
    # (e, d) each request's Stage I target z at the last edit layer, taken on the base model:
    # what a later consolidated solve reuses without Stage I (None: not stored)
    targets: torch.Tensor | None = None
    from_base: bool = False  # a consolidated version: base + this edit, not parent + this edit
    # each request's NER entities (``Entity`` fields as dicts): a later consolidated solve,
    # which writes the fact again, protects them as its first batch did
    entities: list[list[dict]] = field(default_factory=list)

    @torch.no_grad()
    def apply(self, model: DiffusionModel) -> None:
        """W_l += R_l B_l for every edited layer."""
        for layer, le in self.layers.items():
            w = model.fc2(layer).weight
            w += le.dense().to(w.dtype, copy=False).to(w.device)

    @property
    def has_keys(self) -> bool:
        return all(le.keys is not None for le in self.layers.values())

    @torch.no_grad()
    def recompute_keys(self, model: DiffusionModel) -> None:
        """K1 of every layer from the batch's sources, on ``model``: the model with this
        batch (and the chain before it, nothing after) applied."""
        from editing.keys import SubjectStream

        if not self.sources or not self.templates:
            raise ValueError(f"edit of {self.request_ids[:3]}...: neither keys nor sources and templates "
                             "were stored, so its keys cannot be recomputed")
        stream = SubjectStream(model, self.sources, self.templates, self.key_columns)
        for layer in sorted(self.layers):
            self.layers[layer].keys = stream.states(key_layer=layer)[0].float()

    def save(self, directory: Path, dtype: torch.dtype = torch.float32, keys: bool = True) -> list[Path]:
        """Factors (and, with ``keys``, K1) in safetensors, the rest in a JSON manifest."""
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for layer, le in self.layers.items():
            tensors[f"r.{layer}"] = le.r.to(dtype).contiguous()
            tensors[f"b.{layer}"] = le.b.to(dtype).contiguous()
            if keys:
                tensors[f"keys.{layer}"] = le.keys.to(dtype).contiguous()
        if self.targets is not None:
            tensors["z"] = self.targets.float().contiguous()  # targets stay float32 whatever dtype
        save_file(tensors, directory / EDIT_FILE)
        manifest = {"layers": sorted(self.layers), "request_ids": self.request_ids, "sources": self.sources,
                    "templates": self.templates, "key_columns": self.key_columns, "keys_stored": keys,
                    "dtype": str(dtype).removeprefix("torch."), "from_base": self.from_base,
                    "entities": self.entities, **self.meta}
        (directory / EDIT_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        return [directory / EDIT_FILE, directory / EDIT_MANIFEST]

    @classmethod
    def load(cls, directory: Path) -> Edit:
        manifest = json.loads((directory / EDIT_MANIFEST).read_text())
        t = load_file(directory / EDIT_FILE)
        layers = {l: LayerEdit(t[f"r.{l}"].float(), t[f"b.{l}"].float(),
                               t[f"keys.{l}"].float() if f"keys.{l}" in t else None)
                  for l in manifest["layers"]}
        own = ("layers", "request_ids", "sources", "templates", "key_columns", "keys_stored", "dtype", "from_base",
               "entities")
        meta = {k: v for k, v in manifest.items() if k not in own}
        return cls(layers, manifest["request_ids"], manifest.get("sources", []), manifest.get("templates", []),
                   meta, manifest.get("key_columns", "mean"), t.get("z"), manifest.get("from_base", False),
                   manifest.get("entities", []))

    @property
    def size(self) -> int:
        return len(self.request_ids)


@dataclass(frozen=True)
class LiveFact:
    """A fact as a consolidated solve needs it: its id, source (the subject) and stored
    Stage I target z; ``entities`` as its request had them."""

    id: str
    source: str
    z: torch.Tensor
    entities: tuple = ()


@dataclass
class EditState:
    """Per layer, the running Kp Kp^T (float64) of every earlier batch's keys, each
    source's latest key columns (what a new change of that source takes back out), and the
    live fact set: the latest target of each source (normalised), in order of landing."""

    cov: dict[int, torch.Tensor] = field(default_factory=dict)
    n_edits: int = 0
    by_source: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)  # layer -> (d_k, c)
    live: dict[str, LiveFact] = field(default_factory=dict)

    def live_facts(self, replacing: Sequence[str] = ()) -> list[LiveFact]:
        """The live facts, less those whose source is in ``replacing``."""
        gone = {normalise(s) for s in replacing}
        return [f for k, f in self.live.items() if k not in gone]

    def dropping(self, sources: Sequence[str]) -> EditState:
        """The same state with ``sources`` out of the live set (a consolidated solve from it
        is a version that never had them)."""
        gone = {normalise(s) for s in sources}
        return replace(self, live={k: f for k, f in self.live.items() if k not in gone})

    def with_facts(self, facts: Sequence[LiveFact]) -> EditState:
        """The same state with ``facts`` landed in the live set, in order (a revision replaces
        its source's earlier fact and moves to the end); Kp Kp^T untouched."""
        live = dict(self.live)
        for f in facts:
            live.pop(normalise(f.source), None)
            live[normalise(f.source)] = f
        return replace(self, live=live, n_edits=self.n_edits + len(facts))

    def kp(self, layer: int, d_k: int, replacing: Sequence[str] = ()) -> torch.Tensor:
        """Kp Kp^T at ``layer``, less the earlier keys of the sources in ``replacing``."""
        cov = self.cov.get(layer, torch.zeros(d_k, d_k, dtype=torch.float64))
        for source in dict.fromkeys(normalise(s) for s in replacing):
            k = self.by_source.get(source, {}).get(layer)
            if k is not None:
                k = k.double()
                cov = cov - k @ k.T
        return cov

    def after(self, edit: Edit, model: DiffusionModel | None = None) -> EditState:
        """The state once ``edit`` has landed (docs/method.md Stage II step 5): its keys join
        Kp Kp^T and replace those of its sources' earlier changes. An edit saved without
        its keys needs ``model``, with the chain up to this edit applied."""
        tracked = len(edit.sources) == edit.size  # edits saved before sources were recorded: no replacing
        landed = [LiveFact(rid, source, edit.targets[i],
                           tuple(Entity(**d) for d in edit.entities[i]) if edit.entities else ())
                  for i, (rid, source) in enumerate(zip(edit.request_ids, edit.sources, strict=True))
                  ] if edit.targets is not None and tracked else []
        # a consolidated edit holds the whole live set
        live = (EditState() if edit.from_base else self).with_facts(landed).live
        if edit.from_base:  # no Kp: the next consolidated solve starts from the base again
            return EditState(live=live, n_edits=self.n_edits + edit.size)
        if not edit.has_keys:
            if model is None:
                raise ValueError("this edit was stored without its keys: pass the model it was applied to")
            edit.recompute_keys(model)
        cov, by_source = dict(self.cov), dict(self.by_source)
        new: dict[str, dict[int, torch.Tensor]] = {}
        for layer, le in edit.layers.items():
            k = le.keys.double()
            cov[layer] = self.kp(layer, k.shape[0], edit.sources if tracked else ()) + k @ k.T
            if tracked:
                per = le.keys.shape[1] // edit.size  # columns per request (templates with per_template)
                for i, source in enumerate(edit.sources):
                    cols = le.keys[:, i * per:(i + 1) * per].float()
                    mine = new.setdefault(normalise(source), {})
                    mine[layer] = cols if layer not in mine else torch.cat([mine[layer], cols], 1)
        by_source.update(new)
        return EditState(cov, self.n_edits + edit.size, by_source, live)

    @classmethod
    def from_chain(cls, edits: list[Edit], base: DiffusionModel | None = None) -> EditState:
        """The state after a chain. With ``base`` (the unedited model), the chain is replayed
        on it, edit by edit, and keys that were not stored are recomputed on the way; ``base``
        ends as the chain's model."""
        state = cls()
        for e in edits:
            if base is not None:
                e.apply(base)
            state = state.after(e, None if e.from_base else base)
        return state
