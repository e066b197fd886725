"""Where a recording goes besides one file a track: numbered parts, and memory.

The same frames (two members' real speech, decoded, not aligned to any part boundary) go into
a plain recording on disk and into one with parts, or one in memory; the parts, laid at their
place on the timeline, must give back the plain recording sample for sample, and the files in
memory must be byte for byte the files on disk.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile

import discord
from discord.ext import listening
from discord.ext.listening.demo import load_clip

SR = 48000
OFFSET = 480  # frames start 10 ms off the 20 ms grid: some straddle every boundary


def _frames(user_id: int, clip: str, start: int, count: int) -> list[listening.AudioFrame]:
    pcm = load_clip(clip)
    user = discord.Object(id=user_id)
    return [
        listening.AudioFrame(
            user, user_id, k, 960 * k, pcm[k * 3840 : (k + 1) * 3840], listening.FrameKind.decoded, start + 960 * k, 0.0
        )
        for k in range(count)
    ]


def _record(out: Path, file_type: type, frames: list[listening.AudioFrame], end: int, **options) -> list[Path]:
    sink = listening.AudioFileSink(file_type, out, mixed=True, filename="{user_id}", **options)
    for i, frame in enumerate(sorted(frames, key=lambda f: f.position)):
        sink.on_audio(frame)
        if i % 10 == 9:
            sink.on_tick(frame.position)
    sink.on_stop(end)
    sink.cleanup()
    return sorted(p for f in [*sink.output_files.values(), sink.mixed_file] for p in getattr(f, "paths", [f.path]))


def _read(path: Path) -> np.ndarray:
    data, rate = soundfile.read(path, dtype="int16", always_2d=True)
    assert rate == SR and data.shape[1] == 2
    return data


def _scenario() -> tuple[list[listening.AudioFrame], int]:
    alice = _frames(1001, "alice", OFFSET, 125)  # 0.01 .. 2.51 s
    bob = _frames(1002, "bob", 60000, 50)  # 1.25 .. 2.25 s
    return alice + bob, OFFSET + 125 * 960 + 4800  # listening stops 0.1 s after alice


@pytest.mark.parametrize("file_type", [listening.WaveAudioFile, listening.FLACAudioFile])
def test_parts_of_a_second_give_back_the_recording_sample_for_sample(tmp_path: Path, file_type: type) -> None:
    frames, end = _scenario()
    whole = _record(tmp_path / "whole", file_type, frames, end)
    parts = _record(tmp_path / "parts", file_type, frames, end, max_file_seconds=1.0)
    ext = file_type.extension
    # part n covers [n - 1, n) seconds of the timeline; bob has no part before he spoke
    assert [p.name for p in parts] == sorted(
        [f"1001-00{n}{ext}" for n in (1, 2, 3)]
        + [f"1002-00{n}{ext}" for n in (2, 3)]
        + [f"mixed-00{n}{ext}" for n in (1, 2, 3)]
    )
    for track in ("1001", "1002", "mixed"):
        reference = _read(next(p for p in whole if p.name.startswith(track)))
        assert len(reference) == end
        timeline = np.zeros_like(reference)
        for p in (p for p in parts if p.name.startswith(track)):
            n = int(p.stem.rsplit("-", 1)[1])
            data = _read(p)  # each part is a file of its own, readable alone
            if n < 3:
                assert len(data) == SR, (p.name, len(data))  # whole seconds up to the last part
            timeline[(n - 1) * SR : (n - 1) * SR + len(data)] = data
        assert np.array_equal(timeline, reference), track
        assert reference.any()


def test_parts_by_size_follow_each_other_and_stay_near_the_size(tmp_path: Path) -> None:
    frames, end = _scenario()
    alice = [f for f in frames if f.user_id == 1001]
    limit = 128 * 1024  # ~0.68 s of 48 kHz stereo s16
    whole = _record(tmp_path / "whole", listening.WaveAudioFile, alice, end)
    parts = _record(tmp_path / "parts", listening.WaveAudioFile, alice, end, max_file_bytes=limit, sync_interval=0.1)
    mine = [p for p in parts if p.name.startswith("1001")]
    assert len(mine) >= 3
    joined = np.concatenate([_read(p) for p in mine])
    assert np.array_equal(joined, _read(next(p for p in whole if p.name.startswith("1001"))))
    for p in mine[:-1]:
        # ended at the first sync past the limit: at most ~10 frames (the test's tick) beyond it
        assert limit <= p.stat().st_size <= limit + 11 * 3840, (p.name, p.stat().st_size)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"max_file_seconds": 0.5}, "max_seconds must be a number of seconds >= 1"),
        ({"max_file_bytes": 1000}, "max_bytes must be an int >= 65536"),
        ({"max_file_seconds": "60"}, "max_seconds must be a number of seconds >= 1"),
    ],
)
def test_bad_part_limits_say_what_is_wrong(tmp_path: Path, options: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        listening.AudioFileSink(listening.WaveAudioFile, tmp_path, **options)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="give max_seconds or max_bytes"):
        listening.RotatingAudioFile(listening.WaveAudioFile, tmp_path / "x.wav")


# -- in memory ---------------------------------------------------------------------------------


@pytest.mark.parametrize("file_type", [listening.WaveAudioFile, listening.FLACAudioFile, listening.MP3AudioFile])
def test_a_recording_in_memory_is_the_file_it_would_be_on_disk(tmp_path: Path, file_type: type) -> None:
    frames, end = _scenario()
    on_disk = _record(tmp_path / "disk", file_type, frames, end)
    sink = listening.AudioFileSink(file_type, None, mixed=True, filename="{user_id}")
    for frame in sorted(frames, key=lambda f: f.position):
        sink.on_audio(frame)
    sink.on_stop(end)
    sink.cleanup()
    assert list(tmp_path.iterdir()) == [tmp_path / "disk"]  # nothing written anywhere else
    files = {f.path.name: f for f in [*sink.output_files.values(), sink.mixed_file]}
    assert sorted(files) == sorted(p.name for p in on_disk)
    for p in on_disk:
        memory = files[p.name].fileobj
        assert memory is not None and not memory.closed  # left open for the caller
        assert memory.getvalue() == p.read_bytes(), p.name


def test_an_audio_file_takes_a_file_object_and_says_what_it_cannot_do(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    f = listening.WaveAudioFile(buffer)
    frames, _ = _scenario()
    for frame in frames[:10]:
        f.write(frame)
    assert f.finish() == Path("<BytesIO>") and not buffer.closed
    data, rate = soundfile.read(io.BytesIO(buffer.getvalue()), dtype="int16")
    assert rate == SR and len(data) == OFFSET + 10 * 960
    g = listening.WaveAudioFile(io.BytesIO())
    with pytest.raises(ValueError, match="no file name to change"):
        g.finish("renamed")
    with pytest.raises(TypeError, match="a seekable binary file object"):
        listening.WaveAudioFile(12)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"numbered parts .* need an output_dir"):
        listening.AudioFileSink(listening.WaveAudioFile, None, max_file_seconds=60)


# -- Matroska audio --------------------------------------------------------------------------


def _decode(data: bytes) -> np.ndarray:
    import av

    with av.open(io.BytesIO(data)) as container:
        chunks = [
            f.to_ndarray().T if f.format.is_planar else f.to_ndarray().reshape(-1, 2) for f in container.decode(audio=0)
        ]
    out = np.concatenate(chunks) if chunks else np.zeros((0, 2))
    return out.astype(np.float64) * (32768.0 if out.dtype.kind == "f" else 1.0)


def _beside_wav(tmp_path: Path, file_type: type, frames: list, end: int, **options) -> list[tuple[np.ndarray, Path]]:
    """The scenario recorded as WAV and as ``file_type``: each track's WAV samples and its other file."""
    wav = _record(tmp_path / "wav", listening.WaveAudioFile, frames, end)
    other = _record(tmp_path / file_type.extension[1:], file_type, frames, end, **options)
    return [(_read(w).astype(np.float64), p) for w, p in zip(wav, other, strict=True)]


