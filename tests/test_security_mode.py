"""Development mode (checks off) is explicit or obvious, loud, and refused where the file looks like production.

An empty ``twilio.auth_token`` used to turn every Twilio check off silently, even with
an ``https://`` public URL and an API key; an empty ``${VAR}`` passed as if it were set.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml
from conftest import ECHO_YAML, LiveServer, run_cli

from agent_voice_bridge.pipelines.errors import ConfigError
from agent_voice_bridge.pipelines.loader import load_default, load_text

PIPELINE = yaml.safe_load(ECHO_YAML)["pipeline"]


def bridge(server: dict | None = None, security: dict | None = None,
           auth_token: str = "${TWILIO_AUTH_TOKEN:-}") -> str:
    doc = {"server": {"host": "127.0.0.1", **(server or {})}, "twilio": {"auth_token": "AUTH"},
           "security": {"store": "memory", **(security or {})}, "pipeline": PIPELINE}
    return yaml.safe_dump(doc, sort_keys=False).replace("AUTH", auth_token)


def problem(text: str, env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as error:
        load_text(text, "prod.yaml", env)
    return str(error.value)


def test_an_empty_variable_without_a_default_is_an_error_like_a_missing_one() -> None:
    message = problem(bridge(auth_token="${TWILIO_AUTH_TOKEN}"), {"TWILIO_AUTH_TOKEN": ""})
    assert "prod.yaml:4: environment variable TWILIO_AUTH_TOKEN is empty (used at twilio.auth_token)" in message


@pytest.mark.parametrize("server, sign", [
    ({"public_url": "https://voice.example.com"}, "server.public_url is https://"),
    ({"api_key": "k3y"}, "server.api_key is set"),
])
def test_an_empty_token_in_a_production_looking_file_is_refused(server: dict, sign: str) -> None:
    message = problem(bridge(server), {"TWILIO_AUTH_TOKEN": ""})  # ${TWILIO_AUTH_TOKEN:-}: a misspelt variable
    assert message.startswith("prod.yaml:") and "twilio.auth_token: is empty" in message and sign in message
    assert load_text(bridge(server), "prod.yaml", {"TWILIO_AUTH_TOKEN": "t0k"}).config.twilio.auth_token == "t0k"


def test_explicit_development_mode_is_refused_with_an_https_public_url_and_production_needs_a_token() -> None:
    https = {"public_url": "https://voice.example.com"}
    assert "security.mode: development mode (checks off) is refused here" in problem(
        bridge(https, {"mode": "development"}), {})
    assert "checks are turned off but this looks like production" in problem(
        bridge(https, {"check_signatures": False}), {"TWILIO_AUTH_TOKEN": "t0k"})
    assert "security.mode is production" in problem(bridge(security={"mode": "production"}), {})


async def test_check_fails_on_a_production_file_without_a_token(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "pipeline.yaml"
    config.write_text(bridge({"public_url": "https://voice.example.com", "api_key": "${VB_TEST_API_KEY:-k}"}))
    assert await run_cli("check", "-c", str(config)) == 1
    assert f"{config}:" in capsys.readouterr().err


async def test_development_mode_is_said_in_healthz_and_production_is_not() -> None:
    assert load_default("echo.yaml", {}).config.server.host == "0.0.0.0"  # make serve's chain still loads
    with LiveServer(load_default_text(), "<built-in echo.yaml>", env={}) as server:
        health = httpx.get(f"http://127.0.0.1:{server.port}/healthz").json()
    assert health["security"] == "development" and "checks are OFF" in health["warning"]
    with LiveServer(bridge({"api_key": "k3y"}, {"mode": "development"}), env={}) as server:  # asked for
        assert httpx.get(f"http://127.0.0.1:{server.port}/healthz").json()["security"] == "development"
    with LiveServer(bridge({"public_url": "https://voice.example.com"}), env={"TWILIO_AUTH_TOKEN": "t0k"}) as server:
        health = httpx.get(f"http://127.0.0.1:{server.port}/healthz").json()
    assert health["security"] == "production" and "warning" not in health


def load_default_text() -> str:
    from importlib import resources

    return resources.files("agent_voice_bridge.defaults").joinpath("echo.yaml").read_text()
