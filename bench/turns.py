"""Turn-taking on phone-line scenes (issue 19): false barge-ins, missed ones, backchannels, end of turn.

Every scene of :mod:`bench.turn_corpus` is one simulated Twilio call through its :class:`PhoneLine`
(noise, the echo of what the phone played, the 300–3400 Hz band, μ-law), against a server whose "AI"
is ``bench.known_reply.KnownReply``: it answers each end of the caller's turn with a known 6–8 s reply.
The same scenes run against each server:

* ``ours``: ``bench/pipelines/turns.yaml``, the shipped chain (``vad.interrupter`` as shipped);
* ``ours-<name>``: ``bench/pipelines/turns-<name>.yaml``, the same chain with other options;
* ``pipecat``: ``bench/reference_server.py --line turns``: pipecat's ``VADProcessor(SileroVADAnalyzer())``
  and ``UserTurnProcessor()`` with its default strategies (VAD start interrupts, Smart Turn v3 ends the
  turn), pipecat's own Twilio transport and serializer.

Per condition (clean, each echo, each noise), from what the caller sent and heard on its own clock:

* **false barge-ins per minute of AI speech**: ``clear``s while the caller listens silently through a
  reply (``listen`` scenes), per minute of reply audio heard; **spurious turns**: replies that start
  again while the caller is silent (the echo or the noise taken for a turn of the caller's);
* **backchannels cut**: a ``clear`` from the onset of a 250–380 ms "uh-huh" over the AI to 0.6 s after it;
* **barge-ins caught** (a ``clear`` within 1.5 s of the caller's onset over the AI) and **onset →
  ``clear``** p50/p95 (onset: first 20 ms frame above -40 dBFS of the clean speech);
* **premature turn ends**: a reply starting inside an utterance with 0.35–0.9 s pauses mid-sentence;
  **end of speech → reply start** p50/p95 (plain questions and paused utterances), and replies that never
  came (the turn never ended).

Calls run ``concurrency`` at a time on a shared box: the timing figures are noisy, compare servers of
the same run. ``python -m bench --only turns`` (``--turn-servers ours,pipecat,ours-<name>``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.analysis import percentile
from bench.servers import ServerProcess, ServerSpec, cpu_seconds, free_port, tree_pids
from bench.turn_corpus import FRAME, RATE, Scene, frame_dbfs, scenes

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = ROOT / "bench" / "pipelines"
CAUGHT_WITHIN_SECS = 1.5
BACKCHANNEL_CUT_SECS = 0.6
HEARD_DBFS = -40.0
NEW_REPLY_GAP_SECS = 0.3


def server_spec(name: str, workers: int | None = None) -> ServerSpec:
    if name == "pipecat":
        return ServerSpec.pipecat(free_port(), line="turns")
    path = PIPELINES / ("turns.yaml" if name == "ours" else f"turns-{name.removeprefix('ours-')}.yaml")
    if not name.startswith("ours") or not path.exists():
        raise SystemExit(f"bench turns: unknown server {name!r} (ours, pipecat, ours-NAME for {PIPELINES}/turns-NAME.yaml)")
    spec = ServerSpec.ours(path, free_port(), workers)
    spec.name = name
    return spec


async def _run_scenes(url: str, corpus: list[Scene], concurrency: int) -> list[Any]:
    from agent_voice_bridge.transports.simulated_caller import run_call

    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, scene: Scene) -> Any:
        line = scene.make_line()
        async with gate:
            await asyncio.sleep(0.05 * (i % concurrency))  # spread the frame clocks of simultaneous calls
            try:
                return await run_call(url, scene.steps, tail=0.3, connect_timeout=15.0, line=line)
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"

    return await asyncio.gather(*(one(i, s) for i, s in enumerate(corpus)))


def _loud(heard: np.ndarray, t0: float, t1: float) -> float:
    """Seconds of heard audio above -40 dBFS between t0 and t1 (caller clock)."""
    a, b = max(0, int(t0 * RATE)), min(len(heard), int(t1 * RATE))
    if b <= a:
        return 0.0
    return float(np.sum(frame_dbfs(heard[a:b].astype(np.float64)) > HEARD_DBFS)) * FRAME / RATE


def _reply_starts(r: Any) -> list[float]:
    """Times a reply began: audio starting after at least ``NEW_REPLY_GAP_SECS`` with nothing queued.

    A player that runs dry for a frame or two (a server pacing its audio in real time, late) restarts
    playing, which is not a new reply.
    """
    starts, last_end = [], -math.inf
    for e in r.events:
        if e.kind == "audio_start" and e.t - last_end >= NEW_REPLY_GAP_SECS:
            starts.append(e.t)
        elif e.kind == "audio_end":
            last_end = e.t
    return starts


def score_scene(scene: Scene, r: Any) -> dict[str, Any]:
    """What one call shows, by the scene's kind (see the module's docstring)."""
    out: dict[str, Any] = {"scene": scene.name, "condition": scene.condition, "kind": scene.kind}
    if isinstance(r, str):
        return {**out, "error": r}
    if len(r.utterances) != len(scene.labels):
        return {**out, "error": f"{len(r.utterances)} utterances, expected {len(scene.labels)}"}
    starts = _reply_starts(r)
    clears = list(r.clears)
    end = len(r.heard) / RATE
    (q_on, q_off) = r.utterances[0]
    first = next((t for t in starts if t >= q_on - 1e-9), None)
    if first is None:
        out["no_reply"] = 1
    elif first < q_off - 0.02:
        out["premature"] = 1
    else:
        out["reply_ms"] = round((first - q_off) * 1000.0, 1)
    if scene.kind == "pauses":
        out["paused"] = 1
    elif scene.kind == "listen" and first is not None:
        out["ai_secs"] = _loud(r.heard, first, end)
        out["false_clears"] = sum(1 for t in clears if t >= first)
        out["spurious_turns"] = sum(1 for t in starts if t > first)
    elif scene.kind == "backchannel":
        cuts = over = 0
        for on, off in r.utterances[1:]:
            if _loud(r.heard, on - 0.1, on + 0.02) > 0:  # the AI was audible when it began
                over += 1
                cuts += any(on <= t <= off + BACKCHANNEL_CUT_SECS for t in clears)
        out["backchannels"], out["backchannel_cuts"] = over, cuts
    elif scene.kind == "barge":
        on, _ = r.utterances[1]
        if _loud(r.heard, on - 0.1, on + 0.02) > 0:
            out["barge_ins"] = 1
            hit = next((t for t in clears if on - 1e-9 <= t <= on + CAUGHT_WITHIN_SECS), None)
            if hit is None:
                out["missed"] = 1
            else:
                out["clear_ms"] = round((hit - on) * 1000.0, 1)
        out["early_clears"] = sum(1 for t in clears if first is not None and first <= t < on)
    return out


GROUPS = {
    "clean": lambda c: c == "clean",
    "echo ≥10 dB": lambda c: c.startswith("echo-") and int(c[5:-2]) >= 10,
    "echo 6 dB": lambda c: c == "echo-6dB",
    "noise": lambda c: not c.startswith("echo") and c != "clean",
}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals and percentiles over a set of scored scenes."""
    total = defaultdict(float)
    reply, clear = [], []
    for row in rows:
        for key in ("ai_secs", "false_clears", "spurious_turns", "backchannels", "backchannel_cuts", "barge_ins",
                    "missed", "premature", "paused", "no_reply", "early_clears"):
            total[key] += row.get(key, 0)
        total["errors"] += "error" in row
        if "reply_ms" in row:
            reply.append(row["reply_ms"])
        if "clear_ms" in row:
            clear.append(row["clear_ms"])
    minutes = total["ai_secs"] / 60.0
    paused_premature = sum(1 for r in rows if r.get("paused") and r.get("premature"))
    return {
        "scenes": len(rows),
        "errors": int(total["errors"]),
        "ai_speech_min": round(minutes, 2),
        "false_barge_ins": int(total["false_clears"] + total["early_clears"]),
        "false_per_min": round((total["false_clears"] + total["early_clears"]) / minutes, 2) if minutes else None,
        "spurious_turns": int(total["spurious_turns"]),
        "backchannels": int(total["backchannels"]),
        "backchannels_cut": int(total["backchannel_cuts"]),
        "barge_ins": int(total["barge_ins"]),
        "missed": int(total["missed"]),
        "clear_p50_ms": percentile(clear, 50),
        "clear_p95_ms": percentile(clear, 95),
        "paused": int(total["paused"]),
        "premature_paused": paused_premature,
        "premature_all": int(total["premature"]),
        "no_reply": int(total["no_reply"]),
        "reply_p50_ms": percentile(reply, 50),
        "reply_p95_ms": percentile(reply, 95),
    }


