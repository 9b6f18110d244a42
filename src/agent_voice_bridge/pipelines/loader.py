"""Read a pipeline file: YAML → expanded values → :class:`BridgeConfig`, keeping line numbers.

PyYAML's node tree is kept next to the data so each stage of ``pipeline:`` knows its
line, and each ``${VAR}`` is expanded where it stands (see :mod:`.env`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from agent_voice_bridge.pipelines import env as envvars
from agent_voice_bridge.pipelines.config import BridgeConfig
from agent_voice_bridge.pipelines.errors import ConfigError, unknown_key, where
from agent_voice_bridge.security.mode import mode_problems

DEFAULT_CHAIN = [
    "twilio.input",
    "mulaw.decode",
    {"resample": {"rate": 16000}},
    {"vad.interrupter": {"start_secs": 0.2, "stop_secs": 0.6}},
    "@ai",
    {"resample": {"rate": 8000}},
    "mulaw.encode",
    "twilio.output",
]
"""The chain the seed's ``ai:`` shape expands to; ``@ai`` is replaced by the provider's stage."""

_STR_TAG = "tag:yaml.org,2002:str"

SEED_STAGES = {"gemini": "gemini.live", "openai": "openai.realtime", "echo": "echo"}


@dataclass
class LoadedConfig:
    """A parsed file with where each stage came from."""

    config: BridgeConfig
    path: str
    stage_lines: list[int | None] = field(default_factory=list)
    lines_at: dict[str, int] = field(default_factory=dict)
    """A server file's ``lines:`` entries (E.164 or ``default``) → the line each is written on."""


def load_file(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> LoadedConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror}"]) from exc
    return load_text(text, str(p), env)


def load_default(name: str = "echo.yaml", env: Mapping[str, str] | None = None) -> LoadedConfig:
    """One of the chains embedded in the package (used when no file is given)."""
    text = resources.files("agent_voice_bridge.defaults").joinpath(name).read_text(encoding="utf-8")
    return load_text(text, f"<built-in {name}>", env)


def load_text(text: str, path: str, env: Mapping[str, str] | None = None) -> LoadedConfig:
    text, originals = envvars.shield(text)
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as exc:
        raise ConfigError([_syntax_error(path, exc)]) from exc
    finally:
        loader.dispose()
    if root is None:
        raise ConfigError([f"{path}: the file is empty"])
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError([f"{where(path, root.start_mark.line + 1)}: the top level must be a mapping"])

    missing = _expand_node(root, (), loader, env, originals)
    data: Any = yaml.SafeLoader("").construct_document(root)
    stage_lines = _pipeline_lines(root)

    if isinstance(data, dict) and "ai" in data and not data.get("pipeline"):
        provider = (data.get("ai") or {}).get("provider", "gemini")
        missing = [m for m in missing if not (m.path[:1] == ("ai",) and len(m.path) > 1
                                              and m.path[1] in SEED_STAGES and m.path[1] != provider)]
    if missing:
        raise ConfigError([
            f"{where(path, m.line)}: environment variable {m.name} is {'empty' if m.empty else 'not set'} "
            f"(used at {_dotted(m.path)}); "
            f"set it or write ${{{m.name}:-default}}"
            for m in missing
        ])

    unquoted = _unquoted_numbers(root)
    if unquoted:
        raise ConfigError([f"{where(path, line)}: lines: {key}: quote the number, as in \"{key}\": unquoted, "
                           "YAML reads it as an integer" for key, line in unquoted])
    try:
        config = BridgeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_validation_line(path, root, err) for err in exc.errors()]) from None

    problems = mode_problems(config)
    if problems:
        raise ConfigError([f"{where(path, _line_of(root, p.location))}: {_dotted(p.location)}: {p.message}"
                           for p in problems])
    if config.ai is not None and not config.pipeline:
        config, stage_lines = _expand_seed(config, root)
    return LoadedConfig(config=config, path=path, stage_lines=stage_lines, lines_at=_entry_lines(root))


