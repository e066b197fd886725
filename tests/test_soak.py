"""Soak: a long recording of many speakers, simulated faster than real time.

The sans-I/O receive path runs on a synthetic clock: ten members (real davey MLS group,
real DAVE and AES-256-GCM encryption, real Opus) talk in spurts through a seeded lossy,
jittery network into one :class:`PacketReceiver`; what it releases is decoded by the real
:class:`AudioProcessPool` and written by an :class:`AudioFileSink` of WAV files, glued the
way the listening session glues them. Senders start near the 16-bit sequence wrap and the
32-bit timestamp wrap, so both are crossed; the long form crosses the sequence wrap several
times.

Checks: nothing that arrived authenticated and in time is lost (every such packet is a
decoded frame in the output, in order), memory is flat, threads and file descriptors do not
grow, and every per-user file is exactly as long as the recording.

The short form (6 simulated minutes, ``LISTENING_SOAK_SHORT_MINUTES``) runs in CI. The long form is marked ``soak`` and
runs with ``LISTENING_SOAK=1`` (hours from ``LISTENING_SOAK_HOURS``, default 3).
"""

from __future__ import annotations

import gc
import heapq
import os
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
import soundfile as sf

import discord
from discord.ext import listening
from discord.ext.listening import rtp, transport
from discord.ext.listening.files import WaveAudioFile
from discord.ext.listening.frames import AudioFrame, FrameKind
from discord.ext.listening.opus import FRAME_SAMPLES, SAMPLE_RATE, SILENCE_FRAME, OpusEncoder
from discord.ext.listening.pool import DecodeItem
from discord.ext.listening.receive import PacketReceiver
from discord.ext.listening.seqmath import seq_diff
from discord.ext.listening.ssrc import SSRCMap
from discord.ext.listening.stats import ListenStats
from discord.ext.listening.testing.audio import speechlike
from discord.ext.listening.testing.dave_member import LocalDaveMember, connect_local_member
from discord.ext.listening.testing.dave_server import DaveGroupServer
from discord.ext.listening.testing.impairment import Impairment

KEY = bytes(range(7, 39))
BOT = 1
CHANNEL = 5150
TICK = 0.01  # the session's pump interval, in synthetic seconds
FRAME = FRAME_SAMPLES / SAMPLE_RATE


@dataclass
class Speaker:
    user_id: int
    ssrc: int
    dave: LocalDaveMember
    packets: list[bytes]
    rng: random.Random
    seq: int
    ts0: int
    next_change: float = 0.0
    talking: bool = False
    trailing_silence: int = 0
    index: int = 0
    sent_audio: int = 0
    delivered_audio: int = 0
    seq_wraps: int = 0
    ts_wrapped: bool = False
    last_ts: int = -1
    delivered: set = field(default_factory=set)  # (seq, ts) of audio that reached the receiver


class _Guild:
    id = 424242

    def get_member(self, user_id: int) -> None:
        return None


class Recorder(listening.AudioSink):
    """Counts what reaches the sink per user and checks order, then hands frames to the files."""

    def __init__(self, files: listening.AudioFileSink) -> None:
        super().__init__()
        self.files = files
        self.decoded: dict[int | None, int] = {}
        self.kinds: dict[str, int] = {}
        self.last: dict[int, tuple[int, int]] = {}
        self.out_of_order = 0
        self.matched: dict[int | None, int] = {}
        self.expect: dict[int, set] = {}

    def on_audio(self, frame: AudioFrame) -> None:
        self.kinds[frame.kind.value] = self.kinds.get(frame.kind.value, 0) + 1
        last = self.last.get(frame.ssrc)
        if last is not None and (seq_diff(frame.sequence, last[0]) <= 0 or frame.position < last[1]):
            self.out_of_order += 1
        self.last[frame.ssrc] = (frame.sequence, frame.position)
        if frame.kind is FrameKind.decoded:
            uid = frame.user_id
            self.decoded[uid] = self.decoded.get(uid, 0) + 1
            key = (frame.sequence, frame.timestamp)
            expect = self.expect.get(uid)
            if expect is not None and key in expect:
                expect.discard(key)
                self.matched[uid] = self.matched.get(uid, 0) + 1
        self.files.on_audio(frame)

    def on_tick(self, position: int) -> None:
        self.files.on_tick(position)

    def on_stop(self, position: int) -> None:
        self.files.on_stop(position)

    def cleanup(self) -> None:
        self.files.cleanup()


def _process_figures() -> dict[str, float]:
    gc.collect()
    proc = psutil.Process()
    return {
        "rss_mb": proc.memory_info().rss / 2**20,
        "threads": proc.num_threads(),
        "fds": proc.num_fds() if hasattr(proc, "num_fds") else 0,
    }


