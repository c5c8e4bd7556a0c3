"""Giving freed memory back to the system (glibc), as the operator does after deletions."""

from __future__ import annotations

import abc
import collections.abc
import ctypes.util
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import yarl
from evaluation_operator import memory

glibc = pytest.mark.skipif(sys.platform != "linux" or memory._libc() is None,
                           reason="glibc malloc only")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_compact_gives_back_what_a_table_kept_from_its_largest_size() -> None:
    # Per-task tables once most of their 1,000 tasks are deleted: same entries, same order.
    tables: list[dict[str, int] | set[str]] = [
        {f"task-{i}": i for i in range(1000)},
        collections.OrderedDict((f"task-{i}", i) for i in range(1000)),
        {f"task-{i}" for i in range(1000)},
    ]
    for table in tables:
        for i in range(2, 1000):
            if isinstance(table, dict):
                del table[f"task-{i}"]
            else:
                table.discard(f"task-{i}")
    kept = [sys.getsizeof(table) for table in tables]
    before = [list(table.items()) if isinstance(table, dict) else sorted(table)
              for table in tables]

    for table in tables:
        memory.compact(table)

    assert [list(table.items()) if isinstance(table, dict) else sorted(table)
            for table in tables] == before
    assert isinstance(tables[1], collections.OrderedDict)
    assert all(sys.getsizeof(table) * 10 < size for table, size in zip(tables, kept,
                                                                       strict=True))


@glibc
def test_trim_gives_back_pages_freed_between_live_objects() -> None:
    # 2 KiB objects come from malloc's heap (not Python's small-object arenas); keeping
    # every 10th alive leaves holes that free() alone never returns to the system.
    blocks = [bytes(2048) for _ in range(40_000)]  # ~80 MiB
    kept = blocks[::10]
    del blocks
    before = rss_mib()
    assert memory.trim()
    assert rss_mib() < before - 30, "the freed ~70 MiB went back"
    del kept


@glibc
def test_trim_looks_up_the_c_library_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # find_library runs `ldconfig -p` in a new process each time it is asked.
    memory.trim()

    def no_lookup(name: str) -> str:
        raise AssertionError(f"looked up {name} again")

    monkeypatch.setattr(ctypes.util, "find_library", no_lookup)
    memory.trim()
    memory.limit_arenas()


@glibc
def test_trim_empties_the_caches_that_fill_with_each_task() -> None:
    # An entry made during a sweep keeps the heap page it sits on resident after it.
    class MadeDuringASweep:
        pass

    url = "https://127.0.0.1:6443/apis/evaluation.dev/v1alpha1/namespaces/a/evaluationtasks/t-1"
    urllib.parse.urlsplit(url)
    yarl.URL(url)
    assert not isinstance(MadeDuringASweep(), collections.abc.Sized)
    negative_cache = abc._get_dump(collections.abc.Sized)[2]  # type: ignore[attr-defined]
    assert any(ref() is MadeDuringASweep for ref in negative_cache)

    memory.trim()
    assert urllib.parse.urlsplit.cache_info().currsize == 0  # type: ignore[attr-defined]
    assert yarl._url.encode_url.cache_info().currsize == 0
    assert not abc._get_dump(collections.abc.Sized)[2]  # type: ignore[attr-defined]


@glibc
def test_an_arena_limit_from_the_environment_is_left_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert ctypes.util.find_library("c")
    monkeypatch.setitem(os.environ, "MALLOC_ARENA_MAX", "4")
    assert not memory.limit_arenas()
    monkeypatch.delitem(os.environ, "MALLOC_ARENA_MAX")
    assert memory.limit_arenas()


