"""The YAML engine: loading, ${VAR} expansion, registry, chain checking, schema, and custom stages in a call."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent_voice_bridge.pipelines.builder import build_pipeline, build_processor
from agent_voice_bridge.pipelines.chain import build_chain, masked
from agent_voice_bridge.pipelines.errors import ConfigError
from agent_voice_bridge.pipelines.loader import load_default, load_file, load_text
from agent_voice_bridge.pipelines.schema import file_schema
from agent_voice_bridge.transports.call_info import CallInfo
from agent_voice_bridge.transports.simulated_caller import Say, WaitQuiet, run_call
from conftest import ROOT, LiveServer, speech

ECHO_CHAIN = """
pipeline:
  - twilio.input
  - mulaw.decode
  - resample: {rate: 16000}
  - vad.interrupter
  - echo
  - resample: {rate: 8000}
  - mulaw.encode
  - twilio.output
"""


def chain_of(text: str, env: dict[str, str] | None = None):
    return build_chain(load_text(textwrap.dedent(text), "test.yaml", env or {}))


def problems_of(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        chain_of(text, env)
    return str(err.value)


def test_echo_chain_resolves_with_formats_per_link() -> None:
    chain = chain_of(ECHO_CHAIN)
    formats = [(s.name, str(s.audio_in), str(s.audio_out)) for s in chain.stages]
    assert formats[2] == ("resample", "8 kHz PCM16", "16 kHz PCM16")
    assert formats[-1] == ("twilio.output", "8 kHz μ-law", "None")
    assert [s.side for s in chain.stages] == ["caller"] * 5 + ["agent"] * 3


def test_misordered_chain_names_the_stage_and_line() -> None:
    text = ECHO_CHAIN.replace("  - mulaw.decode\n  - resample: {rate: 16000}\n",
                              "  - resample: {rate: 16000}\n  - mulaw.decode\n")
    message = problems_of(text)
    assert "test.yaml:4: stage 2 (resample): takes PCM16 but receives 8 kHz μ-law from stage 1 (twilio.input)" in message


def test_vad_at_an_unsupported_rate_is_refused() -> None:
    message = problems_of(ECHO_CHAIN.replace("rate: 16000", "rate: 24000"))
    assert "stage 4 (vad.interrupter): takes 8 kHz or 16 kHz but receives 24 kHz PCM16" in message


def test_missing_encoder_before_twilio_output_is_refused() -> None:
    message = problems_of(ECHO_CHAIN.replace("  - mulaw.encode\n", ""))
    assert "stage 7 (twilio.output): takes μ-law but receives 8 kHz PCM16 from stage 6 (resample)" in message


@pytest.mark.parametrize(("edit", "expected"), [
    (("  - echo\n", ""), "needs exactly one AI stage"),
    (("  - echo\n", "  - echo\n  - loopback\n"), "found 2"),
    (("  - twilio.input\n", ""), "the first stage must be twilio.input"),
    (("  - echo\n", "  - ech0\n"), "stage 5 (ech0): unknown stage 'ech0'"),
    (("  - vad.interrupter\n", "  - vad.interrupter: {start_secs: 9}\n"), "start_secs: Input should be less than or equal to 2"),
    (("  - vad.interrupter\n", "  - vad.interrupter: {colour: red}\n"), "unknown key 'colour'; valid keys: "),
    (("  - echo\n", "  - no.such.module:Thing\n"), "cannot import 'no.such.module'"),
    (("  - echo\n", "  - json:JSONDecoder\n"), "is not a pipecat FrameProcessor"),
    (("  - twilio.output\n", "  - twilio.output\n  - mulaw.decode\n"), "twilio.output must be the last stage"),
])
def test_chain_errors_say_what_is_wrong(edit: tuple[str, str], expected: str) -> None:
    assert expected in problems_of(ECHO_CHAIN.replace(*edit))


def test_env_expansion_with_defaults_and_types() -> None:
    loaded = load_text("server: {port: ${PORT:-9001}, public_url: '${URL}'}\ntwilio: {auth_token: '${TOKEN}'}\n"
                       + ECHO_CHAIN, "t.yaml", {"URL": "https://voice.example.com/", "TOKEN": "t0k"})
    assert loaded.config.server.port == 9001
    assert loaded.config.server.public_url == "https://voice.example.com"


def test_missing_variable_names_variable_line_and_use() -> None:
    text = "twilio:\n  auth_token: ${TWILIO_TOKEN_X}\n" + ECHO_CHAIN
    with pytest.raises(ConfigError) as err:
        load_text(text, "t.yaml", {})
    assert "t.yaml:2: environment variable TWILIO_TOKEN_X is not set (used at twilio.auth_token)" in str(err.value)


def test_secrets_never_appear_in_errors_or_check_output() -> None:
    secret = "sk-verysecret123"
    with pytest.raises(ConfigError) as err:
        load_text("twilio: {auth_token: [1]}\nserver: {port: '" + secret + "'}\n" + ECHO_CHAIN, "t.yaml", {})
    assert secret not in str(err.value)
    assert "t.yaml:2: server.port" in str(err.value)


def test_yaml_syntax_error_has_a_line() -> None:
    with pytest.raises(ConfigError) as err:
        load_text("pipeline:\n  - twilio.input\n  - {broken\n", "bad.yaml", {})
    assert str(err.value).startswith("bad.yaml:")


def test_seed_shape_expands_to_the_default_chain() -> None:
    loaded = load_text("ai:\n  provider: echo\n  gemini: {api_key: ${GEMINI_API_KEY}}\n", "config.yaml", {})
    names = [s if isinstance(s, str) else next(iter(s)) for s in loaded.config.pipeline]
    assert names == ["twilio.input", "mulaw.decode", "resample", "vad.interrupter", "echo", "resample",
                     "mulaw.encode", "twilio.output"]
    assert build_chain(loaded).stages[4].role == "responder"


def test_seed_shape_still_requires_the_chosen_providers_variables() -> None:
    with pytest.raises(ConfigError) as err:
        load_text("ai:\n  provider: gemini\n  gemini: {api_key: ${GEMINI_API_KEY}}\n", "config.yaml", {})
    assert "GEMINI_API_KEY is not set" in str(err.value)


def test_custom_class_by_import_path_passes_audio_through_and_gets_kwargs() -> None:
    chain = chain_of(ECHO_CHAIN.replace("  - echo\n", "  - stages.counting:CountingProcessor: {label: x}\n  - echo\n"))
    custom = chain.stages[4]
    assert custom.name == "stages.counting:CountingProcessor"
    assert custom.audio_in == custom.audio_out and str(custom.audio_out) == "16 kHz PCM16"
    message = problems_of(ECHO_CHAIN.replace("  - echo\n", "  - stages.counting:CountingProcessor: {labl: x}\n  - echo\n"))
    assert "CountingProcessor takes no parameter 'labl'" in message


CONFIGURED = "  - stages.configured:ConfiguredProcessor: {settings: {gain_db: -6, bands: [300, 3400]}, params: %s}\n"


def test_a_mapping_for_a_settings_object_becomes_one_fresh_per_call() -> None:
    """pipecat takes a service's options as objects (``settings=...Settings(model=...)``); YAML writes mappings."""
    from stages.configured import GainParams, GainSettings

    chain = chain_of(ECHO_CHAIN.replace("  - echo\n", CONFIGURED % "{ceiling: 20000}" + "  - echo\n"))
    stage = chain.stages[4]
    one, two = build_processor(stage, None), build_processor(stage, None)
    assert one.settings == GainSettings(gain_db=-6.0, bands=[300, 3400]) and one.params == GainParams(ceiling=20000)
    assert one.settings is not two.settings and one.params is not two.params, "calls must not share options"
    assert stage.param_dict()["settings"] == {"gain_db": -6, "bands": [300, 3400]}, "the chain keeps the mapping"


