"""Runs the operator as `python -m evaluation_operator` does, with memory dumps on SIGUSR1.

    BENCH_OPERATOR_WRAPPER=bench/operator_probe.py OPWRAP_OUT=/tmp/probe \\
        BENCH_PROBE=/tmp/probe .venv/bin/python bench/operator_scale.py --tasks 300

Each SIGUSR1 (operator_scale.py sends one at start, with N running and after deletion)
writes `mem-<pid>-<n>.txt`: live objects by type, and with OPWRAP=mem (tracemalloc on from
the first dump; slow, and its snapshots inflate RSS) the biggest allocation sites.
OPWRAP_PATH puts another copy of the operator's package first on the path (to profile an
older version in the same bench, or to keep editing this tree while a bench runs).

Each dump also gives the resident MiB per kind of mapping (/proc/self/smaps: the brk heap,
anonymous mappings, files), which tells heap pages from thread stacks and libraries, and the
modules imported and loggers made since start-up ended (`memory.freeze_startup_heap`): made
during a sweep, they stay among the pages it freed. With
OPWRAP=pages, the second and later dumps also count the brk heap's pages on which every
object was made after start, by type, by the object holding it and (for a sample of the
pages) by who keeps that holder, with samples: what keeps freed pages resident. It stops
the operator for a minute or more at 1,000 tasks and unfreezes and refreezes the
collector's objects: the figures the bench takes after such a dump (with N running: the
idle window, the status latency) do not count.

Every second `timeline-<pid>.tsv` gets one line: RSS, Python's allocated blocks, glibc's heap
in use and free (mallinfo2, all arenas; pymalloc's own 1 MiB arenas are in neither), threads,
open sockets, and with OPWRAP=mem tracemalloc's current and peak: whether RSS above the live
data is freed memory the allocators keep (fragmentation) or memory still in use, and when.

With OPWRAP=lag, `lag-<pid>.tsv` gets one line per moment that explains a late status write
(wall-clock seconds, as the audit log's): `pod-done` when the pod watch delivered a pod's
Succeeded, `patch` a task status PATCH (queued on the API pool, started, ended), `stall` the
event loop answering a call more than 0.2 s late, `gc` a collection over 50 ms, `watch-error`
an ERROR event in a watch (410 Gone: Kopf lists again).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import gc
import os
import runpy
import signal
import sys
import threading
import time
import tracemalloc
import weakref
from types import FrameType
from typing import Any

OUT = os.environ["OPWRAP_OUT"]
if os.environ.get("OPWRAP_PATH"):
    sys.path.insert(0, os.environ["OPWRAP_PATH"])
# Traced from the first dump on (the bench sends it once the operator has started): from the
# process's start, importing the kubernetes client and Kopf under tracemalloc took minutes.
TRACE = "mem" in os.environ.get("OPWRAP", "")
dumps = 0
MIB = 1024 * 1024


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _mallinfo() -> tuple[float, float, float]:
    """glibc's heap: (in use, free but kept, mmapped) MiB; zeros elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallinfo2.restype = MallInfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError, TypeError):
        return 0.0, 0.0, 0.0
    return info.uordblks / MIB, info.fordblks / MIB, info.hblkhd / MIB


def _rss() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_snapshot(traced: float) -> None:
    """The allocation sites at a new high of traced memory (overwritten at each new high)."""
    snapshot = tracemalloc.take_snapshot()
    with open(f"{OUT}/peak-{os.getpid()}.txt", "w") as out:
        print(f"traced {traced / MIB:.1f} MiB, rss {_rss():.1f} MiB", file=out)
        for stat in snapshot.statistics("lineno")[:30]:
            print(stat, file=out)
        for stat in snapshot.statistics("traceback")[:8]:
            print("\n===", stat, file=out)
            print("\n".join(stat.traceback.format()[-24:]), file=out)


