"""Cascade reply time: the caller's end of speech → the first reply audio heard, and where it goes.

One server subprocess (``--workers 1``) runs ``pipelines/claude.yaml``'s chain
(local Whisper and Piper; ``vad.interrupter`` with the shipped ``stop_secs`` 0.6)
against the fake Anthropic Messages API from ``tests/fakes`` in this process,
with ``bench.probe:Probe`` stages after the STT, the LLM and the TTS. The
simulated caller says real speech clips one after another and waits for each
reply. Per utterance, on one monotonic clock (caller and server on one machine):

- ``vad_stop``: end of speech (last 20 ms frame above −40 dBFS) → the VAD's stop
  (``stop_secs`` of quiet; the turn-taking choice, not a wait to remove);
- ``transcript``: → Whisper's transcript (the model's work on the segment);
- ``turn_end``: → the LLM starts its request (the user aggregator's wait);
- ``first_token``: → the LLM's first text (the fake answers at once);
- ``first_tts_audio``: → the TTS's first audio frame (sentence aggregation + synthesis);
- ``heard``: end of speech → the first reply audio the caller plays (the total);
- ``gap``: the longest silence inside the reply once it began (a pause between
  pieces synthesised apart; Piper's own pauses between sentences count too).

Needs the ``[local]`` extra. The fake streams each reply two words every
``DELTA_SECS``, about a fast model's pace.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.analysis import percentile
from bench.callers import speech_clips
from bench.servers import ServerProcess, ServerSpec, free_port

ROOT = Path(__file__).resolve().parent.parent
CLIPS = ("hello-world", "one-moment-please", "all-circuits-busy-now", "vm-goodbye")
REPLY = ("Sure, the front desk is open from nine in the morning until five in the afternoon, "
         "every day but Sunday. Is there anything else?")
DELTA_SECS = 0.03
STEPS = ("vad_stop", "transcript", "turn_end", "first_token", "first_tts_audio")
MARKS = {"vad_stop": ("stt", "VADUserStoppedSpeakingFrame"), "transcript": ("stt", "TranscriptionFrame"),
         "turn_end": ("llm", "LLMFullResponseStartFrame"), "first_token": ("llm", "LLMTextFrame"),
         "first_tts_audio": ("tts", "TTSAudioRawFrame")}


def chain_yaml(fake_url: str, probe_path: Path) -> str:
    """claude.yaml's stages (no greeting, so every reply answers an utterance), with probes."""
    def probe(where: str) -> str:
        return f"  - bench.probe:Probe: {{path: {json.dumps(str(probe_path))}, where: {where}}}"

    return "\n".join([
        "pipeline:", "  - twilio.input", "  - mulaw.decode", "  - resample: {rate: 16000}",
        "  - vad.interrupter: {start_secs: 0.2, stop_secs: 0.6}", "  - stt.whisper", probe("stt"),
        "  - llm.anthropic:", "      api_key: test-key", "      model: claude-test", f"      base_url: {fake_url}",
        probe("llm"), "  - tts.piper: {sample_rate: 8000}", probe("tts"), "  - mulaw.encode", "  - twilio.output",
    ]) + "\n"


def _fakes() -> Any:
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from fakes.anthropic import FakeAnthropic, Reply

    return FakeAnthropic, Reply


async def _call(url: str, utterances: int) -> Any:
    from agent_voice_bridge.transports.simulated_caller import Pause, Say, WaitReply, run_call

    clips = dict(speech_clips())
    steps: list[Any] = [Pause(0.5)]
    for i in range(utterances):
        name = CLIPS[i % len(CLIPS)]
        steps += [Say(clips[name], name), WaitReply(timeout=15.0, idle=1.0)]
    return await run_call(url, steps, tail=0.3, connect_timeout=20.0)


