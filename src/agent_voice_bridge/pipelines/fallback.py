"""An AI stage's ``fallback:``: the chain a call moves to when the model fails, checked with the main chain.

``fallback: voicemail`` names a built-in chain (``defaults/voicemail.yaml``); anything
with a ``/`` or ending in ``.yaml``/``.yml`` is a file, relative to the directory of the
file that names it. Only the fallback file's ``pipeline:`` is used (the server, Twilio
and storage settings are the main file's), and it may not name a fallback of its own.
A fallback that does not load or check is a configuration error of the AI stage, so
``voice-bridge check`` and server start report it with the file, line and stage
(checked by ``pipelines.chain``, which imports this module and not the other way round).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from agent_voice_bridge.pipelines.errors import ConfigError
from agent_voice_bridge.pipelines.loader import LoadedConfig, load_default, load_file


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


def names_fallback(params: object) -> str | None:
    """The ``fallback:`` a stage's parameters name, if any (only AI stages have one)."""
    return getattr(params, "fallback", None) or None
