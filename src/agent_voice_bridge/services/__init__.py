"""The AI stages: pipecat's speech-to-speech services, configured from YAML for one call."""