def run_soak(
    pool: listening.AudioProcessPool, out_dir: Path, *, minutes: float, speakers: int = 10, seed: int = 1
) -> dict[str, Any]:
    random.Random(seed)
    # Real DAVE: the bot and every speaker in one MLS group.
    server = DaveGroupServer(CHANNEL)
    members: dict[int, LocalDaveMember] = {BOT: LocalDaveMember(BOT, CHANNEL)}
    connect_local_member(server, members[BOT], members)
    ssrc_map = SSRCMap()
    cipher = transport.transport_cipher(transport.AES_GCM, KEY)
    people: list[Speaker] = []
    for i in range(speakers):
        uid = 1000 + i
        members[uid] = LocalDaveMember(uid, CHANNEL)
        connect_local_member(server, members[uid], members)
        pcm = speechlike(1.0, seed=100 + i)
        enc = OpusEncoder()
        opus = [enc.encode(pcm[k * 3840 : (k + 1) * 3840]) for k in range(50)]
        ssrc = 5000 + i
        ssrc_map.set_audio(ssrc, uid)
        people.append(
            Speaker(
                uid,
                ssrc,
                members[uid],
                opus,
                random.Random(seed * 1000 + i),
                seq=65536 - 500 - 97 * i,
                ts0=(2**32 - SAMPLE_RATE * (20 + 7 * i)) & 0xFFFFFFFF,
            )
        )
    assert all(m.ready for m in members.values())
    conn = SimpleNamespace(
        mode=transport.AES_GCM, secret_key=list(KEY), dave_session=members[BOT].session, dave_protocol_version=1
    )
    stats = ListenStats()
    receiver = PacketReceiver(ssrc_map, stats, origin=0.0)
    receiver.set_transport(conn.mode, conn.secret_key)
    receiver.set_dave(conn.dave_session, conn.dave_protocol_version)
    network = Impairment(loss=0.005, reorder=0.005, jitter=0.004, delay=0.03, seed=seed)
    files = listening.AudioFileSink(WaveAudioFile, out_dir, sync_interval=0.5)
    sink = Recorder(files)
    guild = _Guild()

    # The session's glue: ReceivedPacket -> DecodeItem -> DecodedFrame -> AudioFrame.
    meta: dict[int, Any] = {}
    meta_lock = threading.Lock()
    decoded: queue.SimpleQueue = queue.SimpleQueue()
    lost_in_worker = [0]

    def on_frames(frames: list) -> None:
        for f in frames:
            with meta_lock:
                p = meta.get(f.extra)
                if p is not None and f.sequence == p.sequence:
                    del meta[f.extra]
            if p is None:
                continue
            back = seq_diff(p.sequence, f.sequence)
            lost = p.lost_positions
            position = p.position if back <= 0 or back > len(lost) else lost[len(lost) - back]
            user = discord.Object(id=p.user_id) if p.user_id is not None else None
            decoded.put(
                AudioFrame(
                    user,
                    f.ssrc,
                    f.sequence,
                    f.timestamp,
                    f.audio,
                    f.kind,
                    position,
                    p.arrival,
                    p.audio_level if back == 0 else None,
                )
            )

    def on_lost(items: list) -> None:
        lost_in_worker[0] += len(items)

    stream = pool.open_stream(guild.id, on_frames, on_lost=on_lost)
    next_id = 0

    def submit(packets: list) -> None:
        nonlocal next_id
        if not packets:
            return
        items = []
        with meta_lock:
            for p in packets:
                meta[next_id] = p
                items.append(DecodeItem(p.ssrc, p.sequence, p.timestamp, p.opus, len(p.lost_positions), next_id))
                next_id += 1
        backlog_until = time.monotonic() + 30.0
        while stream.in_flight > 3000:  # faster than real time, never faster than the decoder
            assert time.monotonic() < backlog_until, "the decode pool made no progress for 30 s"
            time.sleep(0.002)
        assert stream.submit(items)

    def drain_sink() -> None:
        while True:
            try:
                frame = decoded.get_nowait()
            except queue.Empty:
                return
            sink.on_audio(frame)

    for p in people:
        sink.expect[p.user_id] = p.delivered
    total = minutes * 60.0
    in_flight: list[tuple[float, int, bytes]] = []  # arrival heap
    order = 0
    counter = 0
    t = 0.0
    step = 0
    next_tick = 0.5
    baseline: dict[str, float] | None = None
    samples: list[tuple[float, dict[str, float]]] = []
    wall0 = time.monotonic()
    while t < total + 1.0:
        # Senders: one frame each per 20 ms (two pump ticks).
        if step % 2 == 0 and t < total:
            for sp in people:
                if t >= sp.next_change:
                    sp.talking = not sp.talking
                    if sp.talking:
                        sp.next_change = t + sp.rng.uniform(0.5, 4.0)
                    else:
                        sp.next_change = t + sp.rng.uniform(0.5, 8.0)
                        sp.trailing_silence = 5
                if not sp.talking and not sp.trailing_silence:
                    continue
                ts = (sp.ts0 + round(t / FRAME) * FRAME_SAMPLES) & 0xFFFFFFFF  # WebRTC clock: runs in silence
                if sp.talking:
                    opus = sp.packets[sp.index % len(sp.packets)]
                    sp.index += 1
                    payload = sp.dave.encrypt_opus(opus)
                else:
                    payload = SILENCE_FRAME
                    sp.trailing_silence -= 1
                header = rtp.build_rtp_header(sp.seq, ts, sp.ssrc, extension_length=4)
                counter += 1
                datagram = cipher.encrypt(header, rtp.audio_level_extension(30) + payload, counter)
                deliveries = network.apply(datagram, t)
                if sp.talking:
                    sp.sent_audio += 1
                    if deliveries:
                        sp.delivered_audio += 1
                        sp.delivered.add((sp.seq, ts))
                for at, data in deliveries:
                    heapq.heappush(in_flight, (at, order, data))
                    order += 1
                if ts < sp.last_ts:
                    sp.ts_wrapped = True
                sp.last_ts = ts
                sp.seq = (sp.seq + 1) & 0xFFFF
                if sp.seq == 0:
                    sp.seq_wraps += 1
        # The network delivers; the socket thread hands datagrams to the receiver.
        while in_flight and in_flight[0][0] <= t:
            at, _, data = heapq.heappop(in_flight)
            receiver.datagram(data, at)
        # The pump.
        packets, _ = receiver.poll(t)
        submit(packets)
        drain_sink()
        if t >= next_tick:
            next_tick += 0.5
            sink.on_tick(round(t * SAMPLE_RATE))
        if baseline is None and t >= total * 0.2:
            baseline = _process_figures()
        if step % 6000 == 0 and t > 0:
            samples.append((t, _process_figures()))
        t = round(t + TICK, 6)
        step += 1
    submit(receiver.flush(t))
    assert stream.flush(timeout=30), "decode worker never caught up"
    drain_sink()
    end = round(t * SAMPLE_RATE)
    sink.on_stop(end)
    final = _process_figures()
    stream.close()
    sink.cleanup()
    wall = time.monotonic() - wall0
    after_cleanup = _process_figures()
    total_stats = stats.total
    report = {
        "simulated_s": total,
        "wall_s": round(wall, 1),
        "speedup": round(total / wall, 1),
        "speakers": speakers,
        "packets_sent": counter,
        "audio_sent": sum(p.sent_audio for p in people),
        "audio_delivered": sum(p.delivered_audio for p in people),
        "decoded_frames": sum(sink.decoded.values()),
        "matched": sum(sink.matched.values()),
        "not_heard": sum(len(p.delivered) for p in people),
        "kinds": dict(sink.kinds),
        "dropped": {r.value: n for r, n in total_stats.dropped.items()},
        "lost_in_worker": lost_in_worker[0],
        "out_of_order": sink.out_of_order,
        "seq_wraps": min(p.seq_wraps for p in people),
        "ts_wrapped": all(p.ts_wrapped for p in people),
        "baseline": baseline,
        "final": final,
        "after_cleanup": after_cleanup,
        "samples": samples,
        "end": end,
        "files": {uid: f.path for uid, f in files.output_files.items()},
        "file_error": files.error,
    }
    return report


