"""``check`` masks secrets by what a value holds, not only by its name: URLs with a password or a key."""

from __future__ import annotations

from agent_voice_bridge.pipelines.chain import build_chain
from agent_voice_bridge.pipelines.loader import load_text

CHAIN = """
pipeline:
  - twilio.input
  - openai.realtime:
      api_key: sk-named-secret
      base_url: "wss://bob:hunter2pw@proxy.example:8443/v1?key=sk-in-query-123&region=eu"
      audio_format: pcmu
  - twilio.output
"""


def test_check_masks_a_password_and_a_key_inside_url_values() -> None:
    shown = build_chain(load_text(CHAIN, "masking.yaml", {})).describe()
    for secret in ("sk-named-secret", "hunter2pw", "sk-in-query-123"):
        assert secret not in shown, f"{secret} printed by check"
    assert "wss://bob:***@proxy.example:8443/v1?key=***&region=eu" in shown
