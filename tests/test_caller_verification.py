"""Memory with ``verify: sms``: earlier calls stay out of the model's context until the caller reads back a code
texted (through the real twilio client, to the fake Twilio REST API) to the number they claim."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pipecat.services.llm_service import FunctionCallParams

from agent_voice_bridge.calls.live_call import LiveCall
from agent_voice_bridge.pipelines.chain import build_chain
from agent_voice_bridge.pipelines.config import TwilioConfig
from agent_voice_bridge.pipelines.loader import load_text
from agent_voice_bridge.services import caller_verification
from agent_voice_bridge.services.caller_verification import CallerVerification
from agent_voice_bridge.transports.call_info import CallInfo
from agent_voice_bridge.transports.simulated_caller import Pause, Say, WaitHeard, WaitQuiet, run_call
from conftest import ECHO_YAML, LiveServer, free_port, speech
from fakes.openai_realtime import FakeOpenAIRealtime
from fakes.twilio_rest import FakeTwilioRest

ACCOUNT, TOKEN, LINE, CALLER = "AC" + "1" * 32, "verify-token", "+15550100000", "+15557770001"
CALLER_SAID = "My PIN is 4321, please move my booking."
SID = "CA" + "a" * 32


def verified_memory_yaml(port: int, twilio: FakeTwilioRest, fake: FakeOpenAIRealtime, tmp_path: Path) -> str:
    return (f"server: {{public_url: 'http://127.0.0.1:{port}'}}\n"
            f"twilio: {{account_sid: {ACCOUNT}, auth_token: {TOKEN}, phone_number: '{LINE}', "
            f"api_base_url: '{twilio.url}'}}\n"
            f"storage: {{url: 'sqlite:///{tmp_path}/calls.db'}}\n"
            "pipeline:\n  - twilio.input\n  - openai.realtime:\n      api_key: test-key\n"
            f"      base_url: {fake.url}\n      audio_format: pcmu\n      instructions: 'You answer the phone.'\n"
            "      memory: {calls: 3, verify: sms}\n  - twilio.output\n")


def declared_tools(session: Any) -> set[str]:
    return {tool["name"] for tool in session.config.get("tools") or []}


async def test_earlier_calls_stay_out_of_the_context_and_a_code_is_texted_to_the_number(tmp_path: Path) -> None:
    port = free_port()
    tool_call = {"name": caller_verification.SEND_CODE, "arguments": {}}
    async with FakeOpenAIRealtime(input_transcript=CALLER_SAID, reply_seconds=1.0, tool_call=tool_call) as fake:
        with FakeTwilioRest(ACCOUNT, TOKEN) as twilio:
            yaml_text = verified_memory_yaml(port, twilio, fake, tmp_path)
            steps = [Pause(0.3), Say(speech("hello-world")), WaitHeard(), WaitQuiet(idle=1.0)]
            with LiveServer(yaml_text, port=port) as server:
                for finished in (1, 2):
                    await run_call(server.http_url, steps, from_number=CALLER, to_number=LINE, auth_token=TOKEN)
                    server.wait_idle(finished=finished)
        first, second = fake.sessions
        outputs = [o.output for o in second.function_outputs]
    assert caller_verification.SEND_CODE not in declared_tools(first), "nothing to unlock on a first call"
    assert CALLER_SAID not in second.config["instructions"], "the earlier call is not in the context"
    assert caller_verification.INSTRUCTION in second.config["instructions"]
    assert {caller_verification.SEND_CODE, caller_verification.RECALL} <= declared_tools(second)
    text, = twilio.messages
    assert (text["To"], text["From"]) == (CALLER, LINE)
    assert re.search(r"\b\d{6}\b", text["Body"]), text["Body"]
    assert any("texted" in o for o in outputs), outputs


def params(arguments: dict[str, Any], results: list[Any]) -> FunctionCallParams:
    async def result_callback(result: Any, *, properties: Any = None) -> None:
        results.append(result["result"])

    return FunctionCallParams(function_name=caller_verification.RECALL, tool_call_id="c1", arguments=arguments,
                              llm=None, pipeline_worker=None, context=None, result_callback=result_callback,
                              app_resources=None, worker_runner=None)


async def test_only_the_texted_code_opens_the_earlier_calls_and_three_wrong_codes_close_them() -> None:
    with FakeTwilioRest(ACCOUNT, TOKEN) as twilio:
        config = TwilioConfig(account_sid=ACCOUNT, auth_token=TOKEN, phone_number=LINE, api_base_url=twilio.url)
        call = CallInfo(call_sid=SID, stream_sid="MZ" + "a" * 32, caller=CALLER, memory=f"Earlier: {CALLER_SAID}")
        call.control = LiveCall(call, build_chain(load_text(ECHO_YAML, "echo.yaml")), config)  # texts from LINE
        results: list[Any] = []

        verification = CallerVerification(call)
        await verification.recall(params({"code": "000000"}, results))
        await verification.send_code(params({}, results))
        code = re.search(r"\d{6}", twilio.messages[-1]["Body"]).group()
        wrong = "111111" if code != "111111" else "222222"
        await verification.recall(params({"code": wrong}, results))
        await verification.recall(params({"code": " ".join(code)}, results))  # read back digit by digit

        guessed = CallerVerification(call)
        await guessed.send_code(params({}, results))
        code = re.search(r"\d{6}", twilio.messages[-1]["Body"]).group()
        for _ in range(caller_verification.MAX_ATTEMPTS):
            await guessed.recall(params({"code": "111111" if code != "111111" else "222222"}, results))
        await guessed.recall(params({"code": code}, results))
    assert results[0].startswith("No valid code was sent"), "no code, nothing recalled"
    assert "texted" in results[1]
    assert results[2].startswith("That code is wrong") and CALLER_SAID not in results[2]
    assert results[3] == f"Earlier: {CALLER_SAID}", "the right code recalls the earlier calls"
    assert results[-1].startswith("Too many wrong codes") and CALLER_SAID not in results[-1]
    assert len(twilio.messages) == 2 and {m["To"] for m in twilio.messages} == {CALLER}
