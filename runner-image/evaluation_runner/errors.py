"""Failures the runner reports, with the exit code that tells the Job whether to retry."""

from __future__ import annotations

EXIT_OK = 0
EXIT_TRANSIENT = 75  # EX_TEMPFAIL: worth a retry (Job backoffLimit)
EXIT_CONFIGURATION = 78  # EX_CONFIG: never retried (podFailurePolicy FailJob)
# Every `reason` a failure termination message carries (docs/runner-contract.md, section 3).
REASONS = ("ConfigurationError", "ModelUnreachable", "DatasetUnreachable", "UploadFailed",
           "RunnerError")


class RunnerError(Exception):
    exit_code = 1
    reason = "RunnerError"


class ConfigurationError(RunnerError):
    """Bad configuration or data: retrying cannot help."""

    exit_code = EXIT_CONFIGURATION
    reason = "ConfigurationError"


class RequestRejected(ConfigurationError):
    """The model refused one of a benchmark's requests for good (HTTP 4xx other than a
    rejected key or a rate limit, or no log-likelihoods where the task needs them): that
    benchmark cannot be scored, the others may (failurePolicy: Continue)."""


class TransientError(RunnerError):
    """The model endpoint or S3 failed after retries: a later attempt may succeed."""

    exit_code = EXIT_TRANSIENT

    def __init__(self, message: str, reason: str = "ModelUnreachable") -> None:
        if reason not in REASONS:
            raise ValueError(f"{reason!r} is not a runner failure reason ({', '.join(REASONS)})")
        super().__init__(message)
        self.reason = reason
