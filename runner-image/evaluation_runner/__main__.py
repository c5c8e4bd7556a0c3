"""`python -m evaluation_runner --config /etc/evaluation/config.json`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path

from evaluation_runner import layout, runlog, sharding, termination
from evaluation_runner.config import load_config
from evaluation_runner.errors import EXIT_OK, RunnerError
from evaluation_runner.runner import LOG_KEY, merge, run
from evaluation_runner.storage import ResultsWriter

log = logging.getLogger("evaluation_runner")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evaluation-runner",
                                     description="Run one EvaluationTask's benchmarks.")
    parser.add_argument("--config", type=Path, required=True, help="runner configuration JSON")
    parser.add_argument("--termination-log", type=Path, default=Path("/dev/termination-log"),
                        help="where the compact summary goes (the kubelet reads it)")
    parser.add_argument("--mode", choices=("run", "merge"), default="run",
                        help="run: evaluate (in a sharded run, this pod's shard, from "
                             f"{sharding.INDEX_ENV}); merge: score the shards' answers")
    return parser


def upload_log(writer: ResultsWriter | None, captured: runlog.CappedLog) -> str | None:
    """runner.log into the bundle, best effort (also after a failure); its URI, or None."""
    if writer is None:
        return None
    try:
        writer.put(LOG_KEY, captured.contents(), "text/plain; charset=utf-8")
    except Exception as error:
        log.warning("runner.log could not be uploaded: %s", error)
        return None
    return writer.uri(LOG_KEY)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=runlog.FORMAT)
    captured = runlog.install()
    writer: ResultsWriter | None = None

    def fail(reason: str, message: str) -> None:
        termination.write(args.termination_log, termination.failure_message(
            reason, message, upload_log(writer, captured)))

    def abort(error: RunnerError) -> None:
        # From the watchdog's thread, while the main thread hangs: report, then end it all.
        done = threading.Thread(target=fail, args=(error.reason, str(error)), daemon=True)
        done.start()
        done.join(timeout=30)
        logging.shutdown()
        os._exit(error.exit_code)

    try:
        config = load_config(args.config)
        task_writer = ResultsWriter(config.output)
        if args.mode == "merge":
            writer = task_writer
            message = merge(config, writer, log_contents=captured.contents)
        else:
            shard = (sharding.shard_index(os.environ, config.shards) if config.shards > 1
                     else None)
            # A shard's runner.log goes to its own folder, never over another shard's.
            writer = (task_writer if shard is None
                      else task_writer.below(layout.shard_prefix(shard)))
            message = run(config, task_writer, abort=abort, log_contents=captured.contents,
                          shard=shard)
    except RunnerError as error:
        log.error("%s: %s", error.reason, error)
        fail(error.reason, str(error))
        return error.exit_code
    except Exception as error:  # a bug: report it, exit with the retried code
        log.exception("runner failed")
        fail("RunnerError", repr(error))
        return 1
    log.info("done: %s", message.decode())
    upload_log(writer, captured)
    termination.write(args.termination_log, message)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
