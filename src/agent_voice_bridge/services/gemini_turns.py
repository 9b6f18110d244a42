"""Every part of a Gemini ``modelTurn``, not just the first.

One ``serverContent.modelTurn`` message may carry several parts (audio split over
several ``inlineData`` parts, text parts beside them; protocols.md C3). pipecat's
``_handle_msg_model_turn`` reads ``parts[0]`` only, so the rest of the audio and text
would be lost. This mixin feeds each part through pipecat's handler as a message of
its own, in order, so every frame pipecat makes of a part (audio, text, thought) is
made for all of them.
"""

from __future__ import annotations

from google.genai.types import LiveServerMessage


class EveryModelTurnPart:
    """Mixin for a ``GeminiLiveLLMService`` subclass: hand pipecat one part per message."""

    async def _handle_msg_model_turn(self, msg: LiveServerMessage) -> None:
        content = msg.server_content
        parts = content.model_turn.parts if content is not None and content.model_turn is not None else None
        if not parts or len(parts) == 1:
            await super()._handle_msg_model_turn(msg)  # type: ignore[misc]
            return
        for part in parts:
            turn = content.model_turn.model_copy(update={"parts": [part]})  # type: ignore[union-attr]
            single = msg.model_copy(update={"server_content": content.model_copy(update={"model_turn": turn})})
            await super()._handle_msg_model_turn(single)  # type: ignore[misc]
