"""Optional test dependencies: skipped on a developer's partial install, required in CI.

`make test` (and so `.ci/run`, which sets CI=true) installs and builds everything, so there a
missing piece is a broken setup and must fail, never pass quietly as a skip."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def require_module(name: str) -> ModuleType:
    if in_ci():
        return importlib.import_module(name)
    module: ModuleType = pytest.importorskip(name)
    return module


def require(condition: bool, why: str) -> None:
    if condition:
        return
    if in_ci():
        pytest.fail(f"{why} (CI must run this test)")
    pytest.skip(why)
