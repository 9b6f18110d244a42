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
    """A ``${VAR}`` with no default whose variable is not set, or set to ``""``.

    An empty value counts as missing: ``TWILIO_AUTH_TOKEN=`` in an env file is a
    mistake, never a way to turn checks off (``${VAR:-}`` says "may be empty").
    """

    name: str
    line: int
    path: tuple[str | int, ...]
    empty: bool = False


def expand(text: str, env: Mapping[str, str] | None = None) -> tuple[str, list[tuple[str, bool]]]:
    """Return ``text`` with variables substituted, and the (name, set-but-empty) of those missing."""
    env = os.environ if env is None else env
    missing: list[tuple[str, bool]] = []

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if not value:
            if default is None:
                missing.append((name, value == ""))
                return ""
            return default
        return value

    return _VAR.sub(substitute, text), missing


_TOKEN = re.compile(r"VBENV(\d+)X")


def shield(text: str) -> tuple[str, list[str]]:
    """Replace each ``${...}`` with a plain token before parsing.

    ``{`` is structure inside a YAML flow mapping, so ``{port: ${PORT:-8082}}`` would
    not parse; the token is a plain word on the same line, so line numbers hold.
    """
    originals: list[str] = []

    def token(match: re.Match[str]) -> str:
        originals.append(match.group(0))
        return f"VBENV{len(originals) - 1}X"

    return _VAR.sub(token, text), originals


def is_shielded(value: str) -> bool:
    return bool(_TOKEN.search(value))


def unshield(value: str, originals: list[str]) -> str:
    return _TOKEN.sub(lambda m: originals[int(m.group(1))], value)
