"""The recording issue, end to end.

The local voice server speaks real DAVE + transport-encrypted Opus over UDP on 127.0.0.1 to a
real discord.py voice connection; ``VoiceClient.listen`` feeds ``AudioFileSink``\\ s; the files
are read back by an independent reader (libsndfile through ``soundfile``: its own FLAC,
mpg123 and libopus decoders, not the FFmpeg/LAME/hand-made Ogg that wrote them) and compared
with what every simulated member sent, using the bundled espeak-ng speech.

Where a spurt was spoken: the emulator records each spurt's send time on the senders' clock
(``SpurtRecord.start``); ``server._to_loop_time`` turns it into event-loop time, which is
``time.monotonic()``, the clock of the recording's t = 0 (``vc._last_session.origin``). A
receiver hears it a little later: the network (here the emulator's scheduling) plus the
sender's Opus lookahead (312 samples: a packet's decoded audio starts that much before its
own samples). So each spurt is checked two ways (:func:`check_spurts`): the packets it sent, decoded
as a receiver that lost nothing decodes them, must be in every lossless file bit for bit,
starting within one 20 ms frame after the first packet was sent; and the speech itself,
found by cross-correlation, must lie the lookahead after that.

The emulator is a Python program sharing two cores with the receiver (and with other test
runs), so its packets sometimes leave late: :class:`WireTap` measures when each spurt's first
packet really left, and that lateness, which a real client would not add, is added to the
one-frame budget (it is reported: a few ms). Very rarely a packet is held up ~70 ms; the
receiver then re-places the rest of that spurt by arrival (a known limit, see
``test_one_late_packet_does_not_move_the_rest_of_its_spurt``); such a spurt must still be in
the files bit for bit where the pipeline put it, and is reported as split.

Run with ``-s`` to see the measured numbers.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import soundfile as sf

from discord.ext import listening
from discord.ext.listening.files import RecordingError
from discord.ext.listening.frames import AudioFrame, FrameKind
from discord.ext.listening.opus import SILENCE_FRAME, OpusDecoder, OpusEncoder
from discord.ext.listening.testing import SpurtRecord, VoiceServerEmulator, speechlike
from helpers import WireTap, settle
from recording_child import CRASH_PLAN, PreEncoded, clip

pytestmark = pytest.mark.timeout(120)

RATE = 48000
FRAME = 960
LOOKAHEAD = 312  # libopus' encoder delay at 48 kHz
PCM_FORMATS = [listening.WaveAudioFile, listening.FLACAudioFile, listening.MP3AudioFile]
ALL_FORMATS = [*PCM_FORMATS, listening.OggOpusAudioFile]
#: Measured numbers, printed at the end of the session (``pytest -s``) for the report.
MEASURED: dict[str, Any] = {}


@pytest.fixture(scope="module", autouse=True)
def _print_measurements() -> Any:
    yield
    if MEASURED:
        print("\nrecording measurements:\n" + json.dumps(MEASURED, indent=1, default=str))


# ---- helpers -----------------------------------------------------------------------------


def pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, "<i2").reshape(-1, 2)


def read(path: Path) -> np.ndarray:
    """Decode a file with libsndfile, checking its stream parameters.

    Lossy formats are decoded to float and rounded here: libsndfile's own float to 16-bit
    conversion wraps a full-scale peak around to the other end of the range.
    """
    # One handle for the header and the data: a file still being written grows between two
    # opens (its header is patched every sync), which is not a disagreement of the file's.
    with sf.SoundFile(str(path)) as f:
        assert (f.samplerate, f.channels) == (RATE, 2), f"{path.name}: {f.samplerate} Hz, {f.channels} ch"
        if f.format in ("WAV", "WAVEX", "RF64", "FLAC"):
            data = f.read(dtype="int16", always_2d=True)
        else:
            floats = f.read(dtype="float64", always_2d=True)
            data = np.clip(np.round(floats * 32768), -32768, 32767).astype(np.int16)
        assert len(data) == f.frames, path.name
    return data


def locate(track: np.ndarray, ref: np.ndarray, expected: int, search: int = 4800) -> tuple[int, float]:
    """Where ``ref`` lies in ``track`` near ``expected``: (offset from ``expected``, Pearson r)."""
    lo = max(0, expected - search)
    hi = min(len(track), expected + len(ref) + search)
    window = track[lo:hi].astype(np.float64).mean(axis=1)
    r = ref.astype(np.float64).mean(axis=1)
    if len(window) < len(r):
        return 10**9, 0.0
    size = 1 << (len(window) + len(r)).bit_length()
    xc = np.fft.irfft(np.fft.rfft(window, size) * np.conj(np.fft.rfft(r, size)), size)[: len(window) - len(r) + 1]
    # normalised by the energy under the reference at each lag: a louder stretch nearby must
    # not win over the true (quieter) match
    energy = np.concatenate([[0.0], np.cumsum(window**2)])
    under = energy[len(r) :] - energy[: len(window) - len(r) + 1]
    k = int(np.argmax(xc / np.sqrt(np.maximum(under, 1e-9))))
    seg = window[k : k + len(r)]
    x, y = r - r.mean(), seg - seg.mean()
    denom = float(np.sqrt(np.dot(x, x) * np.dot(y, y)))
    return lo + k - expected, (float(np.dot(x, y)) / denom if denom else 0.0)


def find_exact(track: np.ndarray, piece: np.ndarray, lo: int, hi: int) -> int | None:
    """Where ``piece`` is in ``track``, bit for bit, starting between ``lo`` and ``hi``."""
    window = track[max(0, lo) : hi + len(piece)]
    if len(window) < len(piece):
        return None
    starts = np.flatnonzero((window[: len(window) - len(piece) + 1] == piece[0]).all(axis=1))
    for k in starts:
        if np.array_equal(window[k : k + len(piece)], piece):
            return max(0, lo) + int(k)
    return None


def mix(*tracks: np.ndarray) -> np.ndarray:
    total = np.zeros_like(tracks[0], dtype=np.int32)
    for t in tracks:
        total += t
    return np.clip(total, -32768, 32767).astype(np.int16)


def snr_db(got: np.ndarray, ref: np.ndarray) -> float:
    noise = got.astype(float) - ref.astype(float)
    return float(10 * np.log10(np.sum(ref.astype(float) ** 2) / max(np.sum(noise**2), 1e-9)))


def at(origin: float, t: float) -> int:
    """Timeline sample of monotonic time ``t``."""
    return round((t - origin) * RATE)


class Probe(listening.AudioSink):
    """Notes each frame the sinks got: ``(user id, end position, arrival, now, sequence, position)``."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, int, float, float, int, int]] = []

    def on_audio(self, frame: AudioFrame) -> None:
        self.rows.append(
            (
                frame.user_id,
                frame.position + frame.samples,
                frame.arrival,
                time.monotonic(),
                frame.sequence,
                frame.position,
            )
        )


