"""`make run`: a real evaluation on this machine.

On the control plane of `make cluster-up` this starts a real node (containerd + kubelet,
devcluster.node) with the images of `make images` imported, S3 (moto) and a demo model server
(the scripted OpenAI-compatible server of the runner tests) on the node bridge's gateway,
where pods reach them, and the operator in the foreground, with the runner image pinned
(`imagePullPolicy: Never`). It writes `.cluster/demo.yaml`: examples/05-configmap-dataset.yaml
pointed at the demo model and pinned to the real node. `kubectl apply -f .cluster/demo.yaml`
then runs the real runner image in a real pod and shows its real score. Ctrl-C stops it all.

The KWOK GPU nodes stay (fake nodes for scripted tests); only the real node runs containers.
Needs root (a real node: mounts, a bridge, cgroups); says so and exits otherwise.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from devcluster.cluster import Cluster, ClusterError
from devcluster.fake_llm import FakeLLM
from devcluster.images import ImageName, ManifestError, load_manifest
from devcluster.node import NodeError, RealNode
from evaluation_operator import memory

REPO = Path(__file__).resolve().parents[1]

CLUSTER_DIR = REPO / ".cluster"
KUBECONFIG = CLUSTER_DIR / "kubeconfig"
DEMO = CLUSTER_DIR / "demo.yaml"
EXAMPLE = REPO / "examples" / "05-configmap-dataset.yaml"
S3_PORT = 9000
BUCKET = "eval-results"
KEY_ID, SECRET = "local-dev", "local-dev-secret"
# The demo model knows two of the three capitals in the example's quiz (it prefers Osaka for
# Japan): the run scores 2/3. Log-probabilities, since the example uses the completions API.
DEMO_CHOICE_LOGPROBS = {"Paris": -0.2, "Lyon": -2.0, "Nice": -3.0, "Osaka": -0.4,
                        "Tokyo": -0.9, "Kyoto": -2.5, "Nairobi": -0.3, "Mombasa": -1.5}


def demo_manifests(model_url: str, node: RealNode) -> list[dict[str, Any]]:
    """The example, with the demo model's URL and pinned to the real node."""
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    for doc in docs:
        if doc["kind"] == "EvaluationTask":
            doc["spec"]["model"]["endpoint"]["url"] = model_url
            doc["spec"]["scheduling"] = node.pin()
    return docs


def start_s3(host: str) -> subprocess.Popen[bytes]:
    url = f"http://{host}:{S3_PORT}"
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", host, "-p", str(S3_PORT)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import boto3

    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)
    for _ in range(100):
        try:
            client.create_bucket(Bucket=BUCKET)
            break
        except client.exceptions.BucketAlreadyOwnedByYou:
            break
        except Exception:
            if server.poll() is not None:
                sys.exit(f"the local S3 (moto) did not start on {url}: is port {S3_PORT} in "
                         f"use? (`ss -ltnp 'sport = :{S3_PORT}'` shows who holds it)")
            time.sleep(0.2)
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return server


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # `kill` (SIGTERM) stops everything as Ctrl-C does: the real node must never be left up.
    signal.signal(signal.SIGTERM, _interrupt)
    if not KUBECONFIG.exists():
        sys.exit("no local cluster: run `make cluster-up` first")
    try:
        images = load_manifest()
        runner_image = images.ref(ImageName.RUNNER)
    except (ManifestError, OSError) as error:
        sys.exit(f"no images: {error} (run `make images`)")
    cluster = Cluster(name="local", kubeconfig=KUBECONFIG, flavour="kwok")
    node = RealNode(cluster=cluster, images=images)
    print("starting a real node (containerd + kubelet) and importing the images...", flush=True)
    try:
        node.start()
    except (NodeError, ClusterError) as error:
        sys.exit(f"{error}\n`make cluster-up` gives the control plane with fake nodes only.")
    s3: subprocess.Popen[bytes] | None = None
    model: FakeLLM | None = None
    try:
        s3 = start_s3(node.gateway)
        s3_url = f"http://{node.gateway}:{S3_PORT}"
        model = FakeLLM(node.gateway).start()
        model.choice_logprobs = dict(DEMO_CHOICE_LOGPROBS)
        secret = cluster.kubectl(
            "create", "secret", "generic", "evaluation-s3-credentials", "-n", "default",
            f"--from-literal=AWS_ACCESS_KEY_ID={KEY_ID}",
            f"--from-literal=AWS_SECRET_ACCESS_KEY={SECRET}", "--dry-run=client", "-o",
            "yaml").stdout
        cluster.apply(secret)
        DEMO.write_text(yaml.safe_dump_all(demo_manifests(model.url, node), sort_keys=False))
        env = {**os.environ, "KUBECONFIG": str(KUBECONFIG), "AWS_ACCESS_KEY_ID": KEY_ID,
               "AWS_SECRET_ACCESS_KEY": SECRET, "EVAL_S3_ENDPOINT": s3_url,
               "EVAL_S3_BUCKET": BUCKET, "EVAL_S3_REGION": "us-east-1",
               "EVAL_RUNNER_IMAGE": runner_image, "EVAL_RUNNER_IMAGE_PULL_POLICY": "Never",
               "EVAL_PROGRESS_INTERVAL_SECONDS": "5",
               "EVAL_METRICS_PORT": os.environ.get("EVAL_METRICS_PORT", "9090"),
               **memory.PROCESS_ENV}
        print(f"node {node.name} Ready ({node.timings['up_to_ready_s']:.1f}s), "
              f"runner image {runner_image}")
        print(f"S3 at {s3_url} (bucket {BUCKET}); demo model at {model.url}; "
              f"operator metrics on :{env['EVAL_METRICS_PORT']}/metrics")
        print(f"try: KUBECONFIG={KUBECONFIG} kubectl apply -f {DEMO.relative_to(REPO)}",
              flush=True)
        return subprocess.call([sys.executable, "-m", "evaluation_operator"], env=env)
    except KeyboardInterrupt:
        return 0
    finally:
        if model is not None:
            model.stop()
        if s3 is not None:
            s3.terminate()
            s3.wait(timeout=15)
        print("stopping the real node...", flush=True)
        node.stop()
        print(f"real node stopped ({node.timings.get('down_s', 0):.1f}s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
