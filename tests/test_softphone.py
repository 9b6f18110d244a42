"""The browser softphone: access rules over HTTP, then a real call from headless Chromium.

The call test runs the real server (uvicorn, the echo chain) and Debian's
``/usr/bin/chromium`` driven by Playwright (``playwright-core`` from npm, never a
downloaded browser). Chromium's fake microphone plays a WAV of real speech: the
page must send it as Twilio media, play the echo back (its received-audio level
follows the file), echo every mark as its playback passes it, and record the
``clear`` when the speech talks over the echo.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent_voice_bridge.security.stream_tokens import PARAMETER
from agent_voice_bridge.transports.simulated_caller import Pause, Say, Until, WaitHeard, WaitQuiet, run_call
from conftest import ECHO_YAML, ROOT, LiveServer, speech

BROWSER_DIR = ROOT / "tests" / "browser"
CHROMIUM = os.environ.get("SOFTPHONE_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT_COPY = os.environ.get("SOFTPHONE_SCREENSHOT")  # e.g. docs/softphone.png, to refresh the README's
FAKE_MIC_RATE = 48000
FLOOR_DB = -60.0

TOKEN = "test-auth-token"
SECURE_YAML = f"""
server: {{softphone: true, api_key: "k3y"}}
twilio: {{auth_token: "{TOKEN}"}}
security: {{store: memory}}
pipeline: [twilio.input, mulaw.decode, {{resample: {{rate: 16000}}}}, vad.interrupter, echo,
           {{resample: {{rate: 8000}}}}, mulaw.encode, twilio.output]
