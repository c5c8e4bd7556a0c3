"""The Helm chart's tests need the Helm binary the Makefile builds (`make tools`)."""

from __future__ import annotations

import pytest

from tests.chart.chart import helm_path


@pytest.fixture(autouse=True)
def _needs_helm() -> None:
    if not helm_path().is_file():
        pytest.skip(f"helm not built at {helm_path()} (run `make tools`)")
