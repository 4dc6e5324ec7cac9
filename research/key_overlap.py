"""Why facts of one entity leak into each other in a batch, on the shipped ToyWorld model:
per edit layer, the mean cosine between the keys of two relation facts (template-averaged
subject-last-token fc2 inputs), raw and seen through the null-space projection P of the
preset (the part of a key a null-space edit can use), for pairs sharing the entity, the
relation, or neither. Writes research/results/key_overlap.json.

    python -m research.key_overlap
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from editing.api import preservation
from editing.hparams import EditHParams
from editing.keys import compute_ks
from editing.model import load_model
from editing.requests import EditRequest
from toyworld.paths import DATA_DIR, DIFFUSION_DIR
from toyworld.world import SELF, World

RESULTS = Path(__file__).resolve().parent / "results"


def mean_cosines(keys: torch.Tensor, facts) -> dict[str, float]:
    unit = keys / keys.norm(dim=0, keepdim=True)
    cos = unit.T @ unit
    i, j = torch.triu_indices(len(facts), len(facts), offset=1)
    groups: dict[str, list[float]] = {"same_entity": [], "same_relation": [], "neither": []}
    for a, b, c in zip(i.tolist(), j.tolist(), cos[i, j].tolist(), strict=True):
        if facts[a].entity == facts[b].entity:
            groups["same_entity"].append(c)
        elif facts[a].relation == facts[b].relation:
            groups["same_relation"].append(c)
        else:
            groups["neither"].append(c)
    return {k: round(sum(v) / len(v), 4) for k, v in groups.items()}


def main() -> None:
    world, model = World.read(DATA_DIR), load_model(DIFFUSION_DIR)
    hp = EditHParams.preset("toyworld")
    facts = [f for f in world.facts if f.relation != SELF]
    reqs = [EditRequest(f.id, f.prompt, "a red circle") for f in facts]
    pres = preservation(model, model.default_edit_layers, world.captions(), hp)
    out: dict = {"command": "python -m research.key_overlap", "facts": len(facts),
                 "nullspace": f"{hp.nullspace_mode} {hp.nullspace_threshold:g}", "layers": {}}
    for layer in model.default_edit_layers:
        k = compute_ks(model, reqs, layer, hp.context_templates).double()
        pk = pres.project(layer, k)
        out["layers"][str(layer)] = {"raw": mean_cosines(k, facts), "through_P": mean_cosines(pk, facts),
                                     "norm_Pk_over_k": round(float((pk.norm(dim=0) / k.norm(dim=0)).mean()), 4)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "key_overlap.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
