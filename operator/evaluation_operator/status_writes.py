"""When a status change is written: at once, after the debounce, or once it has lasted.

Every status PATCH is an API write (issue 9: at most 8 per task over its whole life, of which
2 are the ConfigMap and Job, 2 Kopf's finalizer, 1 the `ResultsPurged` event), so the normal
path must cost two status writes, Running and Completed, however the pod's start goes:

- a finished run (Completed, Failed): at once, never held;
- a step on the way to a running runner (`Reason.on_the_way`: JobPending, PodPending,
  Scheduling, Starting): only once it has lasted `settle` (a pod that starts within it never
  shows them; one that waits for the controller manager or an image pull says why). Changes
  between such steps restart nothing: the hold counts from the first change not yet written;
- everything else (Running, a warning such as Unschedulable, Queued, a new message or
  progress under the reason already written): after `debounce`, so a burst of events is one
  write.

While the operator is creating ConfigMaps and Jobs (a sweep of many tasks applied at once),
everything but a finished run and a warning also waits until creating has paused for
`BUSY_RECHECK_SECONDS`, at most `burst` since the first change: status writes would compete
with the creates on the API server (the whole sweep's last Job comes later), and `Running`
or `JobPending` a few seconds late costs a user nothing a warning or the end would. The
reconciler wakes every held change once the pause comes (`Reconciler._sweep_paused`); none
of them is asked again meanwhile but on its own task's events.

A change noticed while one is held shortens the hold when it is more urgent (the reconciler
asks again on every event); it never lengthens the time since the first change.
"""

from __future__ import annotations

from evaluation_operator.states import Reason

BUSY_RECHECK_SECONDS = 1.0  # creating counts as paused after this long without a create


def hold_seconds(reason: Reason | None, written: Reason | None, waited: float, *,
                 debounce: float, settle: float, creating: bool = False,
                 burst: float = 0.0) -> float:
    """How much longer to hold a status change before writing it (0: write now).

    `reason`: what the status would say now (None: nothing to write); `written`: the reason
    of the status written last (None: none yet); `waited`: seconds since the first change not
    yet written was noticed; `creating`: children are being created now (or were within
    `BUSY_RECHECK_SECONDS`); `burst`: the longest hold that gives a change (while creating,
    the hold runs to it: the caller is woken when creating pauses).
    """
    if reason is None or reason.phase.terminal:
        return 0.0
    new_step = reason.on_the_way and reason is not written
    hold = (settle if new_step else debounce) - waited
    if creating and not reason.warning:
        hold = max(hold, burst - waited)
    return max(0.0, hold)
