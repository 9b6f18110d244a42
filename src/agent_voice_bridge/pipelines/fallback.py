"""An AI stage's ``fallback:``: the chain a call moves to when the model fails, checked with the main chain.

``fallback: voicemail`` names a built-in chain (``defaults/voicemail.yaml``); anything
with a ``/`` or ending in ``.yaml``/``.yml`` is a file, relative to the directory of the
file that names it. Only the fallback file's ``pipeline:`` is used (the server, Twilio
and storage settings are the main file's), and it may not name a fallback of its own.
A fallback that does not load or check is a configuration error of the AI stage, so
``voice-bridge check`` and server start report it with the file, line and stage.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from agent_voice_bridge.pipelines.errors import ConfigError, where
from agent_voice_bridge.pipelines.loader import LoadedConfig, load_default, load_file

if TYPE_CHECKING:
    from agent_voice_bridge.pipelines.chain import Chain, ResolvedStage


def built_in_chains() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("agent_voice_bridge.defaults").iterdir()
                  if p.name.endswith(".yaml"))


def load_fallback(name: str, including: str) -> LoadedConfig:
    """The fallback's file: a built-in chain by name, or a path relative to the including file's directory."""
    if "/" not in name and not name.endswith((".yaml", ".yml")):
        if name not in built_in_chains():
            known = ", ".join(built_in_chains())
            raise ConfigError([f"no built-in chain {name!r} (built-in: {known}); or give a path to a .yaml file"])
        return load_default(f"{name}.yaml")
    path = Path(name)
    if not path.is_absolute():
        path = Path(including).parent / path
    return load_file(path)


def names_fallback(stage: ResolvedStage) -> str | None:
    return getattr(stage.params, "fallback", None) or None


def build_fallback(path: str, stages: list[ResolvedStage], problems: list[str]) -> Chain | None:
    """The checked fallback chain of the (one) AI stage that names one; problems are appended, naming that stage."""
    from agent_voice_bridge.pipelines.chain import build_chain

    for stage in stages:
        name = names_fallback(stage)
        if name is None:
            continue
        at = f"{where(path, stage.line, stage.position, stage.name)}: fallback {name!r}"
        try:
            chain = build_chain(load_fallback(name, path), fallbacks=False)
        except ConfigError as exc:
            problems.extend(f"{at}: {problem}" for problem in exc.problems)
            return None
        if any(names_fallback(s) for s in chain.stages):
            problems.append(f"{at}: {chain.source} names a fallback of its own; a fallback chain cannot")
            return None
        return chain
    return None
