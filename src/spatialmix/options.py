"""Command-line options generated from dataclasses, so ``--help`` and the code cannot drift apart.

Every option of every command is a field of a settings dataclass (``TrainConfig``,
``AttackSettings``, ``UnshuffleSettings``, ...). `add_options` turns the fields into argparse
options and `given_values` reads back the ones the user gave. What a field's option looks
like comes from its type and its ``metadata``:

=================  ==========================================================================
type / metadata    option
=================  ==========================================================================
``bool``           ``--x`` / ``--no-x``
``int``, ``float`` converted by argparse (``invalid int value: 'two'``); ``str`` as given
``tuple[int, ...]`` space-separated values (``--seeds 0 1 2``)
``tuple[str, ...]`` one comma-separated value (``--modes full,chans``), also ``tuple[float, ...]``
``help``           the help text (required); ``(default: X)`` is added from the field's default
``choices``        the only values argparse accepts (names the library validates itself with a
                   clearer message are listed in ``help`` instead)
``parse``          a function applied after parsing to the text given (raising
                   `SpatialmixError`: one line, exit code 2)
``minimum``        an ``int`` that argparse refuses below this value
``flags``          the option strings, when not ``--field-name``
``positional``     an argument without a flag (with ``nargs``)
``metavar``, ``nargs``, ``action``, ``default_help``   passed on / shown as they are
=================  ==========================================================================

Imports nothing heavy: ``spatialmix --help`` builds every command's options without torch.

Written here rather than with tyro, jsonargparse or simple-parsing: those build the dataclass with
every default filled in, while `given_values` returns only what the user typed, so a preset's or a
resumed run's own values hold for the rest; and every refusal is one line with a did-you-mean.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing

from spatialmix.errors import SpatialmixError, did_you_mean


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage dump) with exit code 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # `--mode` must never be read as `--model`
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:  # argparse reports a subcommand's unknown option from the top: suggest from its options
            options = self._options_of(namespace)
            hint = did_you_mean(extras[0].split("=")[0], options) if extras[0].startswith("-") else ""
            self.error(f"unrecognized arguments: {' '.join(extras)}" + (";" + hint if hint else ""))
        return namespace

    def _options_of(self, namespace) -> set[str]:
        """The options of the (sub)command that was chosen."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(namespace, action.dest, None))
                if chosen is not None:
                    return set(chosen._option_string_actions)
        return set(self._option_string_actions)

    def error(self, message):
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:  # a mistyped command or choice
            hint = did_you_mean(choice.group(1), re.findall(r"'([^']*)'", choice.group(2)))
            message += ";" + hint if hint else ""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def option_words(values: dict) -> list[str]:
    """The command-line words that give ``values`` (field name -> value) back: ``--x`` / ``--no-x`` for
    a boolean, ``--x VALUE`` otherwise (a list: space-separated if whole numbers, else comma-separated);
    None is left out."""
    words: list[str] = []
    for name, value in values.items():
        if isinstance(value, bool):
            words.append(flag_of(name) if value else "--no-" + flag_of(name)[2:])
        elif isinstance(value, (list, tuple)):
            numbers = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            words += (
                [flag_of(name), *map(str, value)] if numbers else [flag_of(name), ",".join(map(str, value))]
            )
        elif value is not None:
            words += [flag_of(name), str(value)]
    return words


def option_strings(field: dataclasses.Field) -> tuple[str, ...]:
    """How the user writes a field's option: ``("--batch-size",)``, or its ``flags`` metadata."""
    if field.metadata.get("positional"):
        return (field.name,)
    return tuple(field.metadata.get("flags", (flag_of(field.name),)))


def field_kind(cls, field: dataclasses.Field) -> tuple[type, type | None]:
    """(base type, element type): ``int | None`` -> (int, None); ``tuple[int, ...] | None`` -> (tuple,
    int)."""
    kind = typing.get_type_hints(cls)[field.name]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None: the X
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    origin = typing.get_origin(kind)
    if origin in (tuple, list):
        elements = [a for a in typing.get_args(kind) if a is not Ellipsis]
        return origin, elements[0] if elements else str
    return origin or kind, None


def field_default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def help_text(cls, field: dataclasses.Field) -> str:
    """The field's help with its default, as ``--help`` shows it."""
    text = field.metadata["help"]
    default = field.metadata.get("default_help", field_default(field))
    if "(default" in text or default is None or field.metadata.get("positional"):
        return text
    if isinstance(default, bool):
        default = "on" if default else "off"
    elif isinstance(default, (tuple, list)):
        default = (" " if field_kind(cls, field)[1] is int else ",").join(map(str, default))
    return f"{text} (default: {default})"


def _at_least(flag: str, minimum: int):
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"{flag} must be a whole number of at least {minimum}, got {text!r}"
            )
        return value

    return parse


