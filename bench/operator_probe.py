"""Runs the operator as `python -m evaluation_operator` does, with memory dumps on SIGUSR1.

    BENCH_OPERATOR_WRAPPER=bench/operator_probe.py OPWRAP_OUT=/tmp/probe \\
        BENCH_PROBE=/tmp/probe .venv/bin/python bench/operator_scale.py --tasks 300

Each SIGUSR1 (operator_scale.py sends one at start, with N running and after deletion)
writes `mem-<pid>-<n>.txt`: live objects by type, and with OPWRAP=mem (tracemalloc on from
the start; slow) the biggest allocation sites. OPWRAP_PATH puts another copy of the
operator's package first on the path (to profile an older version in the same bench).
"""

from __future__ import annotations

import collections
import gc
import os
import runpy
import signal
import sys
import tracemalloc
from types import FrameType

OUT = os.environ["OPWRAP_OUT"]
if os.environ.get("OPWRAP_PATH"):
    sys.path.insert(0, os.environ["OPWRAP_PATH"])
if "mem" in os.environ.get("OPWRAP", ""):
    tracemalloc.start(12)
dumps = 0


def dump(signum: int, frame: FrameType | None) -> None:
    global dumps
    dumps += 1
    gc.collect()
    with open(f"{OUT}/mem-{os.getpid()}-{dumps}.txt", "w") as out:
        types = collections.Counter(type(o).__name__ for o in gc.get_objects())
        print("objects:", types.most_common(40), file=out)
        if tracemalloc.is_tracing():
            snapshot = tracemalloc.take_snapshot()
            for stat in snapshot.statistics("lineno")[:40]:
                print(stat, file=out)
            for stat in snapshot.statistics("traceback")[:15]:
                print("\n===", stat, file=out)
                print("\n".join(stat.traceback.format()[-24:]), file=out)


signal.signal(signal.SIGUSR1, dump)
sys.argv = ["evaluation_operator"]
runpy.run_module("evaluation_operator", run_name="__main__", alter_sys=True)
