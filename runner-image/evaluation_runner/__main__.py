"""`python -m evaluation_runner --config /etc/evaluation/config.json`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from evaluation_runner import termination
from evaluation_runner.config import load_config
from evaluation_runner.errors import EXIT_OK, RunnerError
from evaluation_runner.runner import run
from evaluation_runner.storage import ResultsWriter

log = logging.getLogger("evaluation_runner")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evaluation-runner",
                                     description="Run one EvaluationTask's benchmarks.")
    parser.add_argument("--config", type=Path, required=True, help="runner configuration JSON")
    parser.add_argument("--termination-log", type=Path, default=Path("/dev/termination-log"),
                        help="where the compact summary goes (the kubelet reads it)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = load_config(args.config)
        message = run(config, ResultsWriter(config.output))
    except RunnerError as error:
        log.error("%s: %s", error.reason, error)
        termination.write(args.termination_log,
                          termination.failure_message(error.reason, str(error)))
        return error.exit_code
    except Exception as error:  # a bug: report it, exit with the retried code
        log.exception("runner failed")
        termination.write(args.termination_log,
                          termination.failure_message("RunnerError", repr(error)))
        return 1
    termination.write(args.termination_log, message)
    log.info("done: %s", message.decode())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
