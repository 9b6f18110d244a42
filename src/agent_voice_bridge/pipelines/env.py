"""``${VAR}`` and ``${VAR:-default}`` in YAML values, expanded from the environment.

Expansion happens on parsed scalars, not on the file's text, so a value holding
``:`` or ``#`` cannot change the YAML's structure, and each use keeps its line number
for error messages. Values are never logged: they are often API keys.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class MissingVariable:
    """A ``${VAR}`` with no default whose variable is not set."""

    name: str
    line: int
    path: tuple[str | int, ...]


def expand(text: str, env: Mapping[str, str] | None = None) -> tuple[str, list[str]]:
    """Return ``text`` with variables substituted, and the names that were missing."""
    env = os.environ if env is None else env
    missing: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                missing.append(name)
                return ""
            return default
        return value

    return _VAR.sub(substitute, text), missing


def has_variables(text: str) -> bool:
    return bool(_VAR.search(text))
