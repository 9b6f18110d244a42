"""One server, many lines: each number called gets its own chain, chosen once at /incoming and bound
into the stream token.

Chains are told apart by ear, as in test_chain_source: the echo line answers only after the caller
stops talking, the loopback line returns the caller's audio while they talk.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from agent_voice_bridge.transports.simulated_caller import CallResult, Pause, Say, WaitQuiet, run_call
from conftest import ECHO_YAML, LiveServer, run_cli, speech

LOOPBACK_YAML = ECHO_YAML.replace("  - echo\n", "  - loopback\n")
TOKEN = "tok-LINES-" + "5d2e" * 6
SALES, SUPPORT, OTHER = "+15550100", "+15550101", "+15550199"


def write_lines(root: Path, token: str = "", **extra: object) -> Path:
    """lines.yaml: sales (echo) on +15550100, support (loopback) on +15550101, after_hours (loopback) for
    any other number; the pipeline files under pipelines/, as a user would lay them out."""
    (root / "pipelines").mkdir(exist_ok=True)
    (root / "pipelines" / "sales.yaml").write_text(ECHO_YAML)
    (root / "pipelines" / "support.yaml").write_text(LOOPBACK_YAML)
    (root / "pipelines" / "after_hours.yaml").write_text(LOOPBACK_YAML)
    doc = {"server": {"host": "127.0.0.1"}, "twilio": {"auth_token": token},
           "security": {"store": "memory"}, "storage": {"url": f"sqlite:///{root}/calls.db"},
           "lines": {SALES: "pipelines/sales.yaml", SUPPORT: "pipelines/support.yaml",
                     "default": "pipelines/after_hours.yaml"}, **extra}
    path = root / "lines.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def answers_while_talking(result: CallResult) -> bool:
    """True for the loopback chain (audio back within half a second of the first word), False for echo
    (nothing until the caller stops)."""
    (onset, offset), = result.utterances
    starts = result.events_of("audio_start")
    assert starts, "the caller heard nothing back\n" + result.timeline()
    if starts[0].t - onset < 0.5:
        return True
    assert starts[0].t >= offset - 0.05, result.timeline()
    return False


async def call(server: LiveServer, to: str, **kwargs: object) -> CallResult:
    return await run_call(server.http_url, [Pause(0.2), Say(speech("hello-world"), "hello"), WaitQuiet(idle=0.8)],
                          to_number=to, **kwargs)


async def test_each_number_runs_its_own_lines_chain_and_default_takes_the_rest(tmp_path: Path) -> None:
    with LiveServer(config_file=write_lines(tmp_path)) as server:
        sales, support, other = [await call(server, number) for number in (SALES, SUPPORT, OTHER)]
        assert not answers_while_talking(sales), "+15550100 runs the sales (echo) chain"
        assert answers_while_talking(support), "+15550101 runs the support (loopback) chain"
        assert answers_while_talking(other), "any other number runs the default line's chain"
        server.wait_idle(finished=3)
        records = {r.callee: r for r in server.db(lambda s: s.recent_calls(10))}
        assert {n: (r.line, Path(r.pipeline).name) for n, r in records.items()} == {
            SALES: ("sales", "sales.yaml"), SUPPORT: ("support", "support.yaml"),
            OTHER: ("after_hours", "after_hours.yaml")}
        async with httpx.AsyncClient() as client:
            health = (await client.get(f"http://127.0.0.1:{server.port}/healthz")).json()
        assert health["lines"]["support"]["numbers"] == SUPPORT
        assert health["lines"]["after_hours"]["numbers"] == "default"


async def test_calls_line_lists_only_that_lines_calls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with LiveServer(config_file=write_lines(tmp_path)) as server:
        for number in (SALES, SUPPORT):
            await call(server, number)
        server.wait_idle(finished=2)
    capsys.readouterr()
    assert await run_cli("calls", "-c", str(tmp_path / "lines.yaml"), "--line", "support") == 0
    listed = capsys.readouterr().out.splitlines()[1:]
    assert len(listed) == 1 and SUPPORT in listed[0], listed


async def test_a_stream_whose_token_names_one_line_cannot_run_anothers_chain(tmp_path: Path) -> None:
    with LiveServer(config_file=write_lines(tmp_path, token=TOKEN)) as server:
        forged = await call(server, SALES, auth_token=TOKEN, custom_parameters={"line": "support"})
        assert forged.close_code == 1008, forged.timeline()
        assert not forged.events_of("audio_start"), "a refused stream hears nothing"
        assert server.calls.finished == 0 and server.calls.refused == 1, "no pipeline was built"
        honest = await call(server, SALES, auth_token=TOKEN)
        assert honest.close_code == 1000 and not answers_while_talking(honest), honest.timeline()


async def test_without_a_default_a_number_no_line_takes_is_rejected(tmp_path: Path) -> None:
    path = write_lines(tmp_path)
    doc = yaml.safe_load(path.read_text())
    del doc["lines"]["default"]
    path.write_text(yaml.safe_dump(doc))
    with LiveServer(config_file=path) as server:
        async with httpx.AsyncClient() as client:
            answer = await client.post(server.http_url, data={"CallSid": "CA" + "1" * 32, "From": "+15550001111",
                                                              "To": OTHER})
        assert "<Reject" in answer.text and "<Connect" not in answer.text


async def test_check_names_the_file_and_line_of_every_problem_in_every_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_lines(tmp_path)
    assert await run_cli("check", "-c", str(path)) == 0
    out = capsys.readouterr().out
    assert "3 line(s)" in out and f"line support ({SUPPORT})" in out and "line after_hours (default)" in out

    support = tmp_path / "pipelines" / "support.yaml"
    support.write_text(LOOPBACK_YAML.replace("  - loopback\n", "  - l00pback\n"))
    stage_line = LOOPBACK_YAML.splitlines().index("  - loopback") + 1
    doc = yaml.safe_load(path.read_text())
    doc["lines"]["+15550102"] = "pipelines/missing.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    entry_line = path.read_text().splitlines().index("  '+15550102': pipelines/missing.yaml") + 1
    assert await run_cli("check", "-c", str(path)) == 1
    err = capsys.readouterr().err
    assert f"{support}:{stage_line}: stage 5 (l00pback): unknown stage 'l00pback'" in err, err
    assert f"{path}:{entry_line}: lines: {tmp_path / 'pipelines' / 'missing.yaml'}: cannot read" in err, err


async def test_an_unquoted_number_is_refused_with_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lines.yaml"
    path.write_text("lines:\n  default: echo.yaml\n  +15550100: echo.yaml\n")
    assert await run_cli("check", "-c", str(path)) == 1
    err = capsys.readouterr().err
    assert f"{path}:3:" in err and 'quote the number, as in "+15550100"' in err, err


async def test_an_outbound_call_runs_the_line_it_names_or_calls_from(tmp_path: Path) -> None:
    from agent_voice_bridge.storage import CallStore
    from agent_voice_bridge.transports.simulated_caller import parse_twiml
    from conftest import free_port
    from fakes.twilio_rest import FakeTwilioRest

    account, key, callee = "AC" + "7" * 32, "dial-key", "+15557654321"
    port = free_port()
    with FakeTwilioRest(account, TOKEN) as twilio:
        path = write_lines(tmp_path, server={"host": "127.0.0.1", "public_url": f"http://127.0.0.1:{port}",
                                             "api_key": key},
                           twilio={"account_sid": account, "auth_token": TOKEN, "phone_number": OTHER,
                                   "api_base_url": twilio.url})
        with LiveServer(config_file=path, port=port) as server:
            assert await run_cli("dial", callee, "-c", str(path), "--line", "support") == 0
            async with httpx.AsyncClient() as client:
                placed = await client.post(f"http://127.0.0.1:{port}/calls", headers={"X-API-Key": key},
                                           json={"to": callee, "from": SALES})
                assert placed.status_code == 201, placed.text
            by_line, by_from = twilio.calls
            assert (by_line.form["From"], by_from.form["From"]) == (SUPPORT, SALES), "each calls from its line"
            for placed_call, loops_back in ((by_line, True), (by_from, False)):
                stream_url, parameters = parse_twiml(await twilio.answer(placed_call.sid, "human"))
                result = await run_call(stream_url, [Pause(0.2), Say(speech("hello-world"), "hello"),
                                                     WaitQuiet(idle=0.8)],
                                        call_sid=placed_call.sid, custom_parameters=parameters)
                assert answers_while_talking(result) is loops_back, result.timeline()
            server.wait_idle(finished=2)
            lines = [server.db(CallStore.get_call, c.sid).line for c in (by_line, by_from)]
            assert lines == ["support", "sales"]
