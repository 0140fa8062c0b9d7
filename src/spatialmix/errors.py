"""Errors a user can fix. The command line prints them as one line and exits with code 2."""

import math


class SpatialmixError(Exception):
    """Bad input: an unknown name, an impossible size, missing data, a bad checkpoint.

    The message must say what is wrong and how to fix it, in one line.
    """


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM, a cluster's preemption): handled like Ctrl-C."""


class NonFiniteLossError(SpatialmixError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


def unknown_name(kind: str, name: str, valid) -> SpatialmixError:
    return SpatialmixError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(valid))}")


def check_positive(**values) -> None:
    for name, value in values.items():
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not (value > 0 and math.isfinite(value))
        ):
            raise SpatialmixError(f"{name.replace('_', ' ')} must be a positive number, got {value}")
