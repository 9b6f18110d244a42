"""TLS without a proxy: ``server.tls: {cert, key}`` makes ``voice-bridge serve`` speak https:// and wss:// itself.

The server is the real ``voice-bridge serve`` subprocess with a throwaway self-signed certificate for
127.0.0.1 (tests/fakes/tls.py); the caller is the simulated Twilio caller speaking real speech, trusting
exactly that certificate.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest
import yaml
from twilio.request_validator import RequestValidator

from agent_voice_bridge.pipelines.errors import ConfigError
from agent_voice_bridge.pipelines.loader import load_text
from agent_voice_bridge.transports.simulated_caller import CallSetupError, Pause, Say, WaitQuiet, run_call
from conftest import ROOT, free_port, speech
from fakes.tls import loopback_tls
from test_security import ServeProcess, assert_echoed, bridge_yaml, call_form

TOKEN = "tls-test-auth-token-0123456789abcdef"


def tls_files() -> tuple[str, str]:
    """The loopback certificate and its key (written side by side by ``loopback_tls``)."""
    cert = Path(loopback_tls().ca_path)
    return str(cert), str(cert.with_name("key.pem"))


def tls_config(tmp_path: Path, port: int, *, token: str = "", cert: str | None = None) -> Path:
    """The echo line on 127.0.0.1 with ``server.tls``; with a token, signed at ``https://127.0.0.1:port``."""
    doc = yaml.safe_load(bridge_yaml(token=token, public_url=f"https://127.0.0.1:{port}" if token else None))
    default_cert, key = tls_files()
    doc["server"]["tls"] = {"cert": cert or default_cert, "key": key}
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class TlsServeProcess(ServeProcess):
    """``voice-bridge serve`` with ``server.tls``: ready once /healthz answers over https."""

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def verify(self) -> ssl.SSLContext:  # type: ignore[override]
        return loopback_tls().client


def test_tls_needs_both_cert_and_key() -> None:
    with pytest.raises(ConfigError) as error:
        load_text("server: {tls: {cert: /etc/cert.pem}}\npipeline: [twilio.input, echo, twilio.output]\n",
                  "tls.yaml", {})
    assert "key" in str(error.value)


async def test_https_webhook_and_wss_call_hear_the_echo(tmp_path: Path) -> None:
    port = free_port()
    server = TlsServeProcess(tls_config(tmp_path, port, token=TOKEN), port)
    client = loopback_tls().client
    try:
        await asyncio.to_thread(server.wait_ready)
        banner = server.output()
        assert f"on https://127.0.0.1:{port}" in banner and f"wss://127.0.0.1:{port}/media-stream" in banner

        async with httpx.AsyncClient(timeout=5, verify=client) as https:
            health = await https.get(server.base + "/healthz")
            assert health.status_code == 200 and health.json()["status"] == "ok"
            # Twilio's webhook, signed for the public URL it calls: the TwiML points the stream at wss://.
            url, form = server.base + "/incoming", call_form()
            signature = RequestValidator(TOKEN).compute_signature(url, form)
            twiml = await https.post(url, data=form, headers={"X-Twilio-Signature": signature})
        assert twiml.status_code == 200, twiml.text
        stream = ET.fromstring(twiml.text).find("./Connect/Stream")
        assert stream is not None and stream.get("url") == f"wss://127.0.0.1:{port}/media-stream", twiml.text

        async with httpx.AsyncClient(timeout=5) as plain:  # no cleartext HTTP on a TLS port
            with pytest.raises(httpx.HTTPError):
                await plain.get(f"http://127.0.0.1:{port}/healthz")
        with pytest.raises(CallSetupError):  # a caller that does not trust the certificate is refused
            await run_call(f"wss://127.0.0.1:{port}/media-stream", [Pause(0.1)],
                           ssl_context=ssl.create_default_context())

        # The whole call the way Twilio places it: signed https:// webhook, then the wss:// stream it names.
        result = await run_call(server.base + "/incoming", [Pause(0.5), Say(speech("hello-world")),
                                                            WaitQuiet(idle=0.8)],
                                auth_token=TOKEN, ssl_context=client)
        assert_echoed(result)  # the echo within 1.0 s of the caller stopping, in full; the caller hung up
        print(f"wss:// call: reply after {result.reply_latencies()[0] * 1000:.0f} ms")

        server.proc.send_signal(signal.SIGTERM)  # draining works the same over TLS
        assert await asyncio.to_thread(server.proc.wait, 15) == 0
        assert "drained" in server.output()
    finally:
        await asyncio.to_thread(server.stop)


async def test_tls_with_two_workers(tmp_path: Path) -> None:
    port = free_port()
    server = TlsServeProcess(tls_config(tmp_path, port), port, "--workers", "2")
    try:
        await asyncio.to_thread(server.wait_ready)
        result = await run_call(f"wss://127.0.0.1:{port}/media-stream",
                                [Pause(0.5), Say(speech("one-moment-please")), WaitQuiet(idle=0.8)],
                                ssl_context=loopback_tls().client)
        assert_echoed(result)
    finally:
        await asyncio.to_thread(server.stop)


def test_an_unreadable_certificate_is_named_at_start(tmp_path: Path) -> None:
    port = free_port()
    config = tls_config(tmp_path, port, cert=str(tmp_path / "missing.pem"))
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "voice-bridge"), "serve", "-c", str(config),
                           "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "server.tls.cert" in done.stderr and "missing.pem" in done.stderr
