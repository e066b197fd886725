"""AudioProcessPool: real worker processes decoding with the real libopus."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

from discord.ext.listening.decoding import DecoderSet
from discord.ext.listening.file_sink import Mixer
from discord.ext.listening.frames import AudioFrame, FrameKind
from discord.ext.listening.opus import FRAME_BYTES, SILENCE_FRAME, OpusDecoder, packet_has_fec
from discord.ext.listening.pool import (
    AudioProcessPool,
    DecodedFrame,
    DecodeItem,
    StreamStats,
    get_default_pool,
    init_audio_processing_pool,
)
from discord.ext.listening.pool import default as default_pool_mod
from discord.ext.listening.pool import processes as processes_mod
from discord.ext.listening.pool.protocol import OP_DECODE
from discord.ext.listening.pool.slots import Incarnation
from helpers import opus_packets, wait_until

pytestmark = pytest.mark.timeout(60)


# -- helpers -------------------------------------------------------------------------------


def correlation(a: bytes, b: bytes) -> float:
    x = np.frombuffer(a, "<i2").astype(float)
    y = np.frombuffer(b, "<i2").astype(float)
    return float(np.corrcoef(x, y)[0, 1])


class Collector:
    """An on_frames that only appends (as the receive pipeline's does) and can be waited on."""

    def __init__(self) -> None:
        self.frames: list[DecodedFrame] = []
        self.calls = 0
        self._cond = threading.Condition()

    def __call__(self, frames: list[DecodedFrame]) -> None:
        with self._cond:
            self.frames.extend(frames)
            self.calls += 1
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 15.0) -> list[DecodedFrame]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.frames) < n:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"only {len(self.frames)} of {n} frames arrived"
                self._cond.wait(remaining)
            return list(self.frames)

    def by_ssrc(self, ssrc: int) -> list[DecodedFrame]:
        with self._cond:
            return [f for f in self.frames if f.ssrc == ssrc]


def process_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_ready(pool: AudioProcessPool, index: int, timeout: float = 20.0) -> int:
    slot = pool._slots[index]
    wait_until(lambda: slot.inc is not None and slot.inc.ready, timeout)
    return slot.inc.pid


@pytest.fixture(scope="module")
def shared_pool():
    # One pool for the tests that do not hurt their workers: start-up is paid once.
    with AudioProcessPool(2) as p:
        yield p


@pytest.fixture(scope="module")
def packets() -> list[bytes]:
    return opus_packets(2.0, seed=1)


# -- decoding ------------------------------------------------------------------------------


def test_frames_equal_an_in_process_decoder(shared_pool: AudioProcessPool, packets: list[bytes]) -> None:
    other = opus_packets(2.0, seed=2) + [SILENCE_FRAME] * 5
    got = Collector()
    stream = shared_pool.open_stream(1234, got)
    items_a = [
        DecodeItem(111, (65530 + i) & 0xFFFF, (2**32 - 960 * 3 + 960 * i) & 0xFFFFFFFF, p, 0, i)
        for i, p in enumerate(packets)
    ]
    items_b = [(222, i, 5000 + 960 * i, p, 0, 10_000 + i) for i, p in enumerate(other)]
    # Interleaved, in batches of varying size, as a jitter buffer would release them.
    merged = [x for pair in zip(items_a, items_b) for x in pair] + items_b[len(items_a) :]
    for start in range(0, len(merged), 7):
        assert stream.submit(merged[start : start + 7])
    assert stream.flush(15)
    got.wait_for(len(merged))
    for ssrc, pkts, items in ((111, packets, items_a), (222, other, items_b)):
        ref = OpusDecoder()
        frames = got.by_ssrc(ssrc)
        assert [f.kind for f in frames] == [FrameKind.decoded] * len(pkts)
        assert [f.audio for f in frames] == [ref.decode(p) for p in pkts]
        assert [(f.sequence, f.timestamp, f.extra) for f in frames] == [(i[1], i[2], i[5]) for i in items]
    stats = stream.stats()
    assert stats == StreamStats(submitted=len(merged), decoded=len(merged))
    assert stream.decoded == len(merged) and stream.concealed == 0 and stream.in_flight == 0
    stream.close()


def test_gap_of_one_recovers_by_fec(shared_pool: AudioProcessPool, packets: list[bytes]) -> None:
    lost = next(i for i in range(20, len(packets) - 1) if packet_has_fec(packets[i + 1]))
    got = Collector()
    stream = shared_pool.open_stream(1, got)
    items = [(7, i, 960 * i, p, 0, i) for i, p in enumerate(packets) if i != lost]
    items[lost] = (*items[lost][:4], 1, items[lost][5])  # the packet after the hole reports it
    assert stream.submit(items)
    frames = got.wait_for(len(packets))
    assert [f.sequence for f in frames] == list(range(len(packets)))
    assert frames[lost].kind is FrameKind.fec
    assert (frames[lost].timestamp, frames[lost].extra) == (960 * lost, lost + 1)
    assert frames[lost + 1].kind is FrameKind.decoded
    # Close to what the lost packet itself would have decoded to...
    ref = OpusDecoder()
    original = [ref.decode(p) for p in packets]
    assert correlation(frames[lost].audio, original[lost]) > 0.8
    # ...and exactly what an in-process decoder doing the same recovery produces.
    ref = OpusDecoder()
    expect = [ref.decode(p) for p in packets[:lost]] + [ref.decode_fec(packets[lost + 1])]
    expect += [ref.decode(p) for p in packets[lost + 1 :]]
    assert [f.audio for f in frames] == expect
    assert stream.stats().fec == 1 and stream.concealed == 1
    stream.close()


def test_gap_of_three_is_plc_then_fec(shared_pool: AudioProcessPool, packets: list[bytes]) -> None:
    nxt = next(i for i in range(30, len(packets)) if packet_has_fec(packets[i]))
    got = Collector()
    stream = shared_pool.open_stream(2, got)
    items = [(9, i, 960 * i, p, 0, i) for i, p in enumerate(packets[: nxt - 3])]
    items.append((9, nxt, 960 * nxt, packets[nxt], 3, nxt))
    assert stream.submit(items)
    frames = got.wait_for(nxt + 1)
    tail = frames[nxt - 3 :]
    assert [f.kind for f in tail] == [FrameKind.plc, FrameKind.plc, FrameKind.fec, FrameKind.decoded]
    assert [(f.sequence, f.timestamp) for f in tail] == [(nxt - 3 + k, 960 * (nxt - 3 + k)) for k in range(4)]
    ref = OpusDecoder()
    expect = [ref.decode(p) for p in packets[: nxt - 3]] + [ref.conceal(), ref.conceal(), ref.decode_fec(packets[nxt])]
    expect.append(ref.decode(packets[nxt]))
    assert [f.audio for f in frames] == expect
    assert (stream.stats().plc, stream.stats().fec) == (2, 1)
    stream.close()


