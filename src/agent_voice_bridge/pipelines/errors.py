"""Configuration errors that point at the file, the line and the stage."""

from __future__ import annotations


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
