"""What-if stages for measurement only: our stages with one cost removed, to size a fix.

Not used by the bridge. Each subclasses a shipped stage and changes exactly one
thing, so ``bench --only stages`` can say how much CPU per call-second a change
would save before anyone makes it in ``src/``:

* ``InlineVADInterrupter``: ``vad.interrupter`` whose Silero analyzer runs in the
  event loop. pipecat's ``VADAnalyzer.analyze_audio`` sends every 20 ms frame to a
  one-thread ``ThreadPoolExecutor`` of its own (one OS thread per call) and back.
* ``Direct*``: the codec, resampler and loopback stages in pipecat's direct mode
  (``enable_direct_mode=True``): a frame is processed in the caller's task instead
  of costing an asyncio queue hop (two for data frames) per stage.
"""

from __future__ import annotations

from agent_voice_bridge.processors.loopback import Loopback
from agent_voice_bridge.processors.mulaw import MulawDecoder, MulawEncoder
from agent_voice_bridge.processors.resample import Resampler
from agent_voice_bridge.processors.vad_interrupter import VADInterrupter


class InlineVADInterrupter(VADInterrupter):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        analyzer = self._vad_controller._vad_analyzer

        async def analyze_inline(buffer: bytes):
            return analyzer._run_analyzer(buffer)

        analyzer.analyze_audio = analyze_inline


def _direct(self) -> None:
    # Set after __init__ (pipecat reads it only once frames flow), so this works whether or not
    # the shipped stage already asks for direct mode itself.
    self._enable_direct_mode = True


class DirectMulawDecoder(MulawDecoder):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        _direct(self)


class DirectMulawEncoder(MulawEncoder):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        _direct(self)


class DirectResampler(Resampler):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        _direct(self)


class DirectLoopback(Loopback):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        _direct(self)
