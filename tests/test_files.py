"""Recording files: placement on the timeline, streaming safety, formats, names, errors.

Files are read back with independent readers (soundfile/libsndfile for WAV, FLAC, MP3 and Ogg
Opus; PyAV/FFmpeg for all of them) and compared with the audio that should be there.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from datetime import datetime
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from discord.ext.listening.files import (
    FORMATS,
    AudioFile,
    FLACAudioFile,
    MP3AudioFile,
    OggOpusAudioFile,
    OggVorbisAudioFile,
    RecordingError,
    WaveAudioFile,
    ogg,
    render_filename,
    repair_wav,
    sanitize_filename,
    unique_path,
)
from discord.ext.listening.frames import AudioFrame, FrameKind
from discord.ext.listening.opus import OpusDecoder, OpusEncoder, packet_samples

RATE = 48000
FRAME = 960
PCM_CLASSES = [WaveAudioFile, FLACAudioFile, MP3AudioFile]
ALL_CLASSES = [WaveAudioFile, FLACAudioFile, MP3AudioFile, OggOpusAudioFile]


# ---- helpers ----------------------------------------------------------------------------


def signal_(n: int, seed: int = 0) -> np.ndarray:
    """Speech-like test audio: amplitude-modulated harmonics (encodes well, correlates sharply)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / RATE
    f0 = 140 + 60 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 3.1 * t + rng.uniform(0, 6))
    left = voice * envelope
    right = np.roll(left, 37) * 0.8
    return (np.stack([left, right], axis=1) * 6000).astype("<i2")


