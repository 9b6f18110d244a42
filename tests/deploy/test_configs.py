"""The deploy files agree with the server: the systemd unit verifies, and every platform's shutdown budget
covers the drain (``server.drain_seconds``) plus the goodbye, and its health check is ``/healthz``."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from agent_voice_bridge.assets import spoken
from agent_voice_bridge.pipelines.config import ServerConfig
from agent_voice_bridge.pipelines.loader import load_file
from conftest import ROOT

DEPLOY = ROOT / "deploy"
DEFAULT_DRAIN = ServerConfig().drain_seconds
GOODBYE_SECONDS = len(spoken("goodbye_restart")) / 8000
GOODBYE_WAIT = 20.0
"""After drain_seconds the server waits at most this long for the goodbyes to end (serving.py)."""


def unit() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (DEPLOY / "voice-bridge.service").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def seconds(value: str) -> float:
    return float(value.removesuffix("s"))


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` on the unit as shipped.

    verify insists that ExecStart's binary exists, and the unit names the VM install path
    (/opt/voice-bridge/bin/voice-bridge). So it runs with ``--root`` on a scratch tree holding the
    system's unit files, the unit itself, and an executable at that path: the unit file is not edited.
    """
    if shutil.which("systemd-analyze") is None:
        pytest.skip("SKIPPED, the unit was NOT verified: systemd-analyze is missing (apt-get install -y systemd)")
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(DEPLOY / "voice-bridge.service", root / "etc/systemd/system/voice-bridge.service")
    exec_start = unit()["ExecStart"].split()[0]
    binary = root / exec_start.lstrip("/")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    done = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "voice-bridge.service"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "SYSTEMD_PAGER": ""})
    print(done.stdout, done.stderr)
    assert done.returncode == 0, done.stderr
    assert not (done.stdout + done.stderr).strip(), "verify printed warnings (an unknown or bad setting?)"


def test_systemd_unit_policy() -> None:
    values = unit()
    assert values["Restart"] == "on-failure"
    assert values["User"] and values["User"] != "root"
    assert values["EnvironmentFile"].startswith("/etc/voice-bridge/")
    assert values["KillSignal"] == "SIGTERM"
    assert values["KillMode"] == "mixed", "SIGTERM once, to the supervisor, which hands it to each worker"
    assert "Environment=ORT_DISABLE_TELEMETRY=1" in (DEPLOY / "voice-bridge.service").read_text()
    assert seconds(values["TimeoutStopSec"]) >= DEFAULT_DRAIN + GOODBYE_WAIT + 5
    assert (DEPLOY / "voice-bridge.env.example").is_file()


def test_cloud_run_service(monkeypatch: pytest.MonkeyPatch) -> None:
    service = yaml.safe_load((DEPLOY / "cloudrun/service.yaml").read_text())
    template = service["spec"]["template"]
    notes, spec = template["metadata"]["annotations"], template["spec"]
    assert notes["run.googleapis.com/sessionAffinity"] == "true"
    assert notes["run.googleapis.com/cpu-throttling"] == "false", "CPU always allocated"
    assert int(notes["autoscaling.knative.dev/minScale"]) >= 1
    assert spec["timeoutSeconds"] == 3600
    assert isinstance(spec["containerConcurrency"], int) and spec["containerConcurrency"] > 0
    container, = spec["containers"]
    port = container["ports"][0]["containerPort"]
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": port}
    mount, = container["volumeMounts"]
    assert mount["mountPath"] == "/config", "the entry point serves /config/pipeline.yaml"
    assert spec["volumes"][0]["secret"]["items"][0]["path"] == "pipeline.yaml"

    # The mounted config: Cloud Run SIGKILLs 10 s after SIGTERM, so drain + goodbye must fit in that.
    for key, value in {"PUBLIC_URL": "https://voice-bridge-1.europe-west1.run.app", "TWILIO_AUTH_TOKEN": "t",
                       "GEMINI_API_KEY": "k", "PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    config = load_file(str(DEPLOY / "cloudrun/pipeline.yaml")).config
    assert config.server.port == port
    assert config.server.drain_seconds + GOODBYE_SECONDS + 1 <= 10
    assert config.security.max_call_seconds < spec["timeoutSeconds"]


def test_fly_toml() -> None:
    fly = tomllib.loads((DEPLOY / "fly.toml").read_text())
    assert fly["kill_signal"] == "SIGTERM"
    assert fly["kill_timeout"] >= DEFAULT_DRAIN + GOODBYE_WAIT, "Fly's SIGKILL comes after the drain"
    service = fly["http_service"]
    assert service["internal_port"] == int(fly["env"]["PORT"])
    assert service["min_machines_running"] >= 1 and service["auto_stop_machines"] in ("off", False)
    check, = service["checks"]
    assert check["path"] == "/healthz"
    limits = service["concurrency"]
    assert limits["type"] == "connections" and 0 < limits["soft_limit"] <= limits["hard_limit"]


def test_dockerfile_contract() -> None:
    """What the image test cannot see from the image alone: the base is an argument and the build is staged."""
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE=python:3.11-slim" in text
    assert text.count("FROM ${BASE}") == 2 and "AS builder" in text
    assert "COPY --from=builder /opt/venv /opt/venv" in text
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    assert "*" in ignore and "!src" in ignore, "the context is an allowlist (no .venv, tests or pipeline.yaml)"
