"""A fake Anthropic Messages API on plain ``http://127.0.0.1``, for offline tests.

Why it exists: ``llm.anthropic`` wraps pipecat's ``AnthropicLLMService``, which
drives the real ``anthropic`` SDK. Testing it against the real API needs a key,
costs money and is not deterministic. This server speaks the wire protocol the
SDK speaks, so a client that sends a malformed conversation (an empty assistant
turn after a barge-in, a tool result without its call) fails here the way it
would fail in production.

What is faithful, and where it comes from (Anthropic's API reference: "Messages",
"Streaming Messages", "Errors", "Versions")
-----------------------------------------------------------------------------
* ``POST /v1/messages`` (the SDK's beta client adds ``?beta=true`` and an
  ``anthropic-beta`` header: both accepted). Headers ``x-api-key`` (wrong or
  missing: 401 ``authentication_error`` "invalid x-api-key") and
  ``anthropic-version`` (missing: 400 ``invalid_request_error``
  "anthropic-version: header is required"; only ``2023-06-01`` and ``2023-01-01``
  exist). Any other path: 404 ``not_found_error``.
* Errors are ``{"type": "error", "error": {"type", "message"}, "request_id"}``
  with the HTTP status of the type (400 invalid_request_error, 401
  authentication_error, 403 permission_error, 404 not_found_error, 413
  request_too_large, 429 rate_limit_error, 500 api_error, 529 overloaded_error);
  every response carries a ``request-id`` header.
* The request is validated like the API does: ``model``, ``max_tokens`` (≥ 1) and
  ``messages`` (at least one) required; roles only ``user``/``assistant`` (a
  ``system`` role in ``messages`` is refused: it is a top-level parameter);
  text blocks (and string contents) must be non-empty; every ``tool_use`` in
  an assistant turn needs its ``tool_result`` in the next user turn, and a
  ``tool_result`` needs its ``tool_use`` in the previous assistant turn; tools
  need ``name`` and an object ``input_schema``; the last message may be the
  assistant's (a prefill). Consecutive turns of one role are merged, as the
  API does.
* ``stream: true`` → ``text/event-stream``, each event as ``event: <type>`` and
  ``data: <json>``: ``message_start`` (the message with empty ``content``,
  ``stop_reason: null`` and ``usage``), then per content block
  ``content_block_start`` → ``content_block_delta`` ×N (``text_delta``, or
  ``input_json_delta`` whose first ``partial_json`` is ``""``) →
  ``content_block_stop``, a ``ping`` after the first block starts,
  ``message_delta`` (``stop_reason`` ``end_turn``/``tool_use``/``max_tokens``,
  ``stop_sequence: null``, cumulative ``usage.output_tokens``), ``message_stop``.
  A mid-stream failure is an ``event: error`` with the error body (e.g.
  ``overloaded_error``). ``stream: false`` returns the whole message as JSON.
* Ids look like the real ones: ``msg_…``, ``toolu_…``, ``req_…`` (base62, 24).

What it is not: there is no model. Replies come from :class:`Reply` objects
queued with :meth:`FakeAnthropic.reply` (or a ``respond(request)`` callable),
else a fixed sentence. Token counts are estimates (characters / 4).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["DEFAULT_REPLY", "FakeAnthropic", "RecordedRequest", "Reply", "ToolCall"]

DEFAULT_REPLY = "This is a fake reply from the Claude test server."
VERSIONS = ("2023-06-01", "2023-01-01")
STATUS = {"invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
          "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
          "overloaded_error": 529}
_ALNUM = string.ascii_letters + string.digits


def _id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(24))


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


@dataclass
class ToolCall:
    """A ``tool_use`` block the fake model emits."""

    name: str
    input: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: _id("toolu_"))


@dataclass
class Reply:
    """What the fake model answers to one request.

    ``text`` is streamed ``words_per_delta`` words at a time, ``delay`` seconds
    apart; ``tool_calls`` follow as ``tool_use`` blocks. ``error`` (an error type
    from ``STATUS``) answers with that HTTP error instead; ``stream_error`` sends
    an ``error`` event after the first text delta and ends the stream. ``first_delay``: seconds between
    ``message_start`` and the first delta (a model slow to start answering).
    """

    text: str = DEFAULT_REPLY
    tool_calls: list[ToolCall] = field(default_factory=list)
    words_per_delta: int = 2
    delay: float = 0.01
    first_delay: float = 0.0
    error: str | None = None
    error_message: str = "Overloaded"
    stream_error: str | None = None


@dataclass
class RecordedRequest:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]
    status: int = 200
    cancelled: bool = False
    """The client went away before ``message_stop`` (a barge-in cancelled the reply)."""
    completed: bool = False
    finished_at: float | None = None
    """When ``message_stop`` was sent (the event loop's clock: ``time.monotonic()``)."""

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", [])

    def texts(self, role: str) -> list[str]:
        """The text of every message of ``role``, blocks joined."""
        return [_text_of(m["content"]) for m in self.messages if m.get("role") == role]

    def tool_results(self) -> list[dict[str, Any]]:
        return [b for m in self.messages if isinstance(m.get("content"), list)
                for b in m["content"] if b.get("type") == "tool_result"]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if b.get("type") == "text")


