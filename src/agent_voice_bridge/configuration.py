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
from dataclasses import dataclass, field, fields
from pathlib import Path

from agent_voice_bridge.pipelines.config import BridgeConfig, LineEntry, LineSecurity, LineStorage
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
class LineSpec:
    """One line as the server file writes it, before its pipeline file is read."""

    name: str
    numbers: tuple[str, ...]
    default: bool
    """Also takes every number no other line lists."""
    file: Path
    security: LineSecurity | None = None
    """What the line sets of ``security:`` for its own calls (None: the server's, all of it)."""
    storage: LineStorage | None = None
    at: str = ""
    """``file:line`` of its first entry in the server file, for messages about it."""


@dataclass(frozen=True)
class LineFile(LineSpec):
    """A line with its pipeline file loaded."""

    loaded: LoadedConfig = field(kw_only=True)

    def overrides(self) -> list:
        """The line's own ``security:``/``storage:`` keys, as written (for the digest)."""
        return _written(self.security, self.storage)

    def own_keys(self) -> list[str]:
        """The keys the line sets itself (``security.allowlist``), for ``check``; the values stay unprinted."""
        return [f"{section}.{key}" for section, part in (("security", self.security), ("storage", self.storage))
                if part is not None for key in part.model_fields if key in part.model_fields_set]


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
                   line.loaded.stage_lines, line.overrides()] for line in self.lines]]
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def line_specs(loaded: LoadedConfig) -> tuple[list[LineSpec], list[str]]:
    """The lines a server file's ``lines:`` declares, and what is wrong with them (each problem names the
    file and line of its entry).

    A number (or ``default``) mapped to a file joins the line named after that file: numbers sharing a file
    share a line, so they must not set different ``security``/``storage``. A name mapped to
    ``{numbers, pipeline, ...}`` is a line of that name. No number may reach two lines.
    """
    mapping = loaded.config.lines or {}
    base = Path(loaded.path).parent
    problems: list[str] = []
    by_file: dict[Path, list[tuple[str, LineEntry]]] = {}
    named: list[tuple[str, LineEntry]] = []
    for key, entry in mapping.items():
        if key == "default" or key.startswith("+"):
            if entry.numbers:
                problems.append(f"{_at(loaded, key)}: lines: {key}: numbers: only a named line lists numbers "
                                f"(support: {{numbers: [...], pipeline: ...}}); this entry is reached by its key")
                continue
            by_file.setdefault(base / entry.pipeline, []).append((key, entry))
        else:
            named.append((key, entry))
    specs: list[LineSpec] = []
    for file, entries in by_file.items():
        (first, entry), *others = entries
        own = _written(entry.security, entry.storage)
        clash = next((key for key, other in others if _written(other.security, other.storage) != own), None)
        if clash is not None:
            problems.append(f"{_at(loaded, clash)}: lines: {clash} and {first} share {file} (one line, "
                            f"{file.stem!r}) but set different security/storage: give it one entry with a name, "
                            f"as in {file.stem}: {{numbers: [...], pipeline: ..., security: ...}}")
            continue
        keys = [key for key, _ in entries]
        specs.append(LineSpec(file.stem, tuple(k for k in keys if k != "default"), "default" in keys, file,
                              entry.security, entry.storage, _at(loaded, first)))
    specs += [LineSpec(key, tuple(entry.numbers), False, base / entry.pipeline, entry.security, entry.storage,
                       _at(loaded, key)) for key, entry in named]
    kept: list[LineSpec] = []
    names: dict[str, LineSpec] = {}
    reached: dict[str, LineSpec] = {}
    for spec in specs:
        if spec.name in names:
            problems.append(f"{spec.at}: lines: {spec.file} and {names[spec.name].file} would both be line "
                            f"{spec.name!r}: rename one (a line is named after its pipeline file, or its key)")
            continue
        taken = [n for n in spec.numbers if n in reached]
        if taken:
            problems.append(f"{spec.at}: lines: {', '.join(taken)} already reaches line "
                            f"{reached[taken[0]].name!r}: a number reaches one line")
            continue
        names[spec.name] = spec
        reached.update(dict.fromkeys(spec.numbers, spec))
        kept.append(spec)
    return kept, problems


def load_setup(path: str | None, keep_going: bool = False) -> ServerSetup:
    """:func:`load_config`, and with ``lines:`` every pipeline file it names; raises ConfigError with every
    problem of every file (each names its own file and line). ``keep_going``: return the lines that loaded,
    with the problems of the rest in ``problems``, so that checking their chains can report those too."""
    loaded = load_config(path)
    if loaded.config.lines is None:
        return ServerSetup(loaded, (LineFile("default", (), True, Path(loaded.path), loaded=loaded),))
    specs, problems = line_specs(loaded)
    lines: list[LineFile] = []
    for spec in specs:
        try:
            line_loaded = load_file(spec.file)
        except ConfigError as exc:
            problems.extend(f"{spec.at}: lines: {p}" if not p.startswith(f"{spec.file}:") or " cannot read" in p
                            else p for p in exc.problems)
            continue
        if line_loaded.config.lines is not None:
            problems.append(f"{spec.at}: lines: {spec.file} is a server file itself; a line names a pipeline file")
            continue
        lines.append(LineFile(**{f.name: getattr(spec, f.name) for f in fields(spec)}, loaded=line_loaded))
    if problems and not keep_going:
        raise ConfigError(problems)
    return ServerSetup(loaded, tuple(lines), tuple(problems))


def _written(*sections: LineSecurity | LineStorage | None) -> list:
    """Sections as the file wrote them (the keys it set), to compare and fingerprint."""
    return [None if part is None else part.model_dump(mode="json", exclude_unset=True) for part in sections]


def _at(loaded: LoadedConfig, key: str) -> str:
    """``file:line`` of ``lines: {key: …}`` in the server file, for messages about that entry."""
    return where(loaded.path, loaded.lines_at.get(key))
