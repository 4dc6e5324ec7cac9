"""How well Stage II's cheap reads of h track the exact one, on the large world: the seed-0
stream of ``bench.edit_quality`` up to N edits (its batches, so its Stage I cache applies),
each batch written on top of the last in the sequential form of the ToyWorld preset
(``bench.edit_quality.SEQUENTIAL``) with ``h_tracking="exact"``. At every edit layer
after the first, h at the last edit layer is read exactly (MEMIT) and estimated as
``"direct"`` (h before the batch plus each edited layer's own Delta K1) and as ``"stream"``
(h before the batch plus the change leaving the layer the keys are read at). Per edit layer:
the median over the batches' facts of |estimate - exact| / |exact - h before the batch| (the
share of the change so far the estimate gets wrong), and of the direct term's gain,
<change, direct> / |direct|^2, with their cosine. No images: what each estimate hands the
closed form at a layer.
Writes research/results/h_tracking.json.

    python -m research.h_tracking [--edits 100] [--stage1-cache bench/cache/stage1_large]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.edit_quality import SEQUENTIAL, stream_batches
from editing.api import apply_targets, preservation
from editing.hparams import EditHParams
from editing.keys import SubjectStream, key_moments
from editing.model import load_model
from editing.state import EditState
from toyworld.paths import world_paths
from toyworld.world import World

RESULTS = Path(__file__).resolve().parent / "results"


class _Reads:
    """Every exact read the batch's own stream makes (the first ``SubjectStream`` Stage II
    opens: the batch's subjects), with h leaving each layer it ran."""

    def __init__(self):
        self.reads: list[tuple[torch.Tensor, dict[int, torch.Tensor]]] = []
        self._stream = None
        self._states = SubjectStream.states

    def __enter__(self):
        reads = self

        def states(stream, key_layer=None, out_layer=None, every=None):
            if reads._stream is None:
                reads._stream = stream
            if stream is not reads._stream or out_layer is None:
                return reads._states(stream, key_layer, out_layer, every)
            seen: dict[int, torch.Tensor] = {}
            k, h = reads._states(stream, key_layer, out_layer, seen)
            if every is not None:
                every.update(seen)
            reads.reads.append((h.double(), {layer: v.double() for layer, v in seen.items()}))
            return k, h

        SubjectStream.states = states
        return self

    def __exit__(self, *_):
        SubjectStream.states = self._states


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edits", type=int, default=100)
    ap.add_argument("--stage1-cache", type=Path, default=Path("bench/cache/stage1_large"))
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    where = world_paths("large")
    world, base = World.read(where.data_dir), load_model(where.diffusion_dir)
    model = load_model(where.diffusion_dir)
    by_id = {f.id: f for f in world.facts}
    hp = EditHParams.preset("toyworld", steps=200, seed=0, h_tracking="exact", **SEQUENTIAL)
    layers = hp.edit_layers(base.n_layers)
    captions = world.captions()
    moments = key_moments(base, layers, captions, skip_bos=hp.c0_skip_bos)
    errors: dict[str, dict[int, list]] = {"direct": {}, "stream": {}}
    gains: dict[int, list] = {}
    cosines: dict[int, list] = {}
    state, current = EditState(), {}
    for batch, reqs, zs in stream_batches(world, base, hp, args.edits, args.stage1_cache):
        live = [p for i in current for p in (by_id[i].prompt, *by_id[i].paraphrases)]
        pres = preservation(base, layers, captions, hp, requests=reqs, live=live, moments=moments)
        with _Reads() as seen:
            e = apply_targets(model, reqs, zs, hp, state, pres)
        state = state.after(e, model)
        current.update(dict(batch))
        start, before = seen.reads[0]
        written = torch.zeros_like(start)  # the direct terms so far
        for i, layer in enumerate(layers[1:], start=1):
            below = e.layers[layers[i - 1]]
            step = (below.r.double() @ (below.b.double() @ below.keys.double())).T
            written = written + step
            exact, now = seen.reads[i]
            change = exact - start
            moved = exact - seen.reads[i - 1][0]  # what the layer below's edit did to h
            size = change.norm(dim=1).clamp_min(1e-12)
            errors["direct"].setdefault(layer, []).append((start + written - exact).norm(dim=1) / size)
            errors["stream"].setdefault(layer, []).append(
                (start + now[layer] - before[layer] - exact).norm(dim=1) / size)
            gains.setdefault(layer, []).append((moved * step).sum(1) / (step * step).sum(1).clamp_min(1e-12))
            cosines.setdefault(layer, []).append(torch.nn.functional.cosine_similarity(moved, step, dim=1))
    median = lambda xs: round(float(torch.cat(xs).median()), 3)  # noqa: E731
    out = {"command": f"python -m research.h_tracking --edits {args.edits}", "edits": args.edits,
           "edit_layers": layers, "facts_read": len(torch.cat(gains[layers[1]])),
           "error_median": {name: {str(layer): median(v) for layer, v in by.items()} for name, by in errors.items()},
           "direct_gain_median": {str(layer): median(v) for layer, v in gains.items()},
           "direct_cosine_median": {str(layer): median(v) for layer, v in cosines.items()}}
    print(json.dumps(out, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "h_tracking.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
