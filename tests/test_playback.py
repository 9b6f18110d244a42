"""PlaybackTracker: what the caller has heard, from Twilio's mark echoes, on a fake clock.

The clock is ``t[0]`` in seconds; every value below follows from the marks and the
clock alone, no real time passes.
"""

from __future__ import annotations

import pytest

from agent_voice_bridge.transports.playback import PlaybackTracker


class Rig:
    """A tracker on a settable clock, counting ``on_idle`` calls (with the time of each)."""

    def __init__(self):
        self.t = [0.0]
        self.tracker = PlaybackTracker(clock=lambda: self.t[0])
        self.idle_calls: list[float] = []

        async def on_idle() -> None:
            self.idle_calls.append(self.t[0])

        self.tracker.on_idle = on_idle

    def at(self, secs: float) -> PlaybackTracker:
        self.t[0] = secs
        return self.tracker

    def send(self, *chunks_ms: float) -> list[str]:
        """Send each chunk followed by a mark, as twilio.output does every mark_every_ms; the mark names."""
        names = []
        for ms in chunks_ms:
            self.tracker.audio_sent(ms)
            names.append(self.tracker.next_mark())
        return names


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_fresh_tracker_is_idle(rig: Rig):
    p = rig.tracker
    assert not p.playing
    assert p.segment == 0
    assert p.heard_ms() == 0.0 and p.sent_ms() == 0.0
    assert (p.marks_sent, p.marks_echoed) == (0, 0)


async def test_marks_echoed_in_order_update_heard_ms(rig: Rig):
    p = rig.tracker
    assert p.new_segment() == 1
    names = rig.send(100, 100, 50)
    assert len(set(names)) == 3
    assert p.sent_ms() == 250
    assert p.marks_sent == 3
    assert p.heard_ms() == 0.0  # nothing has played at t = 0

    await rig.at(0.100).on_mark(names[0])
    assert p.heard_ms() == pytest.approx(100)
    await rig.at(0.200).on_mark(names[1])
    assert p.heard_ms() == pytest.approx(200)
    await rig.at(0.250).on_mark(names[2])
    assert p.heard_ms() == pytest.approx(250)
    assert p.marks_echoed == 3
    # Everything was heard: time passing adds nothing.
    rig.at(9.0)
    assert p.heard_ms() == pytest.approx(250)


async def test_playing_until_last_echo_and_on_idle_once(rig: Rig):
    p = rig.tracker
    p.new_segment()
    names = rig.send(100, 100, 100)
    assert p.playing
    for i, name in enumerate(names[:-1]):
        await rig.at(0.1 * (i + 1)).on_mark(name)
        assert p.playing, f"marks still pending after echo {i}"
        assert rig.idle_calls == []
    await rig.at(0.3).on_mark(names[-1])
    assert not p.playing
    assert rig.idle_calls == [0.3]  # awaited exactly once, when the last pending mark came back
    rig.at(1.0)
    assert not p.playing and rig.idle_calls == [0.3]


async def test_idle_again_after_more_audio(rig: Rig):
    p = rig.tracker
    p.new_segment()
    [first] = rig.send(100)
    await rig.at(0.1).on_mark(first)
    [second] = rig.send(100)
    assert p.playing
    await rig.at(0.2).on_mark(second)
    assert not p.playing
    assert rig.idle_calls == [0.1, 0.2]


async def test_heard_ms_interpolates_capped_at_next_pending_mark(rig: Rig):
    p = rig.tracker
    p.new_segment()
    first, second = rig.send(100, 100)  # all 200 ms handed to Twilio at t = 0

    assert rig.at(0.040) and p.heard_ms() == pytest.approx(40)
    assert rig.at(0.090) and p.heard_ms() == pytest.approx(90)
    # Twilio has not confirmed the first 100 ms yet: never claim more than it.
    assert rig.at(0.150) and p.heard_ms() == pytest.approx(100)

    await rig.at(0.160).on_mark(first)  # echoed late: playback runs from here
    assert p.heard_ms() == pytest.approx(100)
    assert rig.at(0.190) and p.heard_ms() == pytest.approx(130)
    assert rig.at(0.500) and p.heard_ms() == pytest.approx(200)  # capped at the second mark

    await rig.at(0.520).on_mark(second)
    assert rig.at(5.0) and p.heard_ms() == pytest.approx(200)