def run_turns(servers: list[str], *, repeats: int = 1, concurrency: int = 6, seed: int = 19,
              log_dir: Path | None = None, workers: int | None = None) -> dict[str, Any]:
    corpus = scenes(seed, repeats=repeats)
    for scene in corpus:
        scene.make_line()  # generate (and cache) every noise track before any server runs
    results: dict[str, Any] = {"scenes": len(corpus), "repeats": repeats, "seed": seed, "concurrency": concurrency,
                               "servers": {}}
    for name in servers:
        spec = server_spec(name, workers)
        log = (log_dir or ROOT / "bench" / "results" / "logs") / f"turns-{name}.log"
        with ServerProcess(spec, log) as server:
            cpu0, t0 = cpu_seconds(tree_pids(server.pid)), time.monotonic()
            calls = asyncio.run(_run_scenes(spec.ws_url, corpus, concurrency))
            cpu = cpu_seconds(tree_pids(server.pid)) - cpu0
            wall = time.monotonic() - t0
        call_secs = sum(len(c.sent) / RATE for c in calls if not isinstance(c, str))
        rows = [score_scene(s, c) for s, c in zip(corpus, calls)]
        by_condition = defaultdict(list)
        for row in rows:
            by_condition[row["condition"]].append(row)
        results["servers"][name] = {
            "cpu_ms_per_call_s": round(cpu * 1000.0 / call_secs, 2) if call_secs else None,
            "wall_s": round(wall, 1),
            "all": summarise(rows),
            "groups": {g: summarise([r for r in rows if test(r["condition"])]) for g, test in GROUPS.items()},
            "conditions": {c: summarise(rs) for c, rs in sorted(by_condition.items())},
            "scenes": rows,
        }
    return results