def frames_of(pcm: np.ndarray, position: int, *, ssrc: int = 7) -> list[AudioFrame]:
    out = []
    for i in range(0, len(pcm) - FRAME + 1, FRAME):
        audio = pcm[i : i + FRAME].tobytes()
        out.append(AudioFrame(None, ssrc, i // FRAME, i, audio, FrameKind.decoded, position + i, 0.0))
    return out


def read_sf(path: Path) -> np.ndarray:
    data, rate = sf.read(str(path), dtype="int16", always_2d=True)
    assert rate == RATE
    return data


def read_av(path: Path, codec: str | None = None) -> np.ndarray:
    """Decode with PyAV; ``codec`` forces a decoder (e.g. ``libopus`` for bit-exact Opus)."""
    chunks = []
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        if codec is None:
            frames = container.decode(stream)
        else:
            ctx = av.CodecContext.create(codec, "r")
            ctx.extradata = stream.codec_context.extradata
            frames = (f for p in container.demux(stream) for f in ctx.decode(p if p.size else None))
        for frame in frames:
            arr = frame.to_ndarray()
            if arr.dtype.kind == "f":
                arr = np.clip(np.round(arr * 32768), -32768, 32767).astype("<i2")
            chunks.append(arr.reshape(-1, 2) if arr.shape[0] == 1 else arr.T)
    return np.concatenate(chunks) if chunks else np.zeros((0, 2), "<i2")


def lag_of(decoded: np.ndarray, reference: np.ndarray, at: int, search: int = 3000) -> int:
    """Where ``reference`` (expected at ``at``) really is in ``decoded``, in samples from ``at``."""
    lo = max(0, at - search)
    window = decoded[lo : at + len(reference) + search, 0].astype(float)
    ref = reference[:, 0].astype(float)
    size = 1 << int(np.ceil(np.log2(len(window) + len(ref))))
    corr = np.fft.irfft(np.fft.rfft(window, size) * np.conj(np.fft.rfft(ref, size)), size)
    valid = corr[: len(window) - len(ref) + 1]  # lags at which the reference lies inside the window
    return int(np.argmax(valid)) + lo - at


def snr_db(decoded: np.ndarray, reference: np.ndarray) -> float:
    noise = decoded.astype(float) - reference.astype(float)
    return 10 * np.log10(np.sum(reference.astype(float) ** 2) / max(np.sum(noise**2), 1e-9))


def make(cls: type[AudioFile], path: Path, **kw: object) -> AudioFile:
    return cls(path.with_suffix(cls.extension), **kw)


# A timeline with a leading gap, odd positions, a short gap and long gaps (past FLAC's
# silent-frame and MP3's restart thresholds), plus the expected PCM.
# (the second burst starts one sample after the first ends; the third after a 4000-sample gap)
BURSTS = [(4800, 0), (4800 + 48_000 + 1, 1), (4800 + 2 * 48_000 + 1 + 4000, 2), (400_017, 3)]
BURST_LEN = 48_000
END = 520_000


def expected_timeline() -> tuple[list[AudioFrame], np.ndarray, list[tuple[int, np.ndarray]]]:
    frames: list[AudioFrame] = []
    timeline = np.zeros((END, 2), "<i2")
    bursts = []
    for position, seed in BURSTS:
        pcm = signal_(BURST_LEN, seed)
        frames += frames_of(pcm, position)
        timeline[position : position + BURST_LEN] = pcm
        bursts.append((position, pcm))
    return frames, timeline, bursts


# ---- placement ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [WaveAudioFile, FLACAudioFile])
def test_lossless_frames_land_at_their_positions(tmp_path: Path, cls: type[AudioFile]) -> None:
    frames, timeline, _ = expected_timeline()
    f = make(cls, tmp_path / "a")
    for frame in frames:
        f.write(frame)
    f.pad_to(END)
    f.close()
    assert f.samples_written == END
    assert f.frames_written == len(frames)
    for decoded in (read_sf(f.path), read_av(f.path)):
        assert decoded.shape == timeline.shape
        assert np.array_equal(decoded, timeline)


def test_flac_long_gap_uses_silent_frames_with_valid_numbering(tmp_path: Path) -> None:
    # 10 minutes of silence between two bursts: hand-made frames, renumbered encoder frames
    f = FLACAudioFile(tmp_path / "gap.flac")
    a, b = signal_(20_000, 1), signal_(30_000, 2)
    later = 10 * 60 * RATE + 1234
    for frame in frames_of(a, 100) + frames_of(b, later):
        f.write(frame)
    f.close()
    assert f._inserted > 1000  # the gap did not go through the encoder
    expected_len = later + len(b) // FRAME * FRAME
    info = sf.info(str(f.path))
    assert info.frames == expected_len  # STREAMINFO total covers the inserted frames
    with sf.SoundFile(str(f.path)) as snd:  # libFLAC checks every frame's CRC-8 and CRC-16
        snd.seek(later - 1000)
        tail = snd.read(dtype="int16")
    assert np.array_equal(tail[:1000], np.zeros((1000, 2), "<i2"))
    assert np.array_equal(tail[1000:], b[: len(b) // FRAME * FRAME])
    decoded = read_av(f.path)
    assert len(decoded) == expected_len
    assert np.array_equal(decoded[100 : 100 + len(a) // FRAME * FRAME], a[: len(a) // FRAME * FRAME])


@pytest.mark.parametrize("quality", [None, 9])
def test_mp3_frames_land_within_a_frame_and_length_is_exact(tmp_path: Path, quality: int | None) -> None:
    frames, _, bursts = expected_timeline()
    f = MP3AudioFile(tmp_path / "a.mp3", bitrate=160000, quality=quality)
    for frame in frames:
        f.write(frame)
    f.pad_to(END)
    f.close()
    for decoded in (read_av(f.path), read_sf(f.path)):
        assert len(decoded) == END  # the LAME tag trims delay and padding exactly
        for position, pcm in bursts:
            # measured: 0 (the LAME tag compensates LAME's 576 + the decoder's 529 samples)
            assert abs(lag_of(decoded, pcm, position)) <= 1
            assert snr_db(decoded[position : position + BURST_LEN], pcm) > 12
        silence = np.concatenate([decoded[: bursts[0][0] - 1200], decoded[bursts[-1][0] + BURST_LEN + 1200 :]])
        assert np.abs(silence).max() <= 2


def test_mp3_length_is_exact_when_lame_flushes_a_whole_frame_of_padding(tmp_path: Path) -> None:
    # LAME's flush sometimes adds a whole frame of padding; FFmpeg's tag then only counts the
    # last packet's part of it, and the file decoded 41 samples long (found by a recording
    # whose MP3 files ended after its WAV files)
    f = MP3AudioFile(tmp_path / "pad.mp3")
    for frame in frames_of(signal_(2 * FRAME), 10770):
        f.write(frame)
    f.pad_to(17424)
    f.pad_to(18438)
    f.close()
    assert sf.info(str(f.path)).frames == 18438
    assert len(read_av(f.path)) == 18438


def test_mp3_encoder_delay_without_the_lame_tag(tmp_path: Path) -> None:
    # What a reader ignoring the LAME tag sees: the encoder delay (576) + decoder delay (529).
    pcm = signal_(48_000)
    f = MP3AudioFile(tmp_path / "d.mp3")
    for frame in frames_of(pcm, 9600):
        f.write(frame)
    f.close()
    data = bytearray(f.path.read_bytes())
    at = data.index(b"Info")
    data[at : at + 4] = b"NoTg"  # no Xing/Info tag: no gapless information
    raw = tmp_path / "raw.mp3"
    raw.write_bytes(bytes(data))
    assert lag_of(read_av(raw), pcm, 9600) == 1105
    assert lag_of(read_av(f.path), pcm, 9600) == 0


def test_overlapping_frames_are_trimmed_or_skipped(tmp_path: Path) -> None:
    pcm = signal_(10 * FRAME)
    frames = frames_of(pcm, 0)
    f = WaveAudioFile(tmp_path / "o.wav")
    for frame in frames[:5]:
        f.write(frame)
    f.write(frames[2])  # a duplicate: entirely within what is written
    f.write(frames[4])  # a duplicate of the newest frame: ends exactly at the end
    other = signal_(FRAME, 9).tobytes()
    f.write(AudioFrame(None, 7, 0, 0, other, FrameKind.decoded, 5 * FRAME - 100, 0.0))  # 100 samples overlap
    for frame in frames[6:]:
        f.write(frame)
    f.close()
    assert f.frames_dropped_overlap == 2
    assert f.frames_trimmed_overlap == 1
    assert f.samples_dropped_overlap == 2 * FRAME + 100
    decoded = read_sf(f.path)
    expected = pcm.copy()
    expected[5 * FRAME : 6 * FRAME - 100] = np.frombuffer(other, "<i2").reshape(-1, 2)[100:]
    # the trimmed frame ends 100 samples before frame 6, which keeps its place: a short gap
    expected[6 * FRAME - 100 : 6 * FRAME] = 0
    assert len(decoded) == len(pcm)
    assert np.array_equal(decoded, expected)


def test_overlap_in_ogg_is_skipped(tmp_path: Path) -> None:
    enc = OpusEncoder()
    pcm = signal_(10 * FRAME)
    packets = [enc.encode(pcm[i : i + FRAME].tobytes()) for i in range(0, len(pcm), FRAME)]
    f = OggOpusAudioFile(tmp_path / "o.opus")
    for i, packet in enumerate(packets):
        f.write(AudioFrame(None, 7, i, i * FRAME, packet, FrameKind.opus, i * FRAME, 0.0))
    f.write(AudioFrame(None, 7, 3, 3 * FRAME, packets[3], FrameKind.opus, 3 * FRAME, 0.0))
    f.write(AudioFrame(None, 7, 3, 3 * FRAME, b"", FrameKind.opus, 11 * FRAME, 0.0))  # not a packet
    f.close()
    assert (f.frames_written, f.frames_dropped_overlap, f.frames_invalid) == (10, 1, 1)
    assert f.samples_written == 10 * FRAME


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_long_silence_gap_does_not_allocate(tmp_path: Path, cls: type[AudioFile]) -> None:
    two_hours = 2 * 3600 * RATE
    enc = OpusEncoder()
    pcm = signal_(FRAME)
    packet = enc.encode(pcm.tobytes())

    def frame_at(position: int) -> AudioFrame:
        if cls is OggOpusAudioFile:
            return AudioFrame(None, 7, 0, 0, packet, FrameKind.opus, position, 0.0)
        return AudioFrame(None, 7, 0, 0, pcm.tobytes(), FrameKind.decoded, position, 0.0)

    f = make(cls, tmp_path / "long")
    f.write(frame_at(0))
    tracemalloc.start()
    try:
        started = time.perf_counter()
        f.write(frame_at(two_hours))
        f.pad_to(two_hours + 5 * RATE)
        f.close()
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes"
    assert elapsed < 8, f"{elapsed:.1f} s to write a 2-hour gap"
    assert f.samples_written == two_hours + 5 * RATE
    info = sf.info(str(f.path))  # header only: decoding 2 hours would be slow
    assert info.frames == two_hours + 5 * RATE


# ---- equal ends -------------------------------------------------------------------------------


def test_pad_to_makes_every_format_end_on_the_same_sample(tmp_path: Path) -> None:
    enc = OpusEncoder()
    files = []
    end = 3 * RATE + 77  # not a multiple of any codec frame
    for n, cls in enumerate(ALL_CLASSES):
        pcm = signal_(FRAME * (20 + 7 * n), n)
        f = make(cls, tmp_path / f"f{n}")
        for frame in frames_of(pcm, 1000 * n):
            if cls is OggOpusAudioFile:
                frame.audio, frame.kind = enc.encode(frame.audio), FrameKind.opus
            f.write(frame)
        files.append(f)
    for f in files:
        f.pad_to(end)
        f.close()
        assert f.samples_written == end
        assert len(read_av(f.path)) == end, f.path.name
        assert sf.info(str(f.path)).frames == end, f.path.name


# ---- streaming: readable while written, and after SIGKILL ------------------------------------


def test_wav_is_readable_while_it_is_written(tmp_path: Path) -> None:
    pcm = signal_(3 * RATE)
    frames = frames_of(pcm, 0)
    f = WaveAudioFile(tmp_path / "live.wav")
    for frame in frames[:100]:  # 2 s
        f.write(frame)
    mid = read_sf(f.path)
    assert 1.5 * RATE <= len(mid) <= 2 * RATE  # everything up to the last sync (0.5 s of audio)
    assert np.array_equal(mid, pcm[: len(mid)])
    f.sync()
    assert np.array_equal(read_sf(f.path), pcm[: 100 * FRAME])
    for frame in frames[100:]:
        f.write(frame)
    f.close()
    assert np.array_equal(read_sf(f.path), pcm[: len(frames) * FRAME])


def test_flac_is_readable_while_it_is_written(tmp_path: Path) -> None:
    pcm = signal_(2 * RATE)
    f = FLACAudioFile(tmp_path / "live.flac")
    for frame in frames_of(pcm, 0):
        f.write(frame)
    f.sync()
    mid = read_sf(f.path)  # STREAMINFO says how much is on disk
    assert len(mid) >= 2 * RATE - f.blocksize
    assert np.array_equal(mid, pcm[: len(mid)])
    f.close()


KILL_CHILD = textwrap.dedent(
    """
    import time
    import numpy as np
    from discord.ext.listening.files import WaveAudioFile, FLACAudioFile, MP3AudioFile, OggOpusAudioFile
    from discord.ext.listening.frames import AudioFrame, FrameKind
    from discord.ext.listening.opus import OpusEncoder
    RATE, FRAME = 48000, 960
    out = {out!r}
    files = [WaveAudioFile(out + "/k.wav"), FLACAudioFile(out + "/k.flac"), MP3AudioFile(out + "/k.mp3"),
             OggOpusAudioFile(out + "/k.opus", serial=1)]
    pcm = signal_(20 * RATE)
    enc = OpusEncoder()
    start = time.monotonic()
    for i, frame in enumerate(frames_of(pcm, 0)):
        # real time: one 20 ms frame every 20 ms, a 0.3 s pause after 0.8 s
        position = frame.position + (14400 if i >= 40 else 0)
        time.sleep(max(0.0, start + position / RATE - time.monotonic()))
        packet = enc.encode(frame.audio)
        frame.position = position
        for f in files[:3]:
            f.write(frame)
        frame.audio, frame.kind = packet, FrameKind.opus
        files[3].write(frame)
        print(position + FRAME, flush=True)
    """
)


def test_sigkill_leaves_playable_files(tmp_path: Path) -> None:
    helpers = "\n\n".join(inspect.getsource(fn) for fn in (signal_, frames_of))
    script = "from __future__ import annotations\n" + helpers + KILL_CHILD.format(out=str(tmp_path))
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    last = 0
    try:
        for line in child.stdout:
            last = int(line)
            if last >= int(1.8 * RATE):
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(10)
    assert last >= int(1.8 * RATE), "the writer did not get going"
    # the child was killed right after writing up to ``last``: at most 1 s may be missing
    must_have = last - RATE
    pcm = signal_(20 * RATE)
    timeline = np.zeros((last + RATE, 2), "<i2")
    timeline[: 40 * FRAME] = pcm[: 40 * FRAME]
    timeline[40 * FRAME + 14400 : last] = pcm[40 * FRAME : last - 14400]

    for name in ("k.wav", "k.flac"):
        for decoded in (read_sf(tmp_path / name), read_av(tmp_path / name)):
            assert len(decoded) >= must_have, name
            assert np.array_equal(decoded, timeline[: len(decoded)]), name

    for decoded in (read_sf(tmp_path / "k.mp3"), read_av(tmp_path / "k.mp3")):
        assert len(decoded) >= must_have
        assert abs(lag_of(decoded, pcm[: 20 * FRAME], 0, search=500)) <= 1
        ref_at = 40 * FRAME + 14400
        assert abs(lag_of(decoded, pcm[40 * FRAME : 60 * FRAME], ref_at, search=3000)) <= 1
        assert snr_db(decoded[:must_have], timeline[:must_have]) > 10

    opus = tmp_path / "k.opus"
    pages = ogg.parse_pages(opus.read_bytes())  # every complete page has a good CRC
    assert pages[0].flags & ogg.FLAG_BOS and pages[-1].granule >= must_have
    decoded = read_av(opus, "libopus")
    assert len(decoded) >= must_have
    assert len(read_sf(opus)) >= must_have


# ---- Ogg Opus -------------------------------------------------------------------------------


def test_ogg_opus_decodes_like_the_opus_decoder(tmp_path: Path) -> None:
    # Three talk spurts as a Discord client sends them (five silence frames at the end of
    # each), from one continuous encoder; the later spurts at positions off the 960 grid.
    enc = OpusEncoder()
    sig = signal_(3 * RATE, 5)
    silence = b"\xf8\xff\xfe"
    spurts = [
        [enc.encode(sig[i : i + FRAME].tobytes()) for i in range(k * RATE, (k + 1) * RATE, FRAME)] + [silence] * 5
        for k in range(3)
    ]
    starts = [4800, 100_333, 6 * RATE + 17]
    received = [(start + i * FRAME, p) for start, spurt in zip(starts, spurts) for i, p in enumerate(spurt)]
    path = tmp_path / "rx.opus"
    f = OggOpusAudioFile(path, serial=0x1234ABCD, tags={"title": "test"})
    for seq, (pos, packet) in enumerate(received):
        f.write(AudioFrame(None, 7, seq, pos, packet, FrameKind.opus, pos, 0.0))
    end = 8 * RATE + 3
    f.pad_to(end)
    f.close()
    assert f.samples_written == end

    # Demux with FFmpeg (not our parser): the received packets are stored untouched, in
    # order, each at its position (page granules are true: pts within the 120-sample rounding).
    demuxed = []
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.extradata[:8] == b"OpusHead"
        assert stream.metadata.get("title", stream.metadata.get("TITLE")) == "test"
        for packet in container.demux(stream):
            if packet.size:
                demuxed.append((bytes(packet), packet.pts))
    voice = {p for _, p in received if p != silence}
    stored = [(data, pts) for data, pts in demuxed if data in voice]
    assert [data for data, _ in stored] == [p for _, p in received if p != silence]
    expected_pts = [pos for pos, p in received if p != silence]
    shifts = [pts - pos for (_, pts), pos in zip(stored, expected_pts)]
    assert max(abs(s) for s in shifts) <= 60
    filler = {data for data, _ in demuxed if data not in voice}
    assert all(not np.any(np.frombuffer(OpusDecoder().decode(p), "<i2")) for p in filler)

    # FFmpeg's libopus decode of the file == our OpusDecoder over the same packet sequence.
    decoded = read_av(path, "libopus")
    ours = OpusDecoder()
    reference = np.frombuffer(b"".join(ours.decode(p) for p, _ in demuxed), "<i2").reshape(-1, 2)
    assert len(decoded) == end  # pre-skip 0, end trimmed by the last granule
    assert np.array_equal(decoded, reference[:end])

    # ...and the same audio as the PCM path (one decoder over the received packets, placed at
    # their positions), bit for bit: the extra silence packets do not change the decoder's
    # state after a client's five silence frames. Only the first 5 ms of the first spurt
    # differ slightly: there the PCM path's decoder is fresh, the file's has decoded the
    # leading silence.
    pcm_path = OpusDecoder()
    timeline = np.zeros((end, 2), "<i2")
    for k, (start, spurt) in enumerate(zip(starts, spurts)):
        pcm = np.frombuffer(b"".join(pcm_path.decode(p) for p in spurt), "<i2").reshape(-1, 2)
        at = start + shifts[k * RATE // FRAME]
        timeline[at : at + len(pcm)] = pcm
    diff = np.abs(decoded.astype(int) - timeline.astype(int)).max(axis=1)
    assert not diff[: starts[0]].any() and not diff[starts[0] + 240 :].any()
    assert diff.max() < 0.02 * np.abs(timeline).max()

    # libsndfile reads it too (float decode: within an LSB)
    via_sf = read_sf(path)
    assert len(via_sf) == end
    assert np.abs(via_sf.astype(int) - decoded.astype(int)).max() <= 1


def test_ogg_pages_follow_rfc7845(tmp_path: Path) -> None:
    enc = OpusEncoder()
    f = OggOpusAudioFile(tmp_path / "p.opus", serial=99, sync_interval=0.1)
    pcm = signal_(2 * RATE)
    for i in range(0, len(pcm), FRAME):
        f.write(AudioFrame(None, 7, 0, 0, enc.encode(pcm[i : i + FRAME].tobytes()), FrameKind.opus, i, 0.0))
    f.close()
    pages = ogg.parse_pages(f.path.read_bytes())
    assert pages[0].flags == ogg.FLAG_BOS and pages[0].granule == 0 and pages[0].body.startswith(b"OpusHead")
    head = pages[0].body
    assert head[9] == 2 and int.from_bytes(head[10:12], "little") == 0  # stereo, pre-skip 0
    assert int.from_bytes(head[12:16], "little") == RATE
    assert pages[1].granule == 0 and pages[1].body.startswith(b"OpusTags")
    assert all(p.flags & ogg.FLAG_EOS == 0 for p in pages[:-1]) and pages[-1].flags & ogg.FLAG_EOS
    assert [p.sequence for p in pages] == list(range(len(pages)))
    assert all(p.serial == 99 for p in pages)
    granules = [p.granule for p in pages[2:]]
    assert granules == sorted(granules) and granules[-1] == len(pcm)
    # every page's granule = samples at the end of its last packet
    total = 0
    for page in pages[2:]:
        for data, complete in page.packets():
            assert complete
            total += packet_samples(data)
        assert page.granule == total
    # pages every ~0.1 s (sync_interval), not one big page
    assert len(pages) >= 12


def test_ogg_crc_is_the_ogg_crc() -> None:
    rng = np.random.default_rng(3)
    for n in (0, 1, 2, 27, 255, 4096):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert ogg.crc32(data) == ogg.crc32_reference(data)
    assert ogg.crc32(b"123456789") == 0x89A1897F  # CRC-32/MPEG-2 check value, init 0 / no xorout
    assert ogg.crc32_reference(b"123456789") == 0x89A1897F


def test_our_crc_validates_pages_written_by_libogg(tmp_path: Path) -> None:
    path = tmp_path / "libogg.opus"
    sf.write(str(path), signal_(RATE).astype(np.float32) / 32768, RATE, format="OGG", subtype="OPUS")
    pages = ogg.parse_pages(path.read_bytes())  # strict: raises on any CRC mismatch
    assert len(pages) >= 3 and pages[-1].flags & ogg.FLAG_EOS


def test_ogg_writer_splits_big_packets_across_pages() -> None:
    w = ogg.OggStreamWriter(5)
    packets = [bytes([i]) * size for i, size in enumerate([100, 140_000, 255, 0, 510, 3])]
    for n, p in enumerate(packets):
        w.add_packet(p, (n + 1) * 10)
    data = w.pages(eos=True)
    pages = ogg.parse_pages(data)
    assert all(len(p.segments) <= 255 for p in pages)
    out, cur = [], b""
    for page in pages:
        for piece, complete in page.packets():
            cur += piece
            if complete:
                out.append(cur)
                cur = b""
    assert out == packets
    assert pages[-1].granule == 60 and pages[-1].flags & ogg.FLAG_EOS
    assert any(p.flags & ogg.FLAG_CONTINUED for p in pages)
    assert any(p.granule == -1 for p in pages)  # a page on which no packet ends


def test_pcm_frames_into_ogg_are_encoded(tmp_path: Path) -> None:
    pcm = signal_(RATE)
    f = OggOpusAudioFile(tmp_path / "enc.opus")
    for frame in frames_of(pcm, 9600):
        f.write(frame)
    f.write(AudioFrame(None, 7, 0, 0, bytes(4 * FRAME), FrameKind.silence, 9600 + RATE, 0.0))
    f.close()
    decoded = read_av(f.path, "libopus")
    assert len(decoded) == 9600 + RATE + FRAME
    assert lag_of(decoded, pcm, 9600) == 0  # the encoder's lookahead is compensated
    assert snr_db(decoded[9600 : 9600 + RATE], pcm) > 10
    assert not decoded[: 9600 - 312].any()


def test_pcm_runs_into_ogg_of_any_length_land_exactly(tmp_path: Path) -> None:
    # what a mixer does: contiguous blocks of odd sizes, silence as padding, an odd end
    pcm = signal_(3 * RATE, 4)
    f = OggOpusAudioFile(tmp_path / "runs.opus")
    f.pad_to(5000)
    cuts = [5000, 5000 + 777, 5000 + 24_001, 5000 + RATE + 13]
    for a, b in itertools.pairwise(cuts):
        f.write_pcm(pcm[a - 5000 : b - 5000].tobytes(), a)
    f.write_pcm(bytes(4 * 1000), cuts[-1])  # a short quiet stretch inside the run
    second = cuts[-1] + 1000 + RATE // 2  # after a long gap: a new run
    f.write_pcm(pcm[RATE : 2 * RATE + 5].tobytes(), second)
    end = second + RATE + 5 + 2222
    f.pad_to(end)
    f.close()
    assert f.samples_written == end
    decoded = read_av(f.path, "libopus")
    assert len(decoded) == end and sf.info(str(f.path)).frames == end
    first = pcm[: cuts[-1] - 5000]
    assert lag_of(decoded, first, 5000) == 0 and snr_db(decoded[5000 : cuts[-1]], first) > 10
    assert lag_of(decoded, pcm[RATE : 2 * RATE], second) == 0
    assert snr_db(decoded[second : second + RATE], pcm[RATE : 2 * RATE]) > 10
    gap = decoded[cuts[-1] + 1000 : second - 400]  # the gap: the codec's decay, then silence
    loud = np.nonzero(np.abs(gap).max(axis=1) > 64)[0]
    assert not len(loud) or loud[-1] < 2 * FRAME
    assert not gap[3 * FRAME :].any()


def test_opus_frames_into_a_wav_are_decoded(tmp_path: Path) -> None:
    enc = OpusEncoder()
    pcm = signal_(RATE)
    packets = [enc.encode(pcm[i : i + FRAME].tobytes()) for i in range(0, len(pcm), FRAME)]
    f = WaveAudioFile(tmp_path / "dec.wav")
    for i, packet in enumerate(packets):
        f.write(AudioFrame(None, 7, i, 0, packet, FrameKind.opus, 480 + i * FRAME, 0.0))
    f.close()
    dec = OpusDecoder()
    expected = np.frombuffer(b"".join(dec.decode(p) for p in packets), "<i2").reshape(-1, 2)
    assert np.array_equal(read_sf(f.path)[480:], expected)


# ---- WAV specifics ----------------------------------------------------------------------------


def test_repair_wav_fixes_a_header_cut_mid_write(tmp_path: Path) -> None:
    pcm = signal_(RATE)
    path = tmp_path / "cut.wav"
    f = WaveAudioFile(path, sync_interval=1000)  # no sync: the header still says 0 bytes
    for frame in frames_of(pcm, 0):
        f.write(frame)
    f._flush_pending()  # the data reached the disk, the header update did not (a kill now)
    with open(path, "ab") as fh:
        fh.write(b"\x01\x02")  # half a sample, as a cut write can leave
    assert read_sf(path).shape[0] == 0
    assert repair_wav(path) == RATE
    assert np.array_equal(read_sf(path), pcm)
    f._release()


def test_wav_turns_rf64_past_the_riff_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(WaveAudioFile, "_RIFF_LIMIT", 100_000)
    pcm = signal_(RATE)
    f = WaveAudioFile(tmp_path / "big.wav")
    for frame in frames_of(pcm, 0):
        f.write(frame)
    f.close()
    assert f.path.read_bytes()[:4] == b"RF64"
    info = sf.info(str(f.path))
    assert info.format == "RF64" and info.frames == RATE
    assert np.array_equal(read_sf(f.path), pcm)
    assert repair_wav(f.path) == RATE
    assert np.array_equal(read_sf(f.path), pcm)


def test_wav_tags_and_holes(tmp_path: Path) -> None:
    f = WaveAudioFile(tmp_path / "t.wav", tags={"title": "Alice", "artist": "bot"})
    f.write(frames_of(signal_(FRAME), 0)[0])
    f.write(frames_of(signal_(FRAME), 60 * RATE)[0])  # a minute of silence: a hole
    f.close()
    assert sf.info(str(f.path)).frames == 60 * RATE + FRAME
    with sf.SoundFile(str(f.path)) as snd:
        assert snd.title == "Alice" and snd.artist == "bot"
    if hasattr(os.stat(f.path), "st_blocks") and sys.platform.startswith("linux"):
        assert os.stat(f.path).st_blocks * 512 < 60 * RATE * 4 / 2  # sparse: the gap takes no blocks


# ---- errors -----------------------------------------------------------------------------------


class _FullDisk:
    """Stands in for the OS file: every write fails with ENOSPC (a fake of the OS only)."""

    def __init__(self, real: object) -> None:
        self.real = real

    def write(self, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


@pytest.mark.parametrize("cls", [*ALL_CLASSES, OggVorbisAudioFile])
def test_full_disk_raises_recording_error_and_stays_consistent(tmp_path: Path, cls: type[AudioFile]) -> None:
    enc = OpusEncoder()
    pcm = signal_(4 * RATE)
    frames = frames_of(pcm, 0)
    if cls is OggOpusAudioFile:
        for frame in frames:
            frame.audio, frame.kind = enc.encode(frame.audio), FrameKind.opus
    f = make(cls, tmp_path / "full")
    for frame in frames[:60]:
        f.write(frame)
    f.sync()
    f._out.fh = _FullDisk(f._out.fh)  # type: ignore[attr-defined]
    with pytest.raises(RecordingError) as info:
        for frame in frames[60:]:
            f.write(frame)
    err = info.value
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC
    assert err.filename == str(f.path) and f.path.name in str(err) and "No space left" in str(err)
    assert f.error is err
    with pytest.raises(RecordingError) as again:  # every later write: the same error
        f.write(frames[-1])
    assert again.value is err
    with pytest.raises(RecordingError):
        f.pad_to(10 * RATE)
    f.close()  # does not raise the old error again; closes the descriptor
    f.close()
    with pytest.raises(RecordingError):
        f.finish()
    # what reached the disk before the failure is readable, by libsndfile too (a FLAC
    # STREAMINFO that counted the frame that failed made it seek past the end and give up)
    kept = read_sf(f.path)
    # Ogg Vorbis: libsndfile's open Ogg page (up to 0.6 s of this signal) never reached the disk
    assert len(kept) >= (50 * FRAME if cls is not OggVorbisAudioFile else 60 * FRAME - round(0.6 * RATE)), len(kept)
    if cls in (WaveAudioFile, FLACAudioFile):
        assert np.array_equal(kept, pcm[: len(kept)])


def test_recording_error_messages() -> None:
    assert str(RecordingError("the output directory is not writable")) == "the output directory is not writable"
    err = RecordingError(errno.ENOSPC, "No space left on device", "/rec/a.wav")
    assert str(err) == "recording to '/rec/a.wav' failed: [Errno 28] No space left on device"
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC


def test_unwritable_location_raises_recording_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    for cls in dict.fromkeys(FORMATS.values()):  # every format, Matroska, M4A and Vorbis too
        target = blocker / f"x{cls.extension}"
        with pytest.raises(RecordingError) as info:
            cls(target)
        assert info.value.errno == errno.ENOTDIR and info.value.filename == str(target)
    if os.geteuid() != 0:  # root ignores directory permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(RecordingError) as info:
            WaveAudioFile(locked / "x.wav")
        assert info.value.errno == errno.EACCES


def test_write_after_close_and_bad_pcm(tmp_path: Path) -> None:
    f = WaveAudioFile(tmp_path / "c.wav")
    with pytest.raises(ValueError):
        f.write(AudioFrame(None, 7, 0, 0, b"\x00" * 3, FrameKind.decoded, 0, 0.0))
    f.close()
    with pytest.raises(ValueError):
        f.write(frames_of(signal_(FRAME), 0)[0])
    f.sync()  # a no-op once closed


# ---- convert and names ------------------------------------------------------------------------


async def test_convert_renames_without_clobbering(tmp_path: Path) -> None:
    (tmp_path / "alice.wav").write_bytes(b"someone else's")
    f = WaveAudioFile(tmp_path / "tmp-1.wav")
    f.write(frames_of(signal_(FRAME), 0)[0])
    path = await f.convert("alice")
    assert path == tmp_path / "alice (1).wav" and f.path == path and f.converted
    assert (tmp_path / "alice.wav").read_bytes() == b"someone else's"
    assert not (tmp_path / "tmp-1.wav").exists()
    assert len(read_sf(path)) == FRAME
    g = FLACAudioFile(tmp_path / "x.flac")
    assert await g.convert() == tmp_path / "x.flac"
    h = WaveAudioFile(tmp_path / "y.wav")
    assert (await h.convert("../../evil")).parent == tmp_path


HOSTILE = [
    "../../etc/passwd",
    "CON",
    "con.txt",
    "a/b\\c",
    "😀🎙️👨‍👩‍👧",
    "x" * 300,
    "é" * 200,
    "\x00",
    "",
    "..",
    " trailing. ",
    "abc\u202egnp.exe",
    "LPT1",
    "nul.tar.gz",
    "COM¹",
    'a:b*c?d"e<f>g|h',
    "\n\r\t",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_stay_inside_the_directory(tmp_path: Path, name: str) -> None:
    template = "{start:%Y%m%d-%H%M%S}-{display_name}-{user_id}"
    rendered = render_filename(template, user_id=123, display_name=name, start=datetime(2026, 5, 1), ext="wav")
    for candidate in (rendered, sanitize_filename(name)):
        assert "/" not in candidate and "\\" not in candidate and "\x00" not in candidate
        assert len(candidate.encode("utf-8")) <= 255
        assert candidate.split(".")[0].upper() not in {"CON", "NUL", "LPT1", "COM¹", "PRN", "AUX"}
        assert candidate == candidate.strip(" .") and candidate not in ("", ".", "..")
        path = unique_path(tmp_path, candidate)
        assert path.resolve().parent == tmp_path.resolve()
        path.write_bytes(b"")  # the file system accepts it
    assert rendered.endswith(".wav") and rendered.startswith("20260501-000000-")
    whole = render_filename("{user_name}", user_id=1, user_name=name, start=datetime(2026, 5, 1), ext=".flac")
    assert whole.endswith(".flac") and len(whole.encode()) <= 255


@settings(max_examples=120, deadline=None)
@given(st.text(min_size=0, max_size=300))
def test_sanitize_any_text(name: str) -> None:
    clean = sanitize_filename(name)
    assert clean and len(clean.encode("utf-8")) <= 255
    assert not any(c in clean for c in '/\\:*?"<>|\x00')
    assert clean not in (".", "..") and not clean.startswith(".") and not clean.endswith((".", " "))
    assert sanitize_filename(clean) == clean  # idempotent


def test_render_filename_fields_and_errors() -> None:
    start = datetime(2026, 11, 5, 20, 1, 2)
    name = render_filename(
        "{start:%Y-%m-%d %H:%M:%S} {user_name} ({display_name}) {ssrc} {guild_id}.{ext}",
        user_id=1,
        user_name="bob",
        display_name="Bob 🎧",
        start=start,
        ext="mp3",
        ssrc=42,
        guild_id=7,
    )
    assert name == "2026-11-05 20_01_02 bob (Bob 🎧) 42 7.mp3"
    assert render_filename("{user_name}-{user_id}", user_id=None, start=start, ext="wav") == "unknown-unknown.wav"
    with pytest.raises(ValueError, match="unknown field"):
        render_filename("{nope}", user_id=1, start=start, ext="wav")
    with pytest.raises(ValueError):
        render_filename("{user_id.__class__}", user_id=1, start=start, ext="wav")
    with pytest.raises(ValueError):
        render_filename("{user_id}", user_id=1, start=start, ext="../x")


def test_unique_path_counts_up(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "a (1).wav").write_bytes(b"")
    assert unique_path(tmp_path, "a.wav") == tmp_path / "a (2).wav"
    long = "z" * 255
    (tmp_path / long).write_bytes(b"")
    other = unique_path(tmp_path, long)
    assert len(other.name.encode()) <= 255 and other.name.endswith(" (1)")


def test_formats_table() -> None:
    assert FORMATS["wav"] is WaveAudioFile and FORMATS["opus"] is OggOpusAudioFile
    assert {cls.extension for cls in ALL_CLASSES} == {".wav", ".flac", ".mp3", ".opus"}
    with pytest.raises(ValueError):
        MP3AudioFile("/nonexistent/never.mp3", bitrate=100000)


def test_close_is_idempotent_and_context_manager(tmp_path: Path) -> None:
    with FLACAudioFile(tmp_path / "cm.flac") as f:
        f.write(frames_of(signal_(FRAME), 0)[0])
    assert f.closed
    f.close()
    f.cleanup()
    assert len(read_sf(f.path)) == FRAME


def test_convert_runs_off_the_event_loop(tmp_path: Path) -> None:
    # A real close takes ~2 ms, too short to tell a blocked loop from a scheduling hiccup on
    # a shared host: the blocking half is made slow here (it sleeps, then closes for real).
    slow = 0.4

    class SlowClose(MP3AudioFile):
        def close(self) -> None:
            time.sleep(slow)
            super().close()

    f = SlowClose(tmp_path / "loop.mp3")
    for frame in frames_of(signal_(RATE), 0):
        f.write(frame)

    async def main() -> tuple[Path, float, list[float]]:
        start = time.monotonic()
        ticks = [start]
        task = asyncio.ensure_future(f.convert("done"))
        while not task.done():
            await asyncio.sleep(0.001)
            ticks.append(time.monotonic())
        return await task, ticks[-1] - start, ticks

    path, took, ticks = asyncio.run(main())
    assert path.name == "done.mp3" and path.exists() and f.converted
    assert took >= slow, f"the conversion took {took * 1000:.0f} ms: it never ran the slow close"
    # The loop kept ticking at a steady rate while the conversion ran.
    gap = max(b - a for a, b in itertools.pairwise(ticks))
    assert gap < took / 4, f"the loop stalled {gap * 1000:.0f} ms during a {took * 1000:.0f} ms conversion"
