"""Models of your own: how a factory or a module is called, recorded in ``config.json`` and rebuilt.

A *factory* is a callable returning an ``nn.Module``; it is called with the keyword arguments it
takes among ``in_chans``, ``num_classes`` and ``image_size``, under the run's seed, so the same
config rebuilds the same initial model. A *module* (an ``nn.Module`` instance) is trained as it is.
``config.json`` records where the model came from under ``model_source``: the factory's importable
reference (``mypkg.models:build``; none for a lambda, a local function, ``__main__`` or a module),
its class, and the names and shapes of its tensors, so that a different model given later is
refused before any weight is loaded.

A run folder may come from anyone: nothing in it is imported unless the caller says so
(``trust_code=True``, ``--trust-code``), and the reference is checked to be ``module:name`` first.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from spatialmix.engine.config import BUILT_IN_SIZE_FIELDS, USER_REFERENCE, check_reference, is_user_reference
from spatialmix.errors import SpatialmixError
from spatialmix.io import run_files, runs

FACTORY_ARGUMENTS = ("in_chans", "num_classes", "image_size")
SOURCE_FIELD = "model_source"
KINDS = ("factory", "module")
# A model of millions of tensors is not one anyone trains here: a larger list is a damaged file.
MAX_RECORDED_TENSORS = 100_000


@dataclass(frozen=True)
class UserModel:
    """A model of your own as it was given: a factory, or a module trained as it is."""

    source: nn.Module | Callable[..., nn.Module]

    @property
    def kind(self) -> str:
        return "module" if isinstance(self.source, nn.Module) else "factory"

    @property
    def reference(self) -> str | None:
        """``module:qualname`` that imports this very factory again; None for a module or a factory that
        cannot be imported (a lambda, a local function, one defined in ``__main__``)."""
        return None if self.kind == "module" else importable_reference(self.source)

    @property
    def name(self) -> str:
        """What ``TrainConfig.model`` holds: the reference, or ``module:Name`` of the class or function."""
        if self.reference is not None:
            return self.reference
        named = type(self.source) if self.kind == "module" else self.source
        module = getattr(named, "__module__", None) or "__main__"
        module = module if re.fullmatch(r"[A-Za-z_][\w.]*", module) else "__main__"
        word = re.sub(r"\W+", "_", getattr(named, "__name__", type(named).__name__)).strip("_") or "model"
        return f"{module}:{word}" if USER_REFERENCE.fullmatch(f"{module}:{word}") else f"__main__:{word}"

    def create(self, info: dict, fresh: bool = False) -> nn.Module:
        """The model for data described by ``info`` (``in_chans``, ``num_classes``, ``image_size``).

        A module is returned itself (``fresh``: a copy, so reopening a run never changes the module
        you hold); a factory is called with the arguments it accepts.
        """
        if self.kind == "module":
            model = copy.deepcopy(self.source) if fresh else self.source
        else:
            model = call_factory(self.source, info)
        shape = (info["in_chans"], info["image_size"], info["image_size"])
        check_takes_images(model, self.name, shape)
        if not hasattr(model, "spatialmix_input_shape"):  # what the token-mixer probe feeds the model
            model.spatialmix_input_shape = shape
        return model


def as_user_model(model) -> UserModel:
    """``model`` (an ``nn.Module`` or a callable returning one) as a `UserModel`."""
    if isinstance(model, UserModel):
        return model
    if not isinstance(model, nn.Module) and not callable(model):
        raise SpatialmixError(
            f"model must be an nn.Module or a function returning one, got {type(model).__name__}"
        )
    return UserModel(model)


def call_factory(factory: Callable[..., nn.Module], info: dict) -> nn.Module:
    """``factory(**the arguments among in_chans, num_classes, image_size that it accepts)``."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: call it without arguments
        parameters = []
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    model = factory(**{k: info[k] for k in FACTORY_ARGUMENTS if takes_any or k in names})
    if not isinstance(model, nn.Module):
        raise SpatialmixError(
            f"the model factory {describe(factory)} returned {type(model).__name__}, not an nn.Module; "
            f"it must return the model"
        )
    return model


