"""The public benchmarks' complete published files through ``freshen feeds import`` and
``freshen feeds ingest``, with Stable Diffusion 1.x's own tokenizer counting the tokens (rebuilt
from open_clip's merges: toyworld.tokenizers.sd_clip_tokenizer), and NER on the changes that
come without entities (the shipped ToyWorld NER unless FRESHEN_NER_MODEL says otherwise).

    python -m bench.benchmark_imports --cake bench/data/cake/CAKE.json \\
        --road PATH/RoAD_test.csv --timed PATH/TIMED_test_set_filtered_SD14.csv

Each file is imported with the CLI, as a user does, into var/bench/imports/, and ingested into
a fresh home there; bench/results/benchmark_imports.json keeps both summaries per file (with
the file's SHA-256).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def freshen(*args: str, env: dict) -> dict | list:
    out = subprocess.run([sys.executable, "-m", "freshen.cli", *args, "--json"], capture_output=True, text=True,
                         env={**os.environ, **env})
    if out.returncode != 0:
        raise SystemExit(f"freshen {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def main() -> None:
    from toyworld.tokenizers import sd_clip_tokenizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for fmt in ("cake", "road", "timed"):
        ap.add_argument(f"--{fmt}", type=Path, default=None, help=f"the {fmt.upper()} file")
    ap.add_argument("--work", type=Path, default=ROOT / "var" / "bench" / "imports")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "benchmark_imports.json")
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    sd_clip_tokenizer(args.work / "sd-tokenizer" / "tokenizer")  # a pipeline folder with SD's tokenizer
    results = {"command": "python -m bench.benchmark_imports " + " ".join(
        f"--{f} {getattr(args, f)}" for f in ("cake", "road", "timed") if getattr(args, f)),
        "tokenizer": "Stable Diffusion 1.x (CLIP ViT-L/14 BPE, 77 tokens), rebuilt from open_clip 3.3.0's merges",
        "files": {}}
    for fmt in ("cake", "road", "timed"):
        path = getattr(args, fmt)
        if path is None:
            continue
        feed = args.work / f"{fmt}.jsonl"
        imported = freshen("feeds", "import", "--format", fmt, str(path), "--out", str(feed), env={})
        (ingested,) = freshen("feeds", "ingest", str(feed), env={
            "FRESHEN_HOME": str(args.work / f"home-{fmt}"), "FRESHEN_MODEL": str(args.work / "sd-tokenizer"),
            "HF_HUB_OFFLINE": "1"})
        results["files"][fmt] = {
            "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "import": {k: imported[k] for k in ("edits", "written", "probes")}
            | {"merged": len(imported["merged"]), "skipped": imported["skipped"],
               "repeated_sources": len(imported["repeated_sources"])},
            "ingest": {k: ingested[k] for k in ("lines", "accepted", "conflicts", "rejected", "rejections")}}
        print(json.dumps({fmt: results["files"][fmt]}, indent=1))
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