def _per_utterance(result: Any, marks: list[dict[str, Any]]) -> list[dict[str, float | None]]:
    """Each utterance's steps in ms after its end of speech (None: the step was not seen before the next)."""
    rows = []
    ends = [result.started_at + off for _, off in result.utterances]
    latencies = result.reply_latencies()
    for i, end in enumerate(ends):
        limit = ends[i + 1] if i + 1 < len(ends) else float("inf")
        row: dict[str, float | None] = {}
        for step, (where, frame) in MARKS.items():
            t = next((m["t"] for m in marks if m["where"] == where and m["frame"] == frame and end - 0.3 <= m["t"]
                      < limit), None)
            row[step] = None if t is None else round((t - end) * 1000.0, 1)
        row["heard"] = None if latencies[i] != latencies[i] else round(latencies[i] * 1000.0, 1)
        row["gap"] = _worst_gap(result, end - result.started_at, limit - result.started_at)
        rows.append(row)
    return rows


def _worst_gap(result: Any, begin: float, limit: float) -> float | None:
    """The longest silence inside one reply (between its stretches of audio), in ms on the caller's clock."""
    starts = [e.t for e in result.events_of("audio_start") if begin <= e.t < limit]
    ends = [e.t for e in result.events_of("audio_end") if begin <= e.t < limit]
    gaps = [s - max(e for e in ends if e <= s) for s in starts[1:] if any(e <= s for e in ends)]
    return round(max(gaps) * 1000.0, 1) if gaps else (0.0 if starts else None)


def run_cascade(utterances: int = 8, log_dir: Path | None = None) -> dict[str, Any]:
    """Say ``utterances`` clips in one call; per step p50/p95 in ms after the caller's end of speech."""
    FakeAnthropic, Reply = _fakes()
    log = (log_dir or ROOT / "bench" / "results" / "logs") / "cascade-server.log"

    async def main() -> tuple[Any, list[dict[str, Any]]]:
        fake = FakeAnthropic(respond=lambda request: Reply(REPLY, delay=DELTA_SECS))
        async with fake:
            with tempfile.TemporaryDirectory(prefix="bench-cascade-") as tmp:
                probe_path = Path(tmp) / "probe.jsonl"
                config = Path(tmp) / "cascade.yaml"
                config.write_text(chain_yaml(fake.url, probe_path))
                spec = ServerSpec.ours(config, free_port(), workers=1)
                with ServerProcess(spec, log):
                    result = await _call(spec.ws_url, utterances)
                marks = [json.loads(line) for line in probe_path.read_text().splitlines() if line.strip()]
        return result, marks

    result, marks = asyncio.run(main())
    rows = _per_utterance(result, marks)
    summary: dict[str, Any] = {"utterances": utterances, "replied": sum(r["heard"] is not None for r in rows),
                               "reply": REPLY, "delta_secs": DELTA_SECS, "per_utterance": rows}
    for step in (*STEPS, "heard", "gap"):
        values = [r[step] for r in rows if r[step] is not None]
        summary[f"{step}_p50_ms"] = percentile(values, 50)
        summary[f"{step}_p95_ms"] = percentile(values, 95)
    for before, step in zip(("end of speech", *STEPS), STEPS):
        values = [r[step] - (r[before] if before in r else 0.0) for r in rows
                  if r[step] is not None and (before not in r or r[before] is not None)]
        summary[f"{step}_step_p50_ms"] = percentile(values, 50)
        summary[f"{step}_step_p95_ms"] = percentile(values, 95)
    return summary


def table(summary: dict[str, Any]) -> str:
    lines = [f"cascade: {summary['replied']}/{summary['utterances']} utterances answered; ms after end of speech",
             "| step | p50 | p95 | this step alone p50 | p95 |", "|---|---|---|---|---|"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    for step in (*STEPS, "heard", "gap"):
        cells = [summary[f"{step}_p50_ms"], summary[f"{step}_p95_ms"],
                 summary.get(f"{step}_step_p50_ms"), summary.get(f"{step}_step_p95_ms")]
        lines.append(f"| {step} | " + " | ".join(ms(c) for c in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.cascade", description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=8)
    args = parser.parse_args()
    out = run_cascade(args.utterances)
    print(json.dumps(out["per_utterance"], indent=1), file=sys.stderr)
    print(table(out))