"""


# --------------------------------------------------------------------------- access rules


def test_local_server_serves_the_page_without_a_key(echo_server: LiveServer) -> None:
    base = f"http://127.0.0.1:{echo_server.port}"
    page = httpx.get(f"{base}/phone")
    assert page.status_code == 200 and "softphone" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    icon = re.search(r'<link rel="icon" href="([^"]+)"', page.text)
    assert icon and icon[1].startswith("data:"), "an inline icon, or the browser asks for /favicon.ico (a 404)"
    assert "data:" in page.headers["content-security-policy"].partition("img-src")[2].partition(";")[0]
    for name in ("phone.js", "phone-worklet.js", "phone.css"):
        assert httpx.get(f"{base}/phone/static/{name}").status_code == 200
    assert httpx.get(f"{base}/phone/static/../server.py").status_code == 404
    line = httpx.get(f"{base}/phone/token").json()
    assert line["callSid"].startswith("CA") and line["streamPath"] == "/media-stream"
    assert PARAMETER not in line["parameters"], "no stream tokens without a Twilio auth token"
    listing = httpx.get(f"{base}/phone/pipelines").json()
    assert [s["name"] for s in listing["current"]["stages"]][4] == "echo"
    assert {"echo", "gemini", "openai"} <= {a["name"] for a in listing["available"]}
    assert next(a for a in listing["available"] if a["name"] == "echo")["current"]


async def test_the_page_can_read_its_live_call_s_per_turn_breakdown(echo_server: LiveServer) -> None:
    base = f"http://127.0.0.1:{echo_server.port}"
    async with httpx.AsyncClient(base_url=base) as http:
        line = (await http.get("/phone/token")).json()
        turns_path = f"/phone/calls/{line['callSid']}/turns"
        seen: list = []

        async def a_finished_turn() -> bool:
            answer = await http.get(turns_path)
            assert answer.status_code == 200, answer.text
            seen[:] = answer.json()
            return any(t["total_ms"] is not None for t in seen)

        await run_call(echo_server.ws_url, [Pause(0.3), Say(speech("hello-world")),
                                            Until(a_finished_turn, timeout=8)],
                       call_sid=line["callSid"], custom_parameters=line["parameters"])
        echo_server.wait_idle()
        assert (await http.get(turns_path)).status_code == 404, "only while the call is live"
        phone_call = "CA" + "1" * 32  # a call from a phone, not the softphone: its figures are not the page's

        async def hidden() -> bool:
            return (await http.get(f"/phone/calls/{phone_call}/turns")).status_code == 404

        assert not (await run_call(echo_server.ws_url, [Pause(0.2), Until(hidden, timeout=2)],
                                   call_sid=phone_call)).events_of("timeout")
    turn = next(t for t in seen if t["total_ms"] is not None)
    assert {"endpointing", "bridge", "playout"} <= set(turn["segments"]), turn


def test_off_by_default_with_twilio_credentials() -> None:
    yaml_text = SECURE_YAML.replace("softphone: true, ", "")
    with LiveServer(yaml_text) as server:
        base = f"http://127.0.0.1:{server.port}"
        for path in ("/phone", "/phone/token", "/phone/pipelines", "/phone/static/phone.js",
                     "/phone/calls/CA00000000000000000000000000000000/turns",
                     "/phone/calls/CA00000000000000000000000000000000/events"):
            assert httpx.get(f"{base}{path}", params={"key": "k3y"}).status_code == 404, path


def test_enabled_on_a_twilio_server_it_needs_the_key_and_its_token_passes_the_gate() -> None:
    with LiveServer(SECURE_YAML) as server:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{base}/phone").status_code == 401
        assert httpx.get(f"{base}/phone", params={"key": "wrong"}).status_code == 401
        assert httpx.get(f"{base}/phone", params={"key": "k3y"}).status_code == 200
        assert httpx.get(f"{base}/phone/token").status_code == 401
        assert httpx.get(f"{base}/phone/pipelines", headers={"X-API-Key": "nope"}).status_code == 401
        assert httpx.get(f"{base}/phone/pipelines", headers={"Authorization": "Bearer k3y"}).status_code == 200

        # Without the page's token the stream is refused on start, like any unsigned stream.
        refused = server.calls.refused
        stranger = asyncio.run(run_call(server.ws_url, [Pause(0.2)], call_sid="CA" + "0" * 32))
        assert stranger.close_code == 1008 and server.calls.refused == refused + 1

        # With it, the call goes through the same start check as Twilio's and is echoed.
        line = httpx.get(f"{base}/phone/token", headers={"X-API-Key": "k3y"}).json()
        assert line["parameters"][PARAMETER]
        result = asyncio.run(run_call(server.ws_url, [Pause(0.3), Say(speech("hello-world")), WaitQuiet(idle=0.8)],
                                      call_sid=line["callSid"], custom_parameters=line["parameters"]))
        assert result.close_code == 1000 and result.media_bytes_received > 8000
        # The token is one-time.
        again = asyncio.run(run_call(server.ws_url, [Pause(0.2)], call_sid=line["callSid"],
                                     custom_parameters=line["parameters"]))
        assert again.close_code == 1008


async def test_the_token_on_a_gemini_chain_opens_the_live_session_early_and_the_call_uses_it() -> None:
    """``/phone/token`` answered 500 on an AI chain: it handed the early connection a bare SID, not the call."""
    from fakes.gemini_live import FakeGeminiLive, GeminiScript
    from test_gemini_call import chain_yaml

    async with FakeGeminiLive(script=GeminiScript()) as fake:
        yaml_text = chain_yaml(fake, turn_detection="model", vad=False, greeting="Hello browser.")
        with LiveServer(yaml_text.replace("about {topic}", "from the {callee}")) as server:
            async with httpx.AsyncClient() as http:
                answer = await http.get(f"http://127.0.0.1:{server.port}/phone/token")
            assert answer.status_code == 200, answer.text
            line = answer.json()
            session = await fake.session(0)  # opened by the token request alone, for this very caller
            assert "Caller browser called softphone from the softphone" in str(session.setup.get("systemInstruction"))
            result = await run_call(server.ws_url, [WaitHeard(timeout=10), WaitQuiet(idle=0.5)],
                                    call_sid=line["callSid"], custom_parameters=line["parameters"])
    assert len(fake.sessions) == 1, "the call used the session the token opened"
    assert session.client_contents, "and asked for its greeting over it"
    assert result.close_code == 1000 and result.events_of("audio_start")


def test_a_configured_key_is_required_even_without_twilio() -> None:
    yaml_text = ECHO_YAML.replace("server:\n", "security: {mode: development}\nserver:\n  api_key: k3y\n", 1)
    with LiveServer(yaml_text, "pipelines/echo.yaml") as server:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{base}/phone/token").status_code == 401
        assert httpx.get(f"{base}/phone/token", headers={"X-API-Key": "k3y"}).status_code == 200


def test_enabled_on_a_twilio_server_without_a_key_refuses_to_serve() -> None:
    with LiveServer(SECURE_YAML.replace(', api_key: "k3y"', "")) as server:
        page = httpx.get(f"http://127.0.0.1:{server.port}/phone")
        assert page.status_code == 503 and "server.api_key" in page.text


# --------------------------------------------------------------------------- a real browser call


def _node_ready() -> str | None:
    """Why the browser test cannot run here, or None. Installs playwright-core from the lock file if needed."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does)"
    if shutil.which("node") is None:
        return "node is not installed (apt-get install nodejs npm; .ci/run expects Node 20 + npm)"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            return "npm is not installed (apt-get install npm), so tests/browser cannot get playwright-core"
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=BROWSER_DIR, capture_output=True,
                              text=True, timeout=180)
        if done.returncode != 0:
            pytest.fail(f"npm ci in tests/browser failed:\n{done.stdout}\n{done.stderr}")
    return None


