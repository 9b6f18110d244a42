"""Plain typed Python functions as tools for either model, plus the built-ins ``end_call``, ``send_digits``
and ``transfer``.

``tools: [package.module:function, ...]`` in YAML: each function's name, first
docstring paragraph, typed parameters (and their ``Args:`` descriptions) become
the function declaration the model sees. Sync functions run in a thread, so a slow
one never blocks the call's audio. Signatures are checked when the chain is
checked, not when the model first calls them.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import docstring_parser
from loguru import logger
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.frames.frames import FunctionCallResultProperties
from pipecat.services.llm_service import FunctionCallParams

END_CALL = "end_call"
SEND_DIGITS = "send_digits"
TRANSFER = "transfer"
BUILT_IN_TOOLS = {SEND_DIGITS: "press keys on the call (an automated menu on an outbound call)",
                  TRANSFER: "put the caller through to a person (with transfer: destinations)"}
"""Tools named in ``tools:`` by a bare name rather than an import path; each acts on the call."""
SLOW_TOOL_SECS = 1.0
"""A tool still running after this long gets the model told so, to speak instead of leaving dead air."""
STILL_RUNNING = {"status": "running",
                 "note": "This is taking a moment. Tell the caller briefly that you are working on it."}
_JSON_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean",
                               list: "array", dict: "object"}


class ToolError(ValueError):
    pass


@dataclass
class Tool:
    name: str
    function: Callable[..., Any]
    schema: FunctionSchema


def _json_type(annotation: Any, where: str) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        values = list(typing.get_args(annotation))
        return {"type": _JSON_TYPES.get(type(values[0]), "string"), "enum": values}
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(options) == 1:
            return _json_type(options[0], where)
    if origin in (list, dict):
        return {"type": _JSON_TYPES[origin]}
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    raise ToolError(f"{where}: type {annotation!r} is not one a model can fill in (str, int, float, bool, "
                    "list, dict, Literal[...], Optional[...])")


def schema_for(function: Callable[..., Any], name: str | None = None) -> FunctionSchema:
    name = name or function.__name__
    doc = docstring_parser.parse(inspect.getdoc(function) or "")
    described = {p.arg_name: p.description for p in doc.params}
    hints = typing.get_type_hints(function)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in inspect.signature(function).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolError(f"tool {name}: *args/**kwargs cannot be described to a model")
        if param.name not in hints:
            raise ToolError(f"tool {name}: parameter {param.name!r} needs a type annotation")
        prop = _json_type(hints[param.name], f"tool {name}, parameter {param.name!r}")
        if described.get(param.name):
            prop["description"] = described[param.name]
        properties[param.name] = prop
        if param.default is param.empty:
            required.append(param.name)
    description = " ".join(filter(None, [doc.short_description, doc.long_description])) or name
    return FunctionSchema(name=name, description=description, properties=properties, required=required)


def import_tool(path: str) -> Tool:
    module_name, _, attr = path.partition(":")
    if not attr:
        raise ToolError(f"tool {path!r}: write package.module:function, or a built-in: {', '.join(BUILT_IN_TOOLS)}")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ToolError(f"tool {path!r}: {exc}") from None
    if not callable(function):
        raise ToolError(f"tool {path!r} is not a function")
    return Tool(attr, function, schema_for(function))


def end_call_schema() -> FunctionSchema:
    return FunctionSchema(
        name=END_CALL,
        description="Hang up the phone call. Say a short goodbye first; the line is closed once the caller "
        "has heard it. Use when the caller is done or asks to end the call.",
        properties={"reason": {"type": "string", "description": "Why the call is ending."}},
        required=[],
    )


def send_digits_schema() -> FunctionSchema:
    return FunctionSchema(
        name=SEND_DIGITS,
        description="Press keys on the phone keypad, e.g. to choose an option in an automated menu "
        "('press 2 for billing') or enter a number it asks for. The line goes quiet for a moment while "
        "the keys are played; the answer says when you can listen again.",
        properties={"digits": {"type": "string", "description": "The keys to press, in order: 0-9, * and #; "
                               "w pauses half a second between keys."}},
        required=["digits"],
    )


async def _run(tool: Tool, arguments: dict[str, Any]) -> Any:
    try:
        if inspect.iscoroutinefunction(tool.function):
            result = await tool.function(**arguments)
        else:
            result = await asyncio.to_thread(tool.function, **arguments)
    except Exception as exc:  # the model hears that the tool failed; the call goes on
        logger.warning(f"tool {tool.name} failed: {exc.__class__.__name__}: {exc}")
        result = {"error": f"{exc.__class__.__name__}: {exc}"}
    return result if isinstance(result, (dict, list)) else {"result": result}


def handler_for(tool: Tool, slow_after: float = SLOW_TOOL_SECS) -> Callable[[FunctionCallParams], Awaitable[None]]:
    """A pipecat handler running the plain function and returning its result to the model.

    Registered as an asynchronous call (``cancel_on_interruption=False``), so when the
    function is slow the model first gets an intermediate "still running" result and
    can say so to the caller, then the real result when it arrives.
    """
    async def handle(params: FunctionCallParams) -> None:
        running = asyncio.ensure_future(_run(tool, params.arguments))
        try:
            done, _ = await asyncio.wait({running}, timeout=slow_after)
            if not done:
                logger.info(f"tool {tool.name} still running after {slow_after:g} s: telling the model")
                await params.result_callback(STILL_RUNNING, properties=FunctionCallResultProperties(is_final=False))
            await params.result_callback(await running)
        finally:
            running.cancel()  # the call was cancelled (the model took it back, the call ended): stop the tool too

    return handle
