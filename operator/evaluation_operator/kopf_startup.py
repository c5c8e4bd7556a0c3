"""Kopf's start-up gate, made linear in the number of objects it waits for.

Before any handler runs, Kopf waits until every listed object has been indexed: one toggle
per object in a `ToggleSet(all)` (kopf/_core/reactor/queueing.py and processing.py, Kopf
1.45). Each object's worker drops its toggle and then waits for the whole set, and every
toggle made or dropped wakes every waiting worker (`notify_all`) to re-check the set. With
N objects that is N² wake-ups: a restart with 5,000 tasks (15,000 tasks, Jobs and pods)
spent more than 8 minutes at a full core in `make_toggle` and ran no handler at all
(bench/README.md, operator_scale.py --restart-only).

The set's overall state can only change when a toggle is made or dropped, so waking the
waiters is needed only when that state flips. `FlipNotifyingToggleSet` does exactly that;
what the waiters wait for, and when they are released, is unchanged. `install()` puts it in
place of Kopf's class before Kopf builds its sets (handlers.py, at import).
"""

from __future__ import annotations

from collections.abc import Iterable

from kopf._cogs.aiokits import aiotoggles


class FlipNotifyingToggleSet(aiotoggles.ToggleSet):
    """A `ToggleSet` that wakes its waiters only when its overall state flips."""

    async def make_toggle(self, __val: bool = False, *, name: str | None = None
                          ) -> aiotoggles.Toggle:
        toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
        async with self._condition:
            was_on = self.is_on()
            self._toggles.add(toggle)
            self._notify_if_flipped(was_on)
        return toggle

    async def drop_toggle(self, toggle: aiotoggles.Toggle) -> None:
        await self.drop_toggles([toggle])

    async def drop_toggles(self, toggles: Iterable[aiotoggles.Toggle]) -> None:
        async with self._condition:
            was_on = self.is_on()
            self._toggles.difference_update(toggles)
            self._notify_if_flipped(was_on)

    def _notify_if_flipped(self, was_on: bool) -> None:
        if self.is_on() != was_on:
            self._condition.notify_all()


def install() -> None:
    """Use `FlipNotifyingToggleSet` wherever Kopf makes a `ToggleSet` from now on."""
    aiotoggles.ToggleSet = FlipNotifyingToggleSet  # type: ignore[misc]