def _snr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10((ref**2).sum() / max(((got - ref) ** 2).sum(), 1e-9)))


def _snapshot_after(file_type: type, path: Path, frames: list[listening.AudioFrame], count: int) -> bytes:
    """The bytes on disk after alice's first ``count`` frames and a sync, as a killed process leaves them."""
    f = file_type(path, sync_interval=0.1)
    for frame in [fr for fr in frames if fr.user_id == 1001][:count]:
        f.write(frame)
    f.sync()
    snapshot = path.read_bytes()
    f.close()
    return snapshot


def _in_memory(file_type: type, frames: list[listening.AudioFrame]) -> bytes:
    """Alice's first ten frames recorded into a BytesIO, which is left open."""
    buffer = io.BytesIO()
    f = file_type(buffer)
    for frame in [fr for fr in frames if fr.user_id == 1001][:10]:
        f.write(frame)
    f.close()
    assert not buffer.closed
    return buffer.getvalue()


def test_matroska_reads_back_with_the_right_length_and_the_audio_and_survives_a_kill(tmp_path: Path) -> None:
    frames, end = _scenario()
    tracks = _beside_wav(tmp_path, listening.MatroskaAudioFile, frames, end)
    assert [p.suffix for _, p in tracks] == [".mka"] * 3 and listening.FORMATS["mka"] is listening.MatroskaAudioFile
    for ref, path in tracks:
        got = _decode(path.read_bytes())
        assert len(got) == len(ref) == end, path.name  # pre-skip and end padding are in the container
        assert _snr(ref, got) > 15, path.name  # Opus at 96 kbit/s, sample-aligned: no shift
    # a killed process: the file as it stands after a second of audio plays that second,
    # all but the open cluster (one sync interval) and what the encoder holds (two frames)
    snapshot = _snapshot_after(listening.MatroskaAudioFile, tmp_path / "killed.mka", frames, 50)
    assert len(_decode(snapshot)) >= OFFSET + 50 * 960 - round(0.1 * SR) - 2 * 960
    with pytest.raises(ValueError, match=r"bitrate must be an int within 6000\.\.510000"):
        listening.MatroskaAudioFile(tmp_path / "x.mka", bitrate=1000)


