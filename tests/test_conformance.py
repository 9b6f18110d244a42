"""The conformance layer itself (fakes/conformance.py): it must catch what it claims to catch.

Why: the layer runs on every message of every test that talks to a fake; if it were a
no-op the whole suite would stay green while the fakes drift. Each test here fails if
the check it names reports nothing (or reports a valid message).
"""

from __future__ import annotations

import json

import pytest
import websockets
from fakes import conformance
from fakes.conformance import (
    ALLOWANCES,
    check_gemini_client,
    check_gemini_server,
    check_openai_client,
    check_openai_server,
)
from fakes.gemini_live import FakeGeminiLive
from fakes.openai_realtime import FakeOpenAIRealtime

# Captured wire messages (protocols.md C2/C4/D2/D3, verified there against the real SDKs).
GEMINI_SETUP_AS_THE_SDK_SENDS_IT = {"setup": {
    "model": "models/gemini-3.8-live",
    "generationConfig": {"responseModalities": ["AUDIO"],
                         "speechConfig": {"voice_config": {"prebuilt_voice_config": {"voice_name": "Puck"}}}},
    "realtimeInputConfig": {"automatic_activity_detection": {"disabled": False, "silence_duration_ms": 500}},
    "contextWindowCompression": {"sliding_window": {}},
    "tools": [{"functionDeclarations": [{"name": "hangup", "description": "End the call",
                                         "parameters": {"type": "OBJECT",
                                                        "properties": {"reason": {"type": "STRING"}}}}]}],
}}
GEMINI_CLIENT_MESSAGES = [
    GEMINI_SETUP_AS_THE_SDK_SENDS_IT,
    {"realtime_input": {"audio": {"data": "AAD_-w==", "mime_type": "audio/pcm;rate=16000"}}},  # URL-safe base64
    {"realtime_input": {"activityStart": {}}},
    {"client_content": {"turns": [{"role": "user", "parts": [{"text": "hi"}]}], "turnComplete": True}},
    {"tool_response": {"functionResponses": [{"id": "fc1", "name": "hangup",
                                              "response": {"free_form": {"any": ["user", "data"]}}}]}},
]
GEMINI_SERVER_MESSAGES = [
    {"setupComplete": {}},
    {"serverContent": {"modelTurn": {"parts": [{"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": "AAA="}}]}}},
    {"serverContent": {"interrupted": True}},
    {"serverContent": {"turnComplete": True},
     "usageMetadata": {"promptTokenCount": 5, "responseTokenCount": 4, "totalTokenCount": 9}},
    {"toolCall": {"functionCalls": [{"id": "fc1", "name": "hangup", "args": {"reason": "done"}}]}},
    {"toolCallCancellation": {"ids": ["fc1"]}},
    {"goAway": {"timeLeft": "10s"}},
    {"sessionResumptionUpdate": {"newHandle": "h1", "resumable": True}},
]
OPENAI_CLIENT_EVENTS = [
    {"type": "session.update", "session": {
        "type": "realtime", "output_modalities": ["audio"], "instructions": "Be brief.",
        "audio": {"input": {"format": {"type": "audio/pcmu"},
                            "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                               "silence_duration_ms": 200, "create_response": True,
                                               "interrupt_response": True}},
                  "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}},
        "tools": [{"type": "function", "name": "hangup", "description": "End the call",
                   "parameters": {"type": "object", "properties": {"made_up_is_fine_here": {}}}}],
        "tool_choice": "auto"}},
    {"type": "input_audio_buffer.append", "audio": "AAAA"},
    {"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": "call_1",
                                                  "output": "{\"ok\":true}"}},
    {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 1500},
    {"type": "response.cancel", "response_id": "resp_1", "event_id": "evt_1"},
]
SESSION = {
    "type": "realtime", "object": "realtime.session", "id": "sess_1", "model": "gpt-realtime-2.1",
    "output_modalities": ["audio"], "instructions": "x", "tools": [], "tool_choice": "auto",
    "max_output_tokens": "inf", "tracing": None, "prompt": None, "truncation": "auto", "include": None,
    "expires_at": 1_800_000_000,
    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "transcription": None,
                        "noise_reduction": None, "turn_detection": None},
              "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.0}},
}
RESPONSE_DONE = {"type": "response.done", "event_id": "event_2", "response": {
    "object": "realtime.response", "id": "resp_1", "status": "cancelled",
    "status_details": {"type": "cancelled", "reason": "turn_detected"}, "output": [
        {"id": "item_1", "object": "realtime.item", "type": "message", "status": "incomplete", "role": "assistant",
         "content": [{"type": "output_audio", "transcript": "Hel"}]}],
    "usage": {"total_tokens": 9, "input_tokens": 5, "output_tokens": 4,
              "input_token_details": {"text_tokens": 5, "audio_tokens": 0},
              "output_token_details": {"text_tokens": 1, "audio_tokens": 3}}}}