def test_long_gap_conceals_up_to_the_limit_then_silence(shared_pool: AudioProcessPool, packets: list[bytes]) -> None:
    got = Collector()
    stream = shared_pool.open_stream(3, got, conceal_limit=5)
    nxt = next(i for i in range(40, len(packets)) if packet_has_fec(packets[i]))
    items = [(5, i, 960 * i, p, 0, i) for i, p in enumerate(packets[:20])]
    items.append((5, nxt, 960 * nxt, packets[nxt], nxt - 20, nxt))  # 20..nxt-1 lost
    # Wrapping sequence numbers and timestamps across a gap that ends without FEC.
    items.append((6, 2, 100, SILENCE_FRAME, 8, 0))
    # A position the jitter buffer gave up on (payload None), after a 2-frame gap.
    items.append((7, 50, 48000, packets[0], 0, 0))
    items.append((7, 53, 48000 + 960 * 3, None, 2, 1))
    assert stream.submit(items)
    frames = got.wait_for(nxt + 1 + 9 + 4)
    five = frames[: nxt + 1]
    gap = [f.kind for f in five[20:]]
    lost = nxt - 20
    assert gap == [FrameKind.plc] * 5 + [FrameKind.silence] * (lost - 6) + [FrameKind.fec, FrameKind.decoded]
    assert all(f.audio == bytes(FRAME_BYTES) for f in five if f.kind is FrameKind.silence)
    six = [f for f in frames if f.ssrc == 6]
    assert [f.kind for f in six] == [FrameKind.plc] * 5 + [FrameKind.silence] * 3 + [FrameKind.decoded]
    assert [f.sequence for f in six] == [(2 - 8 + k) & 0xFFFF for k in range(9)]
    assert [f.timestamp for f in six] == [(100 - 960 * (8 - k)) & 0xFFFFFFFF for k in range(9)]
    seven = [f for f in frames if f.ssrc == 7]
    assert [(f.sequence, f.kind) for f in seven] == [
        (50, FrameKind.decoded),
        (51, FrameKind.plc),
        (52, FrameKind.plc),
        (53, FrameKind.plc),
    ]
    s = stream.stats()
    assert (s.plc, s.fec, s.silence, s.errors) == (5 + 5 + 3, 1, (lost - 6) + 3, 0)
    stream.close()


def test_a_streams_counts_add_up_over_replies(shared_pool: AudioProcessPool, packets: list[bytes]) -> None:
    got = Collector()
    stream = shared_pool.open_stream(10, got, conceal_limit=2)

    def batch(base: int) -> list[tuple]:
        # one decoded, 4 lost (2 concealed, 2 silence), a corrupt one, one decoded
        return [
            (1, base, 960 * base, packets[0], 0, 0),
            (1, base + 5, 960 * (base + 5), packets[5], 4, 0),
            (1, base + 6, 960 * (base + 6), b"\xff" * 41, 0, 0),
            (1, base + 7, 960 * (base + 7), packets[7], 0, 0),
        ]

    assert stream.submit(batch(0))
    got.wait_for(8)
    first = stream.stats()
    assert first.plc > 0 and first.silence > 0 and first.errors == 1
    assert stream.submit(batch(100))  # a second reply
    got.wait_for(16)
    wait_until(lambda: stream.in_flight == 0)
    second = stream.stats()
    assert (second.decoded, second.plc, second.silence, second.errors) == (
        2 * first.decoded,
        2 * first.plc,
        2 * first.silence,
        2,
    )
    stream.close()


def test_corrupt_packet_is_counted_and_concealed(shared_pool: AudioProcessPool, packets: list[bytes]) -> None:
    got = Collector()
    refused: list[tuple] = []
    stream = shared_pool.open_stream(4, got, on_decode_error=refused.extend)
    bad = b"\xff" + b"\xff" * 40  # code 3 with an impossible frame count
    items = [(1, i, 960 * i, p, 0, i) for i, p in enumerate(packets[:10])]
    items[5] = (1, 5, 960 * 5, bad, 0, 5)
    items.append(("not", "an", "item"))  # malformed: counted, produces nothing
    assert stream.submit(items)
    frames = got.wait_for(10)
    assert [f.kind for f in frames] == [FrameKind.decoded] * 5 + [FrameKind.plc] + [FrameKind.decoded] * 4
    wait_until(lambda: stream.in_flight == 0)
    assert stream.errors == 2
    # libopus' refusal reaches the owner, with the item, before the frames that conceal it.
    assert refused == [items[5]]
    # The worker survived and keeps decoding.
    assert stream.submit([(1, 10, 9600, packets[10], 0, 10)])
    assert got.wait_for(11)[-1].kind is FrameKind.decoded
    stream.close()


def test_many_small_batches_keep_their_order(shared_pool: AudioProcessPool) -> None:
    # Small batches in a burst take both routes to the worker (direct writes while the pipe
    # has room, the writer thread once it fills): the order must survive the switches.
    voices = {ssrc: opus_packets(3.0, seed=ssrc) for ssrc in (1, 2, 3)}
    items = [(ssrc, i, 960 * i, voices[ssrc][i], 0, i) for i in range(150) for ssrc in voices]
    got = Collector()
    stream = shared_pool.open_stream(8, got)
    rng = np.random.default_rng(5)
    start = 0
    while start < len(items):
        size = int(rng.integers(1, 10))
        assert stream.submit(items[start : start + size])
        start += size
    got.wait_for(len(items))
    for ssrc, pkts in voices.items():
        ref = OpusDecoder()
        assert [f.audio for f in got.by_ssrc(ssrc)] == [ref.decode(p) for p in pkts[:150]]
    stream.close()


def test_payload_types(shared_pool: AudioProcessPool, packets: list[bytes]) -> None:
    got = Collector()
    stream = shared_pool.open_stream(9, got)
    wait_ready(shared_pool, shared_pool.worker_index(9))  # so the batch goes straight into the pipe
    # A memoryview payload (pickle refuses it) is copied to bytes rather than refused.
    assert stream.submit([(1, 0, 0, memoryview(packets[0]), 0, 0), (1, 1, 960, bytearray(packets[1]), 0, 1)])
    ref = OpusDecoder()
    assert [f.audio for f in got.wait_for(2)] == [ref.decode(packets[0]), ref.decode(packets[1])]
    with pytest.raises(TypeError, match="DecodeItem"):
        stream.submit([(1, 2, 1920, packets[2], 0, lambda: None)])
    with pytest.raises(TypeError, match="DecodeItem"):
        stream.submit([(1, 2, 1920, memoryview(packets[2]))])
    assert stream.submitted == 2
    stream.close()


