"""How much protection each null-space cut gives on the shipped ToyWorld model: per edit
layer, the share of C0's energy in its top eigenvalue, and for each cut the number of
"free" directions (the null space P projects onto) and the share of the corpus's key
energy they hold. Writes research/results/c0_spectrum.json.

    python -m research.c0_spectrum
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from editing.keys import layer_stats
from editing.model import load_model
from toyworld.paths import DATA_DIR, DIFFUSION_DIR
from toyworld.world import World

RESULTS = Path(__file__).resolve().parent / "results"
CUTS = [("relative", 1e-2), ("relative", 1e-3), ("energy", 1e-2), ("energy", 1e-3)]


def main() -> None:
    model = load_model(DIFFUSION_DIR)
    c0 = layer_stats(model, model.default_edit_layers, World.read(DATA_DIR).captions(), progress=False)
    out: dict = {"command": "python -m research.c0_spectrum", "d_k": model.fc2(0).in_features, "layers": {}}
    for layer, c in c0.items():
        ev = torch.linalg.eigvalsh(c).clamp_min(0)  # ascending
        total = ev.sum()
        row = {"top_eigenvalue_energy": round(float(ev[-1] / total), 4)}
        for mode, thr in CUTS:
            free = ev < thr * ev[-1] if mode == "relative" else torch.cumsum(ev, 0) <= thr * total
            row[f"{mode}_{thr:g}"] = {"free_directions": int(free.sum()),
                                      "energy_in_free": round(float(ev[free].sum() / total), 5)}
        out["layers"][str(layer)] = row
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "c0_spectrum.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
