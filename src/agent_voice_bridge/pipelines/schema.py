"""JSON Schema of a pipeline file, so editors can complete stage names and parameters."""

from __future__ import annotations

from typing import Any

from agent_voice_bridge.pipelines.config import BridgeConfig
from agent_voice_bridge.pipelines.registry import STAGES, UnknownStage, resolve
from agent_voice_bridge.pipelines.stage import NoParams, Stage


def stage_schemas() -> list[dict[str, Any]]:
    options: list[dict[str, Any]] = []
    for name in sorted(STAGES):
        try:
            cls = resolve(name)
        except UnknownStage as exc:  # its optional extra is not installed: name it, say what is missing
            options.append({"const": name, "description": str(exc)})
            continue
        params = cls.Params if issubclass(cls, Stage) else NoParams
        schema = params.model_json_schema()
        options.append({"const": name, "description": (cls.__doc__ or "").strip().splitlines()[0]})
        options.append({"type": "object", "properties": {name: {"anyOf": [schema, {"type": "null"}]}},
                        "required": [name], "additionalProperties": False})
    options.append({"type": "string", "pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
                    "description": "Any pipecat FrameProcessor by import path (package.module:Class)."})
    options.append({"type": "object", "patternProperties": {r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$": {
        "type": ["object", "null"]}}, "minProperties": 1, "maxProperties": 1, "additionalProperties": False})
    return options


def file_schema() -> dict[str, Any]:
    schema = BridgeConfig.model_json_schema()
    schema["properties"]["pipeline"]["items"] = {"anyOf": stage_schemas()}
    schema["title"] = "agent-voice-bridge pipeline file"
    return schema