def _sockets() -> int:
    """Open sockets: API server connections (Kopf's and the client's pools), S3, watches."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def _resident_by_mapping() -> list[tuple[str, float]]:
    """Resident MiB per kind of mapping (/proc/self/smaps): the brk heap (glibc's main
    arena), anonymous mappings (its other arenas, thread stacks, mmapped blocks), files."""
    sizes: dict[str, float] = collections.defaultdict(float)
    kind = ""
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                name = fields[5] if len(fields) > 5 else "[anon]"
                kind = name if name.startswith("[") else ("file:" + name.rsplit("/", 1)[-1])
            elif fields[0] == "Rss:":
                sizes[kind] += int(fields[1]) / 1024
    return [(k, round(v, 1)) for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:12]]


def _heap_range() -> tuple[int, int]:
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith("[heap]"):
                low, high = line.split()[0].split("-")
                return int(low, 16), int(high, 16)
    return 0, 0


def _describe(obj: object) -> str:
    if isinstance(obj, str | bytes):
        return repr(obj[:60])
    if isinstance(obj, weakref.ref):
        target = obj()
        return f"to {type(target).__name__} cb {getattr(obj, '__callback__', None)!r}"[:120]
    if type(obj).__name__ == "builtin_function_or_method":
        return repr(obj)[:100]
    return type(obj).__name__


OWNER_SAMPLE = 150


def _key_of(container: Any, value: object) -> str:
    """The key (a dict) or attribute (an object's __dict__) under which `value` is held.
    Plain loops: a generator here would close over `value` and show up as its referrer."""
    items = container if isinstance(container, dict) else getattr(container, "__dict__", None)
    if isinstance(items, dict):
        for key, held in items.items():
            if held is value:
                return str(key)[:30]
    return ""


def _owner(obj: object, ignore: set[int], depth: int = 4) -> str:
    """Who keeps `obj` alive, as a path down to it: from a module's global when one is
    found within `depth` referrer steps (first referrer at each step), else from "?"."""
    modules = {id(vars(m)): name for name, m in list(sys.modules.items()) if m is not None}
    steps: list[str] = []
    current = obj
    for _ in range(depth):
        referrers = gc.get_referrers(current)
        ignore.add(id(referrers))
        owner = None
        for referrer in referrers:
            if id(referrer) not in ignore and not isinstance(referrer, FrameType):
                owner = referrer
                break
        if owner is None:
            break
        key = _key_of(owner, current)
        if id(owner) in modules:
            return f"{modules[id(owner)]}.{key}" + "".join(reversed(steps)) + (
                f" -> {type(obj).__name__}")
        if isinstance(owner, dict) and not (key.isidentifier() and not any(
                c.isdigit() for c in key)):
            key = "*"  # one entry of many (a uid, a number): counted together
        steps.append(f"[{key}]" if isinstance(owner, dict) else
                     f"<{type(owner).__name__}>" + (f".{key}" if key else ""))
        current = owner
    return "?" + "".join(reversed(steps)) + f" -> {type(obj).__name__}"


def pinned_pages(out: Any) -> None:
    """OPWRAP=pages, from the second dump on (it unfreezes and freezes the collector's
    objects again: leave it to the last dumps): the brk heap's 4 KiB pages that hold objects
    made after start (not frozen by memory.freeze_startup_heap) and none made before, by the
    types of what is on them. A freed page with one such object on it stays resident.
    Objects the collector does not track (strings, numbers, dicts of them) count with the
    first tracked object found holding them, start's first."""
    later = {id(o) for o in gc.get_objects()}
    gc.unfreeze()  # until the end: gc.get_referrers does not search frozen objects
    try:
        _pinned_pages(out, later)
    finally:
        gc.freeze()


def _pinned_pages(out: Any, later: set[int]) -> None:
    everything = gc.get_objects()
    low, high = _heap_range()
    early: set[int] = set()
    late: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    holders: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    holder_objects: dict[int, object] = {}  # one holding object per page, to name its owner
    samples: dict[int, list[str]] = collections.defaultdict(list)
    seen: set[int] = set()

    def visit(obj: object, made_later: bool) -> None:
        stack = [obj]
        while stack:
            item = stack.pop()
            if id(item) in seen:
                continue
            seen.add(id(item))
            if low <= id(item) < high:
                page = id(item) >> 12
                if made_later:
                    late[page][type(item).__name__] += 1
                    holders[page][type(obj).__name__] += 1
                    holder_objects.setdefault(page, obj)
                    if len(samples[page]) < 3:
                        samples[page].append(f"{type(obj).__name__}>{type(item).__name__}:"
                                             f"{_describe(item)}")
                else:
                    early.add(page)
            stack.extend(r for r in gc.get_referents(item) if not gc.is_tracked(r))

    for owner in sorted(everything, key=lambda o: id(o) in later):  # start's first
        visit(owner, id(owner) in later)
    only_late = {page: kinds for page, kinds in late.items() if page not in early}
    by_type: collections.Counter[str] = collections.Counter()
    by_holder: collections.Counter[str] = collections.Counter()
    for page, kinds in only_late.items():
        by_type.update(kinds.keys())
        by_holder.update(holders[page].keys())
    print(f"heap {(high - low) / MIB:.1f} MiB; pages with objects made after start only: "
          f"{len(only_late)} ({len(only_late) * 4 / 1024:.1f} MiB); pages by the types on "
          "them:", by_type.most_common(30), file=out)
    print("the same by the tracked object holding them:", by_holder.most_common(30), file=out)
    del everything
    ignore = {id(holder_objects), id(samples), id(late), id(holders)}
    # Each step scans every object (seconds at 1,000 tasks, the operator stopped meanwhile):
    # a spread sample of the pages, not all of them.
    pages = [page for page in only_late if page in holder_objects]
    sample = pages[:: max(1, len(pages) // OWNER_SAMPLE)]
    owners = collections.Counter(_owner(holder_objects[page], ignore) for page in sample)
    print(f"the same by who keeps the holder (referrers, up to 4 steps; {len(sample)} of "
          f"{len(pages)} pages):", owners.most_common(40), file=out)
    for page in list(only_late)[:: max(1, len(only_late) // 60)]:
        print("  page:", " | ".join(samples[page]), file=out)


def timeline() -> None:
    started = time.monotonic()
    highest = 30 * MIB
    with open(f"{OUT}/timeline-{os.getpid()}.tsv", "w", buffering=1) as out:
        print("t_s\trss_mib\tpy_blocks\tmalloc_used_mib\tmalloc_free_mib\tmmapped_mib"
              "\tthreads\tsockets\ttraced_mib\ttraced_peak_mib", file=out)
        while True:
            used, free, mapped = _mallinfo()
            traced, peak = (tracemalloc.get_traced_memory() if tracemalloc.is_tracing()
                            else (0, 0))
            print(f"{time.monotonic() - started:.0f}\t{_rss():.1f}\t{sys.getallocatedblocks()}"
                  f"\t{used:.1f}\t{free:.1f}\t{mapped:.1f}\t{threading.active_count()}"
                  f"\t{_sockets()}"
                  f"\t{traced / MIB:.1f}\t{peak / MIB:.1f}", file=out)
            if traced > highest * 1.2:
                highest = traced
                peak_snapshot(traced)
            time.sleep(1)


LAG = "lag" in os.environ.get("OPWRAP", "")
_lag_out: Any = None
_lag_lock = threading.Lock()


def lag_line(*fields: object) -> None:
    with _lag_lock:
        print("\t".join(str(f) for f in fields), file=_lag_out)


def _watch_loop(loop: Any) -> None:
    """Every 50 ms, how late the event loop runs a callback (it runs Kopf and the
    operator's handlers: a late one delays every status write)."""
    while not loop.is_closed():
        asked = time.time()
        done = threading.Event()
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(done.set)
        done.wait(60)
        late = time.time() - asked
        if late > 0.2:
            lag_line("stall", f"{asked:.3f}", f"{late:.3f}")
        time.sleep(0.05)


def watch_lag() -> None:
    """OPWRAP=lag: wraps the operator's watch hand-over, status PATCH and API pool."""
    global _lag_out
    import asyncio

    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]  # as __main__ does
    from evaluation_operator import kube, watch_projection

    _lag_out = open(f"{OUT}/lag-{os.getpid()}.tsv", "w", buffering=1)  # noqa: SIM115
    handed, patch = watch_projection.hand_over, kube.Kube.patch_task_status
    seen: set[str] = set()
    started: list[Any] = []

    def hand_over(stream_events: Any, kind: str, event: Any) -> bool:
        if not started:
            started.append(threading.Thread(target=_watch_loop, daemon=True,
                                            args=(asyncio.get_running_loop(),)))
            started[0].start()
        if isinstance(event, dict) and event.get("type") == "ERROR":
            lag_line("watch-error", f"{time.time():.3f}", kind, str(event.get("object"))[:200])
        obj = event.get("object") if isinstance(event, dict) else None
        if isinstance(obj, dict) and (obj.get("status") or {}).get("phase") == "Succeeded":
            name = obj["metadata"]["name"]
            if name not in seen:
                seen.add(name)
                lag_line("pod-done", f"{time.time():.3f}", name)
        return handed(stream_events, kind, event)

    def patch_task_status(self: Any, namespace: str, name: str, status: Any) -> None:
        began = time.time()
        try:
            patch(self, namespace, name, status)
        finally:
            lag_line("patch", f"{began:.3f}", name, status.get("reason"),
                     f"{time.time() - began:.3f}", getattr(_queued, "at", ""))

    _queued = threading.local()

    async def api_call(self: Any, function: Any, *args: Any) -> Any:
        asked = time.time()

        def run() -> Any:
            _queued.at = f"{time.time() - asked:.3f}"
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(self.pool, run)

    began = [0.0]

    def collected(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.time()
        elif (spent := time.time() - began[0]) > 0.05:
            lag_line("gc", f"{began[0]:.3f}", info["generation"], f"{spent:.3f}",
                     info["collected"])

    watch_projection.hand_over = hand_over
    kube.Kube.patch_task_status = patch_task_status  # type: ignore[method-assign]
    kube.Api.call = api_call  # type: ignore[method-assign]
    gc.callbacks.append(collected)


# What existed once start-up was done (memory.freeze_startup_heap): what appears later was
# made during a sweep and stays for the process's life, among the pages the sweep freed.
at_startup: dict[str, set[str]] = {}


def _logger_names() -> set[str]:
    import logging
    return set(logging.Logger.manager.loggerDict)


def record_startup() -> None:
    from evaluation_operator import memory

    freeze = memory.freeze_startup_heap

    def recording() -> None:
        freeze()
        at_startup["modules"] = set(sys.modules)
        at_startup["loggers"] = _logger_names()

    memory.freeze_startup_heap = recording


def made_after_startup(out: Any) -> None:
    if at_startup:
        print("modules imported after start-up:",
              sorted(set(sys.modules) - at_startup["modules"]), file=out)
        print("loggers made after start-up:", len(_logger_names() - at_startup["loggers"]),
              sorted(_logger_names() - at_startup["loggers"])[:20], file=out)


def dump(signum: int, frame: FrameType | None) -> None:
    global dumps
    dumps += 1
    gc.collect()
    if TRACE and not tracemalloc.is_tracing():
        tracemalloc.start(12)
    with open(f"{OUT}/mem-{os.getpid()}-{dumps}.txt", "w") as out:
        used, free, mapped = _mallinfo()
        print(f"rss {_rss():.1f} MiB; python blocks {sys.getallocatedblocks()}; glibc heap "
              f"in use {used:.1f}, free {free:.1f}, mmapped {mapped:.1f} MiB", file=out)
        print("resident by mapping, MiB:", _resident_by_mapping(), file=out)
        made_after_startup(out)
        if "pages" in os.environ.get("OPWRAP", "") and dumps >= 2:
            pinned_pages(out)
        types = collections.Counter(type(o).__name__ for o in gc.get_objects())
        print("objects:", types.most_common(40), file=out)
        if tracemalloc.is_tracing():
            current, peak = tracemalloc.get_traced_memory()
            print(f"traced {current / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB", file=out)
            snapshot = tracemalloc.take_snapshot()
            for stat in snapshot.statistics("lineno")[:40]:
                print(stat, file=out)
            for stat in snapshot.statistics("traceback")[:15]:
                print("\n===", stat, file=out)
                print("\n".join(stat.traceback.format()[-24:]), file=out)
            tracemalloc.reset_peak()


signal.signal(signal.SIGUSR1, dump)
from evaluation_operator.memory import limit_arenas  # noqa: E402

limit_arenas()  # as __main__ does, before this file's own thread starts
record_startup()
threading.Thread(target=timeline, name="probe-timeline", daemon=True).start()
if LAG:
    watch_lag()
sys.argv = ["evaluation_operator"]
runpy.run_module("evaluation_operator", run_name="__main__", alter_sys=True)
