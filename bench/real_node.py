"""Seconds for a real node's life: node up -> Ready (images imported), a pod of the runner
image apply -> Succeeded, node down. Starts its own control plane (not timed) and stops it.
Needs root and `make node-deps kubelet images` (see tests/e2e/conftest.py).

    .venv/bin/python bench/real_node.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from devcluster.cluster import KwokCluster
from devcluster.images import ImageName, load_manifest
from devcluster.node import RealNode


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    owner = KwokCluster(name=f"bench-node-{os.getpid()}",
                        state_dir=Path(tempfile.mkdtemp(prefix="eval-bench-node-")))
    cluster = owner.start()
    figures: dict[str, list[float]] = {"up_to_ready_s": [], "image_import_s": [],
                                       "pod_succeeded_s": [], "down_s": []}
    try:
        for round_ in range(args.rounds):
            node = RealNode(cluster=cluster, images=load_manifest())
            try:
                node.start()
                name = f"bench-{round_}"
                begin = time.monotonic()
                cluster.apply({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": "default"},
                    "spec": {**node.pin(), "restartPolicy": "Never", "containers": [{
                        "name": "main", "image": node.image_ref(ImageName.RUNNER),
                        "imagePullPolicy": "Never", "command": ["python3", "-c", "print(1)"]}]},
                })
                cluster.wait_until(
                    "the pod Succeeded",
                    lambda name=name: cluster.kubectl_json("get", "pod", name).get(
                        "status", {}).get("phase") == "Succeeded", timeout=120, interval=0.1)
                figures["pod_succeeded_s"].append(time.monotonic() - begin)
            finally:
                node.stop()
            for key in ("up_to_ready_s", "image_import_s", "down_s"):
                figures[key].append(node.timings[key])
            cluster.kubectl("delete", "pod", f"bench-{round_}", "--wait=false", check=False)
    finally:
        owner.stop()
        shutil.rmtree(owner.state_dir, ignore_errors=True)
    for key, values in figures.items():
        print(f"{key:18} median {statistics.median(values):6.2f}  "
              f"min {min(values):6.2f}  max {max(values):6.2f}  (n={len(values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
