"""Wall time of ``make demo``'s job from a fresh state directory (installation excluded):
``freshen demo --home <empty temporary directory>``, run twice (the second run must add
nothing). Writes bench/results/demo.json.

    python -m bench.demo_time
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        runs = []
        for _ in range(2):
            t0 = time.time()
            p = subprocess.run([sys.executable, "-m", "freshen.cli", "demo", "--home", home], capture_output=True,
                               text=True)
            if p.returncode:
                sys.exit(p.stderr[-3000:])
            summary = json.loads((Path(home) / "out" / "demo" / "summary.json").read_text())
            runs.append({"wall_seconds": round(time.time() - t0, 1), "champion": summary["champion"],
                         "latest_version": summary["latest_version"],
                         "gate": summary["audit"]["gate"]["status"],
                         "facts_in_latest": len(summary["audit"]["facts"]),
                         "tasks_run": sorted(k for k, v in summary["tasks"].items() if v == "success")})
    out = {"command": "python -m bench.demo_time", "target_seconds": 300, "first_run": runs[0],
           "second_run": runs[1], "cpu": "2 cores, no GPU"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "demo.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