class _Invalid(Exception):
    def __init__(self, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.kind = kind


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        if not content:
            raise _Invalid(f"{where}: text content blocks must be non-empty")
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _Invalid(f"{where}.content: Input should be a valid list")
    for i, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and not block.get("text"):
            raise _Invalid(f"{where}.content.{i}.text: text content blocks must be non-empty")
        if kind not in ("text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking"):
            raise _Invalid(f"{where}.content.{i}.type: Input tag {kind!r} found using 'type' does not match "
                           "any of the expected tags")
    return content


def validate(body: Any) -> None:
    """Raise :class:`_Invalid` where the real API answers 400."""
    if not isinstance(body, dict):
        raise _Invalid("Input should be a valid dictionary")
    for key in ("model", "max_tokens", "messages"):
        if key not in body:
            raise _Invalid(f"{key}: Field required")
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        raise _Invalid("max_tokens: Input should be greater than or equal to 1")
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise _Invalid("messages: at least one message is required")
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role == "system":
            raise _Invalid('Unexpected role "system". The Messages API accepts a top-level `system` parameter, '
                           "not \"system\" as an input message role.")
        if role not in ("user", "assistant"):
            raise _Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        blocks = _blocks(message.get("content"), f"messages.{i}")
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)  # consecutive turns of one role are combined
        else:
            turns.append((role, list(blocks)))
    for t, (role, blocks) in enumerate(turns):
        results = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
        if role == "assistant" and results:
            raise _Invalid(f"messages.{t}: tool_result blocks are only allowed in user messages")
        previous = turns[t - 1][1] if t and turns[t - 1][0] == "assistant" else []
        calls = {b.get("id") for b in previous if b.get("type") == "tool_use"}
        if results - calls:
            raise _Invalid(f"messages.{t}.content.0: unexpected `tool_use_id` found in `tool_result` blocks: "
                           f"{', '.join(sorted(map(str, results - calls)))}. Each `tool_result` block must have a "
                           "corresponding `tool_use` block in the previous message.")
        if role == "user" and calls - results:
            raise _Invalid(f"messages.{t - 1}: `tool_use` ids were found without `tool_result` blocks "
                           f"immediately after: {', '.join(sorted(calls - results))}. Each `tool_use` block must "
                           "have a corresponding `tool_result` block in the next message.")
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        raise _Invalid("system: Input should be a valid string or list")
    for i, tool in enumerate(body.get("tools") or []):
        if "name" not in tool:
            raise _Invalid(f"tools.{i}.name: Field required")
        if tool.get("type") in (None, "custom") and (tool.get("input_schema") or {}).get("type") != "object":
            raise _Invalid(f"tools.{i}.custom.input_schema.type: Input should be 'object'")


