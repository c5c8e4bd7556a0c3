"""Credential-carrying library loggers stay quiet when Kopf turns the root logger to DEBUG."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from evaluation_operator.logsafety import QUIET_LOGGERS, quiet_credential_loggers


@pytest.fixture
def debug_root() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.level, {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    root.setLevel(logging.DEBUG)  # what `kopf run --verbose/--debug` does
    yield
    root.setLevel(saved[0])
    for name, level in saved[1].items():
        logging.getLogger(name).setLevel(level)


def test_request_loggers_never_log_below_warning(debug_root: None) -> None:
    assert logging.getLogger("botocore.endpoint").isEnabledFor(logging.DEBUG)
    quiet_credential_loggers()
    for name in ("botocore.endpoint", "botocore.auth", "botocore.hooks", "boto3.resources",
                 "urllib3.connectionpool", "s3transfer.tasks"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        assert logging.getLogger(name).isEnabledFor(logging.WARNING), name
    assert logging.getLogger("kopf.objects").isEnabledFor(logging.DEBUG)
