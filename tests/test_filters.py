"""Filters and transforms that wrap a sink, and PCM in the shape a consumer asks for.

The filters are fed by a real listening session (the local voice server, real Opus, real
decode workers, two members speaking): what reaches each wrapped sink is compared with what
an unwrapped sink beside it received. The PCM conversion is compared with soxr resampling
the whole signal at once.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import soxr

import discord
from discord.ext import listening
from discord.ext.listening.opus import FRAME_BYTES
from discord.ext.listening.testing import VoiceServerEmulator, speechlike
from helpers import Collect, WireTap, listen_until_done, settle

pytestmark = pytest.mark.timeout(60)


async def test_each_filter_passes_on_exactly_its_frames_and_every_other_callback(pool) -> None:
    everything = Collect()
    only_bob, half, first_half_second, no_concealed, quiet_bob = (Collect() for _ in range(5))
    async with VoiceServerEmulator(seed=81, loss=0.05) as server:
        alice = await server.add_member(8100, "alice")
        bob = await server.add_member(8101, "bob")
        vc = await server.connect(cls=listening.VoiceClient)
        wire = WireTap(server)
        sink = listening.FanOutSink(
            everything,
            listening.UserFilter(only_bob, [bob.user_id]),
            listening.VolumeTransformer(half, 0.5),
            listening.TimedFilter(first_half_second, 0.5),
            listening.ConditionalFilter(no_concealed, lambda f: not f.concealed),
            listening.VolumeTransformer(quiet_bob, {discord.Object(id=bob.user_id): 0.25}, default=2.0),
        )
        done = await listen_until_done(vc, sink, pool)
        spurts = await asyncio.gather(alice.speak(speechlike(1.0, seed=1)), bob.speak(speechlike(1.0, seed=2)))
        await server.drain()
        await settle(server, vc, (alice, [spurts[0]]), (bob, [spurts[1]]), wire=wire, allow_socket_drops=True)
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 15)
    frames = everything.frames
    by_user = everything.by_user()
    assert set(by_user) == {alice.user_id, bob.user_id} and any(f.concealed for f in frames)

    def key(f: listening.AudioFrame) -> tuple[int | None, int]:
        return f.user_id, f.sequence

    def scaled(f: listening.AudioFrame, factor: float) -> bytes:
        pcm = np.frombuffer(f.audio, "<i2").astype(np.float64) * factor
        return np.clip(np.rint(pcm), -32768, 32767).astype("<i2").tobytes()

    assert [key(f) for f in only_bob.frames] == [key(f) for f in by_user[bob.user_id]]
    assert [key(f) for f in half.frames] == [key(f) for f in frames]
    assert [f.audio for f in half.frames] == [scaled(f, 0.5) for f in frames]
    assert any(f.audio != g.audio for f, g in zip(half.frames, frames))
    assert [key(f) for f in first_half_second.frames] == [key(f) for f in frames if f.position < 24000]
    assert 0 < len(first_half_second.frames) < len(frames)
    assert [key(f) for f in no_concealed.frames] == [key(f) for f in frames if not f.concealed]
    # per member: bob at a quarter, everyone else (alice) doubled and clipped
    assert [f.audio for f in quiet_bob.frames] == [scaled(f, 0.25 if f.user_id == bob.user_id else 2.0) for f in frames]
    for wrapped in (only_bob, half, first_half_second, no_concealed, quiet_bob):
        assert (wrapped.stopped_at, wrapped.cleaned) == (everything.stopped_at, 1)
        assert len(wrapped.rtcp) == len(everything.rtcp)


def test_filters_count_what_they_pass_and_hold_back_and_carry_the_wrapped_sinks_error() -> None:
    inner = Collect()
    f = listening.UserFilter(inner, [discord.Object(id=1), 2])
    assert f.user_ids == {1, 2}
    for uid in (1, 3, 2, None):
        user = None if uid is None else discord.Object(id=uid)
        f.on_audio(listening.AudioFrame(user, 5, 0, 0, bytes(FRAME_BYTES), listening.FrameKind.decoded, 0, 0.0))
    assert (f.passed, f.filtered, [x.user_id for x in inner.frames]) == (2, 2, [1, 2])
    boom = OSError("disk full")
    inner.error = boom
    assert f.error is boom  # so listen()'s after gets it
    f.error = None
    assert inner.error is None


def test_volume_leaves_opus_frames_alone() -> None:
    inner = Collect()
    v = listening.VolumeTransformer(inner, 3.0)
    frame = listening.AudioFrame(discord.Object(id=1), 5, 0, 0, b"\xf8\xff\xfe", listening.FrameKind.opus, 0, 0.0)
    v.on_audio(frame)
    assert inner.frames == [frame]


@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (lambda s: listening.UserFilter(s, 5), TypeError, "users must be an iterable"),
        (lambda s: listening.UserFilter(s, ["alice"]), TypeError, "a user must be an int id"),
        (lambda s: listening.UserFilter(object(), [1]), TypeError, "sink must be an AudioSink"),
        (lambda s: listening.TimedFilter(s, 0), ValueError, "seconds must be a finite number of seconds > 0"),
        (
            lambda s: listening.TimedFilter(s, float("inf")),
            ValueError,
            "seconds must be a finite number of seconds > 0",
        ),
        (lambda s: listening.TimedFilter(s, "1"), TypeError, "seconds must be a number"),
        (lambda s: listening.ConditionalFilter(s, True), TypeError, "predicate must be callable"),
        (lambda s: listening.VolumeTransformer(s, -0.5), ValueError, "volume must be a finite number >= 0"),
        (lambda s: listening.VolumeTransformer(s, {1: float("nan")}), ValueError, "volume must be a finite"),
        (lambda s: listening.VolumeTransformer(s, {1: 1.0}, default="x"), TypeError, "default must be a number"),
        (lambda s: listening.VolumeTransformer(s, True), TypeError, "volume must be a number"),
    ],
)
def test_filters_say_which_argument_is_wrong(make, error, words) -> None:
    with pytest.raises(error, match=words):
        make(Collect())


# -- PCM formats -----------------------------------------------------------------------------


def _tone_frames(seconds: float) -> tuple[np.ndarray, list[bytes]]:
    t = np.arange(round(48000 * seconds)) / 48000
    left = 0.4 * np.sin(2 * np.pi * 440 * t)
    right = 0.2 * np.sin(2 * np.pi * 1250 * t)
    st = np.round(np.stack([left, right], 1) * 32767).astype("<i2")
    data = st.tobytes()
    return st, [data[i : i + FRAME_BYTES] for i in range(0, len(data), FRAME_BYTES)]


@pytest.mark.parametrize("channels", [1, 2])
def test_20_ms_chunks_resample_as_the_whole_signal_would(channels: int) -> None:
    st, frames = _tone_frames(1.0)
    conv = listening.PCMConverter(listening.PCMFormat(16000, channels, "float32"))
    out = np.concatenate([conv.convert(f, last=i == len(frames) - 1) for i, f in enumerate(frames)])
    x = st.astype(np.float32) / 32768
    whole = soxr.resample(x.mean(axis=1, dtype=np.float32) if channels == 1 else x, 48000, 16000)
    assert out.dtype == np.float32 and out.shape == whole.shape == ((16000,) if channels == 1 else (16000, 2))
    assert np.array_equal(out, whole)  # seamless: no clicks or delay jumps at the chunk edges


def test_native_and_int16_formats() -> None:
    st, frames = _tone_frames(0.1)
    native = listening.PCMConverter(listening.PCMFormat())
    assert listening.PCMFormat().is_native
    assert np.array_equal(np.concatenate([native.convert(f) for f in frames]), st)
    mono16 = listening.PCMConverter(listening.PCMFormat(48000, 1, "int16"))
    got = np.concatenate([mono16.convert(f) for f in frames])
    assert got.dtype == np.int16 and np.array_equal(got, np.rint(st.astype(np.float64).mean(axis=1)).astype(np.int16))
    assert listening.PCMFormat(16000).samples(0.5) == 8000


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"rate": 4000}, ValueError, "rate must be within 8000..192000"),
        ({"rate": 16000.0}, TypeError, "rate must be an int"),
        ({"channels": 3}, ValueError, "channels must be 1 or 2"),
        ({"dtype": "float64"}, ValueError, "dtype must be one of"),
    ],
)
def test_pcm_format_says_what_is_wrong(kwargs: dict, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        listening.PCMFormat(**kwargs)
    with pytest.raises(TypeError, match="format must be a PCMFormat"):
        listening.PCMConverter("16k")  # type: ignore[arg-type]