# -- Ogg Vorbis --------------------------------------------------------------------------------


def test_ogg_vorbis_reads_back_aligned_with_the_right_length_and_its_tags_and_survives_a_kill(tmp_path: Path) -> None:
    frames, end = _scenario()
    tracks = _beside_wav(tmp_path, listening.OggVorbisAudioFile, frames, end, tags={"title": "standup"})
    assert [p.suffix for _, p in tracks] == [".ogg"] * 3 and listening.FORMATS["vorbis"] is listening.OggVorbisAudioFile
    for ref, path in tracks:
        for got in (_read(path).astype(np.float64), _decode(path.read_bytes())):  # libsndfile, then FFmpeg
            assert len(got) == len(ref) == end, path.name  # the last page's granule position trims the padding
            # 20-26 dB here; shifted by one sample, bob's track falls to 14.7 dB
            assert _snr(ref, got) > 18, path.name
        with soundfile.SoundFile(path) as f:
            assert f.title == "standup"
    # a killed process: what is on disk plays, all but the Ogg page being filled (about 4 kB)
    kept = len(_decode(_snapshot_after(listening.OggVorbisAudioFile, tmp_path / "killed.ogg", frames, 100)))
    assert OFFSET + 100 * 960 - SR <= kept < OFFSET + 100 * 960, kept
    assert len(_read(io.BytesIO(_in_memory(listening.OggVorbisAudioFile, frames)))) == OFFSET + 10 * 960
    # numbered parts: each a file of its own, exactly its second of the timeline
    parts = _record(tmp_path / "parts", listening.OggVorbisAudioFile, frames, end, max_file_seconds=1.0)
    lengths = {p.name: len(_read(p)) for p in parts}
    assert lengths == {
        f"{t}-00{n}.ogg": SR if n < 3 else end - 2 * SR for t in ("1001", "mixed") for n in (1, 2, 3)
    } | {f"1002-00{n}.ogg": SR if n < 3 else end - 2 * SR for n in (2, 3)}
    with pytest.raises(ValueError, match=r"quality must be a number within 0\.0\.\.1\.0"):
        listening.OggVorbisAudioFile(tmp_path / "x.ogg", quality=2)


# -- M4A ----------------------------------------------------------------------------------------


def test_m4a_starts_on_the_timeline_ends_within_an_aac_frame_and_survives_a_kill(tmp_path: Path) -> None:
    frames, end = _scenario()
    tracks = _beside_wav(tmp_path, listening.M4AAudioFile, frames, end, tags={"title": "standup"})
    assert [p.suffix for _, p in tracks] == [".m4a"] * 3 and listening.FORMATS["m4a"] is listening.M4AAudioFile
    for ref, path in tracks:
        got = _decode(path.read_bytes())
        # the priming is in the edit list; the last frame's padding (< 1024 samples) is not marked
        assert end <= len(got) < end + 1024, (path.name, len(got))
        assert _snr(ref, got[:end]) > 25, path.name  # 31-32 dB here; shifted by one sample, 15-16 dB
    import av

    with av.open(str(tracks[0][1])) as container:
        assert container.metadata["title"] == "standup"
    # a killed process: all but the open fragment (one sync interval) and the encoder's frames
    kept = len(_decode(_snapshot_after(listening.M4AAudioFile, tmp_path / "killed.m4a", frames, 100)))
    assert OFFSET + 100 * 960 - round(0.1 * SR) - 2 * 1024 <= kept < OFFSET + 100 * 960, kept
    assert 0 <= len(_decode(_in_memory(listening.M4AAudioFile, frames))) - (OFFSET + 10 * 960) < 1024
    with pytest.raises(ValueError, match=r"bitrate must be an int within 32000\.\.512000"):
        listening.M4AAudioFile(tmp_path / "x.m4a", bitrate=8000)