def test_decoder_table_is_bounded() -> None:
    # Sans-I/O: the worker's per-stream table keeps the most recently used SSRCs only.
    dec = DecoderSet(max_ssrcs=2)
    pkt = opus_packets(0.1)[0]
    for ssrc in (1, 2, 1, 3):  # 2 is the least recently used when 3 arrives
        out: list[tuple] = []
        dec.decode_items([(ssrc, 0, 0, pkt, 0, 0)], out)
    assert len(dec) == 2 and 1 in dec and 3 in dec and 2 not in dec
    assert dec.counts.take() == (4, 0, 0, 0, 0) and dec.counts.take() == (0, 0, 0, 0, 0)
    dec.reset()
    assert not len(dec)


def test_decoder_set_decodes_single_packets_and_counts_refusals(packets: list[bytes]) -> None:
    dec = DecoderSet()
    ref = OpusDecoder()
    assert [dec.decode(7, p) for p in packets[:5]] == [ref.decode(p) for p in packets[:5]]
    assert dec.decode(7, b"\xff" * 41) is None
    assert (dec.counts.decoded, dec.counts.errors) == (5, 1)


def test_a_restarted_stream_decodes_as_on_a_fresh_decoder(shared_pool: AudioProcessPool, packets: list[bytes]) -> None:
    # A sender that restarts its stream keeps its SSRC but starts a new encoder: its first
    # packet (new_stream) must meet a fresh decoder, bit for bit, not one still predicting
    # from the old stream's audio.
    restarted = opus_packets(1.0, seed=3)
    lead = next(i for i in range(1, len(restarted)) if packet_has_fec(restarted[i]))
    got = Collector()
    stream = shared_pool.open_stream(12, got)
    old = [DecodeItem(5, i, 960 * i, p, 0, i) for i, p in enumerate(packets[:30])]
    # The restart's first packet also reports the frame lost before it (recovered by FEC).
    new = [
        DecodeItem(5, 900 + i, 960 * i, p, 1 if i == lead else 0, 100 + i, i == lead) for i, p in enumerate(restarted)
    ]
    new = new[lead:]
    assert stream.submit(old + new[:10]) and stream.submit(new[10:])  # the restart mid-batch
    frames = got.wait_for(30 + 1 + len(new))
    fresh = OpusDecoder()
    expect = [fresh.decode_fec(restarted[lead])] + [fresh.decode(p) for p in restarted[lead:]]
    assert [f.kind for f in frames[30:32]] == [FrameKind.fec, FrameKind.decoded]
    assert [f.audio for f in frames[30:]] == expect
    # Without the flag the same packets decode differently: the reset is what makes them equal.
    carried = DecoderSet()
    out: list[tuple] = []
    carried.decode_items([tuple(i)[:6] for i in old + new], out)
    assert [f[3] for f in out[30:]] != expect
    stream.close()


def test_reset_drops_decoder_state(shared_pool: AudioProcessPool, packets: list[bytes]) -> None:
    got = Collector()
    stream = shared_pool.open_stream(5, got)
    stream.submit([(3, i, 960 * i, p, 0, i) for i, p in enumerate(packets[:30])])
    stream.reset(3)
    stream.submit([(3, 1000 + i, 0, p, 0, i) for i, p in enumerate(packets[30:40])])
    frames = got.wait_for(40)
    fresh = OpusDecoder()
    assert [f.audio for f in frames[30:]] == [fresh.decode(p) for p in packets[30:40]]
    with pytest.raises(ValueError):
        stream.reset(-1)
    stream.close()


def test_on_frames_exception_does_not_stop_the_stream(
    shared_pool: AudioProcessPool, packets: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    got = Collector()
    calls = []

    def flaky(frames):
        calls.append(len(frames))
        if len(calls) == 1:
            raise RuntimeError("sink bug")
        got(frames)

    stream = shared_pool.open_stream(6, flaky)
    stream.submit([(1, 0, 0, packets[0], 0, 0)])
    wait_until(lambda: calls)
    stream.submit([(1, 1, 960, packets[1], 0, 1)])
    assert got.wait_for(1)[0].sequence == 1
    assert f"on_frames of stream {stream.stream_id} raised" in caplog.text  # says which callback
    stream.close()


def test_an_on_decode_error_that_raises_is_logged_by_name_and_the_frames_still_come(
    shared_pool: AudioProcessPool, packets: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    got = Collector()

    def broken(items: list[tuple]) -> None:
        raise RuntimeError("owner bug")

    stream = shared_pool.open_stream(8, got, on_decode_error=broken)
    assert stream.submit([(1, 0, 0, b"\xff" * 41, 0, 0), (1, 1, 960, packets[1], 0, 1)])
    assert [f.kind for f in got.wait_for(2)] == [FrameKind.plc, FrameKind.decoded]
    assert f"on_decode_error of stream {stream.stream_id} raised" in caplog.text
    stream.close()


def test_mixer_counts_what_it_cannot_decode(tmp_path, packets: list[bytes]) -> None:
    from discord.ext.listening.files import WaveAudioFile

    with WaveAudioFile(tmp_path / "mix.wav") as file:
        mixer = Mixer(file)

        def frame(i: int, audio: bytes) -> AudioFrame:
            return AudioFrame(None, 1, i, 960 * i, audio, FrameKind.opus, 960 * i, 0.0, None)

        mixer.add(frame(0, packets[0]))
        mixer.add(frame(1, b"\xff" * 41))
        mixer.add(frame(2, packets[1]))
        assert mixer.decode_errors == 1
        assert mixer.newest == 3 * 960


def test_two_guilds_use_two_workers(shared_pool: AudioProcessPool, packets: list[bytes]) -> None:
    a, b = Collector(), Collector()
    sa = shared_pool.open_stream(10, a)
    sb = shared_pool.open_stream(11, b)
    assert (sa.worker_index, sb.worker_index) == (0, 1)
    pids = [wait_ready(shared_pool, 0), wait_ready(shared_pool, 1)]
    assert pids[0] != pids[1] and all(psutil.pid_exists(p) for p in pids)
    items = [(42, i, 960 * i, p, 0, i) for i, p in enumerate(packets[:50])]
    sa.submit(items)
    sb.submit(items)
    ref = OpusDecoder()
    expect = [ref.decode(p) for p in packets[:50]]
    assert [f.audio for f in a.wait_for(50)] == expect
    assert [f.audio for f in b.wait_for(50)] == expect
    sa.close()
    sb.close()


def test_speakers_fill_one_worker_then_the_next_then_the_least_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes_mod, "SPEAKERS_PER_WORKER", 4)
    pool = AudioProcessPool(3)
    try:
        assert pool.next_speaker_worker() == 0 and pool.speakers == [0, 0, 0]
        assert [pool.assign_speaker() for _ in range(12)] == [0] * 4 + [1] * 4 + [2] * 4
        pool.release_speaker(1)
        assert pool.next_speaker_worker() == 1  # room again on worker 1, before any full one
        assert [pool.assign_speaker() for _ in range(5)] == [1, 0, 1, 2, 0]  # all full: the fewest
        assert pool.speakers == [6, 5, 5]
        for w, n in enumerate([6, 5, 5]):
            for _ in range(n + 1):  # one more than it has: never below zero
                pool.release_speaker(w)
        assert pool.speakers == [0, 0, 0]
        for bad, error in ((3, ValueError), (-1, ValueError), ("0", TypeError), (True, TypeError)):
            with pytest.raises(error, match="worker"):
                pool.release_speaker(bad)
    finally:
        pool.cleanup_processes()


def test_the_next_worker_starts_when_one_is_half_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes_mod, "SPEAKERS_PER_WORKER", 4)
    with AudioProcessPool(3) as pool:
        assert pool.assign_speaker() == 0
        time.sleep(0.3)
        assert pool.worker_pids() == [None, None, None]  # no stream, not half full: nothing starts
        assert pool.assign_speaker() == 0
        wait_ready(pool, 1)  # worker 0 half full: worker 1 starts before its first speaker
        assert pool.worker_pids()[2] is None
        assert [pool.assign_speaker() for _ in range(4)] == [0, 0, 1, 1]
        wait_ready(pool, 2)
        assert pool.worker_pids()[0] is None  # (a session opens a stream on its worker: that starts it)


