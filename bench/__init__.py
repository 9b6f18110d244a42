"""Benchmark harness (issue 5): our bridge side by side with pipecat's own Twilio path.

Run ``python -m bench`` (or ``voice-bridge bench``) from the repository root; ``--quick``
finishes in under two minutes. See ``bench/README.md`` for what is measured and how.
"""