def check(report: dict[str, Any]) -> None:
    assert report["file_error"] is None, report["file_error"]
    assert report["out_of_order"] == 0
    assert report["lost_in_worker"] == 0
    late = report["dropped"].get("late", 0) + report["dropped"].get("duplicate", 0)
    # Nothing that arrived authenticated and in time is missing from the output.
    assert report["not_heard"] == late == 0, report
    assert report["matched"] == report["audio_delivered"]
    assert set(report["dropped"]) <= {"late", "duplicate"}, report["dropped"]
    assert report["seq_wraps"] >= 1 and report["ts_wrapped"]
    base, final = report["baseline"], report["final"]
    assert final["rss_mb"] - base["rss_mb"] < 40, (base, final)  # flat: no per-packet growth
    assert final["threads"] <= base["threads"] and final["fds"] <= base["fds"], (base, final)
    closed = report["after_cleanup"]
    assert closed["fds"] <= final["fds"] - report["speakers"], closed  # every file closed
    assert closed["threads"] <= final["threads"]
    for uid, path in report["files"].items():
        info = sf.info(str(path))
        assert info.samplerate == SAMPLE_RATE and info.channels == 2
        assert info.frames == report["end"], (uid, info.frames, report["end"])
    assert len(report["files"]) == report["speakers"]


def _print(report: dict[str, Any]) -> None:
    keep = {k: v for k, v in report.items() if k not in ("files", "samples")}
    print("\nsoak report:", keep)


@pytest.mark.timeout(300)
def test_soak_short_ten_speakers(pool, tmp_path: Path) -> None:
    minutes = float(os.environ.get("LISTENING_SOAK_SHORT_MINUTES", "6"))
    report = run_soak(pool, tmp_path, minutes=minutes, speakers=10)
    _print(report)
    check(report)


@pytest.mark.soak
@pytest.mark.timeout(6 * 3600)
def test_soak_long_hours(pool, tmp_path: Path) -> None:
    if not os.environ.get("LISTENING_SOAK"):
        pytest.skip("long soak: set LISTENING_SOAK=1 (and LISTENING_SOAK_HOURS, default 3)")
    hours = float(os.environ.get("LISTENING_SOAK_HOURS", "3"))
    report = run_soak(pool, tmp_path, minutes=hours * 60, speakers=10, seed=2)
    _print(report)
    check(report)
    assert report["seq_wraps"] >= 2 or hours < 2
