"""The TwiML that puts a call on the bridge's media stream, built with the ``twilio`` package.

A new call's, one coming back from a transfer, and one that presses keys first (``digits``).
"""

from __future__ import annotations

from twilio.twiml.voice_response import Connect, VoiceResponse

STREAM_PATH = "/media-stream"


def stream_url(base: str) -> str:
    """``wss://host/media-stream`` for the bridge's public ``https://host`` (``ws://`` for ``http://``)."""
    return base.replace("https://", "wss://", 1).replace("http://", "ws://", 1).rstrip("/") + STREAM_PATH


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
