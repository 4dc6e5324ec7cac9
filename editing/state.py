"""Edits as low-rank factors, and the sequential edit state.

A batch's update at layer l is Delta_l = R_l B_l with R_l (d x e) and B_l (e x d_k)
(ALGORITHMS.md: "Delta has rank <= e"). A version of the model is the base weights plus
the chain of its batches' factors. The state the next batch starts from is, per layer,
Kp Kp^T = sum over the chain of K1 K1^T; each batch therefore also keeps its keys K1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from editing.model import DiffusionModel

EDIT_FILE = "edit.safetensors"
EDIT_MANIFEST = "edit.json"


@dataclass
class LayerEdit:
    r: torch.Tensor  # (d, e) residuals spread to this layer
    b: torch.Tensor  # (e, d_k) right factor: K1^T P A^-1 (or EMCID's)
    keys: torch.Tensor  # (d_k, e) K1 at this layer, on the edited model

    def dense(self) -> torch.Tensor:
        return self.r.double() @ self.b.double()


@dataclass
class Edit:
    """One batch's update of the text encoder, kept as factors per layer."""

    layers: dict[int, LayerEdit]
    request_ids: list[str]
    meta: dict = field(default_factory=dict)

    @torch.no_grad()
    def apply(self, model: DiffusionModel) -> None:
        """W_l += R_l B_l for every edited layer."""
        for layer, le in self.layers.items():
            w = model.fc2(layer).weight
            w += le.dense().to(w.dtype, copy=False).to(w.device)

    def save(self, directory: Path, dtype: torch.dtype = torch.float32) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for layer, le in self.layers.items():
            tensors[f"r.{layer}"] = le.r.to(dtype).contiguous()
            tensors[f"b.{layer}"] = le.b.to(dtype).contiguous()
            tensors[f"keys.{layer}"] = le.keys.to(dtype).contiguous()
        save_file(tensors, directory / EDIT_FILE)
        manifest = {"layers": sorted(self.layers), "request_ids": self.request_ids,
                    "dtype": str(dtype).removeprefix("torch."), **self.meta}
        (directory / EDIT_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        return [directory / EDIT_FILE, directory / EDIT_MANIFEST]

    @classmethod
    def load(cls, directory: Path) -> Edit:
        manifest = json.loads((directory / EDIT_MANIFEST).read_text())
        t = load_file(directory / EDIT_FILE)
        layers = {l: LayerEdit(t[f"r.{l}"].float(), t[f"b.{l}"].float(), t[f"keys.{l}"].float())
                  for l in manifest["layers"]}
        meta = {k: v for k, v in manifest.items() if k not in ("layers", "request_ids", "dtype")}
        return cls(layers, manifest["request_ids"], meta)

    @property
    def size(self) -> int:
        return len(self.request_ids)


@dataclass
class EditState:
    """Per layer, the running Kp Kp^T (float64) of every earlier batch's keys."""

    cov: dict[int, torch.Tensor] = field(default_factory=dict)
    n_edits: int = 0

    def kp(self, layer: int, d_k: int) -> torch.Tensor:
        return self.cov.get(layer, torch.zeros(d_k, d_k, dtype=torch.float64))

    def after(self, edit: Edit) -> EditState:
        """The state once ``edit`` has landed (ALGORITHMS.md Stage II step 5)."""
        cov = dict(self.cov)
        for layer, le in edit.layers.items():
            k = le.keys.double()
            cov[layer] = self.kp(layer, k.shape[0]) + k @ k.T
        return EditState(cov, self.n_edits + edit.size)

    @classmethod
    def from_chain(cls, edits: list[Edit]) -> EditState:
        state = cls()
        for e in edits:
            state = state.after(e)
        return state
