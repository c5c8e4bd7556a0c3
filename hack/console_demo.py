"""`make console-demo`: two completed tasks with real result bundles in the `make run` cluster.

KWOK's nodes run no containers, so this plays the runner's part for real: it serves a
scripted model on 127.0.0.1, runs `python -m evaluation_runner` with each task's own
config.json, and finishes the task's pod with the runner's termination message. The results
land in the local S3 (127.0.0.1:9000) exactly as a real run writes them, so `kubectl
evaluation` and its web console have scores, samples and a results.zip to show.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devcluster import play_runner  # noqa: E402
from devcluster.cluster import Cluster  # noqa: E402
from devcluster.fake_llm import FakeLLM  # noqa: E402

KUBECONFIG = REPO / ".cluster" / "kubeconfig"
DEMO = REPO / ".cluster" / "demo.yaml"
DATA_BUCKET = "datasets"
KEYS = {"AWS_ACCESS_KEY_ID": "local-dev", "AWS_SECRET_ACCESS_KEY": "local-dev-secret"}
NAMESPACE = "default"


def s3_url() -> str:
    """`make run` binds S3 on port 9000 of the address its demo model listens on (the node
    bridge's gateway), which it writes into .cluster/demo.yaml."""
    import os
    from urllib.parse import urlparse

    import yaml

    if os.environ.get("EVAL_DEMO_S3_ENDPOINT"):
        return os.environ["EVAL_DEMO_S3_ENDPOINT"]
    if DEMO.exists():
        for doc in yaml.safe_load_all(DEMO.read_text()):
            url = (((doc or {}).get("spec") or {}).get("model") or {}).get("endpoint", {})
            host = urlparse(url.get("url", "")).hostname if isinstance(url, dict) else None
            if host:
                return f"http://{host}:9000"
    return "http://127.0.0.1:9000"


def main() -> int:
    if not KUBECONFIG.exists():
        sys.exit("no local cluster: run `make run` (in another terminal) first")
    import boto3

    endpoint = s3_url()

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"])
    try:
        s3.create_bucket(Bucket=DATA_BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    except Exception as error:
        sys.exit(f"the local S3 at {endpoint} is not answering ({error}): is `make run` up?")
    play_runner.upload_datasets(s3, DATA_BUCKET)
    cluster = Cluster(name="evaluation-dev", kubeconfig=KUBECONFIG, flavour="kwok")
    llm = FakeLLM().start()
    work = Path(tempfile.mkdtemp(prefix="console-demo-"))
    try:
        for name, model, script in (("demo-baseline", "tiny-llm-v1", play_runner.BASELINE),
                                    ("demo-better", "tiny-llm-v2", play_runner.BETTER)):
            exists = cluster.kubectl("get", "evaluationtask", name, "-n", NAMESPACE,
                                     check=False)
            if exists.returncode == 0:
                print(f"{NAMESPACE}/{name} exists already; delete it to run it again")
                continue
            play_runner.script_answers(llm, script)
            task = play_runner.manifest(name, llm.url, DATA_BUCKET, model=model)
            status = play_runner.run_task(cluster, NAMESPACE, task, KEYS, work / name)
            print(f"{NAMESPACE}/{name}: {status['phase']}, overall "
                  f"{status.get('overallScore', 0):.4f}, results {status['results']['uri']}")
    finally:
        llm.stop()
    print("\nNow try: kubectl evaluation list; kubectl evaluation show demo-baseline; "
          "kubectl evaluation console")
    return 0


if __name__ == "__main__":
    sys.exit(main())
