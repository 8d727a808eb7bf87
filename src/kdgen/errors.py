"""The errors kdgen raises for bad input; the CLI turns each into one line and exit status 2."""

from __future__ import annotations


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