def _fmt(x: Any) -> str:
    return "–" if x is None else f"{x:.0f}" if isinstance(x, float) and x >= 10 else f"{x:g}" if isinstance(x, float) else str(x)


def table(results: dict[str, Any], *, conditions: bool = False) -> str:
    """Markdown: one row per group (and condition) and server."""
    head = ("| group | server | false/min (n) | spurious turns | backchannels cut | barge-ins caught | "
            "onset→clear p50/p95 ms | premature (paused) | end→reply p50/p95 ms | no reply |")
    lines = [head, "|" + "---|" * 10]
    servers = results["servers"]
    groups = list(GROUPS) + ([c for c in sorted(next(iter(servers.values()))["conditions"]) if c not in GROUPS]
                             if conditions and servers else [])
    for g in groups:
        for name, res in servers.items():
            s = res["groups"].get(g) or res["conditions"].get(g)
            if s is None:
                continue
            lines.append(
                f"| {g} | {name} | {_fmt(s['false_per_min'])} ({s['false_barge_ins']}) | {s['spurious_turns']} | "
                f"{s['backchannels_cut']}/{s['backchannels']} | {s['barge_ins'] - s['missed']}/{s['barge_ins']} | "
                f"{_fmt(s['clear_p50_ms'])}/{_fmt(s['clear_p95_ms'])} | {s['premature_all']} ({s['premature_paused']}/"
                f"{s['paused']}) | {_fmt(s['reply_p50_ms'])}/{_fmt(s['reply_p95_ms'])} | {s['no_reply']} |")
    cpu = ", ".join(f"{n} {r['cpu_ms_per_call_s']} ms/call-s" for n, r in servers.items())
    lines.append(f"\nServer CPU: {cpu}. Scenes: {results['scenes']}, {results['concurrency']} calls at a time.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python -m bench.turns", description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="ours,pipecat")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--conditions", action="store_true", help="also one row per line condition")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_turns([s.strip() for s in args.servers.split(",") if s.strip()], repeats=args.repeats,
                        concurrency=args.concurrency, log_dir=out / "logs")
    path = out / f"turns-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x))
    print(table(results, conditions=args.conditions))
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
