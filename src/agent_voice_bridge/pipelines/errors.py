"""Configuration errors that point at the file, the line and the stage."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel


class ConfigError(Exception):
    """One or more problems in a pipeline file; ``str()`` gives one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def where(path: str, line: int | None, position: int | None = None, stage: str | None = None) -> str:
    """``file:line: stage N (name):`` — the prefix every config message starts with."""
    text = f"{path}:{line}" if line else path
    if position is not None:
        text += f": stage {position} ({stage})"
    return text


def unknown_name(name: str, known: Iterable[str], what: str, also: str = "") -> str:
    """``unknown stage 'ech0' (did you mean echo?); valid stages: …`` for every misspelt name.

    One wording for stage names, top-level keys and section keys, so a typo anywhere in the file
    gets the nearest valid spelling (difflib's ratio, as Python's own NameError hints do) and the
    full list to choose from. ``also``: what else is accepted, appended to the list.
    """
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    listed = ", ".join(names) + (f", {also}" if also else "")
    return f"unknown {what} {name!r}{hint}; valid {what}s: {listed}"


def model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section model a validation error's location points into (``("server", "tls")`` → TlsConfig;
    ``("lines", "support", "security")`` → LineSecurity: a mapping's key steps into its values' model)."""
    keys = iter(loc)
    for key in keys:
        field = model.model_fields.get(key) if isinstance(key, str) else None
        annotation = _bare(field.annotation) if field is not None else None
        union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
        options = [_bare(t) for t in typing.get_args(annotation)] if union else [annotation]
        mapping = next((t for t in options if typing.get_origin(t) is dict), None)
        if mapping is not None:  # the next key is the mapping's own (a line's name): its value is the model
            options = [_bare(typing.get_args(mapping)[1])]
            if next(keys, None) is None:
                return None
        models = [t for t in options if isinstance(t, type) and issubclass(t, BaseModel)]
        if not models:
            return None
        model = models[0]
    return model


def _bare(annotation: Any) -> Any:
    """``Annotated[X, ...]`` → X."""
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation


def unknown_key(model: type[BaseModel], err: Any) -> str | None:
    """The :func:`unknown_name` wording for a pydantic ``extra_forbidden`` error under ``model``, else None."""
    loc = tuple(err["loc"])
    if err["type"] != "extra_forbidden" or not loc or not isinstance(loc[-1], str):
        return None
    section = model_at(model, loc[:-1])
    return unknown_name(loc[-1], section.model_fields, "key") if section is not None else None
