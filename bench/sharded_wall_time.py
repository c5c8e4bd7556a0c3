"""Wall time of one task on 1 pod vs 4 shards (spec.parallelism: 4) on the real node.

Runs tests/e2e/test_sharded.py (real pods of the runner image on a kubelet joined to a local
control plane; a scripted model that takes 1 s per request; 61 generation samples; one request
at a time per pod) `--rounds` times and prints the seconds from `kubectl create` to
Completed for each. Needs root and `make node-deps kubelet images`, as `make e2e` does.

    .venv/bin/python bench/sharded_wall_time.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    figures: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "timings.json"
            result = subprocess.run(
                [sys.executable, "-m", "pytest", "-m", "e2e", "-q", "-p", "no:cacheprovider",
                 "tests/e2e/test_sharded.py"],
                cwd=ROOT, env={**os.environ, "EVAL_E2E_TIMINGS": str(out)}, check=False,
                timeout=1800)
            if result.returncode != 0 or not out.exists():
                print("the e2e run failed; no figures", file=sys.stderr)
                return 1
            for row in json.loads(out.read_text()):
                figures.setdefault(row["case"], []).append(float(row["seconds"]))
    print(f"{'case':<45} {'runs':>4} {'median s':>9} {'min s':>7} {'max s':>7}")
    for case, seconds in figures.items():
        print(f"{case:<45} {len(seconds):>4} {statistics.median(seconds):>9.1f} "
              f"{min(seconds):>7.1f} {max(seconds):>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
