"""The TwiML that puts a call on a media stream, built with the ``twilio`` package."""

from __future__ import annotations

from twilio.twiml.voice_response import Connect, VoiceResponse


def connect_twiml(url: str, parameters: dict[str, str], *, digits: str | None = None) -> str:
    """``<Connect><Stream url>`` with its ``<Parameter>``s; with ``digits``, a ``<Play digits>`` before it.

    The second form is what the bridge sends to press keys on a live call: Twilio has no way to play
    DTMF into a media stream, so the call's TwiML is replaced; the stream ends, the keys play, and a
    new stream connects to the same call.
    """
    response = VoiceResponse()
    if digits:
        response.play(digits=digits)
    connect = Connect()
    stream = connect.stream(url=url)
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response)
