"""A real S3 HTTP endpoint on loopback: moto's threaded server."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class S3Endpoint:
    endpoint_url: str
    access_key: str = "testing-access-key"
    secret_key: str = "testing-secret-key"
    region: str = "us-east-1"
    server: Any = None

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(request_checksum_calculation="when_required",
                          retries={"max_attempts": 2, "mode": "standard"}),
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def restart(self) -> None:
        """Bring the endpoint back on the same port after `stop()`. Moto keeps its buckets
        in process memory, so the data survives the outage, as a real S3 would."""
        if self.server is None:
            self.server = _start_on(self.endpoint_url)


def _start_on(url: str) -> Any:
    from moto.server import ThreadedMotoServer

    host, port = url.removeprefix("http://").rsplit(":", 1)
    server = ThreadedMotoServer(ip_address=host, port=int(port), verbose=False)
    server.start()
    return server


def start_s3(host: str = "127.0.0.1") -> S3Endpoint:
    """`host`: the address to serve on (the e2e tier binds the node bridge's gateway)."""
    url = f"http://{host}:{free_port(host)}"
    endpoint = S3Endpoint(endpoint_url=url)
    endpoint.server = _start_on(url)
    return endpoint
