"""What the AI stages share: parameters, greeting, tools, call facts (speech-to-speech and cascade LLMs)."""

from __future__ import annotations

import ssl
from typing import Literal

from loguru import logger
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.services.llm_service import FunctionCallParams
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent_voice_bridge import metrics
from agent_voice_bridge.pipelines.stage import StageContext, StageParams
from agent_voice_bridge.services import caller_verification
from agent_voice_bridge.services.caller_verification import CallerVerification, Verify
from agent_voice_bridge.services.templates import render
from agent_voice_bridge.services.tools import (
    BUILT_IN_TOOLS,
    END_CALL,
    SEND_DIGITS,
    TRANSFER,
    Tool,
    ToolError,
    end_call_schema,
    handler_for,
    import_tool,
    send_digits_schema,
)
from agent_voice_bridge.services.transfer import (
    TransferDestination,
    back_from_transfer,
    check_destinations,
    transfer_handler,
    transfer_schema,
)
from agent_voice_bridge.services.transfer_brief import (
    brief_instructions,
    brief_opening,
    brief_schemas,
    briefing,
    register_brief_tools,
)
from agent_voice_bridge.transports.call_info import CallInfo

TurnDetection = Literal["model", "local"]

DEFAULT_INSTRUCTIONS = ("You are a helpful assistant on a phone call. Keep answers short and spoken, "
                        "never use lists or markdown. The caller's number is {caller}; it is {local_time}.")


class MemoryParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    calls: int = Field(default=3, ge=1, le=20, description="How many of the caller's last calls to recall.")
    verify: Verify = Field(default="none", description="'none': trust caller ID (anyone can spoof it); 'sms': "
                           "recall earlier calls only after the caller reads back a code texted to the number.")


class AgentParams(StageParams):
    """Keys every AI stage takes: the conversation, whatever model holds it."""

    instructions: str = Field(default=DEFAULT_INSTRUCTIONS,
                              description="System prompt; {caller}, {callee}, {call_sid}, {local_time} and "
                              "any TwiML <Parameter> are filled in per call.")
    greeting: str | None = Field(default=None, description="When set the AI speaks first, saying this "
                                 "(a template like instructions).")
    tools: list[str] = Field(default_factory=list, description="package.module:function tools the model may call, "
                             "and built-ins by name: send_digits (press keys on the call), transfer (with "
                             "transfer: destinations).")
    end_call: bool = Field(default=True, description="Let the model hang up (after its goodbye has played).")
    memory: MemoryParams | None = Field(
        default=None, description="Recall the same caller's last calls (from the stored transcripts, see "
        "storage:) in the instructions, e.g. {calls: 3}.")
    fallback: str | None = Field(
        default=None, description="When the model cannot be reached or dies mid-call, move the caller to this "
        "chain instead of apologising: a built-in one by name (voicemail) or path/to/chain.yaml.")
    transfer: dict[str, TransferDestination] = Field(
        default_factory=dict, description="Who the model may put the caller through to (the 'transfer' tool), by "
        "name, e.g. {billing: {number: '+15550188', say: 'Connecting you to billing now.'}}.")

    @field_validator("transfer")
    @classmethod
    def _destinations(cls, destinations: dict[str, TransferDestination]) -> dict[str, TransferDestination]:
        return check_destinations(destinations)

    @model_validator(mode="after")
    def _transfer_has_destinations(self) -> AgentParams:
        """``transfer:`` destinations offer the built-in ``transfer`` tool (like ``end_call``, no need to list it)."""
        if TRANSFER in self.tools and not self.transfer:
            raise ValueError("tools: transfer needs destinations: transfer: {billing: {number: '+15550188'}}")
        if self.transfer and TRANSFER not in self.tools:
            self.tools = [*self.tools, TRANSFER]
        return self

    @field_validator("tools")
    @classmethod
    def _importable(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if path in BUILT_IN_TOOLS:
                continue
            try:
                import_tool(path)
            except ToolError as exc:
                raise ValueError(str(exc)) from None
        return paths

    def verifies_memory(self, call: CallInfo | None) -> bool:
        """Whether this call has earlier calls that the caller must unlock with a texted code."""
        return self.memory is not None and self.memory.verify == "sms" and call is not None and bool(call.memory)

    def tool_set(self) -> list[Tool]:
        return [import_tool(path) for path in self.tools if path not in BUILT_IN_TOOLS]

    def tools_schema(self, call: CallInfo | None = None) -> ToolsSchema | None:
        if briefing(call):  # the person's leg of a warm transfer: only their decision
            return ToolsSchema(standard_tools=brief_schemas())
        schemas = [t.schema for t in self.tool_set()] + ([end_call_schema()] if self.end_call else [])
        if TRANSFER in self.tools:
            schemas.append(transfer_schema(self.transfer))
        if SEND_DIGITS in self.tools:
            schemas.append(send_digits_schema())
        if self.verifies_memory(call):
            schemas += caller_verification.schemas()
        return ToolsSchema(standard_tools=schemas) if schemas else None


class RealtimeParams(AgentParams):
    """Keys every speech-to-speech stage takes."""

    api_key: str = Field(min_length=1, description="Secret: never logged.")
    model: str | None = Field(default=None, description="Model name; the service's default when unset.")
    voice: str | None = Field(default=None, description="Voice name.")
    language: str = Field(default="en-US", description="BCP-47 language of the conversation.")
    turn_detection: TurnDetection = Field(
        default="model",
        description="'model': the model's own voice detection decides turns and barge-in; 'local': "
        "vad.interrupter in the chain does (the model is told when the caller starts and stops).")
    base_url: str | None = Field(default=None, description="Endpoint override (proxies, tests).")
    ca_file: str | None = Field(default=None, description="Extra CA certificate (PEM) to trust for base_url.")


def facts_of(ctx: StageContext) -> dict[str, str]:
    return ctx.call.facts() if ctx.call is not None else {}


def rendered(template: str | None, ctx: StageContext) -> str | None:
    return render(template, facts_of(ctx)) if template else None


def opening_line(params: AgentParams, ctx: StageContext) -> str | None:
    """What the AI says first: the news when the caller is back from a transfer nobody took, else the greeting."""
    return back_from_transfer(ctx.call) or brief_opening(ctx.call) or rendered(params.greeting, ctx)


def instructions_for(params: AgentParams, ctx: StageContext) -> str:
    """The rendered instructions, plus what this caller said in earlier calls when ``memory`` is on."""
    if ctx.call is not None and briefing(ctx.call):
        return brief_instructions(ctx.call)
    text = render(params.instructions, facts_of(ctx))
    if params.memory is not None and ctx.call is not None and ctx.call.memory:
        text = f"{text}\n\n{caller_verification.INSTRUCTION if params.memory.verify == 'sms' else ctx.call.memory}"
    return text


def greeting_prompt(greeting: str) -> str:
    """The user turn that makes the model open the call with ``greeting``."""
    return f"(The phone call has just connected. Greet the caller now by saying: {greeting})"


CLOSE_TIMEOUT_SECS = 2.0
"""How long a finished call waits for the model's socket to complete its close handshake (websockets waits 10 s
by default): the call's slot, record and log line should not wait on a slow goodbye from the backend."""


def ssl_context(ca_file: str | None) -> ssl.SSLContext | None:
    if not ca_file:
        return None
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=ca_file)
    return context