def _expand_node(node: yaml.Node, path: tuple[str | int, ...], loader: yaml.SafeLoader,
                 env: Mapping[str, str] | None, originals: list[str]) -> list[envvars.MissingVariable]:
    missing: list[envvars.MissingVariable] = []
    if isinstance(node, yaml.ScalarNode):
        if envvars.is_shielded(node.value):
            value, names = envvars.expand(envvars.unshield(node.value, originals), env)
            missing += [envvars.MissingVariable(n, node.start_mark.line + 1, path, empty) for n, empty in names]
            node.value = value
            if node.style is None:  # plain scalar: let `${PORT:-8082}` become an int like `8082` would
                node.tag = loader.resolve(yaml.ScalarNode, value, (True, False)) if value else _STR_TAG
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            missing += _expand_node(item, path + (i,), loader, env, originals)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            missing += _expand_node(value, path + (str(key.value),), loader, env, originals)
    return missing


def _child(node: yaml.Node | None, key: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        return next((v for k, v in node.value if k.value == key), None)
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
        return node.value[key]
    return None


def _pipeline_lines(root: yaml.MappingNode) -> list[int | None]:
    seq = _child(root, "pipeline")
    if not isinstance(seq, yaml.SequenceNode):
        return []
    return [item.start_mark.line + 1 for item in seq.value]


def _unquoted_numbers(root: yaml.MappingNode) -> list[tuple[str, int]]:
    """``lines:`` keys written +15550100 without quotes (YAML makes them integers, dropping the +)."""
    node = _child(root, "lines")
    if not isinstance(node, yaml.MappingNode):
        return []
    return [(k.value, k.start_mark.line + 1) for k, _ in node.value
            if isinstance(k, yaml.ScalarNode) and k.style is None and k.tag == "tag:yaml.org,2002:int"]


def _entry_lines(root: yaml.MappingNode) -> dict[str, int]:
    from agent_voice_bridge.phone_numbers import e164

    node = _child(root, "lines")
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {(k.value if k.value == "default" else e164(str(k.value)) or str(k.value)): k.start_mark.line + 1
            for k, _ in node.value}


def _line_of(root: yaml.Node, loc: tuple[Any, ...]) -> int | None:
    node: yaml.Node | None = root
    line = None
    for key in loc:
        node = _child(node, key)
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


_TOKEN_NAMES = {"'<block sequence start>'": "'-'", "'<block mapping start>'": "a new key"}
"""PyYAML's names for tokens that stand for something the user typed."""


def _syntax_error(path: str, exc: yaml.YAMLError) -> str:
    """Both of PyYAML's marks: where the construct began (context) and where it broke (problem).

    The problem mark is only where the parser gave up; the mistake is often at the context
    mark (an unclosed ``[``) or between the two (a line indented one space too little).
    """
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"{path}: not valid YAML: {exc}"
    problem = exc.problem or "cannot parse"
    for token, typed in _TOKEN_NAMES.items():
        problem = problem.replace(token, typed)
    if "'\\t'" in problem:
        problem += " (indent with spaces, not tabs)"
    problem_line = exc.problem_mark.line + 1 if exc.problem_mark else None
    context_line = exc.context_mark.line + 1 if exc.context_mark else None
    if exc.context and context_line and context_line != problem_line:
        return f"{where(path, context_line)}: not valid YAML: {exc.context} ... {where(path, problem_line)}: {problem}"
    context = f"{exc.context}: " if exc.context else ""
    return f"{where(path, problem_line)}: not valid YAML: {context}{problem}"


def _validation_line(path: str, root: yaml.Node, err: Any) -> str:
    loc = tuple(err["loc"])
    unknown = unknown_key(BridgeConfig, err)
    if unknown is not None:
        prefix = f"{_dotted(loc[:-1])}: " if loc[:-1] else ""
        return f"{where(path, _line_of(root, loc))}: {prefix}{unknown}"
    # Never echo the input value: it may be a secret. Our own validators' words stand alone.
    message = err["msg"].removeprefix("Value error, ") if err["type"] == "value_error" else err["msg"]
    return f"{where(path, _line_of(root, loc))}: {_dotted(loc) or 'file'}: {message}"


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")


def _expand_seed(config: BridgeConfig, root: yaml.Node) -> tuple[BridgeConfig, list[int | None]]:
    ai = config.ai
    assert ai is not None
    stage = SEED_STAGES[ai.provider]
    params = dict(getattr(ai, ai.provider, None) or {}) if ai.provider != "echo" else {}
    chain = [({stage: params or None} if s == "@ai" else s) for s in DEFAULT_CHAIN]
    line = _line_of(root, ("ai",))
    config = config.model_copy(update={"pipeline": chain, "ai": None})
    return config, [line] * len(chain)
