"""Runs the operator as `python -m evaluation_operator` does, and records what it is busy with.

    BENCH_OPERATOR_WRAPPER=bench/operator_activity.py ACTIVITY_OUT=/tmp/activity \\
        .venv/bin/python bench/operator_scale.py --tasks 1000

Every 5 s `activity.jsonl` in ACTIVITY_OUT gets one line: user and system CPU seconds,
collections and seconds in the cycle collector per generation, Job and pod events received
(counted where watch_projection.py reduces them), Python's allocated memory blocks, S3
reads with their thread CPU, the pooled connections of the API and S3 clients, and the
busiest frames of a 50 Hz stack sample (threads waiting in select, locks or queues left
out). `summarize` prints one row per line
with the rates; this is how the idle window of operator_scale.py was found busy with Job
status events (bench/README.md, stop 18).
"""

from __future__ import annotations

import collections
import gc
import json
import os
import runpy
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

SAMPLE_SECONDS = 0.02
WRITE_SECONDS = 5.0
WAITING = frozenset({"select", "poll", "wait", "acquire", "get", "sleep", "read", "recv",
                     "recv_into", "readinto", "accept", "_wait_for_tstate_lock", "_worker"})


class Activity:
    def __init__(self) -> None:
        self.gc = {generation: [0, 0.0] for generation in range(3)}  # collections, seconds
        self.counts: collections.Counter[str] = collections.Counter()
        self.frames: collections.Counter[str] = collections.Counter()
        self._gc_started = 0.0

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        entry = self.gc[info["generation"]]
        entry[0] += 1
        entry[1] += time.perf_counter() - self._gc_started

    def counted(self, name: str, function: Callable[..., Any], timed: bool = False
                ) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.counts[name] += 1
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                if timed:
                    self.counts[f"{name}_cpu_ms"] += round((time.thread_time() - started) * 1e3)
        return wrapper

    def sample(self) -> None:
        me = threading.get_ident()
        while True:
            time.sleep(SAMPLE_SECONDS)
            for thread, frame in sys._current_frames().items():
                if thread != me and frame.f_code.co_name not in WAITING:
                    self.frames[_where(frame)] += 1

    def write(self, path: Path) -> None:
        with path.open("a") as out:
            while True:
                time.sleep(WRITE_SECONDS)
                cpu = os.times()
                try:
                    line = {"t": time.time(), "user": cpu.user, "system": cpu.system,
                            "gc": self.gc, "counts": dict(self.counts),
                            "connections": _connections(),
                            "blocks": sys.getallocatedblocks(),
                            "frames": self.frames.most_common(12)}
                except RuntimeError:  # a table changed size while being copied: next time
                    continue
                self.frames.clear()
                print(json.dumps(line), file=out, flush=True)


def _where(frame: FrameType) -> str:
    code = frame.f_code
    return f"{os.path.basename(code.co_filename)}:{code.co_name}"


def _connections() -> dict[str, int]:
    """Connections each pool has opened so far (a rising count: connections not reused)."""
    found: dict[str, int] = {}
    handlers = sys.modules.get("evaluation_operator.handlers")
    reconciler = getattr(handlers, "_reconciler", None)
    if reconciler is not None:
        pools = reconciler.api.kube.rest.pool.pools._container.values()
        found["api"] = sum(p.num_connections for p in pools)
    s3 = sys.modules.get("evaluation_operator.s3")
    for client in getattr(s3, "_shared", {}).values():
        pools = client._endpoint.http_session._manager.pools._container.values()
        found["s3"] = sum(p.num_connections for p in pools)
    return found


def summarize(path: Path) -> None:
    """One row per line: CPU, GC and event rates since the line before."""
    previous: dict[str, Any] | None = None
    for text in path.read_text().splitlines():
        line = json.loads(text)
        if previous is not None and line["user"] < previous["user"]:
            print("(the operator started again: counts from zero)")
        elif previous is not None:
            span = line["t"] - previous["t"]
            cpu = (line["user"] + line["system"] - previous["user"] - previous["system"]) / span
            gc_core = sum(line["gc"][g][1] - previous["gc"][g][1] for g in "012") / span
            rates = {k: round((v - previous["counts"].get(k, 0)) / span, 1)
                     for k, v in line["counts"].items()}
            stamp = time.strftime("%H:%M:%S", time.gmtime(line["t"]))
            print(f"{stamp} cpu {cpu:.3f} core, gc {gc_core:.3f} core, per s {rates}, "
                  f"connections {line['connections']}, blocks {line.get('blocks')}")
        previous = line


def main() -> None:
    out = Path(os.environ.get("ACTIVITY_OUT", "/tmp/operator-activity"))
    out.mkdir(parents=True, exist_ok=True)
    activity = Activity()
    gc.callbacks.append(activity.on_gc)
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]  # as __main__ does
    import evaluation_operator.s3 as s3
    import evaluation_operator.watch_projection as projection

    # Before the handlers import it by name.
    s3.read_capped = activity.counted("s3_read", s3.read_capped, timed=True)
    # Every Job and pod event Kopf receives passes through its projection once.
    for key, name in ((("batch", "jobs"), "job_event"), (("", "pods"), "pod_event")):
        kind, project = projection.KINDS[key]
        projection.KINDS[key] = (kind, activity.counted(name, project))
    threading.Thread(target=activity.sample, name="activity-sampler", daemon=True).start()
    threading.Thread(target=activity.write, args=(out / "activity.jsonl",),
                     name="activity-writer", daemon=True).start()
    sys.argv = ["evaluation_operator"]
    runpy.run_module("evaluation_operator", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["summarize"]:
        summarize(Path(sys.argv[2]))
    else:
        main()
