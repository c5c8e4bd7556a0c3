"""The operator starts under a UID with no passwd entry (found by running its image as a real
pod: Kopf's getpass.getuser() crashed with "uid not found: 65532"), and without the
`kubernetes` client in its process."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from typing import Any

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


# The operator's process as it starts: `python -m evaluation_operator` (runpy runs the module
# as __main__, as -m does; the console script's `run()` is the other way in), then what
# `kopf run -m evaluation_operator.handlers` imports. `--help`: Kopf prints its help and
# exits, so no cluster is needed.
STARTS = {
    "python -m": 'runpy.run_module("evaluation_operator", run_name="__main__", alter_sys=True)',
    "console script": "import evaluation_operator; evaluation_operator.run()",
}
PROGRAM = """
import importlib, json, runpy, sys
sys.argv = ["evaluation-operator", "--help"]
try:
    {start}
except SystemExit:
    pass
importlib.import_module("evaluation_operator.handlers")
import kopf._cogs.helpers.thirdparty as thirdparty
print(json.dumps({{
    "client": sorted(name for name, module in sys.modules.items()
                     if module is not None and name.split(".")[0] == "kubernetes"),
    "kopf_models": thirdparty.V1ObjectMetaSync is not None,
}}))
"""


def imports(code: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "EVAL_NAMESPACES": "default"})
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("start", STARTS.values(), ids=STARTS.keys())
def test_the_operator_process_never_imports_the_kubernetes_client(start: str) -> None:
    """~50 MiB of RSS: Kopf would import it (its models, its credentials) whenever it can."""
    seen = imports(PROGRAM.format(start=start))
    assert seen == {"client": [], "kopf_models": False}


def test_without_the_entry_kopf_would_import_the_kubernetes_client() -> None:
    """The check above can fail: in this venv the client is installed and Kopf takes it."""
    pytest.importorskip("kubernetes")
    seen = imports("import json, sys, kopf, kopf._cogs.helpers.thirdparty as t\n"
                   "print(json.dumps({'client': sorted(m for m in sys.modules "
                   "if m.split('.')[0] == 'kubernetes'), "
                   "'kopf_models': t.V1ObjectMetaSync is not None}))")
    assert seen["kopf_models"] is True
    assert "kubernetes.client" in seen["client"]
