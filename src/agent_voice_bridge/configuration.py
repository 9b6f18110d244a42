"""Which configuration a server runs: ``-c FILE``, else ./pipeline.yaml, else the built-in chain for the AI key set.

Shared by the CLI (``serve``, ``check``, ``calls``, ``dial``) and by each worker process
of ``serve --workers N``, which loads the same file itself; kept out of ``cli.py`` so the
server never imports the command line, and out of ``pipelines/`` since a server's file
is more than a pipeline.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from agent_voice_bridge.pipelines.config import BridgeConfig
from agent_voice_bridge.pipelines.errors import ConfigError, where
from agent_voice_bridge.pipelines.loader import LoadedConfig, load_default, load_file

DEFAULT_CHAINS = (("GEMINI_API_KEY", "gemini.yaml"), ("OPENAI_API_KEY", "openai.yaml"),
                  ("ANTHROPIC_API_KEY", "claude.yaml"))


def default_chain_name() -> str:
    """The built-in chain for whichever AI key is in the environment, else the offline echo line."""
    return next((name for key, name in DEFAULT_CHAINS if os.environ.get(key)), "echo.yaml")


def load_config(path: str | None) -> LoadedConfig:
    """``-c FILE``, else ./pipeline.yaml, else the built-in chain for the AI key that is set."""
    if path:
        return load_file(path)
    if Path("pipeline.yaml").exists():
        return load_file("pipeline.yaml")
    return load_default(default_chain_name())


@dataclass(frozen=True)
class LineFile:
    """One line of a server: its name, the numbers that reach it, and its pipeline file, loaded."""

    name: str
    numbers: tuple[str, ...]
    default: bool
    """Also takes every number no other line lists."""
    loaded: LoadedConfig


@dataclass(frozen=True)
class ServerSetup:
    """What a server runs: the file given (a server file with ``lines:``, or one pipeline file) and its lines.

    A single pipeline file is the one-line case: one line, ``default``, taking every number.
    """

    loaded: LoadedConfig
    lines: tuple[LineFile, ...]
    problems: tuple[str, ...] = ()
    """What kept some line files from loading (only from ``load_setup(..., keep_going=True)``)."""

    @property
    def config(self) -> BridgeConfig:
        """The server-wide sections (server, twilio, security, storage, outbound) come from the file given."""
        return self.loaded.config

    @property
    def path(self) -> str:
        return self.loaded.path

    @property
    def has_lines(self) -> bool:
        return self.loaded.config.lines is not None

    def files(self) -> list[str]:
        """The files this setup was read from (for watching): the file given and every line's pipeline file."""
        paths = [self.path] + [line.loaded.path for line in self.lines]
        return [p for p in dict.fromkeys(paths) if not p.startswith("<")]

    def digest(self) -> str:
        """A short fingerprint of everything loaded: workers that loaded the same files report the same one."""
        parts = [self.loaded.config.model_dump(mode="json", exclude={"lines"}),
                 [[line.name, line.numbers, line.default, line.loaded.path, line.loaded.config.pipeline,
                   line.loaded.stage_lines] for line in self.lines]]
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_setup(path: str | None, keep_going: bool = False) -> ServerSetup:
    """:func:`load_config`, and with ``lines:`` every pipeline file it names; raises ConfigError with every
    problem of every file (each names its own file and line). ``keep_going``: return the lines that loaded,
    with the problems of the rest in ``problems``, so that checking their chains can report those too."""
    loaded = load_config(path)
    mapping = loaded.config.lines
    if mapping is None:
        return ServerSetup(loaded, (LineFile("default", (), True, loaded),))
    base = Path(loaded.path).parent
    by_file: dict[Path, list[str]] = {}
    for key, file in mapping.items():
        by_file.setdefault(base / file, []).append(key)
    problems: list[str] = []
    lines: list[LineFile] = []
    names: dict[str, Path] = {}
    for file, keys in by_file.items():
        name = file.stem
        at = where(loaded.path, _key_line(loaded, keys[0]))
        if name in names:
            problems.append(f"{at}: lines: {file} and {names[name]} would both be line {name!r}: "
                            "rename one file (a line is named after its pipeline file)")
            continue
        names[name] = file
        try:
            line_loaded = load_file(file)
        except ConfigError as exc:
            problems.extend(f"{at}: lines: {p}" if not p.startswith(f"{file}:") or " cannot read" in p else p
                            for p in exc.problems)
            continue
        if line_loaded.config.lines is not None:
            problems.append(f"{at}: lines: {file} is a server file itself; a line names a pipeline file")
            continue
        lines.append(LineFile(name, tuple(k for k in keys if k != "default"), "default" in keys, line_loaded))
    if problems and not keep_going:
        raise ConfigError(problems)
    return ServerSetup(loaded, tuple(lines), tuple(problems))


def _key_line(loaded: LoadedConfig, key: str) -> int | None:
    """The line of ``lines: {key: …}`` in the server file, for messages about that entry."""
    return loaded.lines_at.get(key)
