"""Tools: typed Python functions as function declarations for both models, and the built-in end_call."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI, Request

from agent_voice_bridge.pipelines.chain import build_chain
from agent_voice_bridge.pipelines.errors import ConfigError
from agent_voice_bridge.pipelines.loader import load_text
from agent_voice_bridge.services.tools import ToolError, schema_for
from agent_voice_bridge.transports.simulated_caller import Pause, Say, WaitQuiet, run_call
from conftest import LiveServer, free_port, speech
from fakes.gemini_live import FakeGeminiLive, GeminiScript
from fakes.openai_realtime import FakeOpenAIRealtime
from stages import tools as user_tools
from test_gemini_call import chain_yaml as gemini_chain
from test_openai_call import passthrough_chain as openai_chain


def test_schema_comes_from_signature_and_docstring() -> None:
    schema = schema_for(user_tools.lookup_order).to_default_dict()
    assert schema["name"] == "lookup_order"
    assert schema["description"] == "Look up an order for the caller."
    props = schema["parameters"]["properties"]
    assert props["order_id"] == {"type": "string", "description": "The order number the caller read out."}
    assert props["detail"]["enum"] == ["status", "eta"]
    assert schema["parameters"]["required"] == ["order_id"]


def test_untyped_tools_are_refused_at_check() -> None:
    with pytest.raises(ToolError, match="needs a type annotation"):
        schema_for(user_tools.untyped)
    text = ("pipeline:\n  - twilio.input\n  - openai.realtime: {api_key: k, audio_format: pcmu,"
            " tools: ['stages.tools:untyped']}\n  - twilio.output\n")
    with pytest.raises(ConfigError, match=r"stage 2 \(openai.realtime\): tools: .*needs a type annotation"):
        build_chain(load_text(text, "t.yaml", {}))


async def test_gemini_tool_call_round_trips() -> None:
    user_tools.CALLS.clear()
    script = GeminiScript(tool_call={"name": "lookup_order", "args": {"order_id": "A17"}})
    async with FakeGeminiLive(script=script) as fake:
        yaml_text = gemini_chain(fake, turn_detection="model", vad=False).replace(
            "      voice: Kore\n", "      voice: Kore\n      tools: ['stages.tools:lookup_order']\n")
        with LiveServer(yaml_text) as server:
            result = await run_call(server.ws_url, [Pause(0.3), Say(speech("vm-goodbye")), WaitQuiet(idle=1.0)])
        session = await fake.session(0)
    declared = str(session.setup.get("tools"))
    assert "lookup_order" in declared and "end_call" in declared
    assert user_tools.CALLS == [("lookup_order", {"order_id": "A17", "detail": "status"})]
    response, = session.tool_responses
    assert "shipped" in str(response)
    assert result.reply_latencies()[0] <= 2.0, "the model spoke after the tool answered"


async def test_openai_tool_call_round_trips_and_the_model_speaks_after() -> None:
    user_tools.CALLS.clear()
    async with FakeOpenAIRealtime(tool_call={"name": "book_callback", "arguments": {"minutes": 15}}) as fake:
        yaml_text = openai_chain(fake, tools="['stages.tools:book_callback']")
        with LiveServer(yaml_text) as server:
            result = await run_call(server.ws_url, [Pause(0.3), Say(speech("vm-goodbye")), WaitQuiet(idle=1.0)])
        session = fake.sessions[0]
    assert user_tools.CALLS == [("book_callback", {"minutes": 15})]
    assert "booked in 15 minutes" in str(session.function_outputs)
    assert result.events_of("audio_start"), "a spoken reply followed the tool result"


@pytest.fixture
def fake_twilio_rest() -> Iterator[tuple[str, list[dict]]]:
    """Twilio's REST API as far as hanging up a call goes: POST .../Calls/{sid}.json, recorded."""
    app, seen = FastAPI(), []

    @app.post("/2010-04-01/Accounts/{account}/Calls/{call}.json")
    async def update_call(account: str, call: str, request: Request) -> dict:
        seen.append({"account": account, "call": call, **dict(await request.form())})
        return {"sid": call, "account_sid": account, "status": "completed"}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.01)
    yield f"http://127.0.0.1:{port}", seen
    server.should_exit = True
    thread.join(5)


@pytest.mark.parametrize("via_rest", [False, True], ids=["stream-close", "twilio-rest"])
async def test_end_call_hangs_up_after_the_goodbye_has_played(via_rest: bool, fake_twilio_rest) -> None:
    rest_url, rest_calls = fake_twilio_rest
    script = GeminiScript(tool_call={"name": "end_call", "args": {"reason": "caller is done"}})
    async with FakeGeminiLive(script=script) as fake:
        yaml_text = gemini_chain(fake, turn_detection="model", vad=False)
        if via_rest:
            yaml_text = (f"twilio: {{account_sid: ACtest, auth_token: secret, api_base_url: '{rest_url}'}}\n"
                         "security: {check_signatures: false}\n" + yaml_text)
        with LiveServer(yaml_text) as server:
            result = await run_call(server.http_url, [Pause(0.3), Say(speech("vm-goodbye")), WaitQuiet(idle=5.0)])
    print(result.timeline())
    goodbye_start = result.events_of("audio_start")[0].t
    goodbye_end = result.events_of("audio_end")[-1].t
    assert goodbye_end - goodbye_start >= 1.4, "the whole 1.5 s goodbye was heard"
    closed = result.events_of("closed")[-1]
    assert closed.detail.endswith("by server"), "the bridge hung up, not the caller"
    assert closed.t >= goodbye_end, "only after the goodbye had played"
    assert closed.t - goodbye_end <= 2.0
    if via_rest:
        assert rest_calls == [{"account": "ACtest", "call": result.call_sid, "Status": "completed"}]
    else:
        assert rest_calls == []


async def test_a_slow_tool_gets_the_model_talking_instead_of_dead_air() -> None:
    user_tools.CALLS.clear()
    async with FakeOpenAIRealtime(tool_call={"name": "slow_lookup", "arguments": {"order_id": "B2"}}) as fake:
        with LiveServer(openai_chain(fake, tools="['stages.tools:slow_lookup']")) as server:
            result = await run_call(server.ws_url, [Pause(0.3), Say(speech("vm-goodbye")), WaitQuiet(idle=3.5)])
        session = fake.sessions[0]
    print(result.timeline())
    kinds = [e["type"] for e in session.events]
    first_output = next(i for i, e in enumerate(session.events)
                        if e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output")
    interim = [i for i, e in enumerate(session.events[:first_output])
               if e["type"] == "conversation.item.create" and "running" in str(e["item"])]
    assert interim, "the model was told the tool is still running before its result arrived"
    assert "response.create" in kinds[interim[0]:first_output], "and asked to speak meanwhile"
    assert "delayed" in str(session.function_outputs)
    # The caller heard the model while the tool ran (it cannot return before offset + 0.5 s silence
    # + SLOW_SECONDS), then the answer with the result: two 1.5 s replies.
    offset = result.utterances[0][1]
    first = next(e.t for e in result.events_of("audio_start") if e.t > offset)
    assert first - offset < 0.5 + user_tools.SLOW_SECONDS, first - offset
    heard_after = (abs(result.heard[int(offset * 8000):].astype(int)) > 0).sum() / 8000
    assert heard_after >= 2.8, heard_after