async def test_audio_sent_while_playing_does_not_move_the_anchor(rig: Rig):
    p = rig.tracker
    p.new_segment()
    [first] = rig.send(100)
    rig.at(0.050)
    [second] = rig.send(100)  # queued behind the first 100 ms
    assert p.heard_ms() == pytest.approx(50)
    assert rig.at(0.080) and p.heard_ms() == pytest.approx(80)
    await rig.at(0.100).on_mark(first)
    assert rig.at(0.150) and p.heard_ms() == pytest.approx(150)
    await rig.at(0.200).on_mark(second)
    assert p.heard_ms() == pytest.approx(200)


async def test_audio_after_idle_starts_playing_when_sent(rig: Rig):
    p = rig.tracker
    p.new_segment()
    [first] = rig.send(100)
    await rig.at(0.100).on_mark(first)
    rig.at(2.000)  # silence: Twilio's buffer is empty when the next audio leaves
    [second] = rig.send(100)
    assert p.heard_ms() == pytest.approx(100)
    assert rig.at(2.030) and p.heard_ms() == pytest.approx(130)
    await rig.at(2.100).on_mark(second)
    assert p.heard_ms() == pytest.approx(200)


async def test_on_clear_freezes_heard_ms_and_ignores_flushed_echoes(rig: Rig):
    p = rig.tracker
    # A first segment plays out completely: on_idle once.
    p.new_segment()
    [done] = rig.send(100)
    await rig.at(0.100).on_mark(done)
    assert rig.idle_calls == [0.100]

    # The second is interrupted 130 ms in.
    p.new_segment()
    rig.at(1.000)
    names = rig.send(100, 100, 100)
    await rig.at(1.100).on_mark(names[0])
    rig.at(1.130)
    assert p.heard_ms() == pytest.approx(130)
    assert p.on_clear() == pytest.approx(130)
    assert not p.playing
    assert rig.at(3.000) and p.heard_ms() == pytest.approx(130)  # frozen, not still running

    # Twilio echoes every mark still pending after a clear; they do not mean "played".
    for name in names[1:]:
        await rig.at(3.010).on_mark(name)
        assert p.heard_ms() == pytest.approx(130)
        assert not p.playing
    assert rig.idle_calls == [0.100]  # not called again
    assert p.marks_echoed == 4
    assert p.heard_ms(1) == pytest.approx(100)


async def test_flushed_echoes_arriving_after_new_audio_are_ignored(rig: Rig):
    p = rig.tracker
    seg1 = p.new_segment()
    old = rig.send(100, 100)
    rig.at(0.040)
    assert p.on_clear() == pytest.approx(40)

    seg2 = p.new_segment()  # the next answer starts before Twilio's flush echoes arrive
    [new] = rig.send(100)
    assert p.playing
    for name in old:
        await rig.at(0.045).on_mark(name)
        assert p.playing, "a flushed echo must not retire the new segment's mark"
    assert rig.idle_calls == []
    assert p.heard_ms(seg2) == pytest.approx(5)  # 0.040 → 0.045
    await rig.at(0.140).on_mark(new)
    assert not p.playing
    assert rig.idle_calls == [0.140]
    assert p.heard_ms(seg2) == pytest.approx(100)
    assert p.heard_ms(seg1) == pytest.approx(40)


async def test_clear_with_nothing_pending_keeps_what_was_heard(rig: Rig):
    p = rig.tracker
    p.new_segment()
    [name] = rig.send(80)
    await rig.at(0.080).on_mark(name)
    assert p.on_clear() == pytest.approx(80)
    assert p.heard_ms() == pytest.approx(80)
    assert rig.idle_calls == [0.080]


async def test_segments_are_independent(rig: Rig):
    p = rig.tracker
    seg1 = p.new_segment()
    a1, a2 = rig.send(100, 60)
    seg2 = p.new_segment()
    assert (seg1, seg2) == (1, 2)
    assert p.segment == 2
    [b1] = rig.send(100)
    assert p.sent_ms(seg1) == 160 and p.sent_ms(seg2) == 100
    assert p.sent_ms() == 100  # default: the current segment
    assert p.heard_ms(seg2) == 0.0

    await rig.at(0.100).on_mark(a1)
    assert p.heard_ms(seg1) == pytest.approx(100)
    assert p.heard_ms(seg2) == 0.0
    assert rig.at(0.130) and p.heard_ms(seg1) == pytest.approx(130)
    await rig.at(0.160).on_mark(a2)
    assert p.heard_ms(seg1) == pytest.approx(160)
    assert p.playing and rig.idle_calls == []
    assert rig.at(0.200) and p.heard_ms(seg1) == pytest.approx(160)  # segment 1 is over
    assert 0.0 <= p.heard_ms(seg2) <= 100.0
    await rig.at(0.260).on_mark(b1)
    assert p.heard_ms(seg2) == pytest.approx(100)
    assert p.heard_ms(seg1) == pytest.approx(160)
    assert rig.idle_calls == [0.260]

    # A new segment starts from zero and does not touch the old ones.
    seg3 = p.new_segment()
    assert p.heard_ms() == 0.0 and p.sent_ms() == 0.0
    assert p.heard_ms(seg1) == pytest.approx(160) and p.heard_ms(seg2) == pytest.approx(100)
    assert p.heard_ms(99) == 0.0 and p.sent_ms(99) == 0.0  # unknown segment
    assert seg3 == 3


