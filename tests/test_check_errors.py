"""``voice-bridge check`` on broken files: YAML syntax errors and misspelt keys point at the mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_voice_bridge.cli import main
from test_pipelines import ECHO_CHAIN

CHAIN = ECHO_CHAIN.lstrip("\n")  # starts on the file's first line: the line numbers below count from it


def check(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> str:
    """Run ``voice-bridge check -c pipeline.yaml`` on ``text``; it must fail, and say why on stderr."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    assert main(["check", "-c", str(path)]) == 1
    return capsys.readouterr().err.replace(str(tmp_path) + "/", "")


def test_syntax_error_shows_where_the_construct_began_and_where_it_broke(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "server:\n  host: 127.0.0.1\n  port: 8082\ntwilio:\n  phone_number: '+15550100'\n" + CHAIN.replace(
        "  - echo\n", " - echo\n")
    err = check(tmp_path, capsys, text)
    assert ("pipeline.yaml:1: not valid YAML: while parsing a block mapping ... "
            "pipeline.yaml:11: expected <block end>, but found '-'") in err


def test_unclosed_flow_sequence_points_at_its_opening_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = check(tmp_path, capsys, "security:\n  allowlist: ['+15550100',\nserver: {port: 8082}\n" + CHAIN)
    # PyYAML gives up two lines on (``server: {…}`` is read as an item of the list); the opening line comes first.
    assert "pipeline.yaml:2: not valid YAML: while parsing a flow sequence ... pipeline.yaml:4: expected ','" in err


def test_unknown_top_level_key_lists_the_valid_ones_and_suggests_the_nearest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = check(tmp_path, capsys, "securty:\n  allowlist: []\n" + CHAIN)
    assert ("pipeline.yaml:2: unknown key 'securty' (did you mean security?); "
            "valid keys: ai, lines, observability, outbound, pipeline, security, server, storage, twilio") in err
    assert "Extra inputs" not in err


@pytest.mark.parametrize(("section", "expected"), [
    ("server:\n  hots: 127.0.0.1\n", "pipeline.yaml:2: server: unknown key 'hots' (did you mean host?); valid keys: "),
    ("twilio:\n  auth_tokn: x\n", "pipeline.yaml:2: twilio: unknown key 'auth_tokn' (did you mean auth_token?)"),
    ("storage: {recrd: true}\n", "pipeline.yaml:1: storage: unknown key 'recrd' (did you mean record?); "
                                 "valid keys: record, recordings, url"),
    ("security:\n  rate_limit: {calls: 5, per_second: 60}\n",
     "pipeline.yaml:2: security.rate_limit: unknown key 'per_second' (did you mean per_seconds?); "
     "valid keys: calls, per_seconds"),
])
def test_unknown_key_inside_a_section_is_named_with_a_suggestion(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, expected: str) -> None:
    assert expected in check(tmp_path, capsys, section + CHAIN)


def test_unknown_stage_and_unknown_key_share_one_wording(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = check(tmp_path, capsys, CHAIN.replace("  - echo\n", "  - ecoh\n"))
    assert "pipeline.yaml:6: stage 5 (ecoh): unknown stage 'ecoh' (did you mean echo?); valid stages: echo, " in err


def test_a_misspelt_stage_parameter_gets_the_nearest_valid_one(tmp_path, capsys) -> None:
    path = tmp_path / "chain.yaml"
    path.write_text("pipeline:\n  - twilio.input\n  - mulaw.decode\n  - resample: {rat: 16000}\n  - echo\n"
                    "  - resample: {rate: 8000}\n  - mulaw.encode\n  - twilio.output\n")
    assert main(["check", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:4: stage 3 (resample):" in err
    assert "unknown key 'rat' (did you mean rate?); valid keys: rate" in err, err