def _value_kwargs(cls, field: dataclasses.Field, flag: str) -> dict:
    """How argparse reads the field's value: its ``action``, ``type`` and ``nargs``."""
    kind, element = field_kind(cls, field)
    meta = field.metadata
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if kind in (tuple, list) and element is int and "parse" not in meta:
        return {"nargs": meta.get("nargs", "+"), "type": int}
    if "parse" in meta or kind in (tuple, list):
        return {"type": str}  # converted by given_values, with the library's messages
    if "minimum" in meta:
        return {"type": _at_least(flag, meta["minimum"])}
    return {"type": kind} if kind in (int, float, str) else {}


def help_groups(cls) -> dict[str, str]:
    """``{first field: group title}``: the option groups of ``cls``'s ``--help``, in field order. A
    class names its groups by the field each starts at (``HELP_GROUPS``); otherwise its options are
    one group named after the class (``AttackSettings``: "attack settings")."""
    groups = getattr(cls, "HELP_GROUPS", None)
    if groups:
        return {field: title for title, field in groups.items()}
    title = re.sub(r"(?<!^)(?=[A-Z])", " ", cls.__name__).lower()
    return {dataclasses.fields(cls)[0].name: title}


def add_options(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One argparse option per field of the dataclass ``cls`` (but those in ``skip``), in the option
    groups of `help_groups` (positional arguments stay the command's own)."""
    starts = help_groups(cls)
    group = parser
    for field in dataclasses.fields(cls):
        if field.name in starts:
            group = parser.add_argument_group(starts[field.name])
        if field.name in skip:
            continue
        if "help" not in field.metadata:
            raise TypeError(f"{cls.__name__}.{field.name} has no help text in its metadata")
        meta = field.metadata
        flags = option_strings(field)
        kwargs = {key: meta[key] for key in ("metavar", "nargs", "action", "choices") if key in meta}
        kwargs.update(_value_kwargs(cls, field, flags[-1]), help=help_text(cls, field).replace("%", "%%"))
        if not meta.get("positional"):
            kwargs.update(dest=field.name, default=None)  # None: not given, the dataclass's default applies
            if not {"metavar", "choices", "action"} & set(kwargs):
                kwargs["metavar"] = field.name.upper()
        (parser if meta.get("positional") else group).add_argument(*flags, **kwargs)


def given_values(cls, args: argparse.Namespace, skip: tuple[str, ...] = ()) -> dict:
    """The fields of ``cls`` given on the command line (positional ones always), converted to their types.

    Raises `SpatialmixError` for a value the field's ``parse`` function refuses.
    """
    values = {}
    for field in dataclasses.fields(cls):
        if field.name in skip or getattr(args, field.name, None) is None:
            continue
        value = getattr(args, field.name)
        kind, element = field_kind(cls, field)
        if "parse" in field.metadata:
            value = field.metadata["parse"](value)
        elif kind in (tuple, list):
            value = (
                tuple(value)
                if isinstance(value, list)
                else split_list(value, element, option_strings(field)[-1])
            )
        values[field.name] = value
    return values


def split_list(text: str, element: type, flag: str) -> tuple:
    """``"full,chans"`` -> ("full", "chans"); numbers converted to ``element``."""
    parts = tuple(p.strip() for p in str(text).split(",") if p.strip())
    if element is str:
        return parts
    try:
        return tuple(element(p) for p in parts)
    except ValueError:
        raise SpatialmixError(
            f"{flag} takes comma-separated {element.__name__} values, got {text!r}"
        ) from None


def int_or_all(flag: str):
    """A ``parse`` function for a count that may be ``all`` (None)."""

    def parse(text: str) -> int | None:
        if str(text).strip().lower() == "all":
            return None
        try:
            return int(text)
        except ValueError:
            raise SpatialmixError(f"{flag} must be a whole number or 'all', got {text!r}") from None

    return parse


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text) -> float:
    """``"90s"``, ``"30m"``, ``"1h30m"``, ``"2h"`` or a number of seconds, as seconds (> 0)."""
    raw = str(text).strip().lower()
    seconds, number = 0.0, ""
    try:
        for char in raw:
            if char.isdigit() or char == ".":
                number += char
            elif char in DURATION_UNITS and number:
                seconds, number = seconds + float(number) * DURATION_UNITS[char], ""
            else:
                raise ValueError(char)
        seconds += float(number) if number else 0.0
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise SpatialmixError(
            f"a duration must be like 90s, 30m, 1h30m or a number of seconds (> 0), got {text!r}"
        )
    return seconds


def option(default=None, help: str = "", **metadata):
    """A dataclass field with its command-line help: ``lr: float = option(0.01, "peak learning rate")``."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"help": help, **metadata}
        )
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def option_like(cls, name: str, default=None, **changes):
    """A field with the same help (and choices) as field ``name`` of dataclass ``cls``, so they cannot
    differ."""
    metadata = next(f for f in dataclasses.fields(cls) if f.name == name).metadata
    return option(default, **{**metadata, **changes})
