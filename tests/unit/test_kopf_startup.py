"""Kopf's start-up gate (kopf_startup.py): same releases, linear wake-ups."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from evaluation_operator import kopf_startup
from kopf._cogs.aiokits import aiotoggles
from kopf._core.reactor import orchestration, running

# Kopf's own class, even when an import of the handlers has installed ours already.
KOPF_TOGGLE_SET = kopf_startup.FlipNotifyingToggleSet.__bases__[0]


def counting(base: type[aiotoggles.ToggleSet]) -> Any:
    class Counting(base):  # type: ignore[valid-type,misc]
        checks = 0

        def is_on(self) -> bool:
            type(self).checks += 1
            return bool(super().is_on())

    return Counting


async def start_up(toggle_set: aiotoggles.ToggleSet, objects: int) -> list[int]:
    """Kopf's pattern: a blocker while the watches start, one toggle per listed object; each
    object's worker drops its own toggle, then waits for all. Returns the release order."""
    released: list[int] = []
    blocker = await toggle_set.make_toggle(name="orchestration blocker")
    toggles = [await toggle_set.make_toggle(name=str(n)) for n in range(objects)]

    async def worker(n: int) -> None:
        for _ in range(n):  # objects arrive one after another, as a listing delivers them
            await asyncio.sleep(0)
        await toggle_set.drop_toggle(toggles[n])
        await toggle_set.wait_for(True)
        released.append(n)

    workers = [asyncio.create_task(worker(n)) for n in range(objects)]
    for _ in range(objects + 1):
        await asyncio.sleep(0)
    assert released == [], "no worker may pass the gate while the blocker is up"
    await toggle_set.drop_toggle(blocker)
    await asyncio.wait_for(asyncio.gather(*workers), timeout=30)
    return released


def test_every_worker_passes_only_when_the_last_toggle_is_dropped() -> None:
    released = asyncio.run(start_up(kopf_startup.FlipNotifyingToggleSet(all), 50))
    assert sorted(released) == list(range(50))


def test_wake_ups_grow_linearly_not_quadratically() -> None:
    objects = 400
    kopf_set, ours = counting(KOPF_TOGGLE_SET), counting(kopf_startup.FlipNotifyingToggleSet)
    asyncio.run(start_up(kopf_set(all), objects))
    asyncio.run(start_up(ours(all), objects))
    assert kopf_set.checks > objects * objects / 4  # Kopf's own: every change wakes everyone
    assert ours.checks < 10 * objects


def test_a_set_waited_off_is_released_when_a_toggle_turns_it_off() -> None:
    async def scenario() -> None:
        paused = kopf_startup.FlipNotifyingToggleSet(any)
        waiter = asyncio.create_task(paused.wait_for(True))
        await asyncio.sleep(0)
        toggle = await paused.make_toggle(True)
        await asyncio.wait_for(waiter, timeout=5)
        resumed = asyncio.create_task(paused.wait_for(False))
        await toggle.turn_to(False)
        await asyncio.wait_for(resumed, timeout=5)

    asyncio.run(scenario())


@pytest.fixture
def restored_toggle_set() -> Iterator[None]:
    before = aiotoggles.ToggleSet
    yield
    aiotoggles.ToggleSet = before  # type: ignore[misc]


@pytest.mark.usefixtures("restored_toggle_set")
def test_kopf_builds_its_sets_from_the_installed_class() -> None:
    kopf_startup.install()
    # Kopf refers to the class through the module at the moment it builds its sets.
    assert vars(orchestration)["aiotoggles"] is aiotoggles
    assert vars(running)["aiotoggles"] is aiotoggles
    assert isinstance(aiotoggles.ToggleSet(all), kopf_startup.FlipNotifyingToggleSet)


def test_the_operator_installs_it_when_kopf_loads_the_handlers() -> None:
    # A process of its own: importing the handlers registers them with Kopf for good.
    probe = ("import evaluation_operator.handlers\n"
             "from kopf._cogs.aiokits import aiotoggles\n"
             "print(aiotoggles.ToggleSet.__name__)")
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           timeout=60, check=True)
    assert found.stdout.strip() == "FlipNotifyingToggleSet"