def dumps(message: dict) -> str:
    return json.dumps(message)


@pytest.mark.parametrize("message", GEMINI_CLIENT_MESSAGES, ids=lambda m: next(iter(m)))
def test_captured_gemini_client_messages_pass(message: dict) -> None:
    assert check_gemini_client(dumps(message)) == []


@pytest.mark.parametrize("message", GEMINI_SERVER_MESSAGES, ids=lambda m: next(iter(m)))
def test_captured_gemini_server_messages_pass(message: dict) -> None:
    assert check_gemini_server(dumps(message)) == []


@pytest.mark.parametrize("event", OPENAI_CLIENT_EVENTS, ids=lambda e: e["type"])
def test_captured_openai_client_events_pass(event: dict) -> None:
    assert check_openai_client(dumps(event)) == []


def test_captured_openai_server_events_pass() -> None:
    assert check_openai_server(dumps({"type": "session.created", "event_id": "event_1", "session": SESSION})) == []
    assert check_openai_server(dumps(RESPONSE_DONE)) == []


def test_a_made_up_field_in_an_openai_server_event_is_reported_at_any_depth() -> None:
    top = {**RESPONSE_DONE, "latency_ms": 12}
    assert check_openai_server(dumps(top)) == ["response.done: latency_ms: key not declared by the SDK"]
    nested = json.loads(dumps(RESPONSE_DONE))
    nested["response"]["output"][0]["content"][0]["duration_ms"] = 40
    nested["response"]["usage"]["output_token_details"]["reasoning_tokens"] = 0
    assert check_openai_server(dumps(nested)) == [
        "response.done: response.output[0].content[0].duration_ms: key not declared by the SDK",
        "response.done: response.usage.output_token_details.reasoning_tokens: key not declared by the SDK",
    ]


def test_a_beta_key_in_a_client_event_is_reported() -> None:
    event = {"type": "session.update", "session": {"type": "realtime", "modalities": ["audio"]}}
    assert check_openai_client(dumps(event)) == ["session.update: session.modalities: key not declared by the SDK"]


def test_an_unknown_event_type_is_reported() -> None:
    assert check_openai_server(dumps({"type": "response.audio.delta", "event_id": "e", "delta": "AA=="})) == [
        "type: unknown event type 'response.audio.delta'"]
    assert check_openai_client(dumps({"type": "output_audio_buffer.flush"})) == [
        "type: unknown event type 'output_audio_buffer.flush'"]
    assert check_openai_client(dumps({"audio": "AAAA"})) == ["type: missing"]


def test_a_wrong_type_or_value_is_reported() -> None:
    truncate = {"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": "1500"}
    assert check_openai_client(dumps(truncate)) == [
        "conversation.item.truncate: audio_end_ms: Input should be a valid integer"]
    assert check_gemini_server(dumps({"serverContent": {"turnComplete": "true"}})) == [
        "serverContent.turnComplete: Input should be a valid boolean"]
    assert check_gemini_server(dumps({"usageMetadata": {"totalTokenCount": "9"}})) == [
        "usageMetadata.totalTokenCount: Input should be a valid integer"]
    bad_audio = {"realtime_input": {"audio": {"data": "not base64!", "mime_type": "audio/pcm"}}}
    assert [p.split(":")[0] for p in check_gemini_client(dumps(bad_audio))] == ["realtime_input.audio.data"]


