"""Swapping the chain new calls get: a running call keeps its own to the end, the next call gets the new one.

Two chains a caller can tell apart by ear: the echo line answers only after the
caller stops talking, the loopback line returns the caller's audio while they talk.
"""

from __future__ import annotations

from agent_voice_bridge.pipelines.chain import build_chain
from agent_voice_bridge.pipelines.loader import load_text
from agent_voice_bridge.transports.simulated_caller import CallResult, Pause, Say, Until, WaitQuiet, run_call
from conftest import ECHO_YAML, LiveServer, speech

LOOPBACK_YAML = ECHO_YAML.replace("  - echo\n", "  - loopback\n")


def first_audio_after_speech_began(result: CallResult) -> float:
    """Seconds from the caller's first word to the first audio they heard back."""
    (onset, _), = result.utterances
    return result.events_of("audio_start")[0].t - onset


async def test_a_swap_leaves_the_running_call_on_its_chain_and_gives_the_next_call_the_new_one() -> None:
    words = speech("hello-world")
    loopback = build_chain(load_text(LOOPBACK_YAML, "pipelines/loopback.yaml"))
    with LiveServer(ECHO_YAML, "pipelines/echo.yaml") as server:
        chains = server.app.state.chains
        echo = chains.current
        seen: list = []

        def swap_while_live() -> bool:
            if len(server.calls.live) != 1:
                return False
            live, = server.calls.live.values()
            seen.append((live.chain, list(live.chain.stages)))
            chains.swap(loopback)
            return True

        during = await run_call(server.ws_url, [Until(swap_while_live), Pause(0.2), Say(words, "hello"),
                                                WaitQuiet(idle=0.8)])
        (_, offset), = during.utterances
        assert seen and seen[0][0] is echo, "the running call was given the echo chain"
        assert during.events_of("audio_start")[0].t >= offset - 0.05, (
            "the call that was running at the swap still echoes after the caller stops\n" + during.timeline())
        assert seen[0][1] == echo.stages and chains.current is loopback

        after = await run_call(server.ws_url, [Pause(0.2), Say(words, "hello"), WaitQuiet(idle=0.8)])
        assert first_audio_after_speech_began(after) < 0.5, (
            "the next call runs the loopback chain: it hears itself while still talking\n" + after.timeline())
        assert server.app.state.chains.chain_for("+15550002222") is loopback
        server.wait_idle(finished=2)
