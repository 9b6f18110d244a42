"""Which configuration a server runs: ``-c FILE``, else ./pipeline.yaml, else the built-in chain for the AI key set.

Shared by the CLI (``serve``, ``check``, ``calls``, ``dial``) and by each worker process
of ``serve --workers N``, which loads the same file itself; kept out of ``cli.py`` so the
server never imports the command line, and out of ``pipelines/`` since a server's file
is more than a pipeline.
"""

from __future__ import annotations

import os
from pathlib import Path

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