def test_a_settings_mapping_that_does_not_fit_names_the_file_line_stage_and_field() -> None:
    text = ECHO_CHAIN.replace("  - echo\n", CONFIGURED.replace("gain_db", "gain") % "{ceiling: loud}" + "  - echo\n")
    message = problems_of(text)
    assert "test.yaml:7: stage 5 (stages.configured:ConfiguredProcessor)" in message, message
    assert "settings: GainSettings.__init__() got an unexpected keyword argument 'gain'" in message
    text = ECHO_CHAIN.replace("  - echo\n", CONFIGURED % "{ceiling: loud}" + "  - echo\n")
    assert "params.ceiling: Input should be a valid integer" in problems_of(text)


def test_a_secret_inside_a_settings_mapping_is_never_shown() -> None:
    shown = masked({"settings": {"api_key": "sk-live-123", "model": "m", "auth": [{"token": "t0k"}]}, "label": "x"})
    assert shown == {"settings": {"api_key": "***", "model": "m", "auth": [{"token": "***"}]}, "label": "x"}
    text = CONFIGURED.replace("gain_db: -6", "gain_db: -6, api_key: sk-live-123") % "{ceiling: 1}"
    described = build_chain(load_text(ECHO_CHAIN.replace("  - echo\n", text + "  - echo\n"), "t.yaml", {}),
                            fallbacks=False).stages[4].describe()
    assert "'api_key': '***'" in described and "sk-live" not in described


