"""Cluster start gives up on an attempt as soon as a component dies, instead of waiting out
kwokctl's whole `--wait` (seen when two clusters picked the same ports)."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

import devcluster.cluster as cluster_module
import pytest
from devcluster.cluster import KwokCluster
from devcluster.tools import toolchain

# Plays `kwokctl create cluster --wait`: starts etcd (which dies at once, as on a port clash)
# and the apiserver (which stays up), records their pids as kwokctl does, then waits.
FAKE_KWOKCTL = """#!/bin/bash
dir="$KWOK_WORKDIR/clusters/{name}"
mkdir -p "$dir/pids" "$dir/logs"
(echo "listen tcp 127.0.0.1:32765: bind: address already in use" >"$dir/logs/etcd.log"; exit 1) &
echo $! >"$dir/pids/etcd.pid"
sleep 300 &
echo $! >"$dir/pids/kube-apiserver.pid"
[ "$1" = create ] && exec sleep 300
exit 0
"""


def test_a_component_dying_during_create_ends_the_attempt_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lock of its own: the machine-wide one may be held by real cluster starts meanwhile.
    monkeypatch.setattr(cluster_module, "CREATE_LOCK", tmp_path / "create.lock")
    local = KwokCluster(name="fake", state_dir=tmp_path)
    kwokctl = tmp_path / "kwokctl"
    kwokctl.write_text(FAKE_KWOKCTL.format(name="fake"))
    kwokctl.chmod(0o755)
    tools = dataclasses.replace(toolchain(), kwokctl=kwokctl)
    begin = time.monotonic()
    try:
        failure = local._create(tools, tmp_path / "kwokctl.yaml")
    finally:
        apiserver = tmp_path / "kwok" / "clusters" / "fake" / "pids" / "kube-apiserver.pid"
        if apiserver.exists():
            os.kill(int(apiserver.read_text()), signal.SIGKILL)
    assert time.monotonic() - begin < 30
    assert failure is not None
    assert "etcd" in failure and "address already in use" in failure
    assert "kube-apiserver" not in failure
