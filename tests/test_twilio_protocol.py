"""Twilio Media Streams wire format (protocols.md §A2/§A3): parse_event and OutboundMessages."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from agent_voice_bridge.audio import mulaw
from agent_voice_bridge.transports.twilio_protocol import (
    Connected,
    Dtmf,
    Mark,
    Media,
    OutboundMessages,
    ProtocolError,
    Start,
    Stop,
    parse_event,
)

from conftest import speech

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
CALL_SID = "CA" + "fedcba9876543210" * 2
STREAM_SID = "MZ" + "00112233445566778899aabbccddeeff"

# 160 bytes = 20 ms of real speech as μ-law, what Twilio sends 50 times a second.
FRAME = mulaw.encode(speech("hello-world")[4000:4160].tobytes())
FRAME_B64 = base64.b64encode(FRAME).decode()

# §A2, verbatim shapes (sequenceNumber, chunk and timestamp are strings on the wire).
CONNECTED = '{"event":"connected","protocol":"Call","version":"1.0.0"}'
START = (
    '{"event":"start","sequenceNumber":"1","streamSid":"%s","start":{"accountSid":"%s","streamSid":"%s",'
    '"callSid":"%s","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},'
    '"customParameters":{"callToken":"abc123"}}}' % (STREAM_SID, ACCOUNT_SID, STREAM_SID, CALL_SID)
)
MEDIA = (
    '{"event":"media","sequenceNumber":"2","streamSid":"%s","media":{"track":"inbound","chunk":"1",'
    '"timestamp":"52","payload":"%s"}}' % (STREAM_SID, FRAME_B64)
)
DTMF = '{"event":"dtmf","sequenceNumber":"5","streamSid":"%s","dtmf":{"track":"inbound_track","digit":"1"}}' % STREAM_SID
MARK = '{"event":"mark","sequenceNumber":"103","streamSid":"%s","mark":{"name":"my label"}}' % STREAM_SID
STOP = ('{"event":"stop","sequenceNumber":"5","streamSid":"%s","stop":{"accountSid":"%s","callSid":"%s"}}'
        % (STREAM_SID, ACCOUNT_SID, CALL_SID))


def test_fixture_frame_is_a_real_twilio_frame():
    assert len(FRAME) == 160
    assert len(FRAME_B64) == 216  # §A5
    assert len(set(FRAME)) > 20  # speech, not a constant


# --------------------------------------------------------------------------- inbound: well-formed


def test_connected():
    assert parse_event(CONNECTED) == Connected(protocol="Call")


def test_start_with_custom_parameters():
    event = parse_event(START)
    assert event == Start(
        stream_sid=STREAM_SID,
        call_sid=CALL_SID,
        account_sid=ACCOUNT_SID,
        tracks=("inbound",),
        custom_parameters={"callToken": "abc123"},
        encoding="audio/x-mulaw",
        sample_rate=8000,
    )
    assert isinstance(event.sample_rate, int)


def test_start_takes_stream_sid_from_top_level_when_start_lacks_it():
    msg = json.loads(START)
    del msg["start"]["streamSid"]
    assert parse_event(json.dumps(msg)).stream_sid == STREAM_SID


def test_start_several_custom_parameters_become_strings():
    msg = json.loads(START)
    msg["start"]["customParameters"] = {"callToken": "abc123", "n": 5, "lang": "en-US"}
    assert parse_event(json.dumps(msg)).custom_parameters == {"callToken": "abc123", "n": "5", "lang": "en-US"}


def test_media_160_byte_mulaw_payload():
    event = parse_event(MEDIA)
    assert isinstance(event, Media)
    assert event.payload == FRAME
    assert event.track == "inbound"


def test_media_track_defaults_to_inbound_and_outbound_is_kept():
    msg = json.loads(MEDIA)
    del msg["media"]["track"]
    assert parse_event(json.dumps(msg)).track == "inbound"
    msg["media"]["track"] = "outbound"
    assert parse_event(json.dumps(msg)).track == "outbound"


def test_mark():
    assert parse_event(MARK) == Mark(name="my label")


def test_dtmf():
    assert parse_event(DTMF) == Dtmf(digit="1")


def test_stop():
    assert parse_event(STOP) == Stop()


@pytest.mark.parametrize("text", [CONNECTED, START, MEDIA, DTMF, MARK, STOP])
def test_bytes_frames_parse_like_text(text: str):
    assert parse_event(text.encode()) == parse_event(text)


def test_a_whole_session_in_order():
    kinds = [type(parse_event(t)) for t in (CONNECTED, START, MEDIA, MEDIA, MARK, DTMF, STOP)]
    assert kinds == [Connected, Start, Media, Media, Mark, Dtmf, Stop]


# --------------------------------------------------------------------------- inbound: malformed


def _start_without_stream_sid() -> str:
    msg = json.loads(START)
    del msg["streamSid"]
    del msg["start"]["streamSid"]
    return json.dumps(msg)


def _start_with_custom_parameters(value) -> str:
    msg = json.loads(START)
    msg["start"]["customParameters"] = value
    return json.dumps(msg)


def _media_with_payload(payload) -> str:
    msg = json.loads(MEDIA)
    msg["media"]["payload"] = payload
    return json.dumps(msg)


def _media_without_payload() -> str:
    msg = json.loads(MEDIA)
    del msg["media"]["payload"]
    return json.dumps(msg)


MALFORMED = {
    # name: (message, words the error must contain)
    "not-json": ("hello there", ["not JSON"]),
    "truncated-json": (MEDIA[:-5], ["not JSON"]),
    "invalid-utf8": (b'{"event":"stop\xff"}', ["not JSON"]),
    "json-array": (json.dumps([json.loads(STOP)]), ["not a JSON object"]),
    "json-string": ('"media"', ["not a JSON object"]),
    "json-null": ("null", ["not a JSON object"]),
    "unknown-event": ('{"event":"hangup","streamSid":"MZ1"}', ["unknown event", "hangup"]),
    "no-event": ('{"streamSid":"MZ1"}', ["unknown event"]),
    "media-without-payload": (_media_without_payload(), ["media", "payload"]),
    "media-without-media": ('{"event":"media","streamSid":"MZ1"}', ["media"]),
    "media-not-an-object": ('{"event":"media","media":"AAAA"}', ["media"]),
    "media-bad-base64-chars": (_media_with_payload("not base64!!"), ["media", "base64"]),
    "media-bad-base64-padding": (_media_with_payload(FRAME_B64[:-1]), ["media", "padding"]),
    "media-payload-not-a-string": (_media_with_payload(160), ["media"]),
    "media-payload-null": (_media_with_payload(None), ["media"]),
    "start-without-streamSid": (_start_without_stream_sid(), ["start", "streamSid"]),
    "start-without-start": ('{"event":"start","streamSid":"MZ1"}', ["start"]),
    "customParameters-list": (_start_with_custom_parameters(["callToken", "abc123"]), ["customParameters"]),
    "customParameters-string": (_start_with_custom_parameters("callToken=abc123"), ["customParameters"]),
    "customParameters-number": (_start_with_custom_parameters(7), ["customParameters"]),
    "mark-without-name": ('{"event":"mark","mark":{}}', ["mark", "name"]),
    "mark-without-mark": ('{"event":"mark"}', ["mark"]),
    "dtmf-without-digit": ('{"event":"dtmf","dtmf":{"track":"inbound_track"}}', ["dtmf", "digit"]),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_raises_protocol_error_naming_the_problem(name: str):
    text, words = MALFORMED[name]
    with pytest.raises(ProtocolError) as info:
        parse_event(text)
    message = str(info.value)
    for word in words:
        assert word in message, f"{message!r} should mention {word!r}"


def test_protocol_error_is_a_value_error():
    assert issubclass(ProtocolError, ValueError)


# Each of these is one malformed message; today it escapes parse_event as another
# exception type, which TwilioStream.receive() (it catches ProtocolError only) does not
# skip: the reader task dies instead of logging and going on.
ESCAPES = {
    "media-payload-non-ascii": _media_with_payload("ééé="),  # ValueError from b64decode
    "start-not-an-object": '{"event":"start","streamSid":"MZ1","start":["MZ1"]}',  # AttributeError
    "mediaFormat-not-an-object": '{"event":"start","start":{"streamSid":"MZ1","mediaFormat":"audio/x-mulaw"}}',
    "sampleRate-not-a-number": '{"event":"start","start":{"streamSid":"MZ1","mediaFormat":{"sampleRate":"8k"}}}',
    "sampleRate-NaN": '{"event":"start","start":{"streamSid":"MZ1","mediaFormat":{"sampleRate":NaN}}}',
    "deeply-nested-json": "[" * 100_000 + "]" * 100_000,  # RecursionError from json
}


@pytest.mark.parametrize("name", list(ESCAPES))
def test_every_malformed_message_raises_protocol_error(name: str):
    try:
        parse_event(ESCAPES[name])
    except ProtocolError:
        return
    pytest.fail("parsed a malformed message without error")


# --------------------------------------------------------------------------- outbound (§A3)


def test_outbound_media_shape():
    out = OutboundMessages(STREAM_SID)
    assert json.loads(out.media(FRAME)) == {
        "event": "media", "streamSid": STREAM_SID, "media": {"payload": FRAME_B64}}


def test_outbound_mark_shape():
    out = OutboundMessages(STREAM_SID)
    assert json.loads(out.mark("resp_1:42")) == {"event": "mark", "streamSid": STREAM_SID, "mark": {"name": "resp_1:42"}}


def test_outbound_clear_shape():
    out = OutboundMessages(STREAM_SID)
    assert json.loads(out.clear()) == {"event": "clear", "streamSid": STREAM_SID}


@pytest.mark.parametrize("sid", [
    'MZ"quoted"',
    'MZ\\"},"event":"clear',  # an injection attempt stays inside the string
    "MZ\\back\\slash",
    "MZ\nnew\tline\x00",
    "MZ-ünïcødé-☎",
    "",
])
def test_outbound_stream_sid_is_escaped(sid: str):
    out = OutboundMessages(sid)
    for text, event in [(out.media(b"\xff" * 160), "media"), (out.mark("m"), "mark"), (out.clear(), "clear")]:
        msg = json.loads(text)
        assert msg["streamSid"] == sid
        assert msg["event"] == event
        assert set(msg) <= {"event", "streamSid", "media", "mark"}


@pytest.mark.parametrize("name", ['say "hi"', "back\\slash", "1:0:0", "ünï ☎", "x" * 500])
def test_outbound_mark_name_is_escaped_and_round_trips(name: str):
    text = OutboundMessages(STREAM_SID).mark(name)
    assert json.loads(text)["mark"] == {"name": name}
    assert parse_event(text) == Mark(name=name)  # Twilio echoes the same object back


@pytest.mark.parametrize("payload", [
    FRAME,
    bytes(range(256)),
    b"",
    b"\xff" * 8000,  # 1 s of μ-law silence in one message, as the real sample did
    np.random.default_rng(3).integers(0, 256, 1234, dtype=np.uint8).tobytes(),
])
def test_media_payload_round_trip(payload: bytes):
    text = OutboundMessages(STREAM_SID).media(payload)
    assert base64.b64decode(json.loads(text)["media"]["payload"], validate=True) == payload
    assert parse_event(text) == Media(payload=payload)


def test_outbound_messages_are_single_line_text():
    out = OutboundMessages("MZ\nx")
    for text in (out.media(FRAME), out.mark("a\nb"), out.clear()):
        assert isinstance(text, str)
        assert "\n" not in text
