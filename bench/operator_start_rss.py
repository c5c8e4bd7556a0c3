"""The operator's RSS at start, idle (no tasks), on a private KWOK cluster: one source tree, or
several side by side (before and after a change) in one run.

    .venv/bin/python bench/operator_start_rss.py [--source DIR ...] [--rounds 3]

DIR is a checkout's root: its `operator/` goes first on PYTHONPATH (none given: this tree).
Each operator runs alone, started as `make run` starts it (`python -m evaluation_operator`
from this venv), with leader election off; its RSS is read after `--settle` seconds, then it
is stopped. Sources alternate round by round; the median of each is printed with the load
average.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devcluster.cluster import KwokCluster  # noqa: E402

from bench.operator_scale import BUCKET, load, rss_mib, start_s3  # noqa: E402


def start_rss(source: Path, kubeconfig: Path, s3_url: str, settle: float, log: Path) -> float:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(source / "operator"),
           "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "EVAL_S3_ENDPOINT": s3_url, "EVAL_S3_BUCKET": BUCKET, "EVAL_S3_REGION": "us-east-1"}
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "evaluation_operator"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        time.sleep(settle)
        if process.poll() is not None:
            raise RuntimeError(f"the operator from {source} exited: see {log}")
        return rss_mib(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, action="append", default=[])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=15)
    args = parser.parse_args()
    sources = [path.resolve() for path in args.source] or [ROOT]
    state = Path(tempfile.mkdtemp(prefix="eval-start-rss-"))
    owner = KwokCluster(name=f"eval-rss-{os.getpid()}", state_dir=state)
    s3_process: subprocess.Popen[bytes] | None = None
    samples: dict[Path, list[float]] = {source: [] for source in sources}
    load_before = load()
    try:
        cluster = owner.start()
        cluster.install_crds()
        s3_process, s3_url = start_s3()
        for _ in range(args.rounds):
            for source in sources:
                samples[source].append(start_rss(source, cluster.kubeconfig, s3_url,
                                                 args.settle, state / "operator.log"))
    finally:
        if s3_process is not None:
            s3_process.terminate()
            s3_process.wait(timeout=10)
        owner.stop()
    for source, values in samples.items():
        print(f"{source}: RSS at start, idle, {args.settle:.0f} s after start: median "
              f"{statistics.median(values):.1f} MiB (samples: "
              f"{', '.join(f'{v:.1f}' for v in values)})")
    print(f"load average before / after: {load_before} / {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
