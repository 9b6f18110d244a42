"""Where a call's time goes: the per-turn timeline, and its export as OpenTelemetry traces."""
