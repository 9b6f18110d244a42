"""Build one call's pipecat pipeline from a checked chain. Called once per call."""

from __future__ import annotations

from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.frame_processor import FrameProcessor

from agent_voice_bridge.pipelines.chain import Chain, ResolvedStage, init_keywords
from agent_voice_bridge.pipelines.stage import Stage, StageContext
from agent_voice_bridge.transports.call_info import CallInfo


def build_processor(stage: ResolvedStage, call: CallInfo | None) -> FrameProcessor:
    if issubclass(stage.cls, Stage):
        ctx = StageContext(audio_in=stage.audio_in, side=stage.side, call=call)
        return stage.cls.create(stage.params, ctx)
    kwargs = stage.param_dict()
    # A custom stage that wants the call's facts (caller number, <Parameter>s) asks for `call`.
    if "call" in init_keywords(stage.cls):
        kwargs["call"] = call
    return stage.cls(**kwargs)


def build_pipeline(chain: Chain, call: CallInfo | None) -> Pipeline:
    """A fresh pipeline: no processor is shared between calls."""
    return Pipeline([build_processor(stage, call) for stage in chain.stages])