FREEZE_PROBE = """
import sys
from evaluation_operator import memory

ballast = [[i] for i in range(400_000)]  # what the imports leave in the heap
if sys.argv[1] == "freeze":
    memory.freeze_startup_heap()


class Body:  # like kopf.Body: a reference cycle, freed only by the cycle collector
    def __init__(self) -> None:
        self.me = self
        self.raw = [list(range(20)) for _ in range(5)]


handled, peak, base = [], 0, sys.getallocatedblocks()
for i in range(200_000):
    handled.append(Body())
    if len(handled) > 200:  # held a while, as by a handler awaiting a call
        handled.pop(0)
    if i % 500 == 0:
        peak = max(peak, sys.getallocatedblocks() - base)
print(peak)
"""


def test_freezing_the_startup_heap_frees_dead_cycles_sooner() -> None:
    def peak_blocks(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", FREEZE_PROBE, mode], check=True,
                              capture_output=True, text=True, timeout=120)
        return int(done.stdout)

    # Without: dead bodies wait until the oldest generation grew by a quarter of the imports.
    assert peak_blocks("freeze") * 2 < peak_blocks("plain")


def test_every_way_of_starting_the_operator_uses_the_same_allocator() -> None:
    root = Path(__file__).resolve().parents[2]
    dockerfile = (root / "operator" / "Dockerfile").read_text()
    for key, value in memory.PROCESS_ENV.items():
        assert f"{key}={value}" in dockerfile
    for starter in ("hack/run_local.py", "tests/integration/conftest.py",
                    "bench/operator_scale.py"):
        assert "**memory.PROCESS_ENV" in (root / starter).read_text(), starter


TRIM_AFTER = """
import random, sys
sys.path.insert(0, sys.argv[1])
from evaluation_operator import memory
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
before = rss()
{burst}
memory.trim()
print(round(rss() - before, 1))
"""
KEEP_A_FEW = """
objects = [{"n": i} for i in range(400_000)]  # ~100 MiB of small dicts
kept = objects[::500]  # one in 500 survives, as long-lived objects made mid-burst do
del objects
"""
CACHE_A_FEW = """
blocks = [bytearray(16 + (i * 8) % 1000) for i in range(60_000)]  # every small size
random.Random(1).shuffle(blocks)
del blocks  # freed in random order: glibc's thread cache keeps a few of each size
"""


def kept_after_trim(burst: str, env: dict[str, str]) -> float:
    """MiB of RSS a new process keeps after `burst` and `memory.trim`, with `env` (and no
    GLIBC_TUNABLES but env's) on top of this one's environment."""
    root = Path(__file__).resolve().parents[2] / "operator"
    environment = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    ran = subprocess.run([sys.executable, "-c", TRIM_AFTER.replace("{burst}", burst),
                          str(root)], env=environment | env, capture_output=True, text=True,
                         check=True, timeout=120)
    return float(ran.stdout.split()[-1])


@glibc
def test_glibc_malloc_gives_back_what_pymalloc_keeps_pinned() -> None:
    """A few survivors among many freed small objects pin pymalloc's arenas; under
    PROCESS_ENV the freed pages go back (memory.py, Allocator)."""
    assert memory.PROCESS_ENV["PYTHONMALLOC"] == "malloc"
    pymalloc = kept_after_trim(KEEP_A_FEW, {"PYTHONMALLOC": "pymalloc"})
    malloc = kept_after_trim(KEEP_A_FEW, {"PYTHONMALLOC": "malloc"})
    assert pymalloc > 40 and malloc < pymalloc / 3, (pymalloc, malloc)


@glibc
def test_freed_small_chunks_go_back_without_glibcs_thread_cache() -> None:
    """Chunks in glibc's per-thread cache count as in use, so each pins its page through
    `trim`; PROCESS_ENV turns the cache off (memory.py, Thread caches)."""
    cached = kept_after_trim(CACHE_A_FEW, {"PYTHONMALLOC": "malloc"})
    uncached = kept_after_trim(CACHE_A_FEW, memory.PROCESS_ENV)
    assert cached > 1.0 and uncached < cached / 3, (cached, uncached)
