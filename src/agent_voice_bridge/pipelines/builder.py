"""Build one call's pipecat pipeline from a checked chain. Called once per call.

A cascade's LLM gets pipecat's context aggregators around it here: the user half
just before it, the assistant half after ``twilio.output`` (where it learns what
the caller heard). A chain file never names them.
"""

from __future__ import annotations

from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.llm_service import LLMService

from agent_voice_bridge.pipelines.chain import Chain, ResolvedStage
from agent_voice_bridge.pipelines.keywords import init_keywords, typed_kwargs
from agent_voice_bridge.pipelines.services import kind_of, service_kwargs
from agent_voice_bridge.pipelines.stage import Stage, StageContext
from agent_voice_bridge.processors.heard_context import conversation_for
from agent_voice_bridge.transports.call_info import CallInfo


def build_processor(stage: ResolvedStage, call: CallInfo | None) -> FrameProcessor:
    if issubclass(stage.cls, Stage):
        ctx = StageContext(audio_in=stage.audio_in, side=stage.side, call=call)
        return stage.cls.create(stage.params, ctx)
    kwargs = service_kwargs(kind_of(stage.cls), typed_kwargs(stage.cls, stage.param_dict()), stage.audio_in)
    # A custom stage that wants the call's facts (caller number, <Parameter>s) asks for `call`.
    if "call" in init_keywords(stage.cls):
        kwargs["call"] = call
    return stage.cls(**kwargs)


def build_pipeline(chain: Chain, call: CallInfo | None) -> Pipeline:
    """A fresh pipeline: no processor is shared between calls."""
    processors: list[FrameProcessor] = []
    after_sink: list[FrameProcessor] = []
    for stage in chain.stages:
        processor = build_processor(stage, call)
        if isinstance(processor, LLMService) and stage.audio_in is not None and stage.audio_in.is_text:
            user, assistant = conversation_for(processor, call)
            processors.append(user)
            after_sink.append(assistant)
        processors.append(processor)
    return Pipeline(processors + after_sink)
