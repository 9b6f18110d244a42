"""The fake Anthropic Messages API, checked with the real ``anthropic`` SDK (as pipecat drives it)."""

from __future__ import annotations

import httpx
import pytest

anthropic = pytest.importorskip("anthropic", reason="the anthropic SDK is missing: pip install -e '.[test]'")

from fakes.anthropic import FakeAnthropic, Reply, ToolCall

USER = [{"role": "user", "content": "Hello there"}]


def client(fake: FakeAnthropic, key: str = "test-key") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=key, base_url=fake.url, max_retries=0)


async def test_streamed_text_comes_as_the_api_sends_it() -> None:
    async with FakeAnthropic(replies=[Reply("Hi, how can I help you today?")]) as fake:
        stream = await client(fake).messages.create(model="claude-test", max_tokens=64, messages=USER, stream=True,
                                                    system="Be brief.")
        events = [event async for event in stream]
        request, = fake.requests
    kinds = [e.type for e in events]  # the SDK drops pings
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-4:] == ["content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert events[0].message.usage.input_tokens > 0 and events[0].message.stop_reason is None
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == "Hi, how can I help you today?"
    assert events[-2].delta.stop_reason == "end_turn" and events[-2].usage.output_tokens > 0
    assert request.headers["anthropic-version"] == "2023-06-01" and request.body["system"] == "Be brief."
    assert request.completed and not request.cancelled


async def test_the_sdk_stream_helper_assembles_a_tool_call() -> None:
    call = ToolCall("lookup_order", {"order_id": "A-1234", "verbose": True})
    tools = [{"name": "lookup_order", "description": "Find an order.",
              "input_schema": {"type": "object", "properties": {"order_id": {"type": "string"}}}}]
    async with FakeAnthropic(replies=[Reply("Let me check.", tool_calls=[call])]) as fake:
        sdk = client(fake)
        async with sdk.messages.stream(model="claude-test", max_tokens=64, messages=USER, tools=tools) as stream:
            message = await stream.get_final_message()
        assert message.stop_reason == "tool_use"
        text, tool_use = message.content
        assert text.text == "Let me check."
        assert (tool_use.id, tool_use.name, tool_use.input) == (call.id, "lookup_order", call.input)
        assert tool_use.id.startswith("toolu_")
        # The result goes back in the next user turn; the fake checks the pairing.
        follow_up = USER + [{"role": "assistant", "content": [t.model_dump() for t in message.content]},
                            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                          "content": '{"status": "shipped"}'}]}]
        done = await sdk.messages.create(model="claude-test", max_tokens=64, messages=follow_up, tools=tools)
        assert done.content[0].text and fake.requests[1].tool_results()[0]["tool_use_id"] == call.id


async def test_beta_client_path_as_pipecat_uses_it() -> None:
    async with FakeAnthropic() as fake:
        stream = await client(fake).beta.messages.create(model="claude-test", max_tokens=64, messages=USER,
                                                         stream=True, betas=["interleaved-thinking-2025-05-14"])
        assert [e.type async for e in stream][-1] == "message_stop"
        assert fake.requests[0].query == {"beta": "true"}
        assert fake.requests[0].headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"


async def test_a_wrong_key_is_an_authentication_error() -> None:
    async with FakeAnthropic() as fake:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await client(fake, "wrong").messages.create(model="m", max_tokens=8, messages=USER)
    assert caught.value.status_code == 401
    assert caught.value.body["type"] == "authentication_error" or caught.value.body["error"]["type"] == \
        "authentication_error"
    assert caught.value.request_id and caught.value.request_id.startswith("req_")


@pytest.mark.parametrize(("messages", "fragment"), [
    ([], "at least one message"),
    ([{"role": "system", "content": "x"}], "top-level `system`"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}], "must be non-empty"),
    ([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "1"}]}],
     "corresponding `tool_use`"),
    ([{"role": "user", "content": "hi"},
      {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_y", "name": "f", "input": {}}]},
      {"role": "user", "content": "and?"}], "without `tool_result`"),
])
async def test_malformed_conversations_are_refused_like_the_api(messages: list, fragment: str) -> None:
    async with FakeAnthropic() as fake:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client(fake).messages.create(model="m", max_tokens=8, messages=messages)
    assert fragment in caught.value.message


async def test_missing_version_header_and_unknown_paths() -> None:
    async with FakeAnthropic() as fake, httpx.AsyncClient(base_url=fake.url) as http:
        refused = await http.post("/v1/messages", headers={"x-api-key": "test-key"},
                                  json={"model": "m", "max_tokens": 8, "messages": USER})
        missing = await http.post("/v1/complete", headers={"x-api-key": "test-key", "anthropic-version": "2023-06-01"})
    assert refused.status_code == 400 and "anthropic-version" in refused.json()["error"]["message"]
    assert refused.json()["type"] == "error" and refused.headers["request-id"].startswith("req_")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


async def test_overload_before_and_during_the_stream() -> None:
    async with FakeAnthropic(replies=[Reply(error="overloaded_error"), Reply("one two three", stream_error="overloaded_error")]) as fake:
        sdk = client(fake)
        with pytest.raises(anthropic.APIStatusError) as caught:
            await sdk.messages.create(model="m", max_tokens=8, messages=USER)
        assert caught.value.status_code == 529
        stream = await sdk.messages.create(model="m", max_tokens=8, messages=USER, stream=True)
        with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
            async for _ in stream:
                pass


async def test_the_wire_format_has_event_lines_and_a_ping() -> None:
    headers = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
    async with FakeAnthropic(replies=[Reply("Hello world")]) as fake, httpx.AsyncClient(base_url=fake.url) as http:
        response = await http.post("/v1/messages", headers=headers,
                                   json={"model": "m", "max_tokens": 8, "messages": USER, "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("event: ") for line in response.text.splitlines() if line.startswith("event: ")]
    assert events == ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_stop",
                      "message_delta", "message_stop"]