def _write_fake_mic(path: Path) -> dict[str, tuple[float, float]]:
    """Speech with pauses, as Chromium's fake microphone will play it; returns where each utterance lies.

    hello-world, a pause long enough for its whole echo; all-circuits-busy-now; a short pause; then
    vm-goodbye, which talks over the second echo (barge-in); then silence for the rest of the test.
    """
    layout: list[tuple[str | None, float]] = [(None, 1.0), ("hello-world", 0), (None, 2.8),
                                              ("all-circuits-busy-now", 0), (None, 1.0), ("vm-goodbye", 0),
                                              (None, 30.0)]
    parts, spans, t = [], {}, 0.0
    for name, seconds in layout:
        if name is None:
            audio = np.zeros(int(seconds * 8000), dtype=np.int16)
        else:
            audio = speech(name)
            spans[name] = (t, t + len(audio) / 8000)
        parts.append(audio)
        t += len(audio) / 8000
    pcm8k = np.concatenate(parts).astype(np.float64)
    up = np.interp(np.arange(len(pcm8k) * FAKE_MIC_RATE // 8000) * (8000 / FAKE_MIC_RATE),
                   np.arange(len(pcm8k)), pcm8k)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(FAKE_MIC_RATE)
        w.writeframes(np.clip(np.round(up), -32768, 32767).astype("<i2").tobytes())
    return spans


def _envelope_db(pcm: np.ndarray) -> np.ndarray:
    n = len(pcm) // 160
    frames = pcm[: n * 160].astype(np.float64).reshape(n, 160) / 32768.0
    return np.maximum(20 * np.log10(np.sqrt((frames**2).mean(axis=1)) + 1e-9), FLOOR_DB)


def _best_match(template: np.ndarray, series: np.ndarray) -> tuple[float, int]:
    """Highest normalised correlation of ``template`` anywhere in ``series`` (both dB per 20 ms)."""
    a = template - template.mean()
    best, at = -1.0, -1
    for lag in range(0, len(series) - len(template) + 1):
        b = series[lag : lag + len(template)]
        b = b - b.mean()
        denom = np.linalg.norm(a) * np.linalg.norm(b)
        if denom > 0 and (c := float(a @ b / denom)) > best:
            best, at = c, lag
    return best, at


def _speech_template(name: str) -> np.ndarray:
    env = _envelope_db(speech(name))
    loud = np.nonzero(env > -40)[0]
    return env[loud[0] : loud[-1] + 1]


def _run_browser(options: dict, on_quiet=None, limit: float = 75.0) -> dict:
    """Run tests/browser/softphone.mjs; ``on_quiet()`` runs when the page reports a quiet line. Its JSON result."""
    proc = subprocess.Popen(["node", str(BROWSER_DIR / "softphone.mjs"), json.dumps(options)], cwd=BROWSER_DIR,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
    log: list[str] = []
    try:
        deadline = time.monotonic() + limit
        while (line := lines.get(timeout=max(0.1, deadline - time.monotonic()))) is not None:
            log.append(line.rstrip())
            print(line.rstrip())
            if line.startswith("QUIET"):
                if on_quiet is not None:
                    on_quiet()
                proc.stdin.write("hangup\n")
                proc.stdin.flush()
        proc.wait(timeout=15)
    except queue.Empty:
        pytest.fail("the browser run timed out:\n" + "\n".join(log))
    finally:
        if proc.poll() is None:
            proc.kill()
    out = Path(options["out"])
    result = json.loads(out.read_text()) if out.exists() else {}
    assert proc.returncode == 0, "browser run failed:\n" + "\n".join(log) + "\n" + json.dumps(
        {k: result.get(k) for k in ("failure", "diagnostics")}, indent=1)
    assert not result["diagnostics"]["pageErrors"], result["diagnostics"]
    return result


def test_browser_call_echoes_speech_marks_and_barge_in(echo_server: LiveServer, tmp_path: Path) -> None:
    why_not = _node_ready()
    if why_not:
        pytest.skip(why_not)
    began = time.monotonic()
    wav = tmp_path / "fake-mic.wav"
    _write_fake_mic(wav)
    shot = tmp_path / "softphone.png"
    # raw=1: no browser echo cancellation/noise suppression, so the levels are the file's (the default
    # processing passes too, with a slightly lower envelope correlation; SOFTPHONE_RAW=0 runs it).
    url = f"http://127.0.0.1:{echo_server.port}/phone?raw={os.environ.get('SOFTPHONE_RAW', '1')}"
    options = {"url": url, "wav": str(wav), "chromium": CHROMIUM, "screenshot": str(shot),
               "out": str(tmp_path / "softphone.json"), "timeoutMs": 30000}
    echo_server.wait_idle()
    finished_before = echo_server.calls.finished
    server_marks: list[int] = []

    def on_quiet() -> None:
        # The line is quiet on the page: the server must agree that every mark it sent came back.
        live = list(echo_server.calls.live.values())
        assert len(live) == 1, f"expected the browser's call to be live, got {len(live)}"
        assert live[0].info.caller == "browser"
        playback = live[0].info.playback
        server_marks.extend((playback.marks_sent, playback.marks_echoed))

    result = _run_browser(options, on_quiet)
    page = result["page"]
    stats = page["stats"]
    print(json.dumps({"stats": stats, "latencies": page["latencies"], "bargeIns": page["bargeIns"],
                      "audioRate": page["audioRate"], "seconds": result["seconds"]}, indent=1))

    # The page spoke the protocol: continuous 20 ms frames, and the server took the call and ended it cleanly.
    assert stats["framesSent"] >= 300, "at least 6 s of 20 ms frames"
    echo_server.wait_idle(finished=finished_before + 1)

    # The echo line returned the speech: what the page received follows the file's words.
    received = np.maximum(np.array(page["receivedLevels"], dtype=np.float64), FLOOR_DB)
    first_clear = page["receivedClears"][0]
    corr_hello, _ = _best_match(_speech_template("hello-world"), received[:first_clear])
    assert corr_hello >= 0.85, f"received audio does not follow 'hello world' (r={corr_hello:.2f})"
    corr_bye, _ = _best_match(_speech_template("vm-goodbye"), received[first_clear:])
    assert corr_bye >= 0.85, f"the barge-in utterance was not echoed (r={corr_bye:.2f})"
    played = np.maximum(np.array(page["playedLevels"], dtype=np.float64), FLOOR_DB)
    corr_played, _ = _best_match(_speech_template("hello-world"), played)
    print(f"envelope correlation: received 'hello world' r={corr_hello:.3f}, 'vm goodbye' r={corr_bye:.3f}, "
          f"played 'hello world' r={corr_played:.3f}")
    assert corr_played >= 0.8, f"the speaker's output does not follow 'hello world' (r={corr_played:.2f})"

    # Replies came after the caller stopped, with an echo line's latency (VAD stop 0.5 s + transport).
    assert len(page["latencies"]) >= 2 and all(200 <= ms <= 1500 for ms in page["latencies"]), page["latencies"]

    # Speaking over the echo cleared it, once, soon after the speech began, and the queued audio was dropped.
    assert stats["clears"] == 1, page["bargeIns"]
    barge_in = page["bargeIns"][0]
    assert barge_in["droppedMs"] > 100 and barge_in["afterMs"] is not None and barge_in["afterMs"] <= 600

    # Every mark came back, as its audio played (or at the clear): on the page and on the server.
    assert stats["marksReceived"] >= 30 and stats["marksEchoed"] == stats["marksReceived"]
    assert len(server_marks) == 2 and server_marks[0] == server_marks[1] >= 30, server_marks
    assert barge_in["marks"] >= 1, "marks pending at the clear are echoed at once"
    # ... and "played" means played: the server names marks "segment:ms of the segment sent before it:n", and
    # the page echoed each mark of the first reply when its playback reached that many ms.
    first_reply = next(e["t"] for e in page["events"] if e["kind"] == "reply")
    lateness = [echo["t"] - first_reply - int(echo["name"].split(":")[1]) / 1000
                for echo in page["markEchoes"] if echo["name"].startswith("1:") and not echo["cleared"]]
    print("mark lateness (ms):", [round(x * 1000) for x in lateness])
    assert len(lateness) >= 10 and all(abs(x) <= 0.04 for x in lateness), lateness

    # The page showed the server's own breakdown of each reply beside its figures.
    finished = [t for t in page["serverTurns"] if t["total_ms"] is not None]
    assert finished and {"endpointing", "playout"} <= set(finished[0]["segments"]), page["serverTurns"]
    assert any(e["kind"] == "server" for e in page["events"]), "the breakdown is on the page's event list"

    assert shot.exists() and shot.stat().st_size > 10_000
    if SCREENSHOT_COPY:
        shutil.copyfile(shot, ROOT / SCREENSHOT_COPY)
    assert time.monotonic() - began < 90


def _fake_mic_or_skip(tmp_path: Path) -> Path:
    """The fake microphone's WAV, once the browser can run here (else the test is skipped, saying why)."""
    why_not = _node_ready()
    if why_not:
        pytest.skip(why_not)
    wav = tmp_path / "fake-mic.wav"
    _write_fake_mic(wav)
    return wav


def test_browser_call_on_a_twilio_server_with_the_api_key(tmp_path: Path) -> None:
    """softphone: true on a server with an auth token: the key opens the page, its token passes the gate."""
    wav = _fake_mic_or_skip(tmp_path)
    with LiveServer(SECURE_YAML) as server:
        options = {"url": f"http://127.0.0.1:{server.port}/phone?key=k3y&raw=1", "wav": str(wav),
                   "chromium": CHROMIUM, "out": str(tmp_path / "softphone.json"), "timeoutMs": 15000,
                   "firstReplyOnly": True}
        result = _run_browser(options, limit=40)
        server.wait_idle(finished=1)
        assert server.calls.refused == 0, "the page's stream was refused by the gate"
    page = result["page"]
    assert "key=" not in result["address"], "the page leaves the key in the address bar"
    assert page["callSid"].startswith("CA") and page["latencies"], page["stats"]
    assert page["stats"]["bytesReceived"] >= 8000, "the reply brought less than a second of audio"


# --------------------------------------------------------------------------- a server with several lines


async def test_the_token_binds_the_line_picked_and_only_a_line_the_server_has(tmp_path: Path) -> None:
    from agent_voice_bridge.storage import CallStore
    from test_lines import answers_while_talking, write_lines

    key = {"X-API-Key": "k3y"}
    path = write_lines(tmp_path, token=TOKEN, server={"host": "127.0.0.1", "softphone": True, "api_key": "k3y"})
    with LiveServer(config_file=path) as server:
        base = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=base, headers=key) as http:
            listing = (await http.get("/phone/pipelines")).json()
            assert [(line["name"], line["default"]) for line in listing["lines"]] == [
                ("sales", False), ("support", False), ("after_hours", True)]
            assert [s["name"] for s in listing["lines"][0]["stages"]][4] == "echo"
            unknown = await http.get("/phone/token", params={"line": "billing"})
            assert unknown.status_code == 404 and "sales, support, after_hours" in unknown.json()["detail"]
            assert (await http.get("/phone/token")).json()["line"] == "after_hours", "default: the default line"
            sales = (await http.get("/phone/token", params={"line": "sales"})).json()
        assert sales["line"] == "sales" and sales["parameters"]["line"] == "sales"

        steps = [Pause(0.2), Say(speech("hello-world"), "hello"), WaitQuiet(idle=0.8)]
        other = {**sales["parameters"], "line": "support"}  # the page's token names sales, not support
        forged = await run_call(server.ws_url, steps, call_sid=sales["callSid"], custom_parameters=other)
        assert forged.close_code == 1008 and server.calls.finished == 0
        result = await run_call(server.ws_url, steps, call_sid=sales["callSid"], custom_parameters=sales["parameters"])
        assert result.close_code == 1000 and not answers_while_talking(result), "sales runs the echo chain"
        server.wait_idle(finished=1)
        assert server.db(CallStore.get_call, sales["callSid"]).line == "sales"


def test_browser_call_to_the_line_picked(tmp_path: Path) -> None:
    """The page lists the server's lines; picking sales (echo) runs sales' chain, not the default line's."""
    from agent_voice_bridge.storage import CallStore
    from test_lines import write_lines

    wav = _fake_mic_or_skip(tmp_path)
    with LiveServer(config_file=write_lines(tmp_path)) as server:  # default line: after_hours (loopback)
        options = {"url": f"http://127.0.0.1:{server.port}/phone?raw=1", "wav": str(wav), "chromium": CHROMIUM,
                   "out": str(tmp_path / "softphone.json"), "timeoutMs": 15000, "firstReplyOnly": True,
                   "line": "sales"}
        result = _run_browser(options, limit=40)
        server.wait_idle(finished=1)
        page = result["page"]
        record = server.db(CallStore.get_call, page["callSid"])
    assert result["linePicker"] and result["lineOptions"] == ["sales", "support", "after_hours"]
    assert page["line"] == "sales" and record.line == "sales" and record.caller == "browser"
    assert any(". echo" in stage for stage in result["stagesShown"]), result["stagesShown"]
    assert page["latencies"] and page["latencies"][0] >= 200, "echo answers after the caller stops, not at once"


# --------------------------------------------------------------------------- a transfer, shown not made


async def test_a_softphone_call_the_ai_transfers_shows_the_transfer_and_ends_transferred(tmp_path: Path) -> None:
    """No Twilio call is behind the page, so no REST update: the page is told what Twilio would have been given
    (the cold transfer's TwiML) and the call ends as a transfer hands it over, its record saying where and why."""
    from agent_voice_bridge.storage import CallStore
    from fakes.gemini_live import FakeGeminiLive, GeminiScript
    from test_gemini_call import chain_yaml
    from test_transfer import DESTINATIONS

    script = GeminiScript(tool_call={"name": "transfer", "args": {"to": "billing", "reason": "a question on an invoice"}})
    async with FakeGeminiLive(script=script) as fake:
        yaml_text = chain_yaml(fake, turn_detection="model", vad=False).replace(
            "      voice: Kore\n", "      voice: Kore\n      tools: [transfer]\n" + DESTINATIONS)
        yaml_text = f"storage: {{url: 'sqlite:///{tmp_path}/calls.db', recordings: '{tmp_path}/rec'}}\n" + yaml_text
        with LiveServer(yaml_text) as server:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
                line = (await http.get("/phone/token")).json()
                events_path = f"/phone/calls/{line['callSid']}/events"
                result = await run_call(server.ws_url, [Pause(0.3), Say(speech("vm-goodbye")), WaitQuiet(idle=5.0)],
                                        call_sid=line["callSid"], custom_parameters=line["parameters"])
                server.wait_idle(finished=1)
                answer = await http.get(events_path)  # after the call: the page asks once its stream has closed
                unknown = await http.get(f"/phone/calls/CA{'0' * 32}/events")
            record = server.db(CallStore.get_call, line["callSid"])
    print(result.timeline())
    assert answer.status_code == 200, answer.text
    transfer, = answer.json()
    assert {k: transfer[k] for k in ("kind", "destination", "number", "reason", "warm")} == {
        "kind": "transfer", "destination": "billing", "number": "+15550188000",
        "reason": "a question on an invoice", "warm": False}
    assert "<Say>Connecting you to billing now.</Say>" in transfer["twiml"]
    assert "<Number>+15550188000</Number></Dial>" in transfer["twiml"] and "/transfer/done?to=billing" in transfer["twiml"]
    assert unknown.status_code == 404
    closed = result.events_of("closed")[-1]
    assert closed.detail.endswith("by server"), "the bridge ended the call, as the redirect would have"
    assert (record.outcome, record.reason) == ("transferred", "a question on an invoice")
    assert (record.transfer_destination, record.transfer_to) == ("billing", "+15550188000")


def test_browser_call_the_ai_transfers_shows_the_transfer(tmp_path: Path) -> None:
    """The page's event list says where the AI put the caller through to, and why, once the call has ended."""
    from fakes.gemini_live import FakeGeminiLive, GeminiScript
    from test_gemini_call import chain_yaml
    from test_transfer import DESTINATIONS

    wav = _fake_mic_or_skip(tmp_path)

    async def run() -> dict:
        script = GeminiScript(tool_call={"name": "transfer", "args": {"to": "billing", "reason": "an invoice"}})
        async with FakeGeminiLive(script=script) as fake:
            yaml_text = chain_yaml(fake, turn_detection="model", vad=False).replace(
                "      voice: Kore\n", "      voice: Kore\n      tools: [transfer]\n" + DESTINATIONS)
            with LiveServer(yaml_text) as server:
                options = {"url": f"http://127.0.0.1:{server.port}/phone?raw=1", "wav": str(wav),
                           "chromium": CHROMIUM, "out": str(tmp_path / "softphone.json"), "timeoutMs": 30000,
                           "transfer": True}
                result = await asyncio.to_thread(_run_browser, options, limit=60)
                server.wait_idle(finished=1)
        return result

    result = asyncio.run(run())
    shown = result["eventsShown"]
    print("\n".join(shown))
    assert any("transfer: Transferring to billing (+15550188000): an invoice" in line for line in shown), shown
    assert any("<Number>+15550188000</Number>" in line for line in shown), "the TwiML a real call would get"
    assert result["page"]["closeCode"] == 1000 and result["message"].endswith("transferred to billing")


def test_a_warm_transfer_on_the_softphone_is_shown_without_twiml() -> None:
    """Ringing, briefing and holding for a person need a real call: the page is told where, why, and that."""
    from agent_voice_bridge.calls.live_call import softphone_transfer
    from agent_voice_bridge.transports.call_control import TransferRequest

    shown = softphone_transfer(TransferRequest(destination="billing", number="+15550188000", reason="a refund",
                                               warm=True), "http://127.0.0.1/transfer/done")
    assert (shown["warm"], shown["twiml"]) == (True, None) and "real call" in str(shown["note"])