@torch.no_grad()
def check_takes_images(model: nn.Module, name: str, shape: tuple[int, int, int]) -> None:
    """One image through the model now (in eval mode: no statistics change), so a model that cannot take
    the data's images is a clear error here rather than a traceback in the first step."""
    was_training = model.training
    device = next(model.parameters(), torch.empty(0)).device
    model.eval()
    try:
        model(torch.zeros(1, *shape, device=device))
    except RuntimeError as err:
        raise SpatialmixError(
            f"the model {name} cannot take {shape[0]} x {shape[1]} x {shape[2]} images "
            f"({str(err).strip().splitlines()[0][:120]}); build it for the data (its factory gets in_chans, "
            f"num_classes and image_size)"
        ) from None
    finally:
        model.train(was_training)


def describe(obj) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__name__


def importable_reference(obj) -> str | None:
    """``module:qualname`` of ``obj`` when importing it gives ``obj`` back (checked in the modules
    already loaded: nothing is imported here)."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or module == "__main__":
        return None
    reference = f"{module}:{qualname}"
    if not USER_REFERENCE.fullmatch(reference):  # a lambda, a function defined inside another
        return None
    target = sys.modules.get(module)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return reference if target is obj else None


def import_reference(reference: str) -> Callable[..., nn.Module]:
    """Import ``module:qualname`` (checked to be one first) from the current folder or ``sys.path``."""
    module_name, _, qualname = check_reference(reference).partition(":")
    if os.getcwd() not in sys.path:  # as `python -m` does: `--model mymodels:build` finds ./mymodels.py
        sys.path.insert(0, os.getcwd())
    try:
        target = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is None or not (module_name == err.name or module_name.startswith(err.name + ".")):
            raise  # the module was found; something it imports is missing: the user's traceback
        raise SpatialmixError(
            f"cannot import {module_name} for --model {reference} (no module named {err.name!r}); run from "
            f"the folder that holds it, or install it (pip install -e .)"
        ) from None
    for part in qualname.split("."):
        if not hasattr(target, part):
            raise SpatialmixError(f"{module_name} has no {qualname!r} for --model {reference}")
        target = getattr(target, part)
    if not callable(target):
        raise SpatialmixError(f"--model {reference} names a {type(target).__name__}, not a model factory")
    return target


# --------------------------------------------------------------------------- what config.json records


def tensor_shapes(model: nn.Module) -> dict[str, list[int]]:
    """The name and shape of every tensor of ``model``'s state dict: what its saved weights must fit."""
    return {name: list(t.shape) for name, t in model.state_dict().items()}


def source_record(user: UserModel, model: nn.Module) -> dict:
    """``config.json``'s ``model_source``: where the model came from and the tensors it has."""
    cls = type(model)
    return {
        "kind": user.kind,
        "reference": user.reference,
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "tensors": tensor_shapes(model),
        "unused_fields": list(BUILT_IN_SIZE_FIELDS),  # the built-in models' sizes: not used by this one
    }


def saved_source(run: runs.Run, record: dict) -> dict | None:
    """The validated ``model_source`` of a run trained with a model of its own; None for a built-in model."""
    path = run.file(runs.CONFIG)
    source = record.get(SOURCE_FIELD)
    if not is_user_reference(record["train"].get("model")):
        if source is not None:
            raise run_files.bad_field(path, SOURCE_FIELD, "absent for a built-in model", source)
        return None
    if not isinstance(source, dict):
        raise run_files.bad_field(path, SOURCE_FIELD, "the record of the model's source", source)
    run_files.need_field(path, source, "kind", lambda v: v in KINDS, "factory or module")
    run_files.need_field(
        path,
        source,
        "reference",
        lambda v: v is None or (isinstance(v, str) and USER_REFERENCE.fullmatch(v)),
        "null or module:function",
    )
    is_class_name = lambda v: isinstance(v, str) and len(v) <= 300
    run_files.need_field(path, source, "class", is_class_name, "a class name")
    run_files.need_field(
        path,
        source,
        "tensors",
        lambda v: (
            isinstance(v, dict)
            and len(v) <= MAX_RECORDED_TENSORS
            and all(
                isinstance(s, list) and all(run_files.is_int(d) and d >= 0 for d in s) for s in v.values()
            )
        ),
        "an object of tensor names and shapes",
    )
    return source