class FakeAnthropic:
    """The server; ``async with FakeAnthropic() as fake:`` then point the SDK at ``fake.url``."""

    def __init__(self, *, api_key: str = "test-key", replies: list[Reply] | None = None,
                 respond: Callable[[RecordedRequest], Reply] | None = None):
        self.api_key = api_key
        self.replies: list[Reply] = list(replies or [])
        self.respond = respond
        self.requests: list[RecordedRequest] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Event()

    def reply(self, *replies: Reply) -> None:
        """Queue replies; each request takes the next one (the default sentence when none is left)."""
        self.replies.extend(replies)

    async def __aenter__(self) -> FakeAnthropic:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Wait until ``count`` message requests have arrived (from any thread's event loop)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.requests) < count:
            if loop.time() > deadline:
                raise AssertionError(f"{len(self.requests)} requests arrived, wanted {count}")
            await asyncio.sleep(0.02)
        return self.requests

    # ---- HTTP

    def _error(self, kind: str, message: str, request: RecordedRequest | None = None) -> web.Response:
        if request is not None:
            request.status = STATUS[kind]
        request_id = _id("req_")
        body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}
        return web.json_response(body, status=STATUS[kind], headers={"request-id": request_id})

    async def _handle(self, http: web.Request) -> web.StreamResponse:
        if http.method != "POST" or http.path != "/v1/messages":
            return self._error("not_found_error", "Not Found")
        raw = await http.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        request = RecordedRequest(http.path, dict(http.query), {k.lower(): v for k, v in http.headers.items()},
                                  body if isinstance(body, dict) else {})
        self.requests.append(request)
        if request.headers.get("x-api-key") != self.api_key:
            return self._error("authentication_error", "invalid x-api-key", request)
        version = request.headers.get("anthropic-version")
        if not version:
            return self._error("invalid_request_error", "anthropic-version: header is required", request)
        if version not in VERSIONS:
            return self._error("invalid_request_error", f"anthropic-version: invalid version {version!r}", request)
        if body is None:
            return self._error("invalid_request_error", "There was an error parsing the body of your request",
                               request)
        try:
            validate(body)
        except _Invalid as exc:
            return self._error(exc.kind, str(exc), request)
        reply = self._next_reply(request)
        if reply.error:
            return self._error(reply.error, reply.error_message, request)
        if body.get("stream"):
            return await self._stream(http, request, reply)
        request.completed = True
        return web.json_response(self._message(request, reply, final=True), headers={"request-id": _id("req_")})

    def _next_reply(self, request: RecordedRequest) -> Reply:
        if self.respond is not None:
            return self.respond(request)
        return self.replies.pop(0) if self.replies else Reply()

    def _message(self, request: RecordedRequest, reply: Reply, *, final: bool) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if final:
            if reply.text:
                content.append({"type": "text", "text": reply.text})
            content += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.input} for c in reply.tool_calls]
        input_tokens = _tokens(json.dumps(request.body.get("messages")) + json.dumps(request.body.get("system", "")))
        output = _tokens(reply.text) + sum(_tokens(json.dumps(c.input)) for c in reply.tool_calls)
        return {"id": _id("msg_"), "type": "message", "role": "assistant", "model": request.body["model"],
                "content": content, "stop_reason": _stop_reason(reply) if final else None, "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0, "output_tokens": output if final else 1,
                          "service_tier": "standard"}}

    async def _stream(self, http: web.Request, request: RecordedRequest, reply: Reply) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8",
                                               "cache-control": "no-cache", "request-id": _id("req_")})
        await response.prepare(http)

        async def send(event: dict[str, Any]) -> None:
            await response.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())

        try:
            await send({"type": "message_start", "message": self._message(request, reply, final=False)})
            index = 0
            if reply.text or not reply.tool_calls:
                await send({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})
                await send({"type": "ping"})
                await asyncio.sleep(reply.first_delay)
                words = reply.text.split(" ")
                for i in range(0, len(words), reply.words_per_delta):
                    chunk = " ".join(words[i:i + reply.words_per_delta])
                    await send({"type": "content_block_delta", "index": index,
                                "delta": {"type": "text_delta", "text": (" " if i else "") + chunk}})
                    if reply.stream_error:
                        await send({"type": "error", "error": {"type": reply.stream_error,
                                                                "message": reply.error_message}})
                        return response
                    await asyncio.sleep(reply.delay)
                await send({"type": "content_block_stop", "index": index})
                index += 1
            for call in reply.tool_calls:
                await send({"type": "content_block_start", "index": index,
                            "content_block": {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}})
                if index == 0:
                    await send({"type": "ping"})
                arguments = json.dumps(call.input)
                await send({"type": "content_block_delta", "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": ""}})
                for i in range(0, len(arguments), 12):
                    await send({"type": "content_block_delta", "index": index,
                                "delta": {"type": "input_json_delta", "partial_json": arguments[i:i + 12]}})
                await send({"type": "content_block_stop", "index": index})
                index += 1
            final = self._message(request, reply, final=True)
            await send({"type": "message_delta", "delta": {"stop_reason": final["stop_reason"], "stop_sequence": None},
                        "usage": {"output_tokens": final["usage"]["output_tokens"]}})
            await send({"type": "message_stop"})
            await response.write_eof()
            request.completed = True
            request.finished_at = asyncio.get_running_loop().time()
        except (ConnectionResetError, asyncio.CancelledError):
            request.cancelled = True
            raise
        return response


def _stop_reason(reply: Reply) -> str:
    return "tool_use" if reply.tool_calls else "end_turn"
