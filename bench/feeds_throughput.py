"""``make bench-feeds``: ingest + validation throughput on generated feeds, peak memory as the
feed grows, and NER prompts per second on the ToyWorld NER.

Each size runs in a fresh process so that its peak RSS is its own.

    python -m bench.feeds_throughput [--sizes 10000,100000]

Writes bench/results/feeds.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_feed(path: Path, n: int, seed: int = 0) -> None:
    from toyworld.paths import DATA_DIR
    from toyworld.world import World

    world = World.read(DATA_DIR)
    rng = random.Random(seed)
    visuals = [v.prompt for v in world.visuals]
    with open(path, "w") as fh:
        for i in range(n):
            f = rng.choice(world.facts)
            ctx = rng.choice(world.contexts)
            fh.write(json.dumps({"id": f"c{i}", "source": ctx.format(f.prompt), "target": rng.choice(visuals),
                                 "ref": "bench"}) + "\n")


def one_size(n: int) -> dict:
    from editing.model import load_tokenizer
    from feeds.ingest import ingest_path
    from feeds.ledger import Ledger
    from toyworld.paths import DIFFUSION_DIR
    from validation.feed_rules import FeedRules

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        feed = d / "bench.jsonl"
        write_feed(feed, n)
        tok = load_tokenizer(DIFFUSION_DIR)
        rules = FeedRules(d / "gx", tok.model_max_length)
        ledger = Ledger.at(d / "ledger.db")
        t0 = time.perf_counter()
        (s,) = ingest_path(ledger, feed, rules, tok)
        dt = time.perf_counter() - t0
    return {"rows": n, "seconds": round(dt, 2), "rows_per_second": round(n / dt, 1),
            "accepted": s.accepted, "conflicts": s.conflicts, "rejected": s.rejected,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def ner_speed(n: int = 2000) -> dict:
    from feeds.ner import NerTagger
    from toyworld.paths import DATA_DIR, NER_DIR
    from toyworld.world import World

    world = World.read(DATA_DIR)
    prompts = [f.prompt for f in world.facts] * (n // len(world.facts) + 1)
    tagger = NerTagger(str(NER_DIR))
    tagger(prompts[:64])
    t0 = time.perf_counter()
    tagger(prompts[:n])
    dt = time.perf_counter() - t0
    return {"prompts": n, "seconds": round(dt, 2), "prompts_per_second": round(n / dt, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS / "feeds.json")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one)))
        return
    sizes = []
    for n in (int(x) for x in args.sizes.split(",")):
        out = subprocess.run([sys.executable, "-m", "bench.feeds_throughput", "--one", str(n)],
                             capture_output=True, text=True, check=True)
        sizes.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(sizes[-1]), flush=True)
    result = {"ingest": sizes, "ner": ner_speed(),
              "command": f"python -m bench.feeds_throughput --sizes {args.sizes}",
              "note": "ingest = contract + GX rules + SQLite ledger, without NER; NER measured apart"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
