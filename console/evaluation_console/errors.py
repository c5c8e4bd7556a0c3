"""Errors the user reads: each says what failed and what to do."""

from __future__ import annotations


class ConsoleError(Exception):
    """A failure with a message fit for the user; the CLI prints it and exits 1."""


class NotFoundError(ConsoleError):
    pass


class ResultsUnavailableError(ConsoleError):
    """The task has no results in S3 (yet), or S3 could not be read with any credentials."""
