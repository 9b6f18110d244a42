"""What-if stages for measurement only: not used by the bridge.

* ``PipecatSileroVAD``: pipecat's own VAD stage as a pipecat application writes it,
  ``VADProcessor(vad_analyzer=SileroVADAnalyzer(...))``: one ONNX session per call, every
  20 ms frame analysed on a per-call executor thread, BS.1770 loudness over a rolling
  400 ms window. ``bench --only stages`` runs it in ``vad.interrupter``'s place, so the
  difference is what our VAD stage saves.
"""

from __future__ import annotations

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.processors.audio.vad_processor import VADProcessor


class PipecatSileroVAD(VADProcessor):
    def __init__(self, *, start_secs: float = 0.2, stop_secs: float = 0.6, **kwargs):
        params = VADParams(start_secs=start_secs, stop_secs=stop_secs)
        super().__init__(vad_analyzer=SileroVADAnalyzer(params=params), **kwargs)
