"""AudioStream: frames and utterances on the event loop, from a real listening session.

Members of the local voice server speak in turn; what the stream's consumers get is compared
with references the pipeline does not make: the members' own Opus packets decoded by a fresh
decoder, resampled by soxr in one piece, and the times the emulator sent each spurt.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import soxr

from discord.ext import listening
from discord.ext.listening.stream import SILENT_PEAK
from discord.ext.listening.testing import VoiceServerEmulator, speechlike
from helpers import WireTap, listen_until_done, reference, settle

pytestmark = pytest.mark.timeout(90)

MONO16K = listening.PCMFormat(16000, 1, "float32")


async def _collect(it, out: list) -> None:
    async for item in it:
        out.append(item)


async def _speak_then_stop(server, vc, done, *talks: tuple) -> list:
    """Members speak at once (``(member, seconds, seed)``), then listening stops once the
    receiver has seen all of it; returns their spurts."""
    spurts = await asyncio.gather(*(m.speak(speechlike(sec, seed=seed)) for m, sec, seed in talks))
    await server.drain()
    await settle(server, vc, *((m, [spurt]) for (m, _, _), spurt in zip(talks, spurts)))
    vc.stop_listening()
    await asyncio.wait_for(done.wait(), 15)
    return spurts


def _voiced(pcm: bytes) -> bool:
    return int(np.abs(np.frombuffer(pcm, "<i2")).max()) > SILENT_PEAK


def _expected_utterance(spurt, ref: dict[int, bytes], wire: WireTap) -> tuple[float, np.ndarray]:
    """A spurt's audio from its first to its last voiced frame (decoded by the reference
    decoder), resampled to 16 kHz mono in one piece; and when its first voiced frame left the
    emulator (monotonic clock)."""
    frames = spurt.frames
    voiced = [i for i, f in enumerate(frames) if _voiced(ref[f.sequence])]
    first, last = voiced[0], voiced[-1]
    pcm = b"".join(ref[f.sequence] for f in frames[first : last + 1])
    x = np.frombuffer(pcm, "<i2").reshape(-1, 2).astype(np.float32) / 32768
    return wire.sent[(frames[first].ssrc, frames[first].sequence)], soxr.resample(
        x.mean(axis=1, dtype=np.float32), 48000, 16000
    )


async def test_members_speaking_in_turn_come_out_as_utterances_at_the_right_time_with_their_audio(pool) -> None:
    stream = listening.AudioStream(format=MONO16K)
    got: list[listening.Utterance] = []
    async with VoiceServerEmulator(seed=91, dave=False) as server:
        alice = await server.add_member(9100, "alice")
        bob = await server.add_member(9101, "bob")
        vc = await server.connect(cls=listening.VoiceClient)
        wire = WireTap(server)
        done = await listen_until_done(vc, stream, pool)
        origin = vc._listening.origin

        async def consume() -> None:
            async for utterance in stream.utterances(end=listening.AfterSilence(0.6)):
                got.append(utterance)

        consumer = asyncio.create_task(consume())
        spoken = []
        for member, seconds, seed in ((alice, 1.2, 1), (bob, 1.0, 2), (alice, 0.8, 3)):
            spoken.append((member, await member.speak(speechlike(seconds, seed=seed))))
            await asyncio.sleep(0.9)  # a pause longer than AfterSilence: the next one is apart
        await server.drain()
        await settle(server, vc, (alice, [s for m, s in spoken if m is alice]), (bob, [spoken[1][1]]))
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 15)
        await asyncio.wait_for(consumer, 5)  # the stream ends when listening stops
    refs = {m.user_id: reference([s for who, s in spoken if who is m]) for m in (alice, bob)}
    assert [u.user_id for u in got] == [alice.user_id, bob.user_id, alice.user_id]  # each ended by its pause
    for utterance, (member, spurt) in zip(got, spoken):
        sent, audio = _expected_utterance(spurt, refs[member.user_id], wire)
        assert abs(utterance.start - (sent - origin)) <= 0.06, (member.name, utterance.start, sent - origin)
        assert utterance.end == pytest.approx(utterance.start + len(audio) / 16000, abs=1e-9)
        assert utterance.audio.dtype == np.float32 and utterance.audio.ndim == 1
        assert np.array_equal(utterance.audio, audio), member.name
        assert all(f.user_id == member.user_id for f in utterance.frames)


async def test_frame_consumers_get_their_members_frames_converted_and_a_slow_one_only_loses_its_own(pool) -> None:
    stream = listening.AudioStream(format=MONO16K, max_queue=400)
    slow = listening.AudioStream(max_queue=5)
    async with VoiceServerEmulator(seed=92, dave=False) as server:
        alice = await server.add_member(9200, "alice")
        bob = await server.add_member(9201, "bob")
        vc = await server.connect(cls=listening.VoiceClient)
        done = await listen_until_done(vc, listening.FanOutSink(stream, slow), pool)
        bobs: list[listening.StreamFrame] = []
        everyone: list[listening.StreamFrame] = []

        tasks = [
            asyncio.create_task(_collect(stream.user(bob.user_id), bobs)),
            asyncio.create_task(_collect(stream, everyone)),
        ]
        never_read = slow.__aiter__()  # a consumer that does not keep up
        spurts = await _speak_then_stop(server, vc, done, (alice, 1.0, 4), (bob, 1.0, 5))
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert {f.user_id for f in everyone} == {alice.user_id, bob.user_id}
    assert [f.frame for f in bobs] == [f.frame for f in everyone if f.user_id == bob.user_id]
    assert [f.frame.sequence for f in bobs] == [f.sequence for f in spurts[1].frames]
    # bob's frames, converted as one stream: his decoded PCM resampled in one piece (the
    # resampler keeps its last ~30 ms: a frame consumer has no last call)
    pcm = b"".join(f.frame.audio for f in bobs)
    whole = soxr.resample(
        np.frombuffer(pcm, "<i2").reshape(-1, 2).mean(axis=1).astype(np.float32) / 32768, 48000, 16000
    )
    joined = np.concatenate([f.audio for f in bobs])
    assert 0 < len(whole) - len(joined) < 16000 * 0.05 and np.array_equal(joined, whole[: len(joined)])
    assert stream.dropped == 0 and slow.dropped == len(everyone) - 5
    assert [f.frame for f in [await never_read.__anext__() for _ in range(5)]] == [f.frame for f in everyone[:5]]
    with pytest.raises(StopAsyncIteration):
        await never_read.__anext__()


async def test_a_consumer_started_after_listening_stopped_ends_at_once() -> None:
    stream = listening.AudioStream()
    stream.on_stop(0)
    with pytest.raises(StopAsyncIteration):
        await stream.__aiter__().__anext__()
    with pytest.raises(StopAsyncIteration):
        await stream.utterances().__anext__()


async def test_a_member_who_never_pauses_is_cut_at_max_length_and_the_clock_ends_a_pause() -> None:
    # Frames fed to the sink by hand, on the timeline a session would give them.
    import discord

    stream = listening.AudioStream()
    utterances = stream.utterances(end=listening.AfterSilence(0.3), max_length=1.0)
    loud = (np.full(1920, 1000, "<i2")).tobytes()
    user = discord.Object(id=7)
    for k in range(75):  # 1.5 s without a pause
        stream.on_audio(listening.AudioFrame(user, 1, k, 960 * k, loud, listening.FrameKind.decoded, 960 * k, 0.0))
    first = await utterances.__anext__()
    assert (first.start, first.end, len(first.frames)) == (0.0, 1.0, 50)
    stream.on_tick(960 * 75 + 48000 * 0.3)  # 0.3 s later: not yet past the pipeline allowance
    stream.on_tick(960 * 75 + 48000 * 0.6)
    second = await utterances.__anext__()
    assert (second.start, second.end, len(second.frames)) == (1.0, 1.5, 25)
    assert np.array_equal(second.audio, np.frombuffer(loud * 25, "<i2").reshape(-1, 2))
    stream.on_stop(48000 * 3)
    with pytest.raises(StopAsyncIteration):
        await utterances.__anext__()


def test_opus_frames_are_refused_with_an_error_the_after_callback_sees() -> None:
    stream = listening.AudioStream()
    stream.on_audio(listening.AudioFrame(None, 1, 0, 0, b"\xf8\xff\xfe", listening.FrameKind.opus, 0, 0.0))
    assert isinstance(stream.error, ValueError) and "decode=True" in str(stream.error)


@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (lambda: listening.AudioStream(format="16k"), TypeError, "format must be a PCMFormat"),
        (lambda: listening.AudioStream(max_queue=0), ValueError, "max_queue must be an int >= 1"),
        (lambda: listening.AudioStream(users=3), TypeError, "users must be an iterable"),
        (lambda: listening.AfterSilence(0), ValueError, "seconds must be a finite number of seconds > 0"),
        (lambda: listening.AfterSilence("1"), TypeError, "seconds must be a number of seconds"),
        (lambda: listening.AudioStream().utterances(end=0.5), TypeError, "end must be an AfterSilence"),
        (lambda: listening.AudioStream().utterances(max_length=float("nan")), ValueError, "max_length must be"),
    ],
)
def test_bad_arguments_say_what_is_wrong(make, error, words) -> None:
    with pytest.raises(error, match=words):
        make()


# -- subscribe, speaking queries, members joining and leaving --------------------------------


async def test_a_subscription_and_a_file_recording_run_at_once_and_it_ends_after_the_silence(pool, tmp_path) -> None:
    async with VoiceServerEmulator(seed=93, dave=False) as server:
        alice = await server.add_member(9300, "alice")
        bob = await server.add_member(9301, "bob")
        vc = await server.connect(cls=listening.VoiceClient)
        files = listening.AudioFileSink(listening.WaveAudioFile, tmp_path, filename="{user_id}")
        done = await listen_until_done(vc, files, pool)
        sub = vc.subscribe(bob.user_id, end=listening.AfterSilence(0.5), format=MONO16K)
        got: list[listening.StreamFrame] = []

        async def consume() -> None:
            async for frame in sub:
                got.append(frame)

        consumer = asyncio.create_task(consume())
        spurts = await asyncio.gather(alice.speak(speechlike(1.0, seed=6)), bob.speak(speechlike(0.8, seed=7)))
        await asyncio.wait_for(consumer, 5)  # ended by bob's silence, listening goes on
        assert sub.ended and vc.is_listening()
        await server.drain()
        await settle(server, vc, (alice, [spurts[0]]), (bob, [spurts[1]]))
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 15)
    assert {f.user_id for f in got} == {bob.user_id}
    ref = reference([spurts[1]])
    voiced = [f.sequence for f in spurts[1].frames if _voiced(ref[f.sequence])]
    # every frame up to bob's last sound (the silence frames after it may end the stream first)
    assert [f.frame.sequence for f in got][: len(voiced)] == [f.sequence for f in spurts[1].frames][: len(voiced)]
    assert all(f.audio.dtype == np.float32 and f.audio.ndim == 1 for f in got)
    # the recording beside it has both members, whole
    import soundfile

    for member, spurt in ((alice, spurts[0]), (bob, spurts[1])):
        data, rate = soundfile.read(tmp_path / f"{member.user_id}.wav", dtype="int16")
        assert rate == 48000 and len(data) >= len(spurt.frames) * 960


async def test_after_duration_ends_a_subscription_and_leaving_ends_another_with_events(pool) -> None:
    async with VoiceServerEmulator(seed=94, dave=False) as server:
        alice = await server.add_member(9400, "alice")
        vc = await server.connect(cls=listening.VoiceClient)
        done = await listen_until_done(vc, listening.AudioSink(), pool)
        timed = vc.subscribe(alice.user_id, end=listening.AfterDuration(0.5))
        start = vc.listen_position
        joined = asyncio.ensure_future(server.client.wait_for("voice_member_join", timeout=10))
        carol = await server.add_member(9402, "carol")  # joins while the bot listens
        assert (await joined).id == carol.user_id
        follow_carol = vc.subscribe(carol.user_id)  # ends only when carol goes

        async def drain(it) -> list[listening.StreamFrame]:
            return [f async for f in it]

        tasks = [asyncio.create_task(drain(timed)), asyncio.create_task(drain(follow_carol))]
        speaking = asyncio.create_task(alice.speak(speechlike(1.5, seed=8)))
        await server.wait_until(lambda: vc.is_speaking(alice.user_id), timeout=5, what="alice speaking")
        assert [m.id for m in vc.speaking_members] == [alice.user_id] and not vc.is_speaking(carol.user_id)
        timed_frames = await asyncio.wait_for(tasks[0], 5)  # 0.5 s of her speech, then it ends
        assert timed_frames and all(f.frame.position < start + 24000 for f in timed_frames)
        assert not follow_carol.ended
        left = asyncio.ensure_future(server.client.wait_for("voice_member_leave", timeout=10))
        await carol.leave()
        assert (await left).id == carol.user_id
        assert await asyncio.wait_for(tasks[1], 5) == [] and follow_carol.ended
        await speaking
        await server.wait_until(lambda: not vc.is_speaking(alice.user_id), timeout=5, what="alice quiet")
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 15)
        assert not vc.is_speaking(alice.user_id) and vc.speaking_members == []
        with pytest.raises(RuntimeError, match="not listening"):
            vc.subscribe(alice.user_id)


async def test_subscribe_says_what_is_wrong(pool) -> None:
    async with VoiceServerEmulator(seed=95, dave=False) as server:
        vc = await server.connect(cls=listening.VoiceClient)
        done = await listen_until_done(vc, listening.AudioSink(), pool)
        with pytest.raises(TypeError, match="end must be AfterSilence, AfterDuration or None"):
            vc.subscribe(1, end=3.0)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="a user must be an int id"):
            vc.subscribe("alice")
        with pytest.raises(ValueError, match="seconds must be a finite number of seconds > 0"):
            listening.AfterDuration(-1)
        sub = vc.subscribe(2)
        sub.close()
        sub.close()  # idempotent
        with pytest.raises(StopAsyncIteration):
            await sub.__anext__()
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 15)


async def test_the_live_mix_is_the_sum_of_everyone_slot_by_slot(pool) -> None:
    stream = listening.AudioStream()
    async with VoiceServerEmulator(seed=96, dave=False) as server:
        alice = await server.add_member(9600, "alice")
        bob = await server.add_member(9601, "bob")
        vc = await server.connect(cls=listening.VoiceClient)
        done = await listen_until_done(vc, stream, pool)
        frames: list[listening.StreamFrame] = []
        mixed: list[listening.MixedFrame] = []

        tasks = [asyncio.create_task(_collect(stream, frames)), asyncio.create_task(_collect(stream.mixed(), mixed))]
        await _speak_then_stop(server, vc, done, (alice, 1.0, 9), (bob, 0.6, 10))
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    # the reference: each member's frames laid on the timeline and summed
    end = max(f.frame.position for f in frames) + 960
    timeline = np.zeros((end + 960, 2), np.int64)
    covered: dict[int, set[int]] = {}
    for f in frames:
        p = f.frame.position
        timeline[p : p + 960] += np.frombuffer(f.frame.audio, "<i2").reshape(-1, 2)
        for k in {p // 960, (p + 959) // 960}:
            covered.setdefault(k, set()).add(f.user_id)
    positions = [m.position for m in mixed]
    assert positions == sorted(positions) and all(p % 960 == 0 for p in positions)
    assert {p // 960 for p in positions} == set(covered)  # a slot for every 20 ms anyone spoke
    for m in mixed:
        expect = np.clip(timeline[m.position : m.position + 960], -32768, 32767).astype(np.int16)
        assert np.array_equal(m.audio, expect), m.position
        assert m.user_ids == covered[m.position // 960]
    assert any(len(m.user_ids) == 2 for m in mixed)  # they did overlap


# -- voice activity detection ------------------------------------------------------------------


def _open_mic(user_id: int, clicks: bool) -> tuple[list[listening.AudioFrame], int]:
    """A member whose client transmits all the time: speech, 1.5 s of room noise (and keyboard
    clicks) sent, not silent, speech again. Returns the frames and where the noise ends."""
    from discord.ext.listening.demo import load_clip

    rng = np.random.default_rng(5)
    speech = np.frombuffer(load_clip("alice")[: 48000 * 4], "<i2").reshape(-1, 2)
    more = np.frombuffer(load_clip("bob")[: 48000 * 4], "<i2").reshape(-1, 2)
    noise = rng.standard_normal((72000, 1)) * 60  # about -55 dBFS
    for at in rng.integers(0, 72000 - 400, 15 if clicks else 0):  # a few keystrokes
        noise[at : at + 240, 0] += rng.standard_normal(240) * 3000 * np.exp(-np.arange(240) / 40)
    pcm = np.concatenate([speech, np.repeat(noise, 2, axis=1).astype("<i2"), more]).astype("<i2")
    user = __import__("discord").Object(id=user_id)
    frames = [
        listening.AudioFrame(
            user, 1, k, 960 * k, pcm[960 * k : 960 * (k + 1)].tobytes(), listening.FrameKind.decoded, 960 * k, 0.0
        )
        for k in range(len(pcm) // 960)
    ]
    return frames, 48000 + 72000


@pytest.mark.parametrize(
    ("vad", "clicks"),
    [(None, False), (listening.WebRTCVAD(3), False), (listening.SileroVAD(), False), (listening.SileroVAD(), True)],
    ids=["none", "webrtc", "silero", "silero-with-keyboard"],
)
async def test_a_detector_finds_the_pause_of_a_member_who_transmits_all_the_time(vad, clicks: bool) -> None:
    # (WebRTC's detector takes keystrokes for speech: measured in benchmarks/bench_vad.py)
    frames, noise_end = _open_mic(9700, clicks)
    stream = listening.AudioStream()
    utterances = stream.utterances(end=listening.AfterSilence(0.6), vad=vad)
    for frame in frames:
        stream.on_audio(frame)
    stream.on_stop(frames[-1].position + 960)
    got = [u async for u in utterances]
    if vad is None:  # without a detector the noise is sound: one utterance from start to end
        assert len(got) == 1
        return
    # two utterances: the first ends in the first second, the second starts with the speech after
    # the noise (each detector allowed its hangover and its window's lag)
    assert len(got) == 2, [(u.start, u.end) for u in got]
    assert got[0].start < 0.1 and 0.5 < got[0].end < 1.4
    assert abs(got[1].start - noise_end / 48000) < 0.15, got[1].start


def test_detectors_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"mode must be within 0\.\.3"):
        listening.WebRTCVAD(4)
    with pytest.raises(ValueError, match=r"threshold must be within 0\.\.1"):
        listening.SileroVAD(1.5)
    with pytest.raises(TypeError, match="vad must be a VoiceActivityDetector"):
        listening.AudioStream().utterances(vad="webrtc")
