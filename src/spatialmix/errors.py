"""Errors a user can fix. The command line prints them as one line and exits with code 2."""

import contextlib
import contextvars
import difflib
import math
from collections.abc import Mapping


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


# --------------------------------------------------------------------------- naming what to change

# The command line's flags where they are not ``--`` + the parameter's name with dashes (the command
# line sets them for the commands it runs: see ``command_line_names``); None: a Python caller.
_FLAGS: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("flags", default=None)


@contextlib.contextmanager
def command_line_names(flags: Mapping[str, str]):
    """Within the block, messages name settings as the command line's flags (``--resume``, ``--out``)
    rather than as Python parameters (``resume=True``, ``run_dir``); ``flags`` maps a parameter to its
    flag where that is not ``--`` + its name with dashes (``{"run_dir": "--out"}``)."""
    token = _FLAGS.set(dict(flags))
    try:
        yield
    finally:
        _FLAGS.reset(token)


def setting(name: str, value: object = None) -> str:
    """A setting as the caller passes it: ``resume=True`` / ``lr=0.001`` / ``run_dir`` from Python,
    ``--resume`` / ``--lr 0.001`` / ``--out`` on the command line (``value`` None: the setting itself)."""
    flags = _FLAGS.get()
    if flags is None:
        return name if value is None else f"{name}={value!r}"
    flag = flags.get(name, "--" + name.replace("_", "-"))
    if value is None or value is True:
        return flag
    if value is False:
        return "--no-" + flag.removeprefix("--")
    return f"{flag} {value}"


def resume_command(run_dir, **changes) -> str:
    """How to continue the run in ``run_dir`` (with ``changes`` to its resumable settings), as the caller
    does it: `` `sm.train(sm.resume_config('RUN'), 'RUN', resume=True)` `` from Python,
    `` `spatialmix train --resume --out RUN` `` on the command line."""
    if _FLAGS.get() is None:
        extra = "".join(f", {name}={value!r}" for name, value in changes.items())
        return f"`sm.train(sm.resume_config({str(run_dir)!r}), {str(run_dir)!r}, resume=True{extra})`"
    extra = "".join(f" {setting(name, value)}" for name, value in changes.items())
    return f"`spatialmix train {setting('resume', True)} {setting('run_dir')} {run_dir}{extra}`"
