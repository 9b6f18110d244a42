"""Which OpenAI model names the installed SDK marks deprecated, and their shutdown dates.

OpenAI announces deprecations in the SDK's own field docs ("Deprecated values: - "gpt-realtime", …: Announced
shutdown date: 2027-01-20"), generated from its API spec. Reading them from the installed package keeps ``check``
right as the SDK is upgraded, instead of a list of our own that goes stale the day a model is retired.
"""

from __future__ import annotations

import ast
import inspect
import re
from functools import cache

_ENTRY = re.compile(r"-\s+((?:\"[^\"]+\",?\s*)+):\s*Announced\s+shutdown\s+date:\s*(\d{4}-\d{2}-\d{2})", re.S)


def _field_doc(cls: type, field: str) -> str:
    """The docstring written under ``field`` in ``cls``'s source (pydantic keeps no attribute docstrings here)."""
    body = ast.parse(inspect.getsource(cls)).body[0]
    statements = body.body if isinstance(body, ast.ClassDef) else []
    for node, after in zip(statements, statements[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == field
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)):
            return str(after.value.value)
    return ""


def shutdown_dates(doc: str) -> dict[str, str]:
    """``{model: "YYYY-MM-DD"}`` from a field doc's "Deprecated values" list."""
    _, _, deprecated = doc.partition("Deprecated values:")
    return {name: date for names, date in _ENTRY.findall(deprecated) for name in re.findall(r"\"([^\"]+)\"", names)}


@cache
def realtime_models() -> dict[str, str]:
    """Realtime (speech-to-speech) models the installed openai SDK marks deprecated."""
    from openai.types.realtime.realtime_session_create_request import RealtimeSessionCreateRequest

    return shutdown_dates(_field_doc(RealtimeSessionCreateRequest, "model"))


@cache
def transcription_models() -> dict[str, str]:
    """Input-transcription models the installed openai SDK marks deprecated."""
    from openai.types.realtime.audio_transcription import AudioTranscription

    return shutdown_dates(_field_doc(AudioTranscription, "model"))
