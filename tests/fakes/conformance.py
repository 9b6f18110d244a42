"""Conformance of every wire message in the suite against the SDKs' own models (issue 16).

Why: a fake that invents a field, or accepts a shape the real service rejects, lets the
bridge drift from the protocol while every test stays green. The SDKs are the truth about
a protocol, so each message a fake sends or receives is checked against them:

* OpenAI Realtime: ``openai.types.realtime.RealtimeClientEvent`` / ``RealtimeServerEvent``
  through a pydantic ``TypeAdapter``, discriminated on ``type`` (an unknown type is a
  violation). openai's models accept unknown keys silently (``extra="allow"``), so the
  validated model is walked and every key outside the declared fields is reported, through
  nested models, lists and unions. Fields typed as plain dicts (tool ``parameters``, …)
  are user data and not walked. Validation is strict (JSON types must match exactly).
* Gemini Live: ``google.genai.types.LiveClientMessage`` / ``LiveServerMessage`` on the
  raw JSON as it crossed the socket. genai's models forbid unknown fields and accept both
  camelCase aliases and snake_case names, so the SDK's mixed naming (protocols.md C4)
  validates as is. Strict JSON types, except that a ``bytes`` field takes base64 text
  (which strict mode would refuse; lax mode decodes it and reports bad base64).

``ALLOWANCES`` lists the few keys the real OpenAI service sends that the SDK does not
declare, and ``GEMINI_CLIENT_SUBTREES`` the one part of a Gemini setup that google-genai
serialises but its ``LiveClientSetup`` model lacks (checked against the model it comes
from); nothing else is tolerated.

Recording: the fakes call :func:`record` on their single send path and single receive
path; :data:`VIOLATIONS` collects what was found and the autouse fixture in
``tests/conftest.py`` fails the test that produced any. A test that sends malformed
client messages on purpose (to test a fake's rejection) is marked
``@pytest.mark.invalid_client_messages``: its client-side violations are expected and not
reported; what the fake sends back is still checked.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args

import pydantic
from google.genai import types as genai_types
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import Field, TypeAdapter, ValidationError

__all__ = [
    "ALLOWANCES",
    "GEMINI_CLIENT_SUBTREES",
    "VIOLATIONS",
    "Violation",
    "check_gemini_client",
    "check_gemini_server",
    "check_openai_client",
    "check_openai_server",
    "record",
    "take_violations",
]

Service = Literal["openai", "gemini"]
Direction = Literal["client", "server"]

ALLOWANCES: dict[tuple[str, str], str] = {
    ("session.created", "session.expires_at"): (
        "protocols.md D (update 2026-12): the real session.created carries expires_at (epoch seconds); "
        "the SDK types it as RealtimeSessionCreateRequest, which lacks it (session_created_event.py)"),
    ("session.created", "session.id"): (
        "the session object the server returns has id/object/expires_at: openai declares them on "
        "RealtimeSessionCreateResponse (realtime_session_create_response.py), not on the request type "
        "the event model reuses"),
    ("session.created", "session.object"): "as session.id",
    ("session.updated", "session.expires_at"): "as session.created: session.updated carries the full session object",
    ("session.updated", "session.id"): "as session.created",
    ("session.updated", "session.object"): "as session.created",
}
"""(event type, key path inside the event) → why the real service sends a key the SDK does not declare."""

MAX_EXCERPT = 200


# --------------------------------------------------------------------------- OpenAI


def _discriminated(union_alias: Any) -> TypeAdapter[Any]:
    """The SDK's ``Annotated[Union[...], PropertyInfo(discriminator="type")]`` as a pydantic tagged union.

    Why not the alias itself: ``PropertyInfo`` is openai's own metadata, which pydantic
    ignores; as a plain smart union an unknown type would yield one error per member.
    """
    members = get_args(get_args(union_alias)[0])
    return TypeAdapter(Annotated[Union[members], Field(discriminator="type")])  # type: ignore[valid-type]


_OPENAI_CLIENT = _discriminated(RealtimeClientEvent)
_OPENAI_SERVER = _discriminated(RealtimeServerEvent)


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "<message>"


def _undeclared_keys(value: Any, path: str) -> list[str]:
    """Key paths present in the validated data but not declared by the model that took them."""
    found: list[str] = []
    if isinstance(value, pydantic.BaseModel):
        for key in value.__pydantic_extra__ or {}:
            found.append(f"{path}.{key}" if path else key)
        for name, info in type(value).model_fields.items():
            wire = info.alias or name
            found.extend(_undeclared_keys(getattr(value, name), f"{path}.{wire}" if path else wire))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found.extend(_undeclared_keys(item, f"{path}[{i}]"))
    elif isinstance(value, dict):  # a free-form field (user data); only models inside it are walked
        for key, item in value.items():
            if isinstance(item, pydantic.BaseModel):
                found.extend(_undeclared_keys(item, f"{path}.{key}"))
    return found


def _json_object(raw: str | bytes) -> dict[str, Any] | str:
    """The frame as a JSON object, or the violation that it is not one."""
    try:
        decoded = json.loads(raw)
    except ValueError:
        return f"<message>: not JSON: {raw[:60]!r}"
    return decoded if isinstance(decoded, dict) else f"<message>: not a JSON object: {raw[:60]!r}"


def _check_openai(raw: str | bytes, adapter: TypeAdapter[Any]) -> list[str]:
    if isinstance(raw, bytes):
        return ["<message>: a binary frame (OpenAI Realtime events are JSON text frames)"]
    event = _json_object(raw)
    if isinstance(event, str):
        return [event]
    kind = event.get("type")
    try:
        model = adapter.validate_json(raw, strict=True)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            if err["type"] == "union_tag_invalid":
                problems.append(f"type: unknown event type {kind!r}")
            elif err["type"] == "union_tag_not_found":
                problems.append("type: missing")
            else:
                problems.append(f"{kind}: {_format_loc(err['loc'][1:])}: {err['msg']}")
        return problems
    return [f"{kind}: {path}: key not declared by the SDK"
            for path in _undeclared_keys(model, "") if (kind, path) not in ALLOWANCES]


def check_openai_client(raw: str | bytes) -> list[str]:
    """Violations of one client event (the frame as sent) against ``RealtimeClientEvent``."""
    return _check_openai(raw, _OPENAI_CLIENT)


def check_openai_server(raw: str | bytes) -> list[str]:
    """Violations of one server event (the frame as sent) against ``RealtimeServerEvent``."""
    return _check_openai(raw, _OPENAI_SERVER)


# --------------------------------------------------------------------------- Gemini


GEMINI_CLIENT_SUBTREES: dict[tuple[str, str], tuple[type[pydantic.BaseModel], str]] = {
    ("setup", "realtimeInputConfig"): (genai_types.RealtimeInputConfig, (
        "google-genai's own serialiser writes it: _live_converters._LiveConnectConfig_to_mldev copies "
        "LiveConnectConfig.realtime_input_config (typed RealtimeInputConfig) to setup.realtimeInputConfig, "
        "but types.LiveClientSetup does not declare the field")),
}
"""Parts of a client message the SDK sends but ``LiveClientMessage`` lacks: each is checked against the
model the SDK serialised it from, instead of being rejected as an extra input."""


def _model_errors(model: type[pydantic.BaseModel], text: str, prefix: tuple[Any, ...]) -> list[str]:
    """Strict JSON validation, except that ``bytes`` fields take base64 text (strict mode refuses any
    text for bytes; the lax pass decodes it and reports bad base64)."""
    seen: dict[tuple[str, str], None] = {}
    for strict in (True, False):
        try:
            model.model_validate_json(text, strict=strict)
        except ValidationError as e:
            for err in e.errors():
                if strict and err["type"] == "bytes_type" and isinstance(err.get("input"), str):
                    continue
                seen[(_format_loc(prefix + tuple(err["loc"])), err["msg"])] = None
    return [f"{loc}: {msg}" for loc, msg in seen]


def _check_gemini(raw: str | bytes, model: type[pydantic.BaseModel],
                  subtrees: dict[tuple[str, str], tuple[type[pydantic.BaseModel], str]]) -> list[str]:
    decoded = _json_object(raw)
    if isinstance(decoded, str):
        return [decoded]
    if not decoded:
        return ["<message>: empty object (holds none of the message kinds)"]
    problems: list[str] = []
    text = raw
    for (outer, inner), (sub_model, _why) in subtrees.items():
        parent = decoded.get(outer)
        if not isinstance(parent, dict):
            continue
        for key in (inner, _camel_to_snake(inner)):  # the SDK mixes both namings (protocols.md C4)
            if key in parent:
                problems += _model_errors(sub_model, json.dumps(parent.pop(key)), (outer, key))
                text = json.dumps(decoded)
    return problems + _model_errors(model, text, ())


def _camel_to_snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def check_gemini_client(raw: str | bytes) -> list[str]:
    """Violations of one client message (the frame as the SDK sent it) against ``LiveClientMessage``."""
    return _check_gemini(raw, genai_types.LiveClientMessage, GEMINI_CLIENT_SUBTREES)


def check_gemini_server(raw: str | bytes) -> list[str]:
    """Violations of one server message (the frame as sent) against ``LiveServerMessage``."""
    return _check_gemini(raw, genai_types.LiveServerMessage, {})


# --------------------------------------------------------------------------- recording

_CHECKS = {
    ("openai", "client"): check_openai_client,
    ("openai", "server"): check_openai_server,
    ("gemini", "client"): check_gemini_client,
    ("gemini", "server"): check_gemini_server,
}


@dataclass(frozen=True)
class Violation:
    """One problem in one message a fake sent (``server``) or received (``client``)."""

    service: Service
    direction: Direction
    problem: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.service} {self.direction}: {self.problem}  in {self.excerpt}"


VIOLATIONS: list[Violation] = []
"""Everything found since the last :func:`take_violations`; fakes append through :func:`record`."""
_LOCK = threading.Lock()  # fakes may run on a server thread's loop


def record(service: Service, direction: Direction, raw: str | bytes) -> None:
    """Check one message as it crossed a fake's socket and keep its violations."""
    problems = _CHECKS[(service, direction)](raw)
    if not problems:
        return
    text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
    excerpt = text if len(text) <= MAX_EXCERPT else text[:MAX_EXCERPT] + "…"
    with _LOCK:
        VIOLATIONS.extend(Violation(service, direction, p, excerpt) for p in problems)


def take_violations() -> list[Violation]:
    """The violations recorded so far, clearing the record."""
    with _LOCK:
        found = list(VIOLATIONS)
        VIOLATIONS.clear()
    return found
