"""Live edits under load (issue 17): echo-line calls running while the server's files are edited.

``voice-bridge serve -c lines.yaml`` serves ``+15550100`` with the chain ``twilio.input → loopback →
bench.watermark:Watermark {key: K} → twilio.output``: every frame a caller sends comes back, the
configuration's key in each byte (:mod:`bench.watermark`). Calls start in waves: one before the first
edit and one after each edit has been taken by every worker. Then ``lines.yaml`` and the line's pipeline
file are edited, as a person saves them, every other edit broken (a good edit gives the line a new key;
a broken one would give it a key no good edit uses, were it applied, in whole or in part). Every call
talks until the last edit, so the first wave lives through all of them.

From each call's own audio: whether the server dropped it, whether every frame came back in order
(completeness 1.0 and the heard stream equal to the sent one, frame by frame), and which configuration
returned each frame: a call must hear the key that served when it started, and only that key, to its end.
From ``/healthz``: how long an edit took from the save to serving new calls on every worker (or to
being refused). Then 100 more good edits with no call running: the server's memory (RSS, all its
processes) before and after.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from bench.analysis import output_gaps, percentile
from bench.watermark import MANTISSA, keys_heard

NUMBER = "+15550100"
OTHER_KEY = MANTISSA
"""The default line's key (never edited): heard by a call to NUMBER only if lines were mixed up."""
BROKEN_KEYS = (8, 9, 10, 11, 12, 13, 14)
"""Keys only broken edits give: never heard unless a configuration that does not check served."""
GOOD_KEYS = (1, 2, 3, 4, 5, 6, 7)
FRAME = 160
WAVE_START_SECONDS = 60.0
EDIT_SECONDS = 30.0
"""How long an edit may take to be noticed, checked and taken by every worker (a shared, busy machine)."""


def chain_yaml(key: int, *, broken: int = 0) -> str:
    """The line's pipeline file with ``key``; ``broken`` (1, 2): the same with a mistake ``check`` refuses."""
    output = "  - twilio.output: {mark_every_ms: 5}\n" if broken == 1 else "  - twilio.output\n"
    extra = "  - l00pback\n" if broken == 2 else ""
    return ("# bench --only reloads: every frame back, each byte marked with this configuration's key\n"
            "pipeline:\n  - twilio.input\n  - loopback\n"
            f"  - bench.watermark:Watermark: {{key: {key}}}\n{extra}{output}")


@dataclass
class Edit:
    """One save: which file, whether it checks, and the key the line has once it is taken."""

    number: int
    path: Path
    good: bool
    key: int
    saved_at: float = 0.0
    taken_s: float | None = None
    """Seconds from the save to every worker reporting it (serving it, or refusing it)."""
    refused: bool = False
    """Every worker refused it (what a broken edit must get), keeping the configuration it served."""