def test_mark_names_are_unique_even_for_equal_positions(rig: Rig):
    p = rig.tracker
    p.new_segment()
    names = [p.next_mark() for _ in range(3)]  # no audio between them
    assert len(set(names)) == 3
    assert p.marks_sent == 3


# --------------------------------------------------------------------------- known source bugs


async def test_burst_of_chunks_before_first_mark_is_not_counted_as_heard(rig: Rig):
    p = rig.tracker
    p.new_segment()
    for _ in range(5):  # twilio.output: 20 ms frames, a mark only every 100 ms
        p.audio_sent(20)
    p.next_mark()
    rig.at(0.010)
    assert p.heard_ms() <= 10.0 + 1e-9  # actual: 90.0


async def test_unknown_mark_echo_does_not_end_playback(rig: Rig):
    p = rig.tracker
    p.new_segment()
    real = rig.send(100, 100)
    await rig.at(0.010).on_mark("not-a-mark-we-sent")
    assert p.playing
    assert rig.idle_calls == []
    await rig.at(0.100).on_mark(real[0])
    assert p.heard_ms() == pytest.approx(100)


async def test_clear_freezes_every_segment_still_playing(rig: Rig):
    p = rig.tracker
    p.new_segment()
    first = rig.send(100, 100)  # segment 1: two marks, 200 ms
    p.new_segment()
    rig.send(100)  # segment 2 queued behind it
    await rig.at(0.100).on_mark(first[0])
    rig.at(0.150)
    p.on_clear()
    assert p.heard_ms(1) == pytest.approx(150)
    assert p.heard_ms(2) == 0


async def test_segment_queued_behind_another_starts_when_the_first_ends(rig: Rig):
    p = rig.tracker
    p.new_segment()
    first = rig.send(100)
    p.new_segment()
    rig.send(100)
    await rig.at(0.100).on_mark(first[0])
    rig.at(0.140)
    assert p.heard_ms(2) == pytest.approx(40)


class SlowSocket:
    """A WebSocket whose peer is slow: a send marked ``hold`` waits until released; every text sent is kept."""

    def __init__(self):
        import asyncio

        self.sent: list[str] = []
        self.hold = False
        self.release = asyncio.Event()
        self.holding = asyncio.Event()

    async def send_text(self, text: str) -> None:
        if self.hold:
            self.hold = False
            self.holding.set()
            await self.release.wait()
        self.sent.append(text)


async def test_audio_pushed_before_a_clear_reaches_a_slow_socket_before_it():
    """twilio.output sends from whichever task pushed: audio already waiting for the socket goes out before the clear."""
    import asyncio
    import json

    from agent_voice_bridge.processors.frames import OutputMulawAudioFrame
    from agent_voice_bridge.transports.call_info import CallInfo
    from agent_voice_bridge.transports.twilio_output import TwilioOutput
    from agent_voice_bridge.transports.twilio_protocol import OutboundMessages
    from agent_voice_bridge.transports.twilio_stream import TwilioMediaStream

    socket = SlowSocket()
    stream = TwilioMediaStream(socket)  # type: ignore[arg-type]
    stream._out = OutboundMessages("MZslow")
    output = TwilioOutput(call=CallInfo("CAslow", "MZslow", stream=stream))
    frame = lambda byte: OutputMulawAudioFrame(audio=bytes([byte]) * 160)  # noqa: E731
    await output._send_audio(frame(1))  # the agent is speaking
    socket.hold = True
    in_flight = asyncio.create_task(output._send_audio(frame(2)))  # on the wire, the peer is slow
    await socket.holding.wait()
    waiting = asyncio.create_task(output._send_audio(frame(3)))  # the turn's next frame, waiting for the socket
    await asyncio.sleep(0)
    clearing = asyncio.create_task(output._interrupt())  # the caller barges in
    await asyncio.sleep(0)
    socket.release.set()
    await asyncio.gather(in_flight, waiting, clearing)
    events = [json.loads(t)["event"] for t in socket.sent]
    assert events == ["media", "media", "media", "clear"], "nothing of the cleared turn after the clear"
    assert output._call.stats.barge_ins == 1
