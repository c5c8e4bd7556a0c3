"""`python -m evaluation_operator [kopf run options]`: run the operator.

Configuration comes from the environment (see settings.py and the Helm chart's values);
namespaces to watch from EVAL_NAMESPACES (comma-separated; empty means all namespaces).
"""

from __future__ import annotations

import sys

import kopf.cli

from evaluation_operator.settings import OperatorSettings, SettingsError


def build_argv(settings: OperatorSettings, extra: list[str]) -> list[str]:
    argv = ["run", "--standalone", "-m", "evaluation_operator.handlers"]
    if settings.namespaces:
        for namespace in settings.namespaces:
            argv += ["--namespace", namespace]
    else:
        argv.append("--all-namespaces")
    return argv + extra


def main(argv: list[str] | None = None) -> None:
    try:
        settings = OperatorSettings.from_env()
    except SettingsError as error:
        sys.exit(f"evaluation-operator: bad configuration: {error}")
    kopf.cli.main(args=build_argv(settings, list(sys.argv[1:] if argv is None else argv)),
                  prog_name="evaluation-operator", standalone_mode=True)


if __name__ == "__main__":
    main()