def test_every_call_gets_fresh_processors() -> None:
    chain = chain_of(ECHO_CHAIN.replace("  - twilio.input\n", "  - twilio.input\n")).stages
    call = CallInfo(call_sid="CA1", stream_sid="MZ1", stream=object())  # type: ignore[arg-type]
    from agent_voice_bridge.pipelines.chain import Chain

    one = build_pipeline(Chain("t", chain), call)
    two = build_pipeline(Chain("t", chain), call)
    assert not {id(p) for p in one.processors} & {id(p) for p in two.processors}


def test_schema_lists_every_stage_and_its_parameters() -> None:
    schema = file_schema()
    text = json.dumps(schema)
    for name in ("twilio.input", "mulaw.decode", "resample", "vad.interrupter", "echo", "loopback", "twilio.output"):
        assert f'"{name}"' in text
    assert "start_secs" in text and "mark_every_ms" in text
    assert schema["properties"]["pipeline"]["type"] == "array"


def test_ready_chains_in_the_repo_pass_check() -> None:
    for path in sorted((ROOT / "pipelines").glob("*.yaml")):
        build_chain(load_file(path, {"GEMINI_API_KEY": "k", "OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k"}))
    build_chain(load_default("echo.yaml", {}))
    example = ROOT / "pipeline.yaml.example"
    build_chain(load_file(example, {}))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent_voice_bridge.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_check_cli_prints_chain_or_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("twilio: {auth_token: supersecret-token}\n" + ECHO_CHAIN)
    ok = _cli("check", "-c", str(good), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "vad.interrupter" in ok.stdout and "16 kHz PCM16" in ok.stdout
    assert "supersecret" not in ok.stdout + ok.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text(ECHO_CHAIN.replace("  - mulaw.encode\n", ""))
    failed = _cli("check", "-c", str(bad), cwd=tmp_path)
    assert failed.returncode == 1
    assert f"{bad}:" in failed.stderr and "stage 7 (twilio.output)" in failed.stderr


async def test_custom_stage_by_import_path_runs_in_a_call() -> None:
    from stages import counting

    yaml_text = ECHO_CHAIN.replace(
        "  - vad.interrupter\n",
        "  - pipecat.processors.logger:FrameLogger: {prefix: custom-stage}\n"
        "  - vad.interrupter\n  - stages.counting:CountingProcessor: {label: mine}\n")
    counting.SEEN.clear()
    with LiveServer(yaml_text) as server:
        result = await run_call(server.http_url, [Say(speech("vm-goodbye")), WaitQuiet(idle=0.8)],
                                from_number="+15550009999")
    assert result.reply_latencies()[0] <= 2.0, "the echo still works with the custom stages in the chain"
    frames = counting.SEEN["mine:+15550009999:16000"]
    assert frames >= 50, f"the custom stage saw {frames} frames of the caller's 16 kHz audio"


def test_embedded_defaults_are_the_ready_chains() -> None:
    defaults = ROOT / "src" / "agent_voice_bridge" / "defaults"
    for name in ("echo.yaml", "gemini.yaml", "openai.yaml"):
        assert (defaults / name).read_text() == (ROOT / "pipelines" / name).read_text(), name


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "echo.yaml"),
    ({"OPENAI_API_KEY": "k"}, "openai.yaml"),
    ({"GEMINI_API_KEY": "k", "OPENAI_API_KEY": "k"}, "gemini.yaml"),
])
def test_serve_picks_the_backend_whose_key_is_set(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                  expected: str) -> None:
    from agent_voice_bridge.configuration import default_chain_name

    for key in ("GEMINI_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert default_chain_name() == expected


def test_server_start_loads_the_shared_vad_model_before_any_call() -> None:
    from agent_voice_bridge.audio import silero_batch as silero
    from agent_voice_bridge.server import create_app
    from agent_voice_bridge.security.limits import MemoryLimitStore

    silero.shared_session.cache_clear()
    loaded = load_text(textwrap.dedent(ECHO_CHAIN), "t.yaml", {})
    create_app(loaded.config, build_chain(loaded), MemoryLimitStore())
    assert silero.shared_session.cache_info().currsize == 1, "loaded at start, not by the first call"
