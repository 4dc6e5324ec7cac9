"""Bytes a registered version stores, for batches of 10 and 100 facts, next to the text
encoder's own size. Versions are registered for real (MLflow, SQLite, a temporary home) on
the shipped ToyWorld model; Stage I is replaced by random targets z = h + delta since the
stored factors' shapes (and so the bytes) do not depend on the values. The same shapes at
Stable Diffusion 1.4's text-encoder size (11 edit layers, d 768, d_k 3072) are computed.

    python -m bench.registry_storage

Writes bench/results/registry.json.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

from editing.api import apply_targets, preservation
from editing.hparams import EditHParams
from editing.keys import compute_hs
from editing.model import load_model
from editing.requests import EditRequest
from feeds.contract import Fact
from registry.versions import Registry, batch_key
from toyworld.paths import DATA_DIR, DIFFUSION_DIR
from toyworld.world import SELF, World

RESULTS = Path(__file__).resolve().parent / "results"


def run_bytes(reg: Registry, version: int) -> dict[str, int]:
    """Bytes under each top-level artifact of a version's run."""
    root = Path(reg.client.get_run(reg.version(version).run_id).info.artifact_uri.removeprefix("file://"))
    sizes: dict[str, int] = defaultdict(int)
    for p in root.rglob("*"):
        if p.is_file():
            sizes[p.relative_to(root).parts[0]] += p.stat().st_size
    return dict(sizes)


def main() -> None:
    world = World.read(DATA_DIR)
    model = load_model(DIFFUSION_DIR)
    encoder_bytes = sum(p.stat().st_size for p in (DIFFUSION_DIR / "text_encoder").glob("*.safetensors"))
    hp = EditHParams.preset("toyworld")
    layers = model.default_edit_layers
    facts = [f for f in world.facts if f.relation != SELF]
    out = {"command": "python -m bench.registry_storage", "text_encoder_bytes": encoder_bytes, "toyworld": {}}
    with tempfile.TemporaryDirectory() as tmp:
        reg = Registry(f"sqlite:///{tmp}/mlflow.db", Path(tmp) / "artifacts", cache_dir=Path(tmp) / "cache")
        reg.init(str(DIFFUSION_DIR))
        gen = torch.Generator().manual_seed(0)
        for n in (10, 100):
            reqs = [EditRequest(f"f{i}", f.prompt, "a red circle") for i, f in enumerate(facts[:n])]
            h = compute_hs(model, reqs, layers[-1], hp.context_templates)
            z = h + 0.5 * h.norm(dim=1, keepdim=True) * torch.randn(h.shape, generator=gen) / h.shape[1] ** 0.5
            kept = preservation(model, layers, world.captions(), hp, requests=reqs)
            m = load_model(DIFFUSION_DIR)
            edit = apply_targets(m, reqs, z, hp, reg.edit_state(1), kept)
            rows = [Fact(r.id, "bench", r.id, r.source, r.target) for r in reqs]
            v = reg.register_batch(1, edit, rows, hp.to_json(), batch_key(1, "x", rows, hp.to_json()))
            sizes = run_bytes(reg, v)
            out["toyworld"][str(n)] = {"version_run_bytes": sizes, "edit_bytes": sizes.get("edit", 0),
                                       "edit_over_encoder": round(sizes.get("edit", 0) / encoder_bytes, 4)}
    d, d_k, n_layers, enc = 768, 3072, 11, 123_060_480 * 4  # SD 1.4 CLIP text encoder, float32
    out["sd14_estimate"] = {str(n): {"edit_bytes": n_layers * n * (d + d_k) * 4,
                                     "edit_over_encoder": round(n_layers * n * (d + d_k) * 4 / enc, 4),
                                     "with_keys_over_encoder": round(n_layers * n * (d + d_k + d_k) * 4 / enc, 4)}
                            for n in (10, 100)}
    out["note"] = ("edit bytes = per edit layer R (d x e) and B (e x d_k), float32 (a registered version does "
                   "not store the keys K1 (d_k x e): they are recomputed on replay); the manifest and the "
                   "pyfunc wrapper add a few kB")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "registry.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
