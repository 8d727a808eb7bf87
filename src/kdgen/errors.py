"""The errors kdgen raises for bad input; the CLI turns each into one line and exit status 2."""

from __future__ import annotations

ERROR_PREFIX = "kdgen: error:"  # how the command line's one-line errors begin


class KdgenError(Exception):
    """Base class of every user-facing kdgen error."""


class ConfigError(KdgenError, ValueError):
    """A configuration key, type or value is wrong."""


class DataError(KdgenError):
    """A data set is missing, unreadable, corrupt or malformed."""


class CheckpointError(KdgenError):
    """A checkpoint is corrupt or does not match the model or run it is loaded into."""


class NumericalError(KdgenError):
    """Training diverged: a non-finite loss, or a gradient norm above ``max_grad_norm``."""


class RunDirError(KdgenError):
    """A run folder cannot be used as asked (it holds results, or another config)."""


def one_line(message: object) -> str:
    """A message, or an exception's, folded onto one line (some library errors span several)."""
    return " ".join(str(message).split())


class KdgenWarning(UserWarning):
    """A setting that kdgen accepts but that likely does not do what was meant (e.g. lr
    milestones past the last epoch); the CLI prints each as one line."""


def describe(error: BaseException) -> str:
    """A library's or a user's error in one line: its type and its message's first line
    (the rest of a long message, e.g. torch's advice, stays out of kdgen's one line)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
