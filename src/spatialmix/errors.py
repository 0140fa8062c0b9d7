"""Errors a user can fix. The command line prints them as one line and exits with code 2."""

import difflib
import math


class SpatialmixError(Exception):
    """Bad input: an unknown name, an impossible size, missing data, a bad checkpoint.

    The message must say what is wrong and how to fix it, in one line.
    """


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM, a cluster's preemption): handled like Ctrl-C."""


class NonFiniteLossError(SpatialmixError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


def did_you_mean(name: str, valid) -> str:
    """`` did you mean 'convmixer'?`` for a near miss among ``valid`` (a typo, a letter case), else ''."""
    valid = [str(v) for v in valid]
    lowered = {v.lower(): v for v in valid}
    close = difflib.get_close_matches(str(name).lower(), list(lowered), n=1, cutoff=0.75)
    return f" did you mean {lowered[close[0]]!r}?" if close else ""


def unknown_name(kind: str, name: str, valid) -> SpatialmixError:
    return SpatialmixError(
        f"unknown {kind} {name!r};{did_you_mean(name, valid)} choose one of: {', '.join(sorted(valid))}"
    )


def check_positive(**values) -> None:
    for name, value in values.items():
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not (value > 0 and math.isfinite(value))
        ):
            raise SpatialmixError(f"{name.replace('_', ' ')} must be a positive number, got {value}")