# -- processes -------------------------------------------------------------------------------


def test_idle_workers_stay_up(shared_pool: AudioProcessPool) -> None:
    # A worker with nothing to do only checks on its parent (every second): it must not
    # mistake the forkserver, its actual parent, for an orphaning and quit.
    shared_pool.open_stream(20, print).close()
    shared_pool.open_stream(21, print).close()
    pids = [wait_ready(shared_pool, 0), wait_ready(shared_pool, 1)]
    restarts = shared_pool.restarts
    time.sleep(1.6)  # past the worker's 1 s idle check
    assert shared_pool.worker_pids() == pids and shared_pool.restarts == restarts


def test_a_worker_that_answered_everything_is_not_taken_for_hung(packets: list[bytes]) -> None:
    # Several answers (one per batch), then nothing to do for longer than the patience.
    got = Collector()
    with AudioProcessPool(1, process_patience=0.3) as p:
        stream = p.open_stream(0, got)
        pid = wait_ready(p, 0)
        for b in range(4):
            assert stream.submit([(1, 3 * b + i, 960 * (3 * b + i), packets[3 * b + i], 0, 0) for i in range(3)])
            got.wait_for(3 * (b + 1))
        time.sleep(0.8)
        assert p.restarts == [0] and p.worker_pids() == [pid]


_POOL_SCRIPT = """
import time
from discord.ext.listening.pool import AudioProcessPool
if __name__ == "__main__":
    pool = AudioProcessPool(2)
    pool.open_stream(0, print), pool.open_stream(1, print)
    while not all(s.inc is not None and s.inc.ready for s in pool._slots):
        time.sleep(0.01)
    print(*pool.worker_pids(), flush=True)
    {ending}
"""


def _script_with_a_pool(tmp_path, ending: str) -> tuple[subprocess.Popen[str], list[int]]:
    """A Python child that starts a 2-worker pool, prints the workers' pids, then runs ``ending``."""
    script = tmp_path / "bot.py"
    script.write_text(_POOL_SCRIPT.format(ending=ending))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids = [int(x) for x in child.stdout.readline().split()]
    return child, pids


def test_workers_exit_when_the_parent_is_killed(tmp_path) -> None:
    parent, pids = _script_with_a_pool(tmp_path, "time.sleep(60)")
    try:
        assert len(pids) == 2
    finally:
        parent.kill()
        parent.wait(10)
        parent.stdout.close()
    wait_until(lambda: all(process_gone(pid) for pid in pids), timeout=10)


def test_a_script_that_never_cleans_up_its_pool_still_exits(tmp_path) -> None:
    # it ends without cleanup_processes(): the exit must neither hang nor leave workers behind
    child, pids = _script_with_a_pool(tmp_path, "pass")
    try:
        assert len(pids) == 2
        assert child.wait(30) == 0  # no thread of the pool holds the interpreter's exit
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        child.stdout.close()
    wait_until(lambda: all(process_gone(pid) for pid in pids), timeout=10)


def test_spawn_start_method(packets: list[bytes]) -> None:
    got = Collector()
    with AudioProcessPool(1, start_method="spawn") as p:
        stream = p.open_stream(99, got)
        stream.submit([(1, i, 960 * i, pk, 0, i) for i, pk in enumerate(packets[:20])])
        ref = OpusDecoder()
        assert [f.audio for f in got.wait_for(20, timeout=30)] == [ref.decode(pk) for pk in packets[:20]]
        pid = p.worker_pids()[0]
        # really spawned (a fresh interpreter), not forked from this one
        assert "spawn_main" in " ".join(psutil.Process(pid).cmdline())
    assert process_gone(pid)


def test_a_worker_slower_to_start_than_the_patience_is_not_taken_for_hung(packets: list[bytes]) -> None:
    # spawn imports discord.py afresh (about a second here): start-up has its own, longer limit
    got = Collector()
    with AudioProcessPool(1, start_method="spawn", process_patience=0.3) as p:
        stream = p.open_stream(0, got)
        assert stream.submit([(1, i, 960 * i, pk, 0, i) for i, pk in enumerate(packets[:5])])  # before it is up
        got.wait_for(5, timeout=30)
        assert p.restarts == [0]


def test_killed_worker_is_restarted_and_loss_is_counted(packets: list[bytes]) -> None:
    got = Collector()
    lost: list[tuple] = []
    with AudioProcessPool(1) as p:
        stream = p.open_stream(0, got, on_lost=lost.extend)
        pid = wait_ready(p, 0)
        stream.submit([(1, i, 960 * i, pk, 0, i) for i, pk in enumerate(packets[:10])])
        got.wait_for(10)
        # Freeze the worker so the next batch is certainly inside it when it dies.
        os.kill(pid, signal.SIGSTOP)
        stream.submit([(1, i, 960 * i, pk, 0, i) for i, pk in enumerate(packets[10:20], 10)])
        slot = p._slots[0]
        wait_until(lambda: slot.inc.sent == 20)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: p.restarts == [1] and p.worker_pids()[0] not in (None, pid))
        assert stream.lost_in_worker == 10 and stream.in_flight == 0
        assert [item[1] for item in lost] == list(range(10, 20))  # exactly the batch that died
        # The stream continues on a fresh decoder.
        stream.submit([(1, i, 960 * i, pk, 0, i) for i, pk in enumerate(packets[20:40], 20)])
        frames = got.wait_for(30)
        fresh = OpusDecoder()
        assert [f.sequence for f in frames] == list(range(10)) + list(range(20, 40))
        assert [f.audio for f in frames[10:]] == [fresh.decode(pk) for pk in packets[20:40]]
        s = stream.stats()
        assert s.submitted == s.decoded + s.lost_in_worker == 40
        new_pid = p.worker_pids()[0]
    assert process_gone(new_pid)


