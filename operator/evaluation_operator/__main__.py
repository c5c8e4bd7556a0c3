"""`python -m evaluation_operator [our flags] [kopf run options]`: run the operator.

Configuration comes from the environment, each variable overridable by a flag (config.py);
any other option goes to `kopf run` (--verbose, --liveness=...).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # The operator talks to the API server with its own client (apiclient.py). Kopf imports
    # the official `kubernetes` client whenever it can: at import, for owner-reference models
    # (kopf/_cogs/helpers/thirdparty.py), and to borrow its credentials (login_via_client in
    # kopf/_core/intents/piggybacking.py). That is ~50 MiB of RSS held for nothing, and the
    # venv of `make run` and of the tests has it installed. A None in sys.modules makes
    # `import kubernetes` fail as if it were not installed; only in the operator's own
    # process (`python -m evaluation_operator`, and `run()` for the console script), so a
    # program that imports this module keeps its client. tests/unit/test_main.py checks it.
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]

import os
from collections.abc import MutableMapping

import kopf.cli

from evaluation_operator.config import OperatorSettings, SettingsError, apply_flags
from evaluation_operator.leader import LeaderElectionError, leadership
from evaluation_operator.logsafety import quiet_credential_loggers
from evaluation_operator.memory import limit_arenas


def build_argv(settings: OperatorSettings, extra: list[str]) -> list[str]:
    argv = ["run", "--standalone", "-m", "evaluation_operator.handlers"]
    if settings.namespaces:
        for namespace in settings.namespaces:
            argv += ["--namespace", namespace]
    else:
        argv.append("--all-namespaces")
    return argv + extra


def ensure_login_name(environ: MutableMapping[str, str]) -> None:
    """Kopf names the operator after the login user (getpass.getuser()); a container UID
    without a passwd entry (the chart's 65532, OpenShift's arbitrary UIDs) has none, and
    getpass raises. The environment is where getpass looks first."""
    if not any(environ.get(name) for name in ("LOGNAME", "USER", "LNAME", "USERNAME")):
        environ["USER"] = "evaluation-operator"


def main(argv: list[str] | None = None) -> None:
    env, kopf_args = apply_flags(sys.argv[1:] if argv is None else argv, os.environ)
    try:
        settings = OperatorSettings.from_env(env)
    except SettingsError as error:
        sys.exit(f"evaluation-operator: bad configuration: {error}")
    # The handlers module reads its settings from the environment when Kopf imports it.
    os.environ.update(env)
    ensure_login_name(os.environ)
    limit_arenas()  # before any thread starts (memory.py)
    quiet_credential_loggers()
    # With leader election on, a standby waits here until it leads (leader.py); Kopf's own
    # peering stays off (--standalone).
    try:
        with leadership(settings, kopf_args):
            kopf.cli.main(args=build_argv(settings, kopf_args), prog_name="evaluation-operator",
                          standalone_mode=True)
    except LeaderElectionError as error:
        sys.exit(f"evaluation-operator: bad configuration: {error}")


if __name__ == "__main__":
    main()