def warm_up(pool: Any, guild_id: int) -> None:
    """Start the decode worker of ``guild_id`` and wait for one decoded frame: a cold
    forkserver takes about a second, which would hold back the recording's first frames."""
    from discord.ext.listening.opus import SILENCE_FRAME
    from discord.ext.listening.pool import DecodeItem

    ready = threading.Event()
    stream = pool.open_stream(guild_id, lambda frames: ready.set())
    try:
        stream.submit([DecodeItem(1, 0, 0, SILENCE_FRAME, 0, None)])
        assert ready.wait(20), "the decode worker did not start"
    finally:
        stream.close()


async def listen(vc: listening.VoiceClient, sink: listening.AudioSink, pool: Any, **kw: Any) -> asyncio.Future:
    """Start listening; the returned future gets ``(sink, error)`` from ``after``."""
    done: asyncio.Future = asyncio.get_running_loop().create_future()

    async def after(s: listening.AudioSink, error: BaseException | None) -> None:
        if not done.done():
            done.set_result((s, error))

    vc.listen(sink, pool, after=after, **kw)
    return done


async def talk(member: Any, plan: list[tuple[float, bytes]]) -> list[SpurtRecord]:
    """Speak each ``(pause before, audio)`` in turn, in real time, encoded in advance."""
    encoder = member.sender._encoder
    if not isinstance(encoder, PreEncoded):
        encoder = PreEncoded(member, [audio for _, audio in plan])
    out = []
    for pause, audio in plan:
        await asyncio.sleep(pause)  # the scenario: the pause before this spurt
        out.append(await member.speak(audio))
    assert encoder.misses == 0 and not encoder.queue
    return out


def decoded(member: Any) -> dict[int, np.ndarray]:
    """What a receiver that lost nothing decodes from each of ``member``'s spurts (by the
    spurt's first sequence number): its packets, silence frames included, through one
    decoder in order, as the pipeline does. The encoder's lookahead is in it: a spurt's
    decoded audio starts where its first packet was sent."""
    dec = OpusDecoder()
    return {s.first_sequence: pcm(b"".join(dec.decode(f.opus) for f in s.frames)) for s in member.sent.spurts}


#: A spurt one of whose packets reached the receiver this late (emulator and receiver share a
#: busy process) may be split by the receiver (see ``check_spurts``); the receiver's tolerance
#: before it re-places a stream by arrival time is 60 ms.
STALL = 0.045