def test_hung_worker_is_restarted_after_patience(packets: list[bytes]) -> None:
    got = Collector()
    with AudioProcessPool(1, process_patience=0.5) as p:
        stream = p.open_stream(0, got)
        pid = wait_ready(p, 0)
        stream.submit([(1, 0, 0, packets[0], 0, 0)])
        got.wait_for(1)  # it answered once: the patience clock runs from its last answer
        os.kill(pid, signal.SIGSTOP)
        stream.submit([(1, i, 960 * i, pk, 0, i) for i, pk in enumerate(packets[1:6], 1)])
        started = time.monotonic()
        wait_until(lambda: p.restarts == [1], timeout=10)
        assert 0.4 < time.monotonic() - started < 5
        assert stream.lost_in_worker == 5
        stream.submit([(1, 6, 960 * 6, packets[6], 0, 6)])
        assert got.wait_for(2)[1].sequence == 6


def test_a_worker_that_hangs_half_way_through_a_backlog_is_restarted(packets: list[bytes]) -> None:
    # The worker answers the first parts of a long backlog, then stops: patience runs from
    # its last answer, and what it had not answered is counted lost.
    got = Collector()
    pid_box: list[int] = []

    def stop_worker_on_third_answer(frames: list[DecodedFrame]) -> None:
        got(frames)
        if got.calls == 3:
            os.kill(pid_box[0], signal.SIGSTOP)

    n = 4000
    with AudioProcessPool(1, process_patience=0.5, max_backlog=n) as p:
        stream = p.open_stream(0, stop_worker_on_third_answer)
        pid_box.append(wait_ready(p, 0))
        assert stream.submit([(1, i, 960 * i, packets[i % len(packets)], 0, i) for i in range(n)])
        wait_until(lambda: p.restarts == [1], timeout=10)
        answered = len(got.frames)
        assert 3 * 64 <= answered < n and stream.lost_in_worker == n - answered


def test_a_worker_hung_on_its_first_single_packet_is_restarted(packets: list[bytes]) -> None:
    with AudioProcessPool(1, process_patience=0.3) as p:
        stream = p.open_stream(0, Collector())
        pid = wait_ready(p, 0)
        os.kill(pid, signal.SIGSTOP)
        assert stream.submit([(1, 0, 0, packets[0], 0, 0)])
        wait_until(lambda: p.restarts == [1], timeout=10)
        assert stream.lost_in_worker == 1


def test_a_hung_worker_is_restarted_even_while_batches_keep_coming(packets: list[bytes]) -> None:
    # Speech goes on while the worker hangs: new batches must not restart its patience clock.
    got = Collector()
    with AudioProcessPool(1, process_patience=0.5) as p:
        stream = p.open_stream(0, got)
        pid = wait_ready(p, 0)
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        seq = 0
        while p.restarts == [0]:
            assert time.monotonic() < deadline, "a worker fed every 50 ms was never taken for hung"
            stream.submit([(1, seq, 960 * seq, packets[seq % len(packets)], 0, seq)])
            seq += 1
            time.sleep(0.05)
        assert stream.lost_in_worker > 0


