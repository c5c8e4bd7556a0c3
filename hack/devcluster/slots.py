"""Per-machine slots for real nodes: each slot owns a bridge name, a pod subnet and kubelet
ports, so two test sessions on one machine never share any of them. A slot is taken by holding
an exclusive lock on its file for as long as the node runs (the kernel drops the lock when
the process dies, so a killed session never leaves a slot taken)."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

SLOTS = 8
LOCK_DIR = Path("/tmp")
KUBELET_BASE_PORT = 10350


@dataclass(frozen=True)
class Slot:
    index: int

    @property
    def bridge(self) -> str:
        return f"evalnode{self.index}"

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.250.{100 + self.index}.0/24")

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1

    @property
    def kubelet_port(self) -> int:
        return KUBELET_BASE_PORT + 2 * self.index

    @property
    def healthz_port(self) -> int:
        return KUBELET_BASE_PORT + 2 * self.index + 1

    @property
    def cgroup_root(self) -> str:
        """The cgroup (in every v1 hierarchy) the kubelet puts `kubepods` under."""
        return f"evaluation-node-{self.index}"

    @property
    def lock_path(self) -> Path:
        return LOCK_DIR / f"evaluation-operator-node-slot-{self.index}.lock"


def all_slots() -> list[Slot]:
    return [Slot(i) for i in range(SLOTS)]


@dataclass
class HeldSlot:
    slot: Slot
    lock: IO[str]

    def release(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self.lock, fcntl.LOCK_UN)
        self.lock.close()


def take_slot(usable: Callable[[Slot], bool] | None = None) -> HeldSlot | None:
    """The first free slot, locked; None when all are taken. `usable(slot)`, when given,
    skips slots whose resources are in use by something else (checked after locking)."""
    for slot in all_slots():
        lock = open(slot.lock_path, "a")  # noqa: SIM115 - held for the node's lifetime
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        held = HeldSlot(slot, lock)
        if usable is not None and not usable(slot):
            held.release()
            continue
        os.utime(slot.lock_path)
        return held
    return None
