"""The keyword arguments of a class named by import path: which it takes, and building them from YAML.

pipecat passes ``**kwargs`` up to base classes, so what a class accepts is the union of the
``__init__`` signatures up its MRO until one stops forwarding. And pipecat takes a service's
options as objects (``settings=AnthropicLLMService.Settings(model=...)``, a dataclass;
``params=...InputParams(...)``, a pydantic model), which a YAML file can only write as
mappings: a mapping given for such a parameter is built into its type.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import KeysView
from functools import cache
from typing import Any

from pydantic import BaseModel, ValidationError

from agent_voice_bridge.pipelines.errors import unknown_key

__all__ = ["format_validation", "init_keywords", "typed_kwargs"]


def _initialisers(cls: type) -> list[inspect.Signature]:
    """``__init__`` signatures up the MRO, as far as ``**kwargs`` carries keywords (pipecat passes them on)."""
    found = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        try:
            signature = inspect.signature(init, eval_str=True)
        except Exception:  # noqa: BLE001 (an annotation that does not evaluate: the names still count)
            signature = inspect.signature(init)
        found.append(signature)
        if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            break
    return found


@cache
def _keywords(cls: type) -> dict[str, Any]:
    """Keyword name → its annotation (from the first ``__init__`` up the MRO that declares it)."""
    names: dict[str, Any] = {}
    for signature in _initialisers(cls):
        for p in list(signature.parameters.values())[1:]:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                names.setdefault(p.name, p.annotation)
    return names


def init_keywords(cls: type) -> KeysView[str]:
    """Keyword arguments a class accepts, following ``**kwargs`` up the MRO (a view of the cached answer)."""
    return _keywords(cls).keys()


def _structured(annotation: Any) -> type | None:
    """The dataclass or pydantic model in ``annotation`` (``Settings | None`` → ``Settings``), if any."""
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    for option in options:
        if isinstance(option, type) and (dataclasses.is_dataclass(option) or issubclass(option, BaseModel)):
            return option
    return None


def format_validation(err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """Where and what, for every error; never the input value (it may be a secret). With the ``model`` that
    raised, a misspelt key gets the valid ones and the nearest (``unknown key 'rat' (did you mean rate?)``)."""
    parts = []
    for e in err.errors():
        loc = ".".join([prefix] * bool(prefix) + [str(p) for p in e["loc"]]) or "parameters"
        unknown = unknown_key(model, e) if model is not None else None
        parts.append(unknown if unknown is not None and loc == e["loc"][-1] else f"{loc}: {unknown or e['msg']}")
    return "; ".join(parts)


def typed_kwargs(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with each mapping given for a dataclass or pydantic-model parameter built into one.

    Raises ``TypeError`` naming the parameter. Called for every call, so no two calls share an
    options object (a service may change its settings mid-call).
    """
    kwargs = dict(params)
    keywords = _keywords(cls)
    for name, value in params.items():
        target = _structured(keywords.get(name)) if isinstance(value, dict) else None
        if target is None:
            continue
        if issubclass(target, BaseModel):
            try:
                kwargs[name] = target.model_validate(value)
            except ValidationError as exc:
                raise TypeError(format_validation(exc, prefix=name)) from None
        else:
            try:
                kwargs[name] = target(**value)
            except TypeError as exc:
                raise TypeError(f"{name}: {exc}") from None
    return kwargs