def test_direct_writes_keep_the_books_straight(
    shared_pool: AudioProcessPool, packets: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    got = Collector()
    stream = shared_pool.open_stream(12, got)
    wait_ready(shared_pool, shared_pool.worker_index(12))
    for i in range(6):  # small batches to an idle worker: each written by the submitting thread
        assert stream.submit([(3, i, 960 * i, packets[i], 0, i)])
        got.wait_for(i + 1)
    assert [f.sequence for f in got.frames] == list(range(6))
    assert not [r for r in caplog.records if r.levelname == "ERROR"]  # the answers matched what was sent
    stream.close()


def _spy_writes(pool: AudioProcessPool, index: int) -> list[tuple[str, int]]:
    """Record (thread, bytes) of every write to the worker's pipe from now on."""
    slot = pool._slots[index]
    inc = slot.inc
    wait_until(lambda: not slot.pending)  # earlier tests' close messages are out...
    with inc.send_lock:  # ... and written
        pass
    writes: list[tuple[str, int]] = []
    real = inc.conn.send_bytes

    def send_bytes(data: bytes) -> None:
        writes.append((threading.current_thread().name, len(data)))
        real(data)

    inc.conn.send_bytes = send_bytes  # type: ignore[method-assign]
    return writes


def test_deferred_batches_of_every_stream_reach_their_worker_in_one_write_per_round(
    shared_pool: AudioProcessPool, packets: list[bytes]
) -> None:
    got = [Collector(), Collector(), Collector()]
    # two streams on worker 0 (guilds 30 and 32), one on worker 1 (guild 31)
    streams = [shared_pool.open_stream(30 + i, got[i]) for i in range(3)]
    for i in (0, 1):
        wait_ready(shared_pool, i)
    writes = [_spy_writes(shared_pool, i) for i in (0, 1)]
    ref = [OpusDecoder() for _ in streams]
    expect: list[list[bytes]] = [[], [], []]
    for r in range(5):  # five rounds of three packets a stream
        for k, stream in enumerate(streams):
            batch = [(k + 1, 3 * r + j, 960 * (3 * r + j), packets[3 * r + j], 0, j) for j in range(3)]
            assert stream.submit(batch, defer=True)
            expect[k] += [ref[k].decode(p) for p in packets[3 * r : 3 * r + 3]]
        if r == 0:
            time.sleep(0.2)
            assert [c.frames for c in got] == [[], [], []]  # deferred: nothing went out yet
            assert writes == [[], []]
        shared_pool.send_deferred()
        for k in range(3):
            got[k].wait_for(3 * r + 3)
    assert [[f.audio for f in c.frames] for c in got] == expect
    assert [[f.sequence for f in c.frames] for c in got] == [list(range(15))] * 3
    # one write a round per worker, by the thread that called send_deferred
    assert [len(w) for w in writes] == [5, 5]
    assert {t for w in writes for t, _ in w} == {threading.current_thread().name}
    for stream in streams:
        stream.close()


def test_deferred_batches_that_do_not_fit_the_pipe_go_to_the_writer_in_order(
    shared_pool: AudioProcessPool, packets: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    got = [Collector(), Collector()]
    streams = [shared_pool.open_stream(40 + 2 * i, got[i]) for i in range(2)]  # both on worker 0
    wait_ready(shared_pool, 0)
    slot = shared_pool._slots[0]
    writes = _spy_writes(shared_pool, 0)
    first = [(1, i, 960 * i, packets[i], 0, i) for i in range(10)]
    second = [(2, i, 960 * i, packets[i], 0, i) for i in range(40)]
    # room for the first stream's batch only: the second goes by the writer thread, after it
    room = len(pickle.dumps([(OP_DECODE, streams[0].stream_id, 5, first)], 5)) + 8
    unread = slot.inc.sent_bytes - slot.inc.read_bytes  # e.g. earlier tests' close messages
    monkeypatch.setattr(processes_mod, "DIRECT_BYTES", unread + room)
    assert streams[0].submit(first, defer=True) and streams[1].submit(second, defer=True)
    shared_pool.send_deferred()
    got[0].wait_for(10)
    got[1].wait_for(40)
    assert [f.sequence for f in got[1].frames] == list(range(40))
    assert [t for t, _ in writes] == [threading.current_thread().name, f"listening-pool{shared_pool._id}-w0-writer"]
    monkeypatch.setattr(processes_mod, "DIRECT_BYTES", 0)  # no room at all: the writer sends everything
    assert streams[0].submit([(1, 10, 9600, packets[10], 0, 10)], defer=True)
    shared_pool.send_deferred()
    got[0].wait_for(11)
    assert [t for t, _ in writes][2:] == [f"listening-pool{shared_pool._id}-w0-writer"]
    for stream in streams:
        stream.close()


def test_backlog_is_bounded_and_drops_are_counted(packets: list[bytes]) -> None:
    got = Collector()
    lost: list[tuple] = []
    with AudioProcessPool(1, max_backlog=20, wait_timeout=0.2) as p:
        stream = p.open_stream(0, got, on_lost=lost.extend)
        pid = wait_ready(p, 0)
        os.kill(pid, signal.SIGSTOP)
        try:
            assert stream.submit([(1, i, 960 * i, pk, 0, i) for i, pk in enumerate(packets[:15])])
            started = time.monotonic()
            assert not stream.submit([(1, i, 960 * i, pk, 0, i) for i, pk in enumerate(packets[15:25], 15)])
            assert 0.15 < time.monotonic() - started < 2
            assert stream.dropped == 10 and stream.submitted == 15
            assert [item[1] for item in lost] == list(range(15, 25))
        finally:
            os.kill(pid, signal.SIGCONT)
        assert stream.flush(10)
        assert len(got.wait_for(15)) == 15
        # Room again: accepted.
        assert stream.submit([(1, 15, 960 * 15, packets[15], 0, 15)])


def test_cleanup_of_a_stuck_worker_reports_what_it_held(packets: list[bytes]) -> None:
    got = Collector()
    lost: list[tuple] = []
    p = AudioProcessPool(1)
    stream = p.open_stream(0, got, on_lost=lost.extend)
    pid = wait_ready(p, 0)
    os.kill(pid, signal.SIGSTOP)  # killed (SIGKILL works on stopped processes) by the cleanup
    stream.submit([(1, i, 960 * i, pk, 0, i) for i, pk in enumerate(packets[:30])])
    started = time.monotonic()
    p.cleanup_processes(timeout=0.3)
    assert time.monotonic() - started < 5
    assert sorted(item[1] for item in lost) == list(range(30)) and stream.lost_in_worker == 30
    assert not got.frames
    assert process_gone(pid)


def test_cleanup_leaves_no_processes_or_threads(packets: list[bytes]) -> None:
    me = psutil.Process()
    before = {c.pid for c in me.children(recursive=True)}
    got = Collector()
    p = AudioProcessPool(2)
    s0, s1 = p.open_stream(0, got), p.open_stream(1, got)
    pids = [wait_ready(p, 0), wait_ready(p, 1)]
    s0.submit([(1, i, 960 * i, pk, 0, i) for i, pk in enumerate(packets[:40])])
    s1.submit([(2, i, 960 * i, pk, 0, i) for i, pk in enumerate(packets[:40])])
    p.cleanup_processes()
    # Queued work finished before the workers stopped.
    assert len(got.frames) == 80
    p.cleanup_processes()  # idempotent
    assert p.closed and s0.closed and s1.closed
    assert p.restarts == [0, 0]  # a cleanup is not a crash: nothing restarted or counted
    for pid in pids:
        assert process_gone(pid)
    # Whatever new child remains is multiprocessing's own helper (forkserver, resource tracker).
    for child in me.children(recursive=True):
        if child.pid not in before and child.status() != psutil.STATUS_ZOMBIE:
            cmdline = " ".join(child.cmdline())
            assert "forkserver" in cmdline or "resource_tracker" in cmdline, cmdline
    assert not [t for t in threading.enumerate() if t.name.startswith(f"listening-pool{p._id}-")]
    with pytest.raises(RuntimeError):
        p.open_stream(0, got)
    assert not s0.submit([(1, 0, 0, packets[0], 0, 0)]) and s0.dropped == 1


# -- teardown of a worker --------------------------------------------------------------------


def _incarnation_on(pool: AudioProcessPool, conn, *, reader=None) -> Incarnation:
    """A live sleeping process as slot 0's worker, with the pool's own writer thread and
    ``reader`` (default: the pool's own reader, blocked on ``conn``)."""
    slot = pool._slots[0]
    process = multiprocessing.get_context(pool.start_method).Process(target=time.sleep, args=(60,), daemon=True)
    process.start()
    inc = Incarnation(process, conn, True)
    inc.reader = reader or threading.Thread(target=pool._reader_loop, args=(slot, inc), daemon=True)
    inc.writer = threading.Thread(target=pool._writer_loop, args=(slot, inc), daemon=True)
    slot.inc = inc
    inc.reader.start()
    inc.writer.start()
    return inc


def test_retiring_a_worker_whose_pipe_another_process_holds_still_stops_its_reader() -> None:
    # With the fork start method a later child can inherit the worker's end of the pipe:
    # the worker's death then shows no EOF, and the reader must be woken by hand.
    pool = AudioProcessPool(1)
    ours, still_held = multiprocessing.Pipe()
    inc = _incarnation_on(pool, ours)
    process = inc.process
    try:
        pool._retire(pool._slots[0], inc, "died", restart=False)
        assert not inc.reader.is_alive() and not inc.writer.is_alive()
        assert ours.closed  # both threads gone: the descriptor can be released
        with pytest.raises(ValueError):
            process.is_alive()  # closed once it exited: no zombie, no leaked sentinel
        assert pool._slots[0].inc is None and pool._slots[0].restarts == 0
    finally:
        still_held.close()
        pool.cleanup_processes()


def test_a_reader_that_will_not_stop_leaves_the_pipe_open_and_retire_returns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(processes_mod, "_JOIN_TIMEOUT", 0.2)
    pool = AudioProcessPool(1)
    ours, theirs = multiprocessing.Pipe()
    release = threading.Event()
    stubborn = threading.Thread(target=release.wait, args=(30,), daemon=True)
    inc = _incarnation_on(pool, ours, reader=stubborn)
    retiring = threading.Thread(target=pool._retire, args=(pool._slots[0], inc, "died"), kwargs={"restart": False})
    try:
        retiring.start()
        retiring.join(15)
        assert not retiring.is_alive(), "_retire waited for a thread without a bound"
        # Closing a descriptor a live thread still uses could hand its number to another file.
        assert not ours.closed and stubborn.is_alive() and not inc.writer.is_alive()
        assert "did not stop" in caplog.text
    finally:
        release.set()
        retiring.join(15)
        theirs.close()
        ours.close()
        pool.cleanup_processes()


def test_cleanup_from_a_frame_callback_on_the_reader_thread(packets: list[bytes]) -> None:
    # "Safe from any thread" includes the reader thread that runs on_frames.
    p = AudioProcessPool(1)
    outcome: list[object] = []

    def on_frames(frames: list[DecodedFrame]) -> None:
        if outcome:
            return
        try:
            p.cleanup_processes(timeout=2.0)
        except BaseException as exc:  # recorded: the pool would only log it
            outcome.append(exc)
        else:
            outcome.append(threading.current_thread().name)

    stream = p.open_stream(0, on_frames)
    pid = wait_ready(p, 0)
    assert stream.submit([(1, i, 960 * i, pk, 0, i) for i, pk in enumerate(packets[:5])])
    wait_until(lambda: bool(outcome))
    assert outcome == [f"listening-pool{p._id}-w0-reader"]
    assert p.closed and stream.closed and process_gone(pid)
    wait_until(lambda: not [t for t in threading.enumerate() if t.name.startswith(f"listening-pool{p._id}-")])


def test_cleanup_delivers_the_replies_still_in_the_pipe_when_a_worker_exits(packets: list[bytes]) -> None:
    # The worker answers faster than a slow on_frames consumes: when it exits, replies are
    # still in the pipe, and the reader must drain them before the worker is retired.
    got = Collector()

    def slow(frames: list[DecodedFrame]) -> None:
        time.sleep(0.05)
        got(frames)

    lost: list[tuple] = []
    p = AudioProcessPool(1)
    stream = p.open_stream(0, slow, on_lost=lost.extend)
    wait_ready(p, 0)
    for b in range(10):  # ten replies: the worker answers each batch as it comes
        assert stream.submit([(1, 5 * b + i, 960 * (5 * b + i), packets[5 * b + i], 0, 0) for i in range(5)])
        time.sleep(0.01)
    p.cleanup_processes()
    assert len(got.frames) == 50 and not lost and stream.lost_in_worker == 0


def test_batches_queued_for_a_worker_that_never_started_are_reported_lost_at_cleanup(
    packets: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    p = AudioProcessPool(1)
    release = _monitor_held_in_check(p, monkeypatch)  # the worker never starts
    got = Collector()
    lost: list[tuple] = []
    stream = p.open_stream(0, got, on_lost=lost.extend)
    assert stream.submit([(1, i, 960 * i, pk, 0, i) for i, pk in enumerate(packets[:7])])
    release.set()
    p.cleanup_processes()
    # Every item submitted ends in on_frames or on_lost: here all in on_lost.
    assert sorted(item[1] for item in lost) == list(range(7)) and not got.frames
    assert stream.lost_in_worker == 7


def test_the_default_start_method_is_forkserver_where_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    with AudioProcessPool(1) as p:
        assert p.start_method == expected
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])  # Windows
    with AudioProcessPool(1) as p:
        assert p.start_method == "spawn"


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver here")
@pytest.mark.parametrize(
    ("configured", "expected"),
    [
        (["__main__"], ["__main__", "discord.ext.listening.pool.worker"]),  # multiprocessing's default
        (["app.main"], ["app.main", "discord.ext.listening.pool.worker"]),  # the user's choice is kept
        ([], ["__main__", "discord.ext.listening.pool.worker"]),
        (["discord.ext.listening.pool.worker"], ["discord.ext.listening.pool.worker"]),  # once only
    ],
)
def test_the_forkserver_preloads_the_decode_worker(
    configured: list[str], expected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from multiprocessing import forkserver

    monkeypatch.setattr(forkserver._forkserver, "_preload_modules", list(configured))
    processes_mod._preload_in_forkserver()
    assert forkserver._forkserver._preload_modules == expected


def test_a_worker_whose_death_shows_no_eof_is_still_found_and_replaced() -> None:
    pool = AudioProcessPool(1)
    ours, still_held = multiprocessing.Pipe()  # another process holds the pipe: no EOF
    inc = _incarnation_on(pool, ours)
    inc.ready = True
    slot = pool._slots[0]
    try:
        inc.process.kill()
        inc.process.join(10)
        pool._check(slot)
        assert slot.inc is not inc and slot.restarts == 1 and not inc.alive
    finally:
        still_held.close()
        pool.cleanup_processes()


def test_a_worker_that_never_says_hello_is_replaced_after_the_start_up_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(processes_mod, "_STARTUP_TIMEOUT", 0.2)
    pool = AudioProcessPool(1, process_patience=0.1)
    ours, theirs = multiprocessing.Pipe()
    inc = _incarnation_on(pool, ours)  # alive, silent: it never answers its hello
    slot = pool._slots[0]
    try:
        pool._check(slot)
        assert slot.inc is inc  # not yet
        time.sleep(0.3)
        pool._check(slot)
        assert slot.inc is not inc and slot.restarts == 1
    finally:
        theirs.close()
        pool.cleanup_processes()


def _monitor_held_in_check(pool: AudioProcessPool, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    inside, release = threading.Event(), threading.Event()

    def held(slot: object) -> None:
        inside.set()
        release.wait(30)

    monkeypatch.setattr(pool, "_check", held)
    pool.open_stream(0, lambda frames: None)  # starts the monitor, which checks the slot at once
    assert inside.wait(10)
    return release


def test_cleanup_waits_for_a_busy_monitor_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    p = AudioProcessPool(1)
    release = _monitor_held_in_check(p, monkeypatch)
    threading.Timer(0.3, release.set).start()
    p.cleanup_processes()
    assert not p._monitor.is_alive()  # no thread of the pool outlives its cleanup


def test_cleanup_gives_up_on_a_stuck_monitor_after_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes_mod, "_JOIN_TIMEOUT", 0.2)
    p = AudioProcessPool(1)
    release = _monitor_held_in_check(p, monkeypatch)
    cleaning = threading.Thread(target=p.cleanup_processes)
    try:
        cleaning.start()
        cleaning.join(15)
        assert not cleaning.is_alive(), "cleanup_processes waited for the monitor without a bound"
        assert p.closed and p._monitor.is_alive()
    finally:
        release.set()
        cleaning.join(15)
    wait_until(lambda: not p._monitor.is_alive())


# -- arguments and the default pool -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_processes": 0}, ValueError),
        ({"max_processes": 65}, ValueError),
        ({"max_processes": 1.5}, TypeError),
        ({"max_processes": True}, TypeError),
        ({"max_processes": "2"}, TypeError),
        ({"max_processes": 1, "wait_timeout": -1}, ValueError),
        ({"max_processes": 1, "wait_timeout": float("nan")}, ValueError),
        ({"max_processes": 1, "wait_timeout": "1"}, TypeError),
        ({"max_processes": 1, "process_patience": 0}, ValueError),
        ({"max_processes": 1, "process_patience": float("inf")}, ValueError),
        ({"max_processes": 1, "start_method": "threads"}, ValueError),
        ({"max_processes": 1, "start_method": 3}, TypeError),
        ({"max_processes": 1, "max_backlog": 0}, ValueError),
        ({"max_processes": 1, "conceal_limit": -1}, ValueError),
    ],
)
def test_bad_arguments(kwargs: dict, error: type) -> None:
    with pytest.raises(error) as info:
        AudioProcessPool(**kwargs)
    bad = list(kwargs)[-1]
    assert str(info.value).startswith(f"{bad} must"), str(info.value)


