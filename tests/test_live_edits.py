"""Live edits: save a pipeline file (or the server file), and new calls get the new chain; running calls
keep theirs; an edit that does not check is refused and the last good configuration serves on.

Chains are told apart by ear (test_lines.answers_while_talking): echo answers after the caller stops,
loopback while they talk. Reloads are waited for by their generation (/healthz), never by sleeping.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import yaml

from agent_voice_bridge import metrics
from agent_voice_bridge.transports.simulated_caller import Pause, Say, Until, WaitQuiet, run_call
from conftest import ECHO_YAML, LiveServer, free_port, speech
from test_lines import LOOPBACK_YAML, OTHER, SALES, SUPPORT, answers_while_talking, call, write_lines
from test_security import ServeProcess

RELOAD_SECONDS = 20.0
"""How long a reload may take to be noticed and applied (watchfiles debounces 0.4 s; the box is shared)."""


def replace(path: Path, text: str) -> None:
    """Save as editors do: write a new file, rename it over the old one."""
    fresh = path.with_suffix(".saving")
    fresh.write_text(text)
    os.replace(fresh, path)


async def health(port: int) -> dict:
    async with httpx.AsyncClient() as client:  # a fresh connection: with workers, either may answer
        return (await client.get(f"http://127.0.0.1:{port}/healthz", timeout=5)).json()


async def wait_for(port: int, predicate, what: str) -> dict:
    deadline = time.monotonic() + RELOAD_SECONDS
    while True:
        state = await health(port)
        if predicate(state["config"]):
            return state
        assert time.monotonic() < deadline, f"{what}: /healthz says {state['config']}"
        await asyncio.sleep(0.05)


async def test_an_edit_reaches_the_next_call_and_leaves_the_running_one_untouched(tmp_path: Path) -> None:
    sales = tmp_path / "pipelines" / "sales.yaml"
    with LiveServer(config_file=write_lines(tmp_path)) as server:
        reloader = server.app.state.reloader
        old_chain = server.app.state.chains.line_for(SALES).chain
        seen: list = []

        def edit_while_live() -> bool:
            if len(server.calls.live) != 1:
                return False
            live, = server.calls.live.values()
            seen.append(live.chain)
            replace(sales, LOOPBACK_YAML)  # sales: echo → loopback
            return True

        words = speech("hello-world")
        during = await run_call(server.http_url, [
            Until(edit_while_live), Until(lambda: reloader.generation == 2, timeout=RELOAD_SECONDS),
            Pause(0.2), Say(words, "hello"), WaitQuiet(idle=0.8)], to_number=SALES)
        assert not during.events_of("timeout"), "the edit was reloaded while the call ran\n" + during.timeline()
        assert seen == [old_chain]
        assert not answers_while_talking(during), "the running call still echoes: its chain is untouched"
        assert during.close_code == 1000

        after = await call(server, SALES)
        assert answers_while_talking(after), "the next call to +15550100 runs the edited chain (loopback)"
        assert server.app.state.chains.line_for(SALES).chain.source == str(sales)
        state = await health(server.port)
        assert state["config"]["generation"] == 2 and state["config"]["last_error"] is None
        server.wait_idle(finished=2)


async def test_a_broken_edit_is_refused_and_the_last_good_chain_serves_on(tmp_path: Path) -> None:
    path = write_lines(tmp_path)
    support = tmp_path / "pipelines" / "support.yaml"
    failed = metrics.CONFIG_RELOADS.labels("failed")
    with LiveServer(config_file=path) as server:
        failed_before = failed._value.get()
        replace(support, LOOPBACK_YAML.replace("  - loopback\n", "  - l00pback\n"))
        stage_line = LOOPBACK_YAML.splitlines().index("  - loopback") + 1
        state = await wait_for(server.port, lambda c: c["last_error"], "the broken edit was checked")
        assert f"{support}:{stage_line}: stage 5 (l00pback): unknown stage 'l00pback'" in state["config"]["last_error"]
        assert state["config"]["generation"] == 1, "nothing was swapped in"
        assert failed._value.get() == failed_before + 1
        assert answers_while_talking(await call(server, SUPPORT)), "the last good (loopback) chain still serves"

        # An edit of the server file itself: +15550199 moves from the default line to sales (echo).
        doc = yaml.safe_load(path.read_text())
        doc["lines"][OTHER] = "pipelines/sales.yaml"
        replace(support, LOOPBACK_YAML)  # and the broken file is mended
        replace(path, yaml.safe_dump(doc, sort_keys=False))
        state = await wait_for(server.port, lambda c: c["generation"] == 2 and not c["last_error"],
                               "the good edits were swapped in")
        assert SALES in state["lines"]["sales"]["numbers"] and OTHER in state["lines"]["sales"]["numbers"]
        assert not answers_while_talking(await call(server, OTHER)), "+15550199 now runs the sales (echo) line"
        server.wait_idle(finished=2)


async def test_sighup_reloads_every_worker_and_the_supervisor_survives(tmp_path: Path) -> None:
    path = write_lines(tmp_path)
    port = free_port()
    server = ServeProcess(path, port, "--workers", "2", "--host", "127.0.0.1")
    try:
        await asyncio.to_thread(server.wait_ready)
        assert f"line support ({SUPPORT}): {tmp_path / 'pipelines' / 'support.yaml'}" in server.output()

        async def both_workers(predicate, what: str) -> dict[int, dict]:
            seen: dict[int, dict] = {}
            deadline = time.monotonic() + RELOAD_SECONDS * 2
            while len(seen) < 2 or not all(predicate(c) for c in seen.values()):
                state = await health(port)
                seen[state["pid"]] = state["config"]
                assert server.proc.poll() is None, f"the supervisor died:\n{server.output()}"
                assert time.monotonic() < deadline, f"{what}: {seen}\n{server.output()}"
            return seen

        workers = await both_workers(lambda c: c["reloads"] == 0, "both workers answer")
        server.proc.send_signal(signal.SIGHUP)
        await both_workers(lambda c: c["last_cause"] == "SIGHUP", "both workers reloaded on SIGHUP")
        assert server.proc.poll() is None, "SIGHUP did not end the supervisor"
        for pid in workers:
            os.kill(pid, 0)  # the same workers, still running (raises if gone)

        replace(tmp_path / "pipelines" / "support.yaml", ECHO_YAML)
        seen = await both_workers(lambda c: c["generation"] == 2, "both workers took the edit")
        assert len({c["digest"] for c in seen.values()}) == 1, f"the workers agree on what they serve: {seen}"
        result = await run_call(f"http://127.0.0.1:{port}/incoming",
                                [Pause(0.2), Say(speech("hello-world"), "hello"), WaitQuiet(idle=0.8)],
                                to_number=SUPPORT)
        assert not answers_while_talking(result), "support now echoes, whichever worker took the call"
    finally:
        server.stop()
