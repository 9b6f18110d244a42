"""A line's own ``security``/``storage`` in the server file: who may call it, how often, and whether its calls
are recorded, applied by the gate and the call's records to that line's calls only; checked like the rest
of the file (errors name file and line); and changed by a reload like its chain.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from agent_voice_bridge.storage import CallStore
from agent_voice_bridge.transports.simulated_caller import CallSetupError
from conftest import ECHO_YAML, LiveServer, run_cli
from test_lines import LOOPBACK_YAML, SALES, SUPPORT, call

FRIEND, STRANGER = "+15550001111", "+15550003333"


def write_server(root: Path, **sales: object) -> Path:
    """sales (echo): a named line on +15550100 that takes calls from FRIEND only and records them;
    +15550101 (support, loopback): the server's rules (anyone, not recorded, at most 2 calls a minute per caller
    on that line); ``sales`` replaces keys of the sales entry."""
    (root / "pipelines").mkdir(exist_ok=True)
    (root / "pipelines" / "sales.yaml").write_text(ECHO_YAML)
    (root / "pipelines" / "support.yaml").write_text(LOOPBACK_YAML)
    entry = {"numbers": [SALES], "pipeline": "pipelines/sales.yaml",
             "security": {"allowlist": [FRIEND]},
             "storage": {"record": True, "recordings": str(root / "sales-recordings")}, **sales}
    doc = {"server": {"host": "127.0.0.1"}, "security": {"store": "memory"},
           "storage": {"url": f"sqlite:///{root}/calls.db", "recordings": str(root / "recordings")},
           "lines": {"sales": entry,
                     SUPPORT: {"pipeline": "pipelines/support.yaml",
                               "security": {"rate_limit": {"calls": 2, "per_seconds": 60}}}}}
    path = root / "lines.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


async def incoming(server: LiveServer, caller: str, to: str, sid: str) -> str:
    async with httpx.AsyncClient() as client:
        answer = await client.post(server.http_url, data={"CallSid": sid, "From": caller, "To": to})
    assert answer.status_code == 200, answer.text
    return answer.text


async def test_each_line_admits_and_records_by_its_own_rules(tmp_path: Path) -> None:
    with LiveServer(config_file=write_server(tmp_path)) as server:
        with pytest.raises(CallSetupError, match="refused"):
            await call(server, SALES, from_number=STRANGER)  # sales takes calls from FRIEND only
        stranger = await call(server, SUPPORT, from_number=STRANGER)  # support takes anyone
        friend = await call(server, SALES, from_number=FRIEND)
        assert stranger.close_code == friend.close_code == 1000
        assert stranger.media_bytes_received > 8000 and friend.media_bytes_received > 8000
        server.wait_idle(finished=2)
        refused, = [r for r in server.db(lambda s: s.recent_calls(10)) if r.status == "rejected"]
        assert (refused.line, refused.caller, refused.reason) == ("sales", STRANGER, "caller is not on the allowlist")
        sales = server.db(CallStore.get_call, friend.call_sid)
        support = server.db(CallStore.get_call, stranger.call_sid)
    assert (sales.line, support.line) == ("sales", "support")
    assert sales.recording_path and Path(sales.recording_path).parent == tmp_path / "sales-recordings"
    assert Path(sales.recording_path).stat().st_size > 44 + 8000, "the sales call was recorded"
    assert support.recording_path is None, "the support line keeps the server's storage.record: false"
    assert not (tmp_path / "recordings").exists()


async def test_a_lines_own_rate_limit_counts_that_lines_calls_only(tmp_path: Path) -> None:
    with LiveServer(config_file=write_server(tmp_path, security={"allowlist": [FRIEND, STRANGER]})) as server:
        answers = [await incoming(server, STRANGER, SUPPORT, f"CA{i:032d}") for i in range(3)]
        assert ["<Connect>" in a for a in answers] == [True, True, False], "support: 2 calls a minute per caller"
        assert "busy" in answers[2]
        assert "<Connect>" in await incoming(server, STRANGER, SALES, "CA" + "9" * 32), \
            "the same caller still reaches sales, which has no rate limit"


async def test_a_reload_changes_a_lines_rules_for_the_next_call(tmp_path: Path) -> None:
    from test_live_edits import replace, wait_for

    path = write_server(tmp_path)
    with LiveServer(config_file=path) as server:
        assert "<Reject" in await incoming(server, STRANGER, SALES, "CA" + "1" * 32)
        doc = yaml.safe_load(path.read_text())
        doc["lines"]["sales"]["security"]["allowlist"].append(STRANGER)
        replace(path, yaml.safe_dump(doc, sort_keys=False))
        state = await wait_for(server.port, lambda c: c["generation"] == 2, "the allowlist edit was swapped in")
        assert state["config"]["restart_needed"] == [], "a line's security is live"
        assert "<Connect>" in await incoming(server, STRANGER, SALES, "CA" + "2" * 32)


@pytest.mark.parametrize(("sales", "key", "message"), [  # a block value's errors point at its first line
    ({"security": {"allowlist": [FRIEND], "store": "memory"}}, "allowlist:",
     "lines.sales.security: store: server-wide, set in the top-level security: section (a line sets "
     "allowlist, blocklist, rate_limit, max_call_seconds)"),
    ({"storage": {"url": "sqlite:///other.db"}}, "url:",
     "lines.sales.storage: url: server-wide, set in the top-level storage: section"),
    ({"secruity": {}}, "secruity:", "lines.sales: unknown key 'secruity' (did you mean security?)"),
    ({"numbers": ["+1555"]}, "- '+1555'", "lines.sales.numbers: not E.164 phone numbers: '+1555'"),
])
async def test_a_wrong_line_entry_is_named_with_its_file_and_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], sales: dict, key: str, message: str) -> None:
    path = write_server(tmp_path, **sales)
    text = path.read_text().splitlines()
    entry = text.index("  sales:")
    at = next(i for i, line in enumerate(text[entry:], entry + 1) if line.strip().startswith(key))
    assert await run_cli("check", "-c", str(path)) == 1
    err = capsys.readouterr().err
    assert f"{path}:{at}: {message}" in err, err


async def test_a_number_reaches_one_line_and_a_shared_file_one_set_of_rules(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_server(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["lines"]["sales"]["numbers"].append(SUPPORT)
    doc["lines"]["+15550102"] = "pipelines/support.yaml"  # support's file, without support's rate limit
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    text = path.read_text().splitlines()
    other_at = text.index("  '+15550102': pipelines/support.yaml") + 1
    assert await run_cli("check", "-c", str(path)) == 1
    err = capsys.readouterr().err
    assert f"{path}:{other_at}: lines: +15550102 and {SUPPORT} share {tmp_path / 'pipelines' / 'support.yaml'}" in err
    assert "set different security/storage: give it one entry with a name" in err

    del doc["lines"]["+15550102"]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert await run_cli("check", "-c", str(path)) == 1
    err = capsys.readouterr().err
    sales_at = path.read_text().splitlines().index("  sales:") + 1
    assert f"{path}:{sales_at}: lines: {SUPPORT} already reaches line 'support': a number reaches one line" in err


async def test_a_reload_that_changes_what_needs_a_restart_says_which_keys(tmp_path: Path) -> None:
    from loguru import logger

    from test_live_edits import replace, wait_for

    path = write_server(tmp_path)
    started = path.read_text()
    doc = yaml.safe_load(started)
    doc["server"]["port"] = 1  # where to listen and the database cannot change under a running server
    doc["storage"]["url"] = f"sqlite:///{tmp_path}/elsewhere.db"
    doc["storage"]["record"] = True  # ... but whether calls are recorded can (a line may set it)
    doc["lines"]["sales"]["security"]["allowlist"].append(STRANGER)
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING", format="{message}")
    try:
        with LiveServer(config_file=path) as server:
            replace(path, yaml.safe_dump(doc, sort_keys=False))
            state = await wait_for(server.port, lambda c: c["generation"] == 2, "the edit was applied")
            assert state["config"]["restart_needed"] == ["server.port", "storage.url"], state["config"]
            assert any("server.port, storage.url changed in" in w and "restart" in w for w in warnings), warnings
            assert "<Connect>" in await incoming(server, STRANGER, SALES, "CA" + "3" * 32), "the rest applies"
            support = await call(server, SUPPORT, from_number=STRANGER)
            server.wait_idle(finished=1)
            record = server.db(CallStore.get_call, support.call_sid)
            assert record is not None, "records still go to the database the server started with"
            assert record.recording_path and Path(record.recording_path).parent == tmp_path / "recordings", \
                "storage.record: true took effect on the next call"

            replace(path, started)  # put back: nothing waits for a restart any more
            state = await wait_for(server.port, lambda c: c["generation"] == 3, "the revert was applied")
            assert state["config"]["restart_needed"] == []
    finally:
        logger.remove(sink)


async def test_check_says_which_keys_each_line_sets_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_cli("check", "-c", str(write_server(tmp_path))) == 0
    out = capsys.readouterr().out
    assert f"line sales ({SALES}): {tmp_path / 'pipelines' / 'sales.yaml'}, 8 stages; its own security.allowlist, " \
           "storage.record, storage.recordings" in out, out
    assert "8 stages; its own security.rate_limit\n" in out and FRIEND not in out, "keys, never their values"


async def test_forget_clears_a_callers_window_on_a_line_with_its_own_rate_limit(tmp_path: Path) -> None:
    from agent_voice_bridge.security.limits import open_store

    path = write_server(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["security"]["store"] = f"sqlite:///{tmp_path / 'limits.sqlite'}"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with LiveServer(config_file=path, store=open_store(doc["security"]["store"], 0)) as server:
        answers = [await incoming(server, STRANGER, SUPPORT, f"CA{i:032d}") for i in range(3)]
        assert ["<Connect>" in a for a in answers] == [True, True, False], "support's own window is full"
        await run_cli("forget", STRANGER, "-c", str(path))
        assert STRANGER.encode() not in (tmp_path / "limits.sqlite").read_bytes()
        assert "<Connect>" in await incoming(server, STRANGER, SUPPORT, "CA" + "8" * 32), "admitted again"