class BackendWatch:
    """Mixin for AI stages: report the loss of the model once, as the call's end.

    pipecat's services log a dead session and keep going (Gemini) or push an error
    for every audio frame they cannot send (OpenAI): either way the caller would sit
    in dead air. A stage calls :meth:`backend_lost` instead; the error it pushes
    marks the stage unusable, and the call session answers with a spoken apology
    and a clean hang-up, or moves the caller to the stage's ``fallback`` chain.
    """

    _backend_lost = False
    _call: CallInfo | None = None
    """The stage's call (set by the stage), whose line labels the metric."""

    async def backend_lost(self, reason: str) -> None:
        if self._backend_lost:
            return
        self._backend_lost = True
        metrics.BACKEND_ERRORS.labels(self._call.line if self._call is not None else "").inc()
        logger.error(f"{self}: AI backend lost: {reason}")
        await self.push_error(error_msg=f"AI backend lost: {reason}", force_treat_as_permanent=True)  # type: ignore[attr-defined]


def register_tools(service, params: AgentParams, call: CallInfo | None) -> None:
    """Give the service a handler for each declared tool, ``transfer`` and ``end_call``."""
    if call is not None and briefing(call):
        register_brief_tools(service, call)
        return
    for tool in params.tool_set():
        service.register_function(tool.name, handler_for(tool), cancel_on_interruption=False)
    if TRANSFER in params.tools:
        service.register_function(TRANSFER, transfer_handler(params.transfer, call), cancel_on_interruption=False)
    if params.verifies_memory(call):
        assert call is not None
        verification = CallerVerification(call)
        service.register_function(caller_verification.SEND_CODE, verification.send_code)
        service.register_function(caller_verification.RECALL, verification.recall)
    if SEND_DIGITS in params.tools:
        service.register_function(SEND_DIGITS, _send_digits_handler(call), cancel_on_interruption=False)
    if params.end_call:

        async def end_call(args: FunctionCallParams) -> None:
            reason = str(args.arguments.get("reason") or "the AI ended the call")
            await args.result_callback({"result": "The line closes once the caller has heard your goodbye."})
            if call is not None and call.control is not None:
                await call.control.hang_up(reason)

        service.register_function(END_CALL, end_call)


def _send_digits_handler(call: CallInfo | None):
    """``send_digits``: the keys are pressed through the call's control; the model hears how it went."""

    async def send_digits(args: FunctionCallParams) -> None:
        digits = str(args.arguments.get("digits") or "")
        control = call.control if call is not None else None
        if control is None or not control.can_send_digits:
            await args.result_callback({"error": "Keys cannot be pressed on this line (no Twilio account)."})
            return
        try:
            gap = await control.send_digits(digits)
        except (ValueError, RuntimeError, OSError) as exc:
            logger.warning(f"send_digits failed: {exc}")
            await args.result_callback({"error": str(exc)})
            return
        await args.result_callback({"result": f"Pressed {' '.join(d for d in digits if d != 'w')}. The line was "
                                    f"away for {gap:.1f} s and is back: listen for what the menu says next."})

    return send_digits
