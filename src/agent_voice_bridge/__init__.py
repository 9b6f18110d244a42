"""agent-voice-bridge: a Twilio phone line to a real-time AI, as a YAML chain of pipecat processors."""

import os

# onnxruntime (Silero VAD) uploads telemetry on Linux unless told not to; a phone bridge sends nothing
# anywhere it was not configured to. Set before anything imports onnxruntime.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
