"""Who gets in: Twilio signatures, stream tokens, caller policy and limits."""

from agent_voice_bridge.security.gate import CallGate, Refusal

__all__ = ["CallGate", "Refusal"]