def test_a_made_up_field_in_a_gemini_message_is_reported() -> None:
    assert check_gemini_server(dumps({"serverContent": {"turnComplete": True, "turnId": 3}})) == [
        "serverContent.turnId: Extra inputs are not permitted"]
    setup = json.loads(dumps(GEMINI_SETUP_AS_THE_SDK_SENDS_IT))
    setup["setup"]["realtimeInputConfig"]["automatic_activity_detection"]["min_speech_ms"] = 60
    assert check_gemini_client(dumps(setup)) == [
        "setup.realtimeInputConfig.automatic_activity_detection.min_speech_ms: Extra inputs are not permitted"]
    assert check_gemini_client(dumps({})) == ["<message>: empty object (holds none of the message kinds)"]


def test_the_allowance_covers_only_its_own_event_and_path() -> None:
    assert ("session.created", "session.expires_at") in ALLOWANCES
    created = {"type": "session.created", "event_id": "e", "session": SESSION}
    assert check_openai_server(dumps(created)) == []
    elsewhere = json.loads(dumps(RESPONSE_DONE))
    elsewhere["response"]["expires_at"] = 1_800_000_000
    assert check_openai_server(dumps(elsewhere)) == ["response.done: response.expires_at: key not declared by the SDK"]
    nested = {**created, "session": {**SESSION, "audio": {**SESSION["audio"], "expires_at": 1}}}
    assert check_openai_server(dumps(nested)) == ["session.created: session.audio.expires_at: key not declared by the SDK"]
    update = {"type": "session.update", "session": {"type": "realtime", "expires_at": 1}}
    assert check_openai_client(dumps(update)) == ["session.update: session.expires_at: key not declared by the SDK"]


async def test_the_openai_fake_records_what_crosses_its_socket() -> None:
    conformance.take_violations()
    async with FakeOpenAIRealtime(api_key=None) as fake:
        async with websockets.connect(f"{fake.url}?model=gpt-realtime-2.1") as ws:
            created = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA", "sample_rate": 8000}))
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            await fake.session.wait_server_event("input_audio_buffer.cleared")
    found = conformance.take_violations()  # taken: the autouse fixture would fail this test otherwise
    assert created["type"] == "session.created" and "expires_at" in created["session"]
    assert [(v.service, v.direction, v.problem) for v in found] == [
        ("openai", "client", "input_audio_buffer.append: sample_rate: key not declared by the SDK")]


async def test_the_gemini_fake_records_what_crosses_its_socket() -> None:
    conformance.take_violations()
    async with FakeGeminiLive() as fake:
        async with websockets.connect(fake.ws_url + "?key=test-key", ssl=fake.client_ssl) as ws:
            await ws.send(json.dumps({"setup": {"model": "models/m", "voice": "Puck"}}))
            assert json.loads(await ws.recv()) == {"setupComplete": {}}
    found = conformance.take_violations()
    assert [(v.service, v.direction, v.problem) for v in found] == [
        ("gemini", "client", "setup.voice: Extra inputs are not permitted")]


@pytest.mark.invalid_client_messages
async def test_the_marker_excuses_client_messages_only(request: pytest.FixtureRequest) -> None:
    """The marked test's garbage is recorded, and the autouse fixture drops it (server side still counts)."""
    assert request.node.get_closest_marker("invalid_client_messages") is not None
    conformance.take_violations()
    async with FakeOpenAIRealtime(api_key=None) as fake:
        async with websockets.connect(f"{fake.url}?model=gpt-realtime-2.1") as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "response.audio.delta"}))
            await fake.session.wait_server_event("error")
    assert [v.direction for v in conformance.VIOLATIONS] == ["client"]
