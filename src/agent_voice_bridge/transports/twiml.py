"""The TwiML that connects a call to the bridge's media stream: a new call's, or one coming back from a transfer."""

from __future__ import annotations

from twilio.twiml.voice_response import Connect, VoiceResponse

STREAM_PATH = "/media-stream"


def stream_url(base: str) -> str:
    """``wss://host/media-stream`` for the bridge's public ``https://host`` (``ws://`` for ``http://``)."""
    return base.replace("https://", "wss://", 1).replace("http://", "ws://", 1).rstrip("/") + STREAM_PATH


def connect_twiml(url: str, parameters: dict[str, str]) -> str:
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=url)
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response)
