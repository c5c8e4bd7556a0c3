"""Keeping the operator's resident memory near what it uses (glibc malloc only; elsewhere
these do nothing).

* Arenas: glibc gives each thread that allocates its own malloc arena (up to 8 per core).
  The `api_workers` threads that make API and S3 calls each dirty one, and freed memory in
  one arena cannot serve another, so RSS grew with every busy thread. Two arenas, set before
  the threads start, unless the environment's MALLOC_ARENA_MAX says otherwise.
* Trim: after many tasks are deleted, glibc keeps the freed pages; `trim` collects cyclic
  garbage, empties the bounded caches that filled during the sweep, and hands the free
  pages back to the system (`malloc_trim`). A page goes back only if nothing on it lives:
  after 1,000 tasks were deleted, 1,850 pages held only objects made after start, 40 % of
  them entries of URL caches (urllib's, and yarl's for Kopf's requests: per-task URLs) and
  30 % the ABCs' `isinstance` caches (bench/README.md). They refill on demand.
* Freeze: every object Kopf hands a handler (`kopf.Body` and its views) is a reference
  cycle, so each event's whole parsed body is freed only by the cycle collector; bodies held
  for a moment (a handler awaiting a call) reach its oldest generation, which CPython scans
  only once it grew by a quarter, and after the imports it holds ~450,000 objects. Dead
  bodies piled up meanwhile (a full collection with 300 tasks running freed 157,000
  blocks). `freeze_startup_heap` moves what the imports made to the permanent generation,
  so full collections run in proportion to the operator's own working set.
* Allocator: `PROCESS_ENV` is how the operator's process is started (the image's ENV,
  `make run`, the tests and the bench). With Python's own allocator, small objects live in
  1 MiB arenas that go back to the system only once entirely empty; one object kept alive
  pins the rest. After 1,000 tasks were deleted the operator stayed at 151 MiB (72 at start)
  although its live objects were back to the count at start; with glibc's malloc for them
  too, `trim` hands the freed pages back: 106 MiB, and 98 with the store (bench/README.md,
  2026-11-30). Running and restart figures did not move beyond run-to-run spread.
* Tables: a dict or set never shrinks as entries go, only when it is cleared; one per-task
  table sized for 1,000 tasks keeps ~25 KiB (a set ~32, an OrderedDict ~41) once empty, in
  the heap it grew in. `compact` copies the entries into storage their size needs.
* Made once, kept for good: what the operator makes once and keeps (the API pool's threads,
  botocore's models of the purge's requests) is made at start-up (`Api.start_threads`,
  `s3.warm_up`). Made in the middle of the first sweep, it would sit among the pages the
  sweep frees, and each such object keeps its page resident after the sweep is deleted.
* Thread caches: glibc keeps up to 7 freed chunks of each of 64 small sizes per thread
  (tcache) for that thread's next malloc. To `malloc_trim` those chunks are in use, so each
  can pin a page: up to ~1.8 MiB per thread (tests/unit/test_memory.py measures it on the
  main thread). `PROCESS_ENV` turns the caches off (`glibc.malloc.tcache_count=0`).
"""

from __future__ import annotations

import abc
import ctypes
import ctypes.util
import functools
import gc
import os
import sys
import urllib.parse
from typing import Any

M_ARENA_MAX = -8  # glibc's malloc.h
ARENAS = 2
# Read at start (by Python, by glibc): set by whoever starts the operator's process.
PROCESS_ENV = {"PYTHONMALLOC": "malloc", "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"}


@functools.cache  # finding it runs `ldconfig -p` in a new process: once, not at each trim
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None  # not glibc (musl, macOS)
    return libc


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas; True if it was set here."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas))


def freeze_startup_heap() -> None:
    """Once started, before the first event: the imports' objects are never garbage; keep
    them out of the collector's oldest generation."""
    gc.collect()
    gc.freeze()
    gc.collect()  # resets the oldest generation's size, which paces full collections


def _abcs() -> list[type]:
    """Every class made by abc.ABCMeta (collections.abc's and the libraries' own)."""
    found: list[type] = []
    stack: list[type] = [object]
    seen: set[int] = set()
    while stack:
        subclasses: list[type] = type.__subclasses__(stack.pop())
        for sub in subclasses:
            if id(sub) not in seen:
                seen.add(id(sub))
                stack.append(sub)
                if isinstance(sub, abc.ABCMeta):
                    found.append(sub)
    return found


def clear_caches() -> None:
    """Empty the caches that fill with entries for each task during a sweep."""
    clear_url_cache = getattr(urllib.parse, "clear_cache", None)  # undocumented, 3.11+
    if clear_url_cache is not None:
        clear_url_cache()
    # Kopf's requests go through aiohttp, which parses each URL with yarl; its parse caches
    # are private (yarl._url) and have no public way to be emptied.
    yarl_url: Any = sys.modules.get("yarl._url")
    for name in ("encode_url", "pre_encoded_url", "from_parts"):
        cache_clear = getattr(getattr(yarl_url, name, None), "cache_clear", None)
        if callable(cache_clear):
            cache_clear()
    for cls in _abcs():
        cls._abc_caches_clear()  # type: ignore[attr-defined]  # ABCMeta's own method


def compact(table: dict[Any, Any] | set[Any]) -> None:
    """Give back the storage `table` kept from its largest size (same entries, same order)."""
    if isinstance(table, dict):
        items = list(table.items())
        table.clear()
        table.update(items)
    else:
        members = list(table)
        table.clear()
        table.update(members)


def trim() -> bool:
    """Collect garbage and give free heap pages back to the system; True if any were."""
    libc = _libc()
    gc.collect()
    if libc is None:
        return False  # no malloc_trim: emptying the caches would give nothing back
    clear_caches()
    return bool(libc.malloc_trim(0))