def check_spurts(
    server: VoiceServerEmulator,
    origin: float,
    member: Any,
    spurts: list[SpurtRecord],
    probe: Probe,
    tracks: dict[str, np.ndarray],
    tap: WireTap | None = None,
    *,
    lossy: dict[str, int] | None = None,
    slack: int = 0,
) -> list[dict[str, Any]]:
    """Check each spurt against what the member sent, in every file of ``tracks``.

    The pipeline's own placement (the positions of the frames the sinks got) must put the
    spurt's first frame where its first packet was sent, give or take one 20 ms frame (plus
    how late that packet measurably was: sent late by the emulator, or stamped late by a
    starved receiver, beyond the normal few ms); the frames must be contiguous unless a
    packet of the spurt was held up by more than ``STALL`` (then the receiver may re-place
    the rest by arrival: reported as ``split``); every lossless file must hold each frame's
    decoded packet bit for bit at its position; every lossy file (``lossy``: name -> allowed
    misplacement in samples) the spurt at the same place. The speech itself (``speech_offset``,
    by cross-correlation with what was said) lies the encoder's lookahead later.
    """
    mine = {row[4]: row for row in probe.rows if row[0] == member.user_id}
    refs = decoded(member)
    out = []
    previous_end = None
    for s in spurts:
        ref = refs[s.first_sequence]
        expected = at(origin, server._to_loop_time(s.start))
        missing = [f.sequence for f in s.frames if f.sequence not in mine]
        assert not missing, f"{member.name}: frames {missing} never reached the sinks"
        pos = [mine[f.sequence][5] for f in s.frames]
        stall = max(mine[f.sequence][2] - server._to_loop_time(f.send_time) for f in s.frames)
        # how late the first packet was stamped by the receiver's socket thread: sent late
        # by the emulator, or read late by a starved receiver (both share a busy machine)
        arrived = max(0, round((mine[s.first_sequence][2] - server._to_loop_time(s.start)) * RATE))
        emulator = tap.lateness(server, member, s) if tap else 0
        late = max(emulator, arrived - FRAME // 4)  # a few ms of delivery are normal
        if previous_end is not None:  # a spurt never starts before the previous one ended,
            late = max(late, previous_end - expected)  # which a split may have pushed back
        previous_end = pos[-1] + FRAME
        split = [b - a - FRAME for a, b in itertools.pairwise(pos) if b - a != FRAME]
        row = {
            "offset": pos[0] - expected,
            "late": late,
            "emulator_late": emulator,
            "arrival_late": arrived,
            "stall_ms": round(stall * 1000, 1),
            "split": split,
        }
        assert -48 - slack <= row["offset"] <= FRAME + late + slack, f"{member.name}: spurt misplaced {row}"
        assert not split or stall > STALL, f"{member.name}: spurt split without a stall {row}"
        for name, track in tracks.items():
            if lossy and name in lossy:
                if not split:
                    lag, r = locate(track, ref, pos[0], search=FRAME)
                    assert abs(lag) <= lossy[name] and r > 0.9, (name, member.name, lag, r)
                continue
            for i, p in enumerate(pos):
                assert np.array_equal(track[p : p + FRAME], ref[i * FRAME : (i + 1) * FRAME]), (name, member.name, i)
        first = tracks[next(iter(tracks))]
        speech_offset, speech_r = locate(first, pcm(s.pcm), expected)
        row.update(speech_offset=speech_offset, speech_r=round(speech_r, 3), start=pos[0], end=pos[-1] + FRAME)
        if not split and speech_r > 0.9:
            assert abs(speech_offset - LOOKAHEAD - row["offset"]) <= 48 + slack, f"{member.name}: {row}"
        out.append(row)
    return out


# ---- one timeline: every PCM format, both clocks, wraps, pauses ---------------------------


async def test_every_file_on_one_timeline_with_real_speech(pool: Any, tmp_path: Path) -> None:
    """Four members (two webrtc clocks, two discord.py clocks; two crossing the sequence and
    timestamp wraps) speak real speech with 0.1 s, 1 s and 2 s pauses over DAVE with a little
    jitter; WAV, FLAC and MP3 files (per user and mixed) are written at once through one
    FanOutSink. Checks every file's rate, channels and length, every spurt's offset in every
    file, silence in the pauses, the mixed track against the sum, and reading mid-way."""
    # no RTCP: one sender report queued behind a busy moment would move later spurts of the
    # webrtc members by up to 60 ms (test_a_delayed_sender_report_does_not_move_later_spurts)
    async with VoiceServerEmulator(seed=21, jitter=0.003, rtcp_interval=None) as server:
        members = {
            "alice": await server.add_member(1001, "alice", clock="webrtc", sequence=65520, timestamp=2**32 - 960 * 20),
            "bob": await server.add_member(1002, "bob", clock="discordpy", sequence=65500, timestamp=2**32 - 960 * 60),
            "carol": await server.add_member(1003, "carol", clock="webrtc"),
            "dave": await server.add_member(1004, "dave", clock="discordpy"),
        }
        vc = await server.connect(cls=listening.VoiceClient)
        tap = WireTap(server)
        # the mix waits up to a second for late frames here: this test wants the exact sum even
        # when the shared machine stalls one member (the crash test checks the default's lag)
        sinks = {
            cls: listening.AudioFileSink(
                cls, tmp_path / cls.__name__, mixed=True, filename="{user_name}", mix_delay=1.0
            )
            for cls in PCM_FORMATS
        }
        await asyncio.to_thread(warm_up, pool, vc.guild.id)
        probe = Probe()
        done = await listen(vc, listening.FanOutSink(*sinks.values(), probe), pool)
        origin = vc._last_session.origin
        plans = {  # (pause before, audio): every pause length for both clock behaviours
            "alice": [(0.2, clip("alice", 0.0, 0.7)), (0.1, clip("alice", 2.0, 0.6)), (1.0, clip("alice", 4.0, 0.7))],
            "bob": [(0.5, clip("bob", 1.3, 0.6)), (1.0, clip("bob", 2.0, 0.7)), (2.0, clip("bob", 4.5, 0.6))],
            "carol": [(0.9, clip("carol", 1.0, 0.7)), (2.0, clip("carol", 3.0, 0.6)), (0.1, clip("carol", 5.0, 0.7))],
            "dave": [(1.2, clip("dave", 1.7, 0.6)), (0.1, clip("dave", 3.0, 0.7)), (2.0, clip("dave", 4.0, 0.6))],
        }
        talking = asyncio.gather(*(talk(members[n], p) for n, p in plans.items()))
        await asyncio.sleep(3.6)  # the scenario: the files are read 3.6 s into the recording

        def read_all() -> dict[str, np.ndarray]:
            return {f"{cls.__name__}/{p.name}": read(p) for cls, s in sinks.items() for p in s.output_dir.iterdir()}

        mid_time = time.monotonic()
        mid_at = at(origin, mid_time)
        mid = await asyncio.to_thread(read_all)  # mid-recording, off the loop: the members go on
        spurts = dict(zip(plans, await talking))
        await server.drain()
        await settle(server, vc, *((members[n], spurts[n]) for n in plans))
        await asyncio.sleep(0.2)  # the scenario: the recording runs on after the last word (checked to its end)
        vc.stop_listening()
        _, error = await asyncio.wait_for(done, 20)
        stopped_at = at(origin, time.monotonic())
    assert error is None
    assert vc.listen_stats.total.dropped == {}

    # the wraps happened mid-recording
    alice_seqs = [f.sequence for f in members["alice"].sent.frames]
    assert alice_seqs[0] > 65000 and min(alice_seqs) < 100
    bob_ts = [f.timestamp for f in members["bob"].sent.frames]
    assert bob_ts[0] > 2**32 - 960 * 61 and min(bob_ts) < 960 * 100

    tracks: dict[str, dict[str, np.ndarray]] = {}
    for cls, sink in sinks.items():
        ext = cls.extension
        names = {p.name for p in sink.output_dir.iterdir()}
        assert names == {n + ext for n in [*plans, "mixed"]}
        tracks[cls.__name__] = {n: read(sink.output_dir / (n + ext)) for n in [*plans, "mixed"]}

    # every file of the recording: same length, ending when listening stopped
    lengths = {f"{fmt}/{n}": len(t) for fmt, ts in tracks.items() for n, t in ts.items()}
    assert len(set(lengths.values())) == 1, lengths
    length = next(iter(lengths.values()))
    last_audio = max(at(origin, server._to_loop_time(s[-1].end)) for s in spurts.values())
    assert last_audio < length <= stopped_at

    # every spurt where it was spoken, in every file, the same in all of them
    report: dict[str, Any] = {}
    wav = tracks["WaveAudioFile"]
    for name, records in spurts.items():
        member = members[name]
        per_file = {f"{fmt}/{name}": ts[name] for fmt, ts in tracks.items()}
        rows = check_spurts(server, origin, member, records, probe, per_file, tap, lossy={f"MP3AudioFile/{name}": 2})
        report[f"{name} ({member.sender.clock.value})"] = rows
        # a pause is silence of the paused length: nothing but zeros between the spurts
        track = wav[name]
        edges = [(r["start"], r["end"]) for r in rows]
        quiet = [(0, edges[0][0])] + [(e1, s2) for (_, e1), (s2, _) in itertools.pairwise(edges)]
        quiet.append((edges[-1][1], length))
        for lo, hi in quiet:
            assert hi > lo and not track[lo:hi].any(), f"{name}: sound in a pause {lo}..{hi}"
    MEASURED["spurt_offsets_samples"] = report
    offsets = [row["offset"] for rows in report.values() for row in rows]
    MEASURED["offset_spread_samples"] = max(offsets) - min(offsets)
    lateness = max(row["late"] for rows in report.values() for row in rows)
    assert max(offsets) - min(offsets) <= FRAME + lateness

    # the mixed track is the sum of the user tracks, clipped, sample for sample
    assert all(s._mixer.late_frames == 0 for s in sinks.values())
    for fmt in ("WaveAudioFile", "FLACAudioFile"):
        ts = tracks[fmt]
        assert np.array_equal(ts["mixed"], mix(*(ts[n] for n in plans))), fmt
    mixed_mp3 = tracks["MP3AudioFile"]["mixed"]
    lag, r = locate(mixed_mp3, wav["mixed"][RATE : 5 * RATE], RATE, search=500)
    assert lag == 0 and r > 0.95, (lag, r)
    MEASURED["mixed_mp3_vs_sum"] = {"lag": lag, "r": round(r, 4), "snr_db": round(snr_db(mixed_mp3, wav["mixed"]), 1)}

    # Mid-recording every file opened, and what it held is what the finished file holds.
    # It held every frame the sink had been given half a second (a sync) before, and the mix
    # up to ``mix_delay`` before the newest frame of the last tick; with the pipeline's own
    # delay (jitter buffer, decoding: ~0.1 s when the machine keeps up) that is less than
    # one second behind the clock.
    given = [row for row in probe.rows if row[3] <= mid_time - 0.55]
    pipeline = [row[3] - row[2] for row in probe.rows if row[3] <= mid_time]
    MEASURED["pipeline_arrival_to_sink_s"] = {
        "median": round(float(np.median(pipeline)), 3),
        "max": round(max(pipeline), 3),
    }
    MEASURED["mid_recording_short_of_now_ms"] = {}
    for key, early in mid.items():
        fmt, name = key.split("/")
        stem = name.rsplit(".", 1)[0]
        final = tracks[fmt][stem]
        MEASURED["mid_recording_short_of_now_ms"][key] = round((mid_at - len(early)) / RATE * 1000)
        if stem == "mixed":
            newest = max(row[1] for row in probe.rows if row[3] <= mid_time - 0.55)
            due = newest - round((1.0 + 0.25) * RATE) - FRAME  # mix_delay, and written every 0.25 s
        else:
            uid = members[stem].user_id
            due = max(row[1] for row in given if row[0] == uid)
            if fmt == "MP3AudioFile":
                due -= 7000  # LAME holds ~5500 samples (measured) plus a partial 1152 frame
            elif fmt == "FLACAudioFile":
                due -= 4608  # one FLAC block
        assert len(early) >= due, (key, len(early), due)
        n = len(early) - 4 * 1152  # an MP3 decoder's last frames depend on what follows
        if fmt == "MP3AudioFile":
            assert snr_db(early[:n], final[:n]) > 30, key
        else:
            assert np.array_equal(early, final[: len(early)]), key


# ---- Ogg Opus: the received packets, undecoded ----------------------------------------------


async def test_ogg_opus_passthrough_decodes_to_the_pcm_path(pool: Any, tmp_path: Path) -> None:
    """``listen(decode=False)``: Ogg Opus files store the packets as received. Decoded by
    libsndfile they give the audio of the PCM path (the same packets through libopus, here in
    a WAV file of the same recording, checked bit for bit against decoding what was sent),
    at the same places, for both clocks; every file ends on the same sample."""
    async with VoiceServerEmulator(seed=22) as server:
        members = {
            "alice": await server.add_member(1101, "alice", clock="webrtc"),
            "bob": await server.add_member(1102, "bob", clock="discordpy", sequence=65530),
        }
        vc = await server.connect(cls=listening.VoiceClient)
        tap = WireTap(server)
        ogg = listening.AudioFileSink(
            listening.OggOpusAudioFile, tmp_path / "ogg", mixed=True, filename="{user_name}", mix_delay=1.0
        )
        wav = listening.AudioFileSink(
            listening.WaveAudioFile, tmp_path / "wav", mixed=True, filename="{user_name}", mix_delay=1.0
        )
        probe = Probe()
        done = await listen(vc, listening.FanOutSink(ogg, wav, probe), None, decode=False)
        origin = vc._last_session.origin
        plans = {
            "alice": [(0.2, clip("alice", 0.5, 0.8)), (1.0, clip("alice", 2.5, 0.7))],
            "bob": [(0.6, clip("bob", 1.3, 0.7)), (0.1, clip("bob", 4.0, 0.8))],
        }
        spurts = dict(zip(plans, await asyncio.gather(*(talk(members[n], p) for n, p in plans.items()))))
        await server.drain()
        await settle(server, vc, *((members[n], spurts[n]) for n in plans))
        await asyncio.sleep(0.2)  # the scenario: the recording runs on after the last word (checked to its end)
        vc.stop_listening()
        _, error = await asyncio.wait_for(done, 20)
    assert error is None
    files = {f"{sink.file_type.__name__}/{p.name}": read(p) for sink in (ogg, wav) for p in sink.output_dir.iterdir()}
    assert sorted(files) == sorted(
        f"{d}/{n}{e}"
        for d, e in (("OggOpusAudioFile", ".opus"), ("WaveAudioFile", ".wav"))
        for n in ["alice", "bob", "mixed"]
    )
    lengths = {k: len(v) for k, v in files.items()}
    assert len(set(lengths.values())) == 1, lengths
    report = {}
    for name, records in spurts.items():
        member = members[name]
        got_ogg, got_wav = files[f"OggOpusAudioFile/{name}.opus"], files[f"WaveAudioFile/{name}.wav"]
        # the WAV file (the PCM path) holds every sent packet decoded, where the pipeline
        # placed it; the Ogg file the same audio, within its 2.5 ms grid
        rows = check_spurts(
            server, origin, member, records, probe, {"wav": got_wav, "ogg": got_ogg}, tap, lossy={"ogg": 60}
        )
        for _s, row in zip(records, rows):
            if row["split"]:
                continue  # the pieces were checked one frame at a time above
            wav_frames = got_wav[row["start"] : row["end"]]
            lag, r = locate(got_ogg, wav_frames, row["start"], search=120)
            assert abs(lag) <= 60
            ogg_frames = got_ogg[row["start"] + lag : row["end"] + lag]
            diff = np.abs(ogg_frames.astype(int) - wav_frames.astype(int))
            assert snr_db(ogg_frames, wav_frames) > 40 and np.percentile(diff, 99) <= 2, (name, lag)
            row["ogg_vs_wav_lag"] = lag
            row["ogg_vs_wav_snr_db"] = round(snr_db(ogg_frames, wav_frames), 1)
        report[f"{name} ({member.sender.clock.value})"] = rows
    # the mixed Ogg track (the mix is PCM, so it is encoded) against the mixed WAV track
    lag, r = locate(
        files["OggOpusAudioFile/mixed.opus"], files["WaveAudioFile/mixed.wav"][RATE : 4 * RATE], RATE, search=1000
    )
    report["mixed.opus_vs_mixed.wav"] = {"lag": lag, "r": round(r, 3)}
    MEASURED["ogg"] = report
    assert abs(lag) <= 2 and r > 0.9, (lag, r)
    assert np.array_equal(
        files["WaveAudioFile/mixed.wav"], mix(files["WaveAudioFile/alice.wav"], files["WaveAudioFile/bob.wav"])
    )


# ---- pause -----------------------------------------------------------------------------------


async def test_pause_listening_is_silence_of_the_paused_length(pool: Any, tmp_path: Path) -> None:
    """Two members talk straight through a pause of the recording: the paused span is
    silence of the paused length in every file, and the speech on either side of it is
    where it was spoken."""
    async with VoiceServerEmulator(seed=23) as server:
        alice = await server.add_member(1201, "alice", clock="webrtc")
        bob = await server.add_member(1202, "bob", clock="discordpy")
        vc = await server.connect(cls=listening.VoiceClient)
        tap = WireTap(server)
        sink = listening.AudioFileSink(
            listening.WaveAudioFile, tmp_path, mixed=True, filename="{user_name}", mix_delay=1.0
        )
        await asyncio.to_thread(warm_up, pool, vc.guild.id)
        probe = Probe()
        done = await listen(vc, listening.FanOutSink(sink, probe), pool)
        origin = vc._last_session.origin
        audio = {"alice": clip("alice", 0.0, 2.6), "bob": clip("bob", 1.3, 2.3)}
        talking = asyncio.gather(talk(alice, [(0.2, audio["alice"])]), talk(bob, [(0.35, audio["bob"])]))
        await asyncio.sleep(1.05)  # the scenario: a pause 1.05 s in, 0.8 s long
        vc.pause_listening()
        paused = time.monotonic()
        await asyncio.sleep(0.8)
        vc.resume_listening()
        resumed = time.monotonic()
        (a_spurt,), (b_spurt,) = await talking
        await server.drain()
        await settle(server, vc, (alice, [a_spurt]), (bob, [b_spurt]))
        await asyncio.sleep(0.2)  # the scenario: the recording runs on after the last word (checked to its end)
        vc.stop_listening()
        _, error = await asyncio.wait_for(done, 20)
    assert error is None
    tracks = {n: read(tmp_path / f"{n}.wav") for n in ("alice", "bob", "mixed")}
    assert len({len(t) for t in tracks.values()}) == 1
    assert np.array_equal(tracks["mixed"], mix(tracks["alice"], tracks["bob"]))
    p0, p1 = at(origin, paused), at(origin, resumed)
    report = {"paused_samples": p1 - p0}
    for name, member, spurt in (("alice", alice, a_spurt), ("bob", bob, b_spurt)):
        track = tracks[name]
        spoken = at(origin, server._to_loop_time(spurt.start))
        late = tap.lateness(server, member, spurt)
        heard = [row for row in probe.rows if row[0] == member.user_id]
        # (a datagram is stamped when the socket thread's batch read began: +-10 ms around the calls)
        before = [row for row in heard if row[2] < (paused + resumed) / 2]
        after = [row for row in heard if row[2] >= (paused + resumed) / 2]
        assert max(row[2] for row in before) < paused + 0.05 and min(row[2] for row in after) > resumed - 0.05, (
            "a packet that arrived while paused was kept"
        )
        # what arrived before the pause ends where the pause began, what arrived after the
        # resume starts where it ended; in between, digital silence of the paused length
        last_end, first_start = max(row[1] for row in before), min(row[5] for row in after)
        assert not track[last_end:first_start].any(), name
        assert track[last_end - FRAME : last_end].any() and track[first_start : first_start + FRAME].any(), name
        silence = first_start - last_end
        assert abs(silence - (p1 - p0)) <= 3 * FRAME, (name, silence, p1 - p0)
        # before the pause: the decoded packets, bit for bit; the speech either side where
        # it was spoken
        ref = decoded(member)[spurt.first_sequence]
        for row in before:
            i = (row[4] - spurt.first_sequence) % 65536
            assert np.array_equal(track[row[5] : row[1]], ref[i * FRAME : (i + 1) * FRAME]), (name, i)
        rows = []
        pos = sorted(row[5] for row in after)
        split = next((b for a, b in itertools.pairwise(pos) if b - a != FRAME), None)  # a stall, see the module doc
        resumed_end = spurt.samples if split is None else split - spoken - LOOKAHEAD - FRAME
        for lo, hi in ((0, last_end - spoken - LOOKAHEAD - FRAME), (first_start - spoken + 2 * FRAME, resumed_end)):
            offset, r = locate(track, pcm(spurt.pcm)[lo:hi], spoken + lo)
            rows.append({"speech_offset": offset, "speech_r": round(r, 3), "late": late})
            assert r > 0.9 and LOOKAHEAD - 48 <= offset <= LOOKAHEAD + FRAME + late, (name, rows)
        report[f"{name} ({member.sender.clock.value})"] = {
            "silence_samples": silence,
            "pause_began_at": last_end - p0,
            "resumed_at": first_start - p1,
            "speech": rows,
        }
    MEASURED["pause"] = report


# ---- SIGKILL ------------------------------------------------------------------------------------


#: The child is killed this long after both members started their third spurt (so each has
#: two whole spurts more than a second before the kill).
KILL_AFTER = 0.4


def test_sigkill_mid_recording_leaves_every_file_playable_up_to_a_second_before(tmp_path: Path) -> None:
    """A process records two members talking (emulator, listen, AudioFileSink in all four
    formats with mixed tracks) and is SIGKILLed mid-speech: every file opens with libsndfile
    and holds the audio up to one second before the kill, at its place."""
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("recording_child.py")), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[dict[str, Any]] = []
    ready = threading.Event()

    def reader() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(json.loads(line))
            if all(sum(1 for x in lines if x.get("member") == n) >= 3 for n in CRASH_PLAN):
                ready.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        assert ready.wait(90), f"the recording process did not get going: {lines[-5:]}"
        time.sleep(KILL_AFTER)  # the scenario: killed this long after the members got going
        killed = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        thread.join(10)
    assert child.returncode == -signal.SIGKILL
    origin = lines[0]["origin"]
    kill_at = at(origin, killed)
    # Everything spoken a second before the kill must be in the files, if the process had it
    # by then: on a starved machine (a busy CI box) the pipeline itself can fall behind the
    # clock, which no file format can help; that backlog is measured and reported.
    progress = [(x["t"], x["sink"]) for x in lines if "sink" in x]
    had = max((pos for t, pos in progress if t <= killed - 1.0), default=0)
    need = min(kill_at - RATE, had + FRAME)
    MEASURED["sigkill_pipeline_backlog_s"] = round((kill_at - RATE - need) / RATE, 3)
    # What each member's packets decode to (their encoder is deterministic: the same bytes
    # as in the child), spurt by spurt: audio frames, then the five silence frames.
    decoded: dict[str, list[np.ndarray]] = {}
    for name, plan in CRASH_PLAN.items():
        enc, dec = OpusEncoder(64000, fec=True, expected_loss=10), OpusDecoder()
        decoded[name] = []
        for _, c, a, d in plan:
            data = clip(c, a, d)
            data += bytes(-len(data) % (FRAME * 4))
            out = [dec.decode(enc.encode(data[i : i + FRAME * 4])) for i in range(0, len(data), FRAME * 4)]
            out += [dec.decode(SILENCE_FRAME) for _ in range(5)]
            decoded[name].append(pcm(b"".join(out)))
    spurts: dict[str, list[tuple[int, np.ndarray]]] = {name: [] for name in CRASH_PLAN}
    for line in lines[1:]:
        if "member" not in line:
            continue
        name = line["member"]
        spurts[name].append((at(origin, line["start"]), decoded[name][len(spurts[name])]))
    assert all(len(s) >= 2 for s in spurts.values()), lines  # they did talk

    loss: dict[str, float] = {}
    mixed_ok: dict[str, float] = {}
    for cls in ALL_FORMATS:
        folder = tmp_path / cls.__name__
        names = sorted(p.name for p in folder.iterdir())
        assert names == sorted(n + cls.extension for n in [*CRASH_PLAN, "mixed"]), names
        tracks = {n: read(folder / (n + cls.extension)) for n in [*CRASH_PLAN, "mixed"]}
        for name, track in tracks.items():
            loss[f"{cls.__name__}/{name}"] = round((kill_at - len(track)) / RATE, 3)
        mp3 = cls is listening.MP3AudioFile
        for name, said in spurts.items():
            track = tracks[name]
            # spoken up to a second before the kill: on disk, where it was spoken (the decoded
            # packets include the encoder's lookahead, so they lie where the packets were sent)
            due = max(min(start + len(ref), need) for start, ref in said if start < need)
            assert len(track) >= due, (cls.__name__, name, len(track), due)
            lossless = cls in (listening.WaveAudioFile, listening.FLACAudioFile)
            step = FRAME if lossless else 10 * FRAME
            for start, ref in said:
                if need - start < 2 * step:
                    continue  # spoken less than a second before the kill: may be lost
                # every 20 ms of it, bit for bit in the lossless formats, at most ~0.1 s late (a
                # busy machine may have moved part of a spurt, see the module doc)
                found = []
                for i in range(0, min(len(ref), need - start) // step):
                    piece = ref[i * step : (i + 1) * step]
                    if np.abs(piece).max() < 300:
                        continue  # nothing to find in near-silence
                    at_ = start + i * step
                    if lossless:
                        found.append(find_exact(track, piece, at_ - 60, at_ + RATE // 10) is not None)
                    else:
                        offset, r = locate(track, piece, at_, search=RATE // 10)
                        found.append(-60 - FRAME <= offset <= RATE // 10 and r >= (0.7 if mp3 else 0.95))
                assert found and (all(found) if lossless else np.mean(found) >= 0.9), (
                    cls.__name__,
                    name,
                    start,
                    found,
                    [
                        locate(track, ref[i * step : (i + 1) * step], start + i * step, search=RATE // 10)
                        for i in range(len(found))
                    ],
                )
        mixed = tracks["mixed"]
        assert len(mixed) >= need, (cls.__name__, len(mixed), need)
        if cls in (listening.WaveAudioFile, listening.FLACAudioFile):  # lossless: the sum
            # up to where every file reached (the mix is synced more often than a user's
            # file, so it can hold audio their files did not have on disk yet); frames more
            # than mix_delay (0.2 s) late are left out of the mix: on a busy machine a few are
            n = min(len(t) for t in tracks.values()) // FRAME * FRAME
            same = (mixed[:n] == mix(*(tracks[u][:n] for u in CRASH_PLAN))).reshape(-1, FRAME * 2).all(axis=1)
            assert same.mean() >= 0.9, (cls.__name__, same.mean())
            mixed_ok[cls.__name__] = round(float(same.mean()), 3)
    MEASURED["sigkill_seconds_short_of_the_kill"] = loss
    MEASURED["sigkill_mixed_frames_equal_to_the_sum"] = mixed_ok
    assert max(loss.values()) <= 1.0 + MEASURED["sigkill_pipeline_backlog_s"]


# ---- names ----------------------------------------------------------------------------------


HOSTILE = ["../../etc/passwd", "CON", "a/b\\c", "\U0001f3a4" * 100, "\x00evil", "mixed", "twin", "twin", ".hidden"]


async def test_hostile_display_names_stay_inside_the_directory_when_stopped_mid_speech(
    pool: Any, tmp_path: Path
) -> None:
    """Members named to escape or break the output directory: every file lands directly in
    it, with a distinct safe name, holding that member's audio; listening stops while they
    are all talking, and every file still ends on the same sample."""
    out = tmp_path / "recordings"
    async with VoiceServerEmulator(seed=24, dave=False) as server:  # names, not DAVE: joins are quicker
        members = [await server.add_member(1301 + i, name) for i, name in enumerate(HOSTILE)]
        vc = await server.connect(cls=listening.VoiceClient)
        sink = listening.AudioFileSink(listening.WaveAudioFile, out, mixed=True, filename="{display_name}")
        probe = Probe()
        await asyncio.to_thread(warm_up, pool, vc.guild.id)
        done = await listen(vc, listening.FanOutSink(sink, probe), pool)
        audio = [speechlike(1.5, seed=40 + i) for i in range(len(members))]
        for m, a in zip(members, audio):
            PreEncoded(m, [a])
        talking = asyncio.gather(*(talk(m, [(0.05 * i, a)]) for i, (m, a) in enumerate(zip(members, audio))))
        await server.wait_until(lambda: len(sink.output_files) == len(members), what="everyone recorded")
        await server.wait_until(
            lambda: all(sum(row[0] == m.user_id for row in probe.rows) >= 5 for m in members),
            what="everyone heard for five frames",
        )
        vc.stop_listening()  # mid-speech
        _, error = await asyncio.wait_for(done, 20)
        await talking
    assert error is None
    assert [p.name for p in tmp_path.iterdir()] == ["recordings"]  # nothing escaped
    files = sorted(out.iterdir())
    assert len(files) == len(HOSTILE) + 1
    for path in files:
        assert path.is_file() and path.resolve().parent == out.resolve()
        name = path.name
        assert len(name.encode()) <= 255 and not name.startswith(".") and name.endswith(".wav")
        assert not set(name) & set('/\\:*?"<>|\x00') and name.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL"}
    assert len({p.name.lower() for p in files}) == len(files)
    lengths = {p.name: len(read(p)) for p in files}
    assert len(set(lengths.values())) == 1, lengths  # stopped mid-speech: still one end
    assert next(iter(lengths.values())) >= max(row[1] for row in probe.rows)  # no audio cut
    for m in members:  # each file holds its member's packets, decoded, where they were placed
        track = read(sink.output_files[m.user_id].path)
        ref = decoded(m)[m.sent.spurts[0].first_sequence]
        heard = [row for row in probe.rows if row[0] == m.user_id]
        assert len(heard) >= 5, m.name
        for row in heard:
            i = (row[4] - m.sent.spurts[0].first_sequence) % 65536
            assert np.array_equal(track[row[5] : row[1]], ref[i * FRAME : (i + 1) * FRAME]), (m.name, i)
    assert sink.output_files[members[5].user_id].path.name == "mixed (1).wav"  # the mixed track kept its name
    MEASURED["hostile_names"] = {repr(m.name[:12]): sink.output_files[m.user_id].path.name[:40] for m in members}


# ---- errors ----------------------------------------------------------------------------------


class FullDisk:
    """The OS side of a full disk for one file: every write fails with ENOSPC."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_a_full_disk_for_one_file_reaches_after_and_the_others_record_on(pool: Any, tmp_path: Path) -> None:
    async with VoiceServerEmulator(seed=25) as server:
        members = {n: await server.add_member(1401 + i, n) for i, n in enumerate(("alice", "bob", "carol"))}
        vc = await server.connect(cls=listening.VoiceClient)
        sink = listening.AudioFileSink(
            listening.FLACAudioFile, tmp_path, mixed=True, filename="{user_name}", mix_delay=1.0
        )
        await asyncio.to_thread(warm_up, pool, vc.guild.id)
        probe = Probe()
        done = await listen(vc, listening.FanOutSink(sink, probe), pool)
        origin = vc._last_session.origin
        plans = {
            "alice": [(0.2, clip("alice", 0.0, 0.8)), (0.3, clip("alice", 2.0, 0.8))],
            "bob": [(0.3, clip("bob", 1.3, 0.8)), (0.3, clip("bob", 4.0, 0.8))],
            "carol": [(0.4, clip("carol", 1.0, 0.8)), (0.3, clip("carol", 3.0, 0.8))],
        }
        talking = asyncio.gather(*(talk(members[n], p) for n, p in plans.items()))
        bob_id = members["bob"].user_id
        await server.wait_until(lambda: bob_id in sink.output_files, what="bob's file")
        bob_file = sink.output_files[bob_id]
        await asyncio.sleep(0.6)  # the scenario: the disk fills up 0.6 s into bob's file
        bob_file._out.fh = FullDisk(bob_file._out.fh)  # the disk fills up under bob's file
        full_at = at(origin, time.monotonic())
        spurts = dict(zip(plans, await talking))
        await server.drain()
        await settle(server, vc, *((members[n], spurts[n]) for n in plans))
        await asyncio.sleep(0.2)  # the scenario: the recording runs on after the last word (checked to its end)
        vc.stop_listening()
        _, error = await asyncio.wait_for(done, 20)
    assert isinstance(error, RecordingError) and error.errno == errno.ENOSPC, repr(error)
    assert error.filename == str(bob_file.path) and bob_file.path.name in str(error), str(error)
    MEASURED["full_disk_error"] = str(error)
    tracks = {n: read(tmp_path / f"{n}.flac") for n in [*plans, "mixed"]}  # bob's too: it plays
    assert len({len(tracks[n]) for n in ("alice", "carol", "mixed")}) == 1
    for name in ("alice", "carol"):  # the others: complete, in place
        check_spurts(server, origin, members[name], spurts[name], probe, {name: tracks[name]}, slack=2 * FRAME)
    # bob's file kept what it had before the disk filled up (less the FLAC block in the works)
    bob, first = tracks["bob"], spurts["bob"][0]
    spoken = at(origin, server._to_loop_time(first.start))
    assert spoken + RATE // 4 <= len(bob) <= full_at + FRAME, (spoken, len(bob), full_at)
    kept = decoded(members["bob"])[first.first_sequence][: len(bob) - spoken - FRAME]
    offset, r = locate(bob, kept, spoken)
    assert -48 <= offset <= 3 * FRAME and np.array_equal(bob[spoken + offset : spoken + offset + len(kept)], kept), (
        offset,
        r,
    )
    # the mix went on with everyone in it (bob's audio came, only his file could not take it):
    # what is left of it without the others' (complete) tracks is bob, where he spoke
    others = tracks["alice"].astype(np.int32) + tracks["carol"].astype(np.int32)
    rest = np.clip(tracks["mixed"].astype(np.int32) - others, -32768, 32767).astype(np.int16)
    for s in spurts["bob"]:
        ref = decoded(members["bob"])[s.first_sequence]
        lag, r = locate(rest, ref, at(origin, server._to_loop_time(s.start)))
        assert r > 0.9 and -48 <= lag <= 3 * FRAME, (lag, r)


async def test_a_directory_that_goes_away_reaches_after_naming_the_file(pool: Any, tmp_path: Path) -> None:
    """The output directory disappears mid-recording (chmod cannot make a directory
    unwritable for root, a missing one fails for everybody): the file of a member who starts
    talking then cannot be created; ``after`` says which, the others record on."""
    out = tmp_path / "recordings"
    async with VoiceServerEmulator(seed=26) as server:
        alice = await server.add_member(1501, "alice")
        bob = await server.add_member(1502, "bob")
        vc = await server.connect(cls=listening.VoiceClient)
        sink = listening.AudioFileSink(listening.WaveAudioFile, out, filename="{user_name}")
        await asyncio.to_thread(warm_up, pool, vc.guild.id)
        probe = Probe()
        done = await listen(vc, listening.FanOutSink(sink, probe), pool)
        talking = asyncio.ensure_future(talk(alice, [(0.1, clip("alice", 0.0, 1.4))]))
        await server.wait_until(lambda: alice.user_id in sink.output_files, what="alice's file")
        out.rename(tmp_path / "moved")
        bob_spurts = await talk(bob, [(0.1, clip("bob", 1.3, 0.5))])
        alice_spurts = await talking
        await server.drain()
        await settle(server, vc, (alice, alice_spurts), (bob, bob_spurts))
        vc.stop_listening()
        _, error = await asyncio.wait_for(done, 20)
    assert isinstance(error, RecordingError) and error.errno == errno.ENOENT, repr(error)
    assert error.filename == str(out / "bob.wav") and "bob.wav" in str(error), str(error)
    assert bob.user_id not in sink.output_files or sink.output_files[bob.user_id] is None
    moved = read(tmp_path / "moved" / "alice.wav")  # alice's file recorded on, all of it
    ref = decoded(alice)[alice.sent.spurts[0].first_sequence]
    heard = [row for row in probe.rows if row[0] == alice.user_id]
    assert len(heard) == len(alice.sent.spurts[0].frames)
    for row in heard:
        i = (row[4] - alice.sent.spurts[0].first_sequence) % 65536
        assert np.array_equal(moved[row[5] : row[1]], ref[i * FRAME : (i + 1) * FRAME]), i
    MEASURED["directory_gone_error"] = str(error)


def test_an_unusable_output_directory_fails_clearly_when_the_sink_is_created(tmp_path: Path) -> None:
    # A path below a regular file: no directory can be made there, root or not (ENOTDIR).
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(RecordingError) as info:
        listening.AudioFileSink(listening.WaveAudioFile, blocker / "recordings")
    assert "cannot create the output directory" in str(info.value) and str(blocker / "recordings") in str(info.value)
    assert isinstance(info.value.__cause__, NotADirectoryError)
    # the output directory is itself a regular file
    with pytest.raises(RecordingError) as info:
        listening.AudioFileSink(listening.WaveAudioFile, blocker)
    assert str(blocker) in str(info.value)
    # a directory nobody may create files in: /proc refuses even root (not a real disk)
    if Path("/proc/self").exists():
        with pytest.raises(RecordingError) as info:
            listening.AudioFileSink(listening.WaveAudioFile, "/proc/recordings")
        assert "/proc/recordings" in str(info.value)


# ---- the sink's own promises, frame by frame -------------------------------------------------------


def frames(user: int, pcm_: np.ndarray, position: int, *, ssrc: int | None = None) -> list[AudioFrame]:
    import discord

    who = discord.Object(id=user)
    return [
        AudioFrame(
            who,
            ssrc or user,
            i,
            0,
            pcm_[i * FRAME : (i + 1) * FRAME].tobytes(),
            FrameKind.decoded,
            position + i * FRAME,
            0.0,
        )
        for i in range(len(pcm_) // FRAME)
    ]


def test_the_mixed_track_reaches_disk_at_every_tick(tmp_path: Path) -> None:
    """Not only at the end: a reader (or a kill) finds the mix up to ``mix_delay`` behind the
    newest audio, and it is already the sum of the user tracks."""
    sink = listening.AudioFileSink(listening.WaveAudioFile, tmp_path, mixed=True, filename="{user_id}")
    a, b = pcm(speechlike(4.0, seed=1)), pcm(speechlike(3.0, seed=2))
    stream = sorted(frames(1, a, 4800) + frames(2, b, 30000), key=lambda f: f.position)
    for i, frame in enumerate(stream):
        sink.on_audio(frame)
        if i % 25 == 24:  # a tick every 0.5 s of audio
            sink.on_tick(frame.position + FRAME)
            newest = frame.position + FRAME
            mixed = read(tmp_path / "mixed.wav")
            assert len(mixed) >= newest - round(sink.mix_delay * RATE) - FRAME
            users = [read(tmp_path / f"{u}.wav") if (tmp_path / f"{u}.wav").exists() else mixed[:0] for u in (1, 2)]
            users = [np.pad(t, ((0, max(0, len(mixed) - len(t))), (0, 0)))[: len(mixed)] for t in users]
            assert np.array_equal(mixed, mix(*users))
    sink.on_stop(stream[-1].position + FRAME)
    sink.cleanup()
    assert sink._mixer.late_frames == 0


def test_every_file_ends_on_one_sample_when_audio_reaches_past_the_stop(tmp_path: Path) -> None:
    """Frames placed by RTP time can end after the moment listening stopped: no file is cut
    short of its audio, and all still end together."""
    for cls in ALL_FORMATS:
        sink = listening.AudioFileSink(cls, tmp_path / cls.__name__, mixed=True, filename="{user_id}")
        a, b = pcm(speechlike(1.0, seed=3)), pcm(speechlike(0.5, seed=4))
        for frame in frames(1, a, 9600) + frames(2, b, 2000):
            sink.on_audio(frame)
        sink.on_stop(9600 + len(a) - 700)  # the last frame ends 700 samples after this
        sink.cleanup()
        lengths = {p.name: sf.info(str(p)).frames for p in (tmp_path / cls.__name__).iterdir()}
        assert set(lengths.values()) == {9600 + len(a)}, (cls.__name__, lengths)


def test_the_mix_trims_a_users_overlapping_frames_like_their_file(tmp_path: Path) -> None:
    """Concealment of a loss can overlap the frame before it: the user's file keeps the
    first and trims the overlap; the mixed track must do the same to stay their sum."""
    sink = listening.AudioFileSink(listening.WaveAudioFile, tmp_path, mixed=True, filename="{user_id}")
    a, b = pcm(speechlike(0.5, seed=5)), pcm(speechlike(0.5, seed=6))
    user1 = frames(1, a, 0)
    late = frames(1, pcm(speechlike(0.1, seed=7)), user1[10].position + 300)  # overlaps frames 10-15
    stream = sorted([*user1, *frames(2, b, 480)], key=lambda f: f.position)  # as they come: interleaved
    at16 = stream.index(user1[16])
    for frame in [*stream[:at16], *late[:2], *stream[at16:]]:
        sink.on_audio(frame)
    sink.on_stop(RATE)
    sink.cleanup()
    user_tracks = [read(tmp_path / f"{u}.wav") for u in (1, 2)]
    assert sink.output_files[1].frames_dropped_overlap + sink.output_files[1].frames_trimmed_overlap > 0
    assert np.array_equal(read(tmp_path / "mixed.wav"), mix(*user_tracks))


# ---- memory ------------------------------------------------------------------------------------


def _simulate(
    tmp_path: Path, *, hours: float, speakers: int, talk_seconds: float, formats: list[Any]
) -> dict[str, Any]:
    """Feed AudioFileSinks (one per format, with a mixed track for the PCM ones) the frames of
    ``speakers`` people talking ``talk_seconds`` every minute for ``hours``, much faster than
    real time; returns the process's memory at 10 minutes and at the end."""
    import gc

    import discord

    proc = psutil.Process()
    sinks = [
        listening.AudioFileSink(
            cls, tmp_path / cls.__name__, mixed=cls is not listening.OggOpusAudioFile, filename="{user_id}"
        )
        for cls in formats
    ]
    n = round(talk_seconds * RATE / FRAME)
    enc = OpusEncoder()
    voices = []
    for k in range(speakers):
        p = speechlike(talk_seconds, seed=100 + k)
        voices.append(
            [
                (p[i * FRAME * 4 : (i + 1) * FRAME * 4], enc.encode(p[i * FRAME * 4 : (i + 1) * FRAME * 4]))
                for i in range(n)
            ]
        )
    users = [discord.Object(id=5000 + k) for k in range(speakers)]
    minutes = round(hours * 60)
    marks: dict[str, Any] = {}
    seq = [0] * speakers
    for minute in range(minutes):
        if minute == 10:
            gc.collect()
            marks["rss_10min"] = proc.memory_info().rss
            tracemalloc.start()
            marks["traced_10min"] = tracemalloc.get_traced_memory()[0]
        for k in range(speakers):
            if k == speakers - 1 and 1 <= minute < minutes - 1:
                continue  # one speaker is silent for the whole session but its ends: a long gap
            start = (minute * 60 + k * 60 // speakers) * RATE
            for i, (pcm_, packet) in enumerate(voices[k]):
                seq[k] += 1
                for sink in sinks:
                    ogg = sink.file_type is listening.OggOpusAudioFile
                    sink.on_audio(
                        AudioFrame(
                            users[k],
                            7000 + k,
                            seq[k] & 0xFFFF,
                            0,
                            packet if ogg else pcm_,
                            FrameKind.opus if ogg else FrameKind.decoded,
                            start + i * FRAME,
                            0.0,
                        )
                    )
        for tick in range(2):  # ticks every 30 s of the simulated minute
            for sink in sinks:
                sink.on_tick((minute * 60 + tick * 30 + 30) * RATE)
    end = minutes * 60 * RATE
    for sink in sinks:
        sink.on_stop(end)
    gc.collect()
    marks["rss_end"] = proc.memory_info().rss
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    marks["traced_end"], marks["traced_peak"] = current, peak
    for sink in sinks:
        sink.cleanup()
        for f in [*sink.output_files.values(), *([sink.mixed_file] if sink.mixed_file else [])]:
            assert sf.info(str(f.path)).frames == end, f.path
    # a spot check that the audio went where it belongs: speaker 3 at 1:30:00
    k, minute = 3, round(minutes * 0.75)
    track, _ = sf.read(
        str(sinks[0].output_files[5000 + k].path),
        dtype="int16",
        always_2d=True,
        start=(minute * 60 + k * 60 // speakers) * RATE,
        frames=n * FRAME,
    )
    assert np.array_equal(track, pcm(b"".join(p for p, _ in voices[k])))
    marks["frames"] = sum(seq)
    return marks


@pytest.mark.parametrize(
    "hours, talk_seconds, formats",
    [
        pytest.param(2, 0.1, [listening.WaveAudioFile, listening.OggOpusAudioFile], id="2h-ci"),
        pytest.param(2, 2.0, ALL_FORMATS, id="2h-soak", marks=[pytest.mark.soak, pytest.mark.timeout(1800)]),
    ],
)
def test_two_hours_of_ten_speakers_keep_memory_flat(
    tmp_path: Path, hours: float, talk_seconds: float, formats: list[Any], request: Any
) -> None:
    """Two hours of ten speakers through the sink, the mixer and the writers: memory at the
    end is what it was after ten minutes (the CI form: each talks 0.1 s a minute, WAV and Ogg;
    ``LISTENING_SOAK=1``: 2 s a minute, every format, ~6 min)."""
    if "soak" in request.node.keywords and not os.environ.get("LISTENING_SOAK"):
        pytest.skip("soak test: set LISTENING_SOAK=1")
    started = time.perf_counter()
    marks = _simulate(tmp_path, hours=hours, speakers=10, talk_seconds=talk_seconds, formats=formats)
    marks["seconds"] = round(time.perf_counter() - started, 2)
    grown_rss = marks["rss_end"] - marks["rss_10min"]
    grown_traced = marks["traced_end"] - marks["traced_10min"]
    MEASURED[f"memory_{request.node.callspec.id}"] = {
        "rss_10min_MB": round(marks["rss_10min"] / 2**20, 1),
        "rss_end_MB": round(marks["rss_end"] / 2**20, 1),
        "traced_growth_kB": round(grown_traced / 1024, 1),
        "traced_peak_MB": round(marks["traced_peak"] / 2**20, 2),
        "frames": marks["frames"],
        "seconds": marks["seconds"],
    }
    assert grown_traced < 256 * 1024, marks  # Python objects: nothing kept per frame or per second
    assert grown_rss < 8 * 2**20, marks
    assert marks["traced_peak"] < 16 * 2**20, marks  # no gap or silence allocates its length
