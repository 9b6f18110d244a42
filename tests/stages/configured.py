"""A plain pipecat processor that takes its options as objects, the way pipecat's services do."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipecat.processors.frame_processor import FrameProcessor
from pydantic import BaseModel


@dataclass
class GainSettings:
    gain_db: float = 0.0
    bands: list[int] = field(default_factory=list)
    api_key: str = ""


class GainParams(BaseModel):
    ceiling: int = 32767


class ConfiguredProcessor(FrameProcessor):
    def __init__(self, *, settings: GainSettings | None = None, params: GainParams | None = None, **kwargs):
        super().__init__(**kwargs)
        self.settings = settings
        self.params = params