@dataclass
class ConfigTree:
    """``lines.yaml`` and its pipeline files in ``root``, edited as editors save: a new file renamed over the old."""

    root: Path
    key: int = GOOD_KEYS[0]
    file_number: int = 1
    edits: list[Edit] = field(default_factory=list)
    broken: Path | None = None
    """The file the last edit broke, until an edit mends it."""

    def __post_init__(self) -> None:
        (self.root / "pipelines").mkdir(parents=True, exist_ok=True)
        self._save(self.root / "pipelines" / "other.yaml", chain_yaml(OTHER_KEY))
        self._save(self.pipeline, chain_yaml(self.key))
        self._save(self.lines, self._lines_yaml(self.pipeline.name))

    @property
    def lines(self) -> Path:
        return self.root / "lines.yaml"

    @property
    def pipeline(self) -> Path:
        """The line's pipeline file now (a good edit of lines.yaml moves the line to a new one)."""
        return self.root / "pipelines" / f"echo-{self.file_number}.yaml"

    def _lines_yaml(self, file: str, broken: int = 0) -> str:
        doc: dict[str, Any] = {"server": {"host": "127.0.0.1", "drain_seconds": 5}, "security": {"store": "memory"},
                               "storage": {"url": f"sqlite:///{self.root / 'calls.db'}"},
                               "lines": {NUMBER: f"pipelines/{file}", "default": "pipelines/other.yaml"}}
        if broken == 1:  # all or nothing: the line's own new file is fine, the other line's is missing
            doc["lines"]["default"] = "pipelines/missing.yaml"
        text = yaml.safe_dump(doc, sort_keys=False)
        if broken == 2:  # not YAML at all
            text = text.replace("lines:", "lines: [", 1)
        return text

    def _save(self, path: Path, text: str) -> None:
        fresh = path.with_name(f".{path.name}.saving")
        fresh.write_text(text)
        os.replace(fresh, path)

    def edit(self, number: int) -> Edit:
        """Edit ``number`` (1-based) of the scenario: odd ones good, even ones broken. Good edits alternate
        between the pipeline file and lines.yaml; a broken edit breaks the file the next good edit mends."""
        good = number % 2 == 1
        good_one = (number + 1) // 2 if good else number // 2 + 1  # the good edit this one is, or precedes
        on_lines = good_one % 2 == 0
        variant = 1 + (number // 4) % 2  # each kind of mistake, on each file
        if good:
            self.key = GOOD_KEYS[good_one % len(GOOD_KEYS)]
            key = self.key
            if on_lines:
                self.file_number += 1
                self._save(self.pipeline, chain_yaml(key))  # not watched yet: this save reloads nothing
                path, text = self.lines, self._lines_yaml(self.pipeline.name)
            else:
                path, text = self.pipeline, chain_yaml(key)
        else:
            key = BROKEN_KEYS[(number // 2) % len(BROKEN_KEYS)]
            if on_lines:
                spare = self.root / "pipelines" / f"broken-{number}.yaml"
                self._save(spare, chain_yaml(key))  # a file that checks: only the other line's entry is wrong
                path, text = self.lines, self._lines_yaml(spare.name, broken=variant)
            else:
                path, text = self.pipeline, chain_yaml(key, broken=variant)
        edit = Edit(number, path, good, key if good else self.key)
        self.broken = None if good else path
        self._save(path, text)
        edit.saved_at = time.monotonic()
        self.edits.append(edit)
        return edit

    def good_edit(self) -> Edit:
        """A good edit of the pipeline file (the memory phase): the next key; lines.yaml is saved again too
        (as the last good edit left it), in case the last edit broke it."""
        self.key = GOOD_KEYS[(GOOD_KEYS.index(self.key) + 1) % len(GOOD_KEYS)]
        self._save(self.pipeline, chain_yaml(self.key))
        if self.broken == self.lines:
            self._save(self.lines, self._lines_yaml(self.pipeline.name))
        self.broken = None
        return Edit(0, self.pipeline, True, self.key, saved_at=time.monotonic())


class Workers:
    """The server's worker processes as ``/healthz`` shows them (each answer comes from one worker)."""

    def __init__(self, base_url: str, count: int) -> None:
        self.url = f"{base_url}/healthz"
        self.count = count
        self.seen: dict[int, dict[str, Any]] = {}
        # no keep-alive: each poll is a new connection, so any worker may take it
        self._client = httpx.AsyncClient(timeout=5, limits=httpx.Limits(max_keepalive_connections=0))

    async def close(self) -> None:
        await self._client.aclose()

    async def poll(self) -> dict[str, Any]:
        state = (await self._client.get(self.url)).json()
        self.seen[state["pid"]] = state
        return state

    async def wait(self, predicate: Callable[[dict[str, Any], dict[str, Any]], bool], what: str,
                   timeout: float = EDIT_SECONDS) -> None:
        """Until every worker's answer satisfies ``predicate(now, before)``, ``before`` being its answer when
        this began (so an answer from before an edit never counts as having taken it)."""
        before = {pid: state["config"] for pid, state in self.seen.items()}
        current: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(current) < self.count or not all(predicate(c, before.get(pid, {})) for pid, c in current.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: workers say {current}")
            state = await self.poll()
            current[state["pid"]] = state["config"]
            await asyncio.sleep(0.01)

    async def take(self, edit: Edit) -> None:
        """Wait until every worker has taken ``edit``: serving it (good) or refusing it (broken)."""
        if edit.good:
            def taken(now: dict, before: dict) -> bool:
                return now["digest"] != before.get("digest") and not now["last_error"]
        else:  # checked: refused (an error), or served (the digest changed; ``edit.refused`` then says False).
            # Not just "one more reload": a save can reach the watcher as two batches, the second one unchanged.
            def taken(now: dict, before: dict) -> bool:
                return now["reloads"] > before.get("reloads", 0) and (
                    bool(now["last_error"]) or now["digest"] != before.get("digest"))
        await self.wait(taken, f"edit {edit.number} ({'good' if edit.good else 'broken'}) of {edit.path.name}")
        edit.taken_s = time.monotonic() - edit.saved_at
        edit.refused = all(state["config"]["last_error"] for state in self.seen.values())


def heard_stream(result: Any) -> np.ndarray:
    """What the caller heard of the server's audio, in order, without the silence of any underrun."""
    pieces, start = [], None
    for event in result.events:
        if event.kind == "audio_start":
            start = round(event.t * 8000)
        elif event.kind == "audio_end" and start is not None:
            pieces.append(result.heard[start:round(event.t * 8000)])
            start = None
    if start is not None:
        pieces.append(result.heard[start:])
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)


def call_verdict(result: Any, expected_key: int) -> dict[str, Any]:
    """One call: completeness, whether the heard stream is the sent one frame by frame, and its keys."""
    heard = heard_stream(result)
    n = min(len(heard), len(result.sent)) // FRAME * FRAME
    keys = keys_heard(result.sent[:n], heard[:n]).reshape(-1, FRAME) if n else np.zeros((0, FRAME), np.uint8)
    frame_keys = [int(k) if (row == k).all() else -1 for row in keys for k in (row[0],)]
    wrong = [i for i, k in enumerate(frame_keys) if k != expected_key]
    gaps = output_gaps(result)
    return {
        "expected_key": expected_key,
        "keys_heard": sorted(set(frame_keys)),
        "frames_heard": len(frame_keys),
        "frames_sent": len(result.sent) // FRAME,
        "frames_not_as_sent": len(wrong),
        "first_wrong_frame": wrong[0] if wrong else None,
        "completeness": round(result.media_bytes_received / len(result.sent), 6) if len(result.sent) else 0.0,
        "gaps_ms": gaps,
        "worst_gap_ms": max(gaps, default=0.0),
        "close_code": result.close_code,
        "problems": [f"{e.kind}: {e.detail}" for e in result.events if e.kind in ("timeout", "bad_message")]
        + ([] if result.close_code == 1000 else [f"close code {result.close_code}"])
        + [f"{e.kind} {e.detail}" for e in result.events if e.kind == "closed" and "by server" in e.detail],
    }


async def run_calls_while_editing(base_url: str, tree: ConfigTree, workers: Workers, calls: int, edits: int,
                                  clips: list[np.ndarray], linger: float = 5.0) -> tuple[list[dict[str, Any]], float]:
    """The scenario: ``calls`` calls in ``edits + 1`` waves, one before each edit and one after the last;
    returns each call's verdict (a call that could not be placed or failed: ``{"failed": why}``), and the
    longest the callers' event loop was late (ms): a late caller sends late and hears gaps it caused itself."""
    from agent_voice_bridge.transports.simulated_caller import Say, Until, WaitHeard, run_call

    finish = asyncio.Event()
    waves = [list(range(calls))[w::edits + 1] for w in range(edits + 1)]
    started: set[int] = set()
    tasks: dict[int, asyncio.Task] = {}
    expected: dict[int, int] = {}
    lag = [0.0]

    async def probe() -> None:
        while not finish.is_set():
            began = time.monotonic()
            await asyncio.sleep(0.01)
            lag[0] = max(lag[0], time.monotonic() - began - 0.01)

    async def one(i: int) -> Any:
        steps = [WaitHeard(timeout=WAVE_START_SECONDS), Until(lambda: started.add(i) is None),
                 Say(clips[i % len(clips)]), Until(finish.is_set, timeout=WAVE_START_SECONDS * (edits + 1)),
                 Say(clips[(i + 1) % len(clips)])]
        return await run_call(f"{base_url}/incoming", steps, from_number=f"+1555700{i:04d}", to_number=NUMBER,
                              tail=0.1, linger=linger)

    async def start_wave(members: list[int], key: int) -> None:
        for i in members:
            expected[i] = key
            tasks[i] = asyncio.create_task(one(i), name=f"reload-caller-{i}")
        deadline = time.monotonic() + WAVE_START_SECONDS
        while not all(i in started or tasks[i].done() for i in members) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    prober = asyncio.create_task(probe())
    try:
        await start_wave(waves[0], tree.key)
        for number in range(1, edits + 1):
            await workers.take(tree.edit(number))
            await start_wave(waves[number], tree.key)
    finally:
        finish.set()
        outcomes = await asyncio.gather(*tasks.values(), return_exceptions=True)
        await prober
    verdicts = []
    for i, outcome in zip(tasks, outcomes):
        which = {"call": i, "wave": i % (edits + 1)}  # wave w started after edit w (0: before the first)
        if isinstance(outcome, BaseException):
            verdicts.append({**which, "failed": f"{type(outcome).__name__}: {outcome}"[:300],
                             "expected_key": expected[i]})
        else:
            verdicts.append({**which, **call_verdict(outcome, expected[i])})
    return sorted(verdicts, key=lambda v: v["call"]), round(lag[0] * 1000.0, 1)


def summarise(verdicts: list[dict[str, Any]], edits: list[Edit], caller_lag_ms: float) -> dict[str, Any]:
    ok = [v for v in verdicts if "failed" not in v]
    sent = sum(v["frames_sent"] for v in ok)
    good = [e.taken_s for e in edits if e.good and e.taken_s is not None]
    refused = [e.taken_s for e in edits if not e.good and e.taken_s is not None]
    return {
        "calls": len(verdicts),
        "dropped_calls": len(verdicts) - len(ok) + sum(1 for v in ok if v["problems"]),
        "calls_hearing_a_wrong_key": sum(1 for v in ok if v["frames_not_as_sent"]),
        "broken_keys_heard": sorted({k for v in ok for k in v["keys_heard"] if k in BROKEN_KEYS}),
        "completeness": round(sum(v["completeness"] * v["frames_sent"] for v in ok) / sent, 6) if sent else 0.0,
        "completeness_min": min((v["completeness"] for v in ok), default=0.0),
        "worst_gap_p99_ms": percentile([v["worst_gap_ms"] for v in ok], 99),
        "worst_gap_max_ms": max((v["worst_gap_ms"] for v in ok), default=None),
        "caller_loop_lag_max_ms": caller_lag_ms,
        "reload_p50_ms": _ms(percentile(good, 50)),
        "reload_p95_ms": _ms(percentile(good, 95)),
        "refusal_p50_ms": _ms(percentile(refused, 50)),
        "broken_edits_served": sum(1 for e in edits if not e.good and not e.refused),
        "edits": [{"edit": e.number, "file": e.path.name, "good": e.good, "refused": e.refused, "key": e.key,
                   "taken_ms": _ms(e.taken_s)} for e in edits],
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)


async def memory_over_reloads(tree: ConfigTree, workers: Workers, server_pid: int, reloads: int) -> dict[str, Any]:
    """``reloads`` good edits of the pipeline file, each waited out; RSS of the server's processes along the way."""
    from bench.servers import rss_bytes, tree_pids

    def rss_mb() -> float:
        return round(rss_bytes(tree_pids(server_pid)) / 2**20, 1)

    before, at_half = rss_mb(), None
    taken = []
    for i in range(reloads):
        edit = tree.good_edit()
        await workers.take(edit)
        taken.append(edit.taken_s)
        if i + 1 == reloads // 2:
            at_half = rss_mb()
    after = rss_mb()
    return {"reloads": reloads, "rss_before_mb": before, "rss_after_half_mb": at_half, "rss_after_mb": after,
            "rss_growth_second_half_mb": round(after - at_half, 1) if at_half is not None else None,
            "reload_p50_ms": _ms(percentile(taken, 50)), "reload_p95_ms": _ms(percentile(taken, 95))}


def run_reloads(calls: int, edits: int, reloads: int, log_dir: Path, workers: int | None = None) -> dict[str, Any]:
    """``bench --only reloads``: start ``serve -c lines.yaml``, run the scenario, then ``reloads`` more edits."""
    from bench.callers import speech_clips
    from bench.servers import ServerProcess, ServerSpec, free_port

    root = log_dir / f"reloads-{time.strftime('%Y%m%d-%H%M%S')}"
    tree = ConfigTree(root)
    spec = ServerSpec.ours(tree.lines, free_port(), workers)
    spec.name = "ours"
    clips = [clip for _, clip in speech_clips()[:4]]

    async def scenario(pid: int) -> dict[str, Any]:
        pool = Workers(f"http://127.0.0.1:{spec.port}", spec.workers)
        try:
            await pool.wait(lambda now, before: True, "every worker answers")
            verdicts, lag = await run_calls_while_editing(f"http://127.0.0.1:{spec.port}", tree, pool, calls,
                                                          edits, clips)
            result = summarise(verdicts, tree.edits, lag)
            result["memory"] = await memory_over_reloads(tree, pool, pid, reloads) if reloads else None
            result["per_call"] = verdicts
            return result
        finally:
            await pool.close()

    with ServerProcess(spec, root / "server.log") as server:
        result = asyncio.run(scenario(server.pid))
    result.update(workers=spec.workers, edits_in_scenario=edits)
    return result