def test_bad_seconds_say_what_was_wrong() -> None:
    with pytest.raises(TypeError, match=r"^wait_timeout must be a number of seconds, got str$"):
        AudioProcessPool(1, wait_timeout="1")
    with pytest.raises(ValueError, match=r"^wait_timeout must be a finite number of seconds >= 0, got -1$"):
        AudioProcessPool(1, wait_timeout=-1)
    with pytest.raises(ValueError, match=r"^process_patience must be a finite number of seconds > 0, got 0$"):
        AudioProcessPool(1, process_patience=0)


def test_argument_bounds_are_inclusive() -> None:
    for kwargs in ({"max_backlog": 1}, {"max_backlog": 10_000_000}, {"conceal_limit": 0}, {"conceal_limit": 1000}):
        with AudioProcessPool(1, **kwargs) as p:
            assert p.closed is False and getattr(p, next(iter(kwargs))) == next(iter(kwargs.values()))
    for kwargs in ({"max_backlog": 10_000_001}, {"conceal_limit": 1001}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            AudioProcessPool(1, **kwargs)
    with pytest.raises(TypeError, match=r"^start_method must be a str or None, got int$"):
        AudioProcessPool(1, start_method=3)


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver here")
def test_only_a_forkserver_pool_touches_the_forkserver_preload(monkeypatch: pytest.MonkeyPatch) -> None:
    from multiprocessing import forkserver

    monkeypatch.setattr(forkserver._forkserver, "_preload_modules", ["__main__"])
    AudioProcessPool(1, start_method="spawn").cleanup_processes()
    assert forkserver._forkserver._preload_modules == ["__main__"]
    AudioProcessPool(1, start_method="forkserver").cleanup_processes()
    assert forkserver._forkserver._preload_modules == ["__main__", "discord.ext.listening.pool.worker"]


def test_bad_stream_arguments(shared_pool: AudioProcessPool) -> None:
    with pytest.raises(ValueError, match="guild_id"):
        shared_pool.open_stream(-1, print)
    with pytest.raises(TypeError, match="guild_id"):
        shared_pool.open_stream("1", print)
    with pytest.raises(TypeError, match="on_frames"):
        shared_pool.open_stream(1, None)
    with pytest.raises(TypeError, match="decode"):  # decode=False is the session's own path
        shared_pool.open_stream(1, print, decode=False)
    with pytest.raises(TypeError, match="on_decode_error"):
        shared_pool.open_stream(1, print, on_decode_error=3)
    with pytest.raises(ValueError, match="conceal_limit"):
        shared_pool.open_stream(1, print, conceal_limit=-2)
    with pytest.raises(TypeError, match="on_lost"):
        shared_pool.open_stream(1, print, on_lost=3)


def test_bad_cleanup_timeout_leaves_the_pool_open() -> None:
    p = AudioProcessPool(1)
    for bad, error in ((-1, ValueError), (float("nan"), ValueError), ("1", TypeError)):
        with pytest.raises(error, match=r"^timeout must be"):
            p.cleanup_processes(bad)
    assert not p.closed
    p.cleanup_processes(0.5)
    assert p.closed


def test_open_stream_arguments_say_what_was_wrong() -> None:
    with AudioProcessPool(1) as p:
        p.open_stream(2**64 - 1, print, conceal_limit=0).close()  # the largest snowflake; no PLC
        p.open_stream(0, print, conceal_limit=1000).close()
        for kwargs, error, message in (
            ({"guild_id": 2**64}, ValueError, r"^guild_id must be within"),
            ({"on_lost": 3}, TypeError, r"^on_lost must be callable, got int$"),
            ({"on_decode_error": "x"}, TypeError, r"^on_decode_error must be callable, got str$"),
            ({"conceal_limit": 1001}, ValueError, r"^conceal_limit must be within"),
        ):
            args = {"guild_id": 1, "on_frames": print, **kwargs}
            with pytest.raises(error, match=message):
                p.open_stream(args.pop("guild_id"), args.pop("on_frames"), **args)
    with pytest.raises(RuntimeError, match=r"^this AudioProcessPool was cleaned up; create a new one$"):
        p.open_stream(0, print)


def test_one_monitor_per_pool_and_a_quiet_ready_worker_raises_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with AudioProcessPool(1) as p:
        p.open_stream(0, print)
        p.open_stream(0, print)
        wait_ready(p, 0)
        time.sleep(1.3)  # past the idle monitor's look at a ready worker that never had work
        monitors = [t for t in threading.enumerate() if t.name == f"listening-pool{p._id}-monitor"]
        assert len(monitors) == 1
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


def test_what_a_worker_reports_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    got = Collector()
    with AudioProcessPool(1) as p:
        stream = p.open_stream(0, got)
        wait_ready(p, 0)
        p._slots[0].inc.conn.send_bytes(b"not a pickle")  # what a corrupted pipe would carry
        wait_until(lambda: "bad message" in caplog.text)
        assert stream.submit([(1, 0, 0, opus_packets(0.1)[0], 0, 0)])  # and it goes on decoding
        got.wait_for(1)
    assert [r.levelname for r in caplog.records if "bad message" in r.getMessage()] == ["ERROR"]


def test_default_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    # Start from no default pool, and give back whatever another test module left there.
    monkeypatch.setattr(default_pool_mod, "_default_pool", None)
    try:
        p = init_audio_processing_pool(1, process_patience=3)
        assert init_audio_processing_pool(1, process_patience=3) is p
        assert get_default_pool() is p
        with pytest.raises(RuntimeError, match="cleanup_processes"):
            init_audio_processing_pool(2)
        with pytest.raises(ValueError, match="max_processes"):
            init_audio_processing_pool(0)
        p.cleanup_processes()
        q = get_default_pool()
        assert q is not p and not q.closed
        assert q.max_processes == max(1, min(2, os.cpu_count() or 1))
    finally:
        get_default_pool().cleanup_processes()
