"""How many key directions the entity protection takes out of P as the number of entities
grows, on the large world's model: for n entities (a seeded sample), the rank (singular
values above 1e-6 of the largest, ``stage2.protect_entity_keys``' cut) of their keys in the
preset's entity templates, per edit layer, against d_k, and how many leading directions
hold 90% and 99% of their energy (what ``hparams.entity_energy`` would take out of P). A
consolidated solve protects the entities of the whole live set; once their keys span d_k,
P is 0 and nothing is written.
Writes research/results/entity_rank.json.

    python -m research.entity_rank
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from editing.hparams import EditHParams
from editing.keys import compute_entity_ks, directions_holding
from editing.model import load_model
from toyworld.paths import world_paths
from toyworld.world import World

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (50, 100, 200, 300, 500)
ENERGIES = (0.9, 0.99)


def main() -> None:
    where = world_paths("large")
    world, model = World.read(where.data_dir), load_model(where.diffusion_dir)
    hp = EditHParams.for_model(model)
    entities = sorted({f.entity for f in world.facts if f.entity})  # concepts have none
    out: dict = {"command": "python -m research.entity_rank", "d_k": model.fc2(0).in_features,
                 "entity_templates": hp.entity_templates, "ranks": {},
                 "directions_holding_energy": {}}
    for n in SIZES:
        sample = random.Random(0).sample(entities, n)
        ranks, energy = {}, {}
        for layer in hp.edit_layers(model.n_layers):
            s = torch.linalg.svdvals(compute_entity_ks(model, sample, layer, hp.entity_templates).double())
            ranks[str(layer)] = int((s > 1e-6 * s.max()).sum())
            energy[str(layer)] = {str(e): directions_holding(s, e) for e in ENERGIES}
        out["ranks"][str(n)] = ranks
        out["directions_holding_energy"][str(n)] = energy
        print(json.dumps({"entities": n, "rank_per_layer": ranks, "directions_holding_energy": energy}), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "entity_rank.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
