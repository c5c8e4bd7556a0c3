"""`make run`: the operator against the local cluster (`make cluster-up`), with a local S3.

Starts moto's S3 server on 127.0.0.1:9000 with the bucket `eval-results` (versioned), puts
the runner's S3 credentials Secret into the `default` namespace, then runs
`python -m evaluation_operator` in the foreground until Ctrl-C. Pods on the KWOK nodes do not
run containers: finish them as the runner would with `kubectl annotate` (see README).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KUBECONFIG = REPO / ".cluster" / "kubeconfig"
S3_URL = "http://127.0.0.1:9000"
BUCKET = "eval-results"
KEY_ID, SECRET = "local-dev", "local-dev-secret"


def main() -> int:
    if not KUBECONFIG.exists():
        sys.exit("no local cluster: run `make cluster-up` first")
    bin_dir = Path(sys.executable).parent
    s3 = subprocess.Popen([str(bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", "9000"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import boto3

        client = boto3.client("s3", endpoint_url=S3_URL, region_name="us-east-1",
                              aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)
        ready = False
        for _ in range(50):
            try:
                client.create_bucket(Bucket=BUCKET)
                ready = True
                break
            except client.exceptions.BucketAlreadyOwnedByYou:
                ready = True  # a local S3 from an earlier `make run` is still serving
                break
            except Exception:
                if s3.poll() is not None:
                    break
                time.sleep(0.2)
        if not ready:
            sys.exit(f"the local S3 (moto) did not start on {S3_URL}: is port 9000 in use? "
                     "Free it (`ss -ltnp 'sport = :9000'` shows who holds it) and run "
                     "`make run` again")
        client.put_bucket_versioning(Bucket=BUCKET,
                                     VersioningConfiguration={"Status": "Enabled"})
        kubectl = [str(bin_dir / "kubectl"), "--kubeconfig", str(KUBECONFIG)]
        secret = subprocess.run(
            [*kubectl, "create", "secret", "generic", "evaluation-s3-credentials",
             "-n", "default", f"--from-literal=AWS_ACCESS_KEY_ID={KEY_ID}",
             f"--from-literal=AWS_SECRET_ACCESS_KEY={SECRET}", "--dry-run=client", "-o", "yaml"],
            capture_output=True, text=True, check=True).stdout
        subprocess.run([*kubectl, "apply", "-f", "-"], input=secret, text=True, check=True,
                       capture_output=True)
        env = {**os.environ, "KUBECONFIG": str(KUBECONFIG), "AWS_ACCESS_KEY_ID": KEY_ID,
               "AWS_SECRET_ACCESS_KEY": SECRET, "EVAL_S3_ENDPOINT": S3_URL,
               "EVAL_S3_BUCKET": BUCKET, "EVAL_S3_REGION": "us-east-1",
               "EVAL_METRICS_PORT": os.environ.get("EVAL_METRICS_PORT", "9090")}
        print(f"S3 at {S3_URL} (bucket {BUCKET}); metrics on :{env['EVAL_METRICS_PORT']}/metrics")
        print(f"try: KUBECONFIG={KUBECONFIG} kubectl apply -f examples/01-minimal.yaml")
        return subprocess.call([sys.executable, "-m", "evaluation_operator"], env=env)
    except KeyboardInterrupt:
        return 0
    finally:
        s3.terminate()


if __name__ == "__main__":
    sys.exit(main())
