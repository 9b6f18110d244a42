"""One Silero ONNX session for every call in the process, with per-call state.

pipecat's ``SileroVADAnalyzer`` loads the model for each analyzer: ~10 MB and
36–50 ms of blocked event loop per call, paid while other calls are streaming.
The model's recurrent state is what is per call; the ONNX session is read-only and
thread-safe, so it is loaded once (from the file pipecat ships) and shared.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import onnxruntime
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState


def model_path() -> str:
    return str(resources.files("pipecat.audio.vad.data").joinpath("silero_vad.onnx"))


@cache
def shared_session() -> onnxruntime.InferenceSession:
    opts = onnxruntime.SessionOptions()
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(model_path(), providers=["CPUExecutionProvider"], sess_options=opts)


class SharedSileroVADAnalyzer(SileroVADAnalyzer):
    """pipecat's Silero analyzer, minus the per-instance model load and the per-frame thread hop.

    pipecat sends every 20 ms frame to a one-thread executor of its own (an OS thread per
    call) and back; the inference is ~0.1 ms, the hop cost more (bench: 30 → 21 ms of CPU per
    call-second at 25 calls). Run it in the event loop instead.
    """

    def __init__(self, *, sample_rate: int | None = None, params: VADParams | None = None):
        VADAnalyzer.__init__(self, sample_rate=sample_rate, params=params)
        model = SileroOnnxModel.__new__(SileroOnnxModel)
        model.session = shared_session()
        model.sample_rates = [8000, 16000]
        model.reset_states()
        self._model = model
        self._windows_since_reset = 0
        self._low_confidence_windows = 0

    async def analyze_audio(self, buffer: bytes) -> VADState:
        return self._run_analyzer(buffer)
