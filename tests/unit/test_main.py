"""The operator starts under a UID with no passwd entry (found by running its image as a real
pod: Kopf's getpass.getuser() crashed with "uid not found: 65532")."""

from __future__ import annotations

import getpass
import os

import pytest
from evaluation_operator.__main__ import ensure_login_name


def test_a_login_name_is_set_when_the_environment_has_none() -> None:
    environ: dict[str, str] = {"HOME": "/tmp"}
    ensure_login_name(environ)
    assert environ["USER"] == "evaluation-operator"


def test_getpass_reads_it_before_the_passwd_database(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "environ", os.environ.copy())
    ensure_login_name(os.environ)
    assert getpass.getuser() == "evaluation-operator"


def test_an_existing_login_name_is_kept() -> None:
    environ = {"LOGNAME": "alice"}
    ensure_login_name(environ)
    assert environ == {"LOGNAME": "alice"}