def check_fits(model: nn.Module, source: dict, run_path: Path) -> None:
    """Refuse a model whose tensors are not the ones the run was trained with (before loading weights)."""
    ours, saved = tensor_shapes(model), source["tensors"]
    if ours == saved:
        return
    missing = [n for n in saved if n not in ours]
    extra = [n for n in ours if n not in saved]
    if missing or extra:
        what = f"no tensor {missing[0]!r}" if missing else f"a tensor {extra[0]!r} the run does not have"
    else:
        name = next(n for n in saved if saved[n] != ours[n])
        what = f"{name!r} is {ours[name]} here, {saved[name]} in the run"
    raise SpatialmixError(
        f"the model given for {run_path} is not the one it was trained with ({what}); pass the "
        f"factory or module it was trained with ({source['reference'] or source['class']})"
    )


# --------------------------------------------------------------------------- trusting code


@dataclass(frozen=True)
class _Given:
    model: object = None
    trust_code: bool = False


_GIVEN: contextvars.ContextVar[_Given | None] = contextvars.ContextVar("spatialmix_user_model", default=None)


@contextlib.contextmanager
def user_code(model=None, trust_code: bool = False):
    """While the block runs, runs trained with a model of their own are rebuilt with ``model`` (a factory
    or module), or, with ``trust_code``, by importing the reference their ``config.json`` records.
    (How a report or an analysis deep below the call that was given them gets them.)"""
    token = _GIVEN.set(_Given(model, trust_code))
    try:
        yield
    finally:
        _GIVEN.reset(token)


def untrusted_message(where, reference: str) -> str:
    return (
        f"{where} was trained with user code {reference}; pass --trust-code to import and run it, only "
        f"for runs you trust (in Python: model=YOUR_FACTORY, or trust_code=True)"
    )


def rebuilder(run: runs.Run, source: dict, model=None, trust_code: bool = False) -> UserModel:
    """What rebuilds the model of ``run``: ``model`` if given (here or by `user_code`), else the
    recorded reference imported when trusted; refused otherwise, and nothing is imported."""
    given = _GIVEN.get() or _Given()
    model = model if model is not None else given.model
    if model is not None:
        return as_user_model(model)
    if source["reference"] is None:
        raise SpatialmixError(
            f"{run.path} was trained with a model passed from Python ({source['class']}), which no "
            f"reference rebuilds; pass it again (model=... in Python, --model module:function --trust-code "
            f"on the command line)"
        )
    if not (trust_code or given.trust_code):
        raise SpatialmixError(untrusted_message(run.path, source["reference"]))
    return UserModel(import_reference(source["reference"]))


def check_rebuildable(run_dir: Path) -> None:
    """Refuse now (before anything is computed) a run whose model of its own nothing given can rebuild."""
    run = runs.Run(run_dir)
    source = saved_source(run, run.record())
    if source is not None:
        rebuilder(run, source)


def for_training(config, run_dir: Path, model=None, trust_code: bool = False) -> UserModel | None:
    """The model of your own that trains ``config`` in ``run_dir``; None for a built-in model."""
    if model is not None:
        if not is_user_reference(config.model):
            raise SpatialmixError(
                f"a model was given, but the config names the built-in model {config.model!r}; pass the "
                f"model as train's first argument, which names it in the config"
            )
        return as_user_model(model)
    if not is_user_reference(config.model):
        return None
    run = runs.Run(run_dir)
    if run.file(runs.CONFIG).is_file():  # continuing a run: what it recorded decides
        source = saved_source(run, run.record())
        if source is not None:
            return rebuilder(run, source, None, trust_code)
    if not trust_code:
        raise SpatialmixError(
            f"the config's model {config.model} is code of your own; pass the factory itself (model=...), "
            f"or trust_code=True (--trust-code) to import {config.model}"
        )
    return UserModel(import_reference(config.model))
