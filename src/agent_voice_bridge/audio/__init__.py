"""Signal processing shared by the stages and the simulated caller (no pipecat here)."""
