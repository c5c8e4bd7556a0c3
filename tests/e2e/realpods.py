"""Helpers for tests that run pods on the real node: a host HTTP server on the node's gateway,
a pod of the runner image pinned to the node, run to completion."""

from __future__ import annotations

import http.server
import threading
from typing import Any

from devcluster.cluster import Cluster
from devcluster.images import ImageName
from devcluster.node import RealNode


class HostServer:
    """A one-page HTTP server bound where the test says (the node's gateway)."""

    BODY = b"hello from the host"

    def __init__(self, address: str) -> None:
        body = self.BODY

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((address, 0), Handler)
        self.url = f"http://{address}:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_pod(cluster: Cluster, node: RealNode, namespace: str, name: str, script: str,
            timeout: float = 90) -> dict[str, Any]:
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            **node.pin(),
            "restartPolicy": "Never",
            "containers": [{
                "name": "main",
                "image": node.image_ref(ImageName.RUNNER),
                "imagePullPolicy": "Never",
                "command": ["python3", "-c", script],
                "env": [{"name": k, "value": v} for k, v in node.api_server_env().items()],
            }],
        },
    }
    cluster.apply(pod)

    def finished() -> dict[str, Any] | None:
        current: dict[str, Any] = cluster.kubectl_json("get", "pod", name, "-n", namespace)
        phase = current.get("status", {}).get("phase")
        return current if phase in ("Succeeded", "Failed") else None

    result: dict[str, Any] = cluster.wait_until(f"pod {name} to finish", finished, timeout=timeout)
    return result


FETCH = """
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1] if len(sys.argv) > 1 else URL, timeout=10).read().decode())
"""

API_VERSION = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
url = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
context = ssl.create_default_context(cafile=f"{sa}/ca.crt")
request = urllib.request.Request(
    url + "/version", headers={"Authorization": "Bearer " + open(f"{sa}/token").read()})
print("apiserver", json.load(urllib.request.urlopen(request, context=context))["gitVersion"])
"""


