"""Configuration errors that point at the file, the line and the stage."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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
