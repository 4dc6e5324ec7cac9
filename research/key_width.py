"""Is the key space what holds the large world back at 1,000 edits? The benchmark
(``bench.edit_quality``) on the large world's model with every text-encoder MLP widened to
``--width`` (default 3,072: Stable Diffusion 1.4's key width) by silent units
(``toyworld.pipeline.widen_mlps``: fc1 rows drawn at random at the scale of the trained ones,
fc2 columns zero). The widened model computes what the unwidened one does (the script
measures the largest difference of the encoder's outputs on every tenth caption of the
world): its unedited images, its Stage I targets (the benchmark's cache applies) and its
probes are the same; only the space of keys an edit can write through is wider. The new
units' keys are random features of each layer's input, not trained ones: the probe
measures what width buys the closed form, not a model trained that wide.

The probe ran on the encoder as trained (768 units). Since 2026-12-07 the large world ships
that encoder grown to 3,072 units by the same units (``freshen dev toyworld grow --world
large --width 3072 --seed 0``: the same tensors as ``--width 3072`` here), so on today's
model ``--width 3072`` adds no unit and its rows are the benchmark's own
(``bench/results/edit_quality.json``).

Writes research/results/key_width.json (seed 0; key_width_seed<N>.json for another stream),
keeping the rows of earlier runs there, with the trained (768-unit) model's rows of the same
methods beside them (``trained_model_rows``), and a chart of both (``bench.edit_quality.chart``).

    python -m research.key_width [--width 3072] [--sizes 10,100,1000] [--judge-sizes 100,1000]
        [--methods preset] [--variant NAME=JSON] [--seed 0] [--stage1-cache bench/cache/stage1_large]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.edit_quality import add_variants, chart, run, variant_args
from editing.model import DiffusionModel, load_model
from toyworld.paths import world_paths
from toyworld.pipeline import widen_mlps
from toyworld.train import largest_difference
from toyworld.world import World

RESULTS = Path(__file__).resolve().parent / "results"


# the benchmark's rows of the encoder as trained (768 units, shipped until 2026-12-07), per stream seed
TRAINED = {0: "bench/results/edit_quality_mlp768.json", 1: "bench/results/edit_quality_mlp768_seed1.json"}
RUN_KEYS = ("command", "config", "wall_seconds", "complete")


def load_widened(path: Path, width: int) -> DiffusionModel:
    """The model in ``path`` with every MLP of its text encoder grown to ``width`` units by
    silent units (``toyworld.pipeline.widen_mlps``, seed 0: the same units every time)."""
    model = load_model(path)
    widen_mlps(model.text_encoder, width).requires_grad_(False)
    return model


def merged(earlier: dict | None, new: dict) -> dict:
    """One file per stream and width: ``new``'s rows over ``earlier``'s, every run's command
    in ``runs``, and the trained model's rows of the same methods and sizes beside them
    (``trained_model_rows``, from the benchmark's results of that stream on it)."""
    same = earlier is not None and (earlier["seed"], earlier["mlp_width"]) == (new["seed"], new["mlp_width"])
    out = earlier if same else {k: v for k, v in new.items() if k not in (*RUN_KEYS, "methods", "hparams")} | {
        "methods": {}, "hparams": {}, "runs": []}
    for name, rows in new["methods"].items():
        out["methods"][name] = dict(sorted((out["methods"].get(name, {}) | rows).items(), key=lambda kv: int(kv[0])))
        out["hparams"][name] = new["hparams"][name]
    out["runs"].append({k: new[k] for k in RUN_KEYS} | {"methods": list(new["methods"])})
    source = TRAINED.get(new["seed"])
    if source is not None:
        ref = json.loads((Path(__file__).resolve().parents[1] / source).read_text())["methods"]
        out["trained_model_rows"] = {"source": source, "methods": {
            name: {n: ref[name][n] for n in rows if n in ref.get(name, {})} for name, rows in out["methods"].items()}}
    return out


def draw(results: dict, path: Path) -> Path:
    """``bench.edit_quality.chart`` of the widened model's rows and the trained model's."""
    width = results["mlp_width"]
    trained = results.get("trained_model_rows", {}).get("methods", {})
    view = results | {"preset": f"{results['preset']}, MLP {width}", "methods": {
        **{f"{name}, MLP {width}": rows for name, rows in results["methods"].items()},
        **{f"{name}, MLP 768 (trained)": rows for name, rows in trained.items() if rows}}}
    return chart(view, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=3072)
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--judge-sizes", default="100,1000")
    ap.add_argument("--methods", default="preset")
    ap.add_argument("--seed", type=int, default=0, help="the stream's seed (bench.edit_quality --seed)")
    ap.add_argument("--stage1-cache", type=Path, default=Path("bench/cache/stage1_large"))
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help="another method, as bench.edit_quality --variant (then name it in --methods)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default research/results/key_width.json (seed 0) or key_width_seed<N>.json; the "
                         "rows of earlier runs there (same stream and width) are kept")
    args = ap.parse_args()
    out = args.out or RESULTS / ("key_width.json" if args.seed == 0 else f"key_width_seed{args.seed}.json")
    add_variants(args.variant)
    torch.set_flush_denormal(True)
    where = world_paths("large")

    def load(path: Path) -> DiffusionModel:
        return load_widened(path, args.width)

    captions = World.read(where.data_dir).captions()[::10]
    same = largest_difference(load_model(where.diffusion_dir), load(where.diffusion_dir), captions)
    print(json.dumps({"width": args.width, "largest_output_difference": same}), flush=True)
    command = (f"python -m research.key_width --width {args.width} --sizes {args.sizes} --judge-sizes "
               f"{args.judge_sizes} --methods {args.methods} --seed {args.seed} --stage1-cache {args.stage1_cache}")
    command += variant_args(args.variant)
    out.parent.mkdir(parents=True, exist_ok=True)
    running = out.with_suffix(".running.json")  # the rows so far, should the run stop
    t0 = time.time()
    results = run("large", [int(s) for s in args.sizes.split(",")], 50, 200, 4, args.methods.split(","),
                  seed=args.seed, out=running, command=command, stage1_dir=args.stage1_cache, probe_facts=250,
                  judged={int(s) for s in args.judge_sizes.split(",")}, load=load)
    results |= {"mlp_width": args.width, "largest_output_difference": same,
                "wall_seconds": round(time.time() - t0, 1)}
    results = merged(json.loads(out.read_text()) if out.is_file() else None, results)
    out.write_text(json.dumps(results, indent=1) + "\n")
    running.unlink(missing_ok=True)
    print(f"wrote {out} and {draw(results, out.with_suffix('.png'))}")


if __name__ == "__main__":
    main()
