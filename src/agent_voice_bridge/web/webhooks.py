"""What every Twilio webhook handler shares: the signature check and the TwiML that connects a stream."""

from __future__ import annotations

from fastapi import HTTPException, Request
from loguru import logger

from agent_voice_bridge import metrics
from agent_voice_bridge.pipelines.config import ServerConfig
from agent_voice_bridge.security import CallGate
from agent_voice_bridge.security.signatures import public_url
from agent_voice_bridge.sids import is_call_sid
from agent_voice_bridge.transports.twiml import stream_url


class SignedWebhooks:
    """Reads a webhook's form after checking Twilio signed exactly this URL and these fields (403 if not)
    and that it names a well-formed call (400 if not)."""

    def __init__(self, gate: CallGate, server: ServerConfig):
        self._gate = gate
        self._server = server

    async def form(self, request: Request) -> dict[str, str]:
        form = {k: str(v) for k, v in (await request.form()).items()}
        url = public_url(request.url, request.headers, public_base=self._server.public_url,
                         trust_proxy=self._server.trust_proxy)
        if not self._gate.signature_ok(url, form, request.headers.get("x-twilio-signature")):
            metrics.REFUSED.labels("signature").inc()
            logger.warning(f"webhook {request.url.path}: bad or missing Twilio signature "
                           f"(call {form.get('CallSid', '?')}, signed URL taken as {url})")
            raise HTTPException(status_code=403, detail="invalid Twilio signature")
        if not is_call_sid(form.get("CallSid")):  # it names the call's records and files from here on
            logger.warning(f"webhook {request.url.path}: CallSid missing or not a Twilio call SID; refused (400)")
            raise HTTPException(status_code=400, detail="CallSid is missing or not a Twilio call SID (CA + 32 hex)")
        return form

    def stream_url(self, request: Request) -> str:
        """``wss://…/media-stream`` on the host Twilio reached this webhook at."""
        return stream_url(self.base_url(request))

    def base_url(self, request: Request) -> str:
        """``https://host`` as Twilio reached this webhook."""
        url = public_url(request.url, request.headers, public_base=self._server.public_url,
                         trust_proxy=self._server.trust_proxy)
        return url.split("?")[0].removesuffix(request.url.path)
