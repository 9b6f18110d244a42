"""Spoken lines the bridge plays by itself (see README.md here for what each says)."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def spoken(name: str) -> bytes:
    """8 kHz μ-law audio of one of the committed lines: apology, voicemail_greeting, … (README.md here)."""
    return resources.files(__name__).joinpath(f"{name}.ulaw").read_bytes()
