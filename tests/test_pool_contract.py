"""The decode pool's contracts, checked in-process: the worker's pipe protocol, item coercion,
the parent-side helpers and the default pool.

:func:`~discord.ext.listening.pool.worker.worker_main` normally runs in a child process; here
it runs in a thread of the test process (or on its main thread), over a real
``multiprocessing.Pipe``, speaking the wire format of :mod:`discord.ext.listening.pool.protocol`
with real Opus packets. Expected PCM comes from an in-process :class:`OpusDecoder` fed the
same packets in the same order.
"""

from __future__ import annotations

import inspect
import multiprocessing
import os
import pickle
import signal
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from discord.ext import listening
from discord.ext.listening.opus import OpusDecoder, packet_has_fec
from discord.ext.listening.pool import AudioProcessPool, DecodedFrame, get_default_pool, init_audio_processing_pool
from discord.ext.listening.pool import default as default_pool_mod
from discord.ext.listening.pool import processes as processes_mod
from discord.ext.listening.pool import slots as slots_mod
from discord.ext.listening.pool import worker as worker_mod
from discord.ext.listening.pool.protocol import (
    OP_CLOSE,
    OP_DECODE,
    OP_RESET,
    OP_STOP,
    REPLY_ERROR,
    REPLY_FRAMES,
    REPLY_HELLO,
    normalized,
)
from discord.ext.listening.pool.slots import DIRECT_BYTES, Incarnation, RateLimit, Slot, enlarge_buffer, force_eof
from discord.ext.listening.pool.stream import StreamHandle
from discord.ext.listening.pool.worker import worker_main
from helpers import opus_packets

pytestmark = pytest.mark.timeout(60)

# Frame kind codes on the wire (decoding.FRAME_KINDS order).
DECODED, FEC, PLC, SILENCE = 0, 1, 2, 3
WAIT = 5.0  # bound for every wait on the worker; a healthy one answers in milliseconds


# -- audio -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def voice_a() -> list[bytes]:
    return opus_packets(3.0, seed=1)  # 150 packets


@pytest.fixture(scope="module")
def voice_b() -> list[bytes]:
    return opus_packets(1.0, seed=2)  # 50 packets


def decoded(
    ssrc: int, first_seq: int, packets: list[bytes], ref: OpusDecoder, extra0: int = 0
) -> list[tuple[Any, ...]]:
    """The wire frames a worker must produce for consecutive packets with no gaps."""
    return [
        (ssrc, first_seq + i, 960 * (first_seq + i), ref.decode(p), DECODED, extra0 + i) for i, p in enumerate(packets)
    ]


def items(ssrc: int, first_seq: int, packets: list[bytes], extra0: int = 0) -> list[tuple[Any, ...]]:
    return [(ssrc, first_seq + i, 960 * (first_seq + i), p, 0, extra0 + i) for i, p in enumerate(packets)]


# -- a worker in this process ----------------------------------------------------------------


class Worker:
    """``worker_main`` on a thread, and the pool's end of its pipe."""

    def __init__(self, index: int = 7) -> None:
        self.conn, child = multiprocessing.Pipe()
        self.sent = 0  # bytes of every message written, as the worker must count them
        self.thread = threading.Thread(target=worker_main, args=(child, index), daemon=True)
        self.thread.start()

    def send(self, *messages: tuple[Any, ...]) -> None:
        self.send_raw(pickle.dumps(list(messages), 5))

    def send_raw(self, data: bytes) -> None:
        self.conn.send_bytes(data)
        self.sent += len(data)

    def recv(self) -> Any:
        assert self.conn.poll(WAIT), "the worker did not answer"
        return pickle.loads(self.conn.recv_bytes())

    def hello(self) -> None:
        assert self.recv() == (REPLY_HELLO, os.getpid())

    def frames(self) -> list[tuple[Any, ...]]:
        """The entries of the next reply, which must be a REPLY_FRAMES counting every byte sent."""
        reply = self.recv()
        assert reply[0] == REPLY_FRAMES and reply[2] == self.sent, reply[:1] + reply[2:]
        return list(reply[1])

    def error(self) -> str:
        reply = self.recv()
        assert reply[0] == REPLY_ERROR, reply
        return str(reply[1])

    def ends(self) -> None:
        """The worker sends nothing more, closes its end and returns."""
        assert self.conn.poll(WAIT), "the worker did not close its pipe"
        with pytest.raises(EOFError):
            self.conn.recv_bytes()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        self.conn.close()

    def stop(self) -> None:
        self.send((OP_STOP,))
        self.ends()


@pytest.fixture
def worker() -> Iterator[Worker]:
    w = Worker()
    try:
        yield w
    finally:
        if not w.conn.closed:
            w.conn.close()  # a worker left running sees EOF and returns
        w.thread.join(WAIT)


# -- worker: decoding ------------------------------------------------------------------------


def test_worker_greets_decodes_like_an_in_process_decoder_and_stops(
    worker: Worker, voice_a: list[bytes], voice_b: list[bytes]
) -> None:
    worker.hello()
    # Two streams in one write; each has its own decoders, each SSRC its own state.
    worker.send(
        (OP_DECODE, 1, 5, items(10, 0, voice_a[:5])),
        (OP_DECODE, 2, 5, items(10, 0, voice_b[:5], 100)),
    )
    ref_a, ref_b = OpusDecoder(), OpusDecoder()
    assert worker.frames() == [
        (1, 5, decoded(10, 0, voice_a[:5], ref_a), (5, 0, 0, 0, 0), []),
        (2, 5, decoded(10, 0, voice_b[:5], ref_b, 100), (5, 0, 0, 0, 0), []),
    ]
    # A later message continues on the same decoders (state kept between messages).
    worker.send((OP_DECODE, 1, 5, items(10, 5, voice_a[5:8], 5)))
    assert worker.frames() == [(1, 3, decoded(10, 5, voice_a[5:8], ref_a, 5), (3, 0, 0, 0, 0), [])]
    worker.stop()


def test_worker_answers_a_long_batch_in_replies_of_at_most_64_frames(worker: Worker, voice_a: list[bytes]) -> None:
    worker.hello()
    worker.send((OP_DECODE, 3, 5, items(1, 0, voice_a)))  # 150 items in one message
    ref = OpusDecoder()
    expect = decoded(1, 0, voice_a, ref)
    replies = [worker.frames(), worker.frames(), worker.frames()]
    assert replies == [
        [(3, 64, expect[:64], (64, 0, 0, 0, 0), [])],
        [(3, 64, expect[64:128], (64, 0, 0, 0, 0), [])],
        [(3, 22, expect[128:], (22, 0, 0, 0, 0), [])],
    ]
    worker.stop()


def test_worker_sends_as_soon_as_64_frames_are_owed(worker: Worker, voice_a: list[bytes]) -> None:
    # Small messages arriving together share replies, but a reply goes out as soon as 64
    # frames are owed: 32 + 31 + 1 = 64, then again 31 + 32 + 1 = 64.
    sizes = [32, 31, 1, 31, 32, 1]
    messages, start = [], 0
    for n in sizes:
        messages.append((OP_DECODE, 4, 5, items(2, start, voice_a[start : start + n], start)))
        start += n
    worker.hello()
    worker.send(*messages)
    first, second = worker.frames(), worker.frames()
    assert [entry[1] for entry in first] == [32, 31, 1]
    assert [entry[1] for entry in second] == [31, 32, 1]
    ref = OpusDecoder()
    got = [frame for entry in first + second for frame in entry[2]]
    assert got == decoded(2, 0, voice_a[:128], ref)
    worker.stop()


def test_worker_conceals_gaps_with_plc_then_silence_then_fec(worker: Worker, voice_a: list[bytes]) -> None:
    nxt = next(i for i in range(20, len(voice_a)) if packet_has_fec(voice_a[i]))
    worker.hello()
    # conceal_limit 2: of 4 lost frames, two are PLC, one silence, and the last comes from
    # the next packet's FEC (not counted against the limit).
    batch = items(5, 0, voice_a[: nxt - 4])
    batch.append((5, nxt, 960 * nxt, voice_a[nxt], 4, 99))
    worker.send((OP_DECODE, 6, 2, batch))
    ref = OpusDecoder()
    expect = decoded(5, 0, voice_a[: nxt - 4], ref)
    expect += [
        (5, nxt - 4, 960 * (nxt - 4), ref.conceal(), PLC, 99),
        (5, nxt - 3, 960 * (nxt - 3), ref.conceal(), PLC, 99),
        (5, nxt - 2, 960 * (nxt - 2), b"", SILENCE, 99),
        (5, nxt - 1, 960 * (nxt - 1), ref.decode_fec(voice_a[nxt]), FEC, 99),
        (5, nxt, 960 * nxt, ref.decode(voice_a[nxt]), DECODED, 99),
    ]
    assert worker.frames() == [(6, nxt - 3, expect, (nxt - 3, 1, 2, 1, 0), [])]
    worker.stop()


def test_worker_reports_refused_packets_and_conceals_them(worker: Worker, voice_a: list[bytes]) -> None:
    worker.hello()
    bad = (1, 2, 1920, b"\xff" * 41, 0, 2)  # code 3 with an impossible frame count
    batch = [*items(1, 0, voice_a[:2]), bad, *items(1, 3, voice_a[3:5], 3)]
    worker.send((OP_DECODE, 8, 5, batch))
    ref = OpusDecoder()
    expect = decoded(1, 0, voice_a[:2], ref)
    expect.append((1, 2, 1920, ref.conceal(), PLC, 2))
    expect += decoded(1, 3, voice_a[3:5], ref, 3)
    assert worker.frames() == [(8, 5, expect, (4, 0, 1, 0, 1), [bad])]
    worker.stop()


# -- worker: reset and close -------------------------------------------------------------------


def test_worker_reset_drops_one_ssrc_or_all(worker: Worker, voice_a: list[bytes], voice_b: list[bytes]) -> None:
    # SSRC 0 is an SSRC like any other: resetting it leaves SSRC 9 alone.
    worker.hello()
    cont_a, cont_b = OpusDecoder(), OpusDecoder()
    worker.send((OP_DECODE, 1, 5, items(0, 0, voice_a[:10]) + items(9, 0, voice_b[:10])))
    assert worker.frames() == [
        (1, 20, decoded(0, 0, voice_a[:10], cont_a) + decoded(9, 0, voice_b[:10], cont_b), (20, 0, 0, 0, 0), [])
    ]
    # A reset for a stream the worker does not know is no error.
    worker.send(
        (OP_RESET, 42, -1),
        (OP_RESET, 1, 0),
        (OP_DECODE, 1, 5, items(0, 10, voice_a[10:20]) + items(9, 10, voice_b[10:20])),
    )
    fresh_a = OpusDecoder()
    expect_a = decoded(0, 10, voice_a[10:20], fresh_a)
    assert expect_a != decoded(0, 10, voice_a[10:20], cont_a)  # a reset is visible in the audio
    assert worker.frames() == [(1, 20, expect_a + decoded(9, 10, voice_b[10:20], cont_b), (20, 0, 0, 0, 0), [])]
    # -1: every SSRC of the stream.
    worker.send((OP_RESET, 1, -1), (OP_DECODE, 1, 5, items(0, 20, voice_a[20:30]) + items(9, 20, voice_b[20:30])))
    fresh_a, fresh_b = OpusDecoder(), OpusDecoder()
    expect = decoded(0, 20, voice_a[20:30], fresh_a) + decoded(9, 20, voice_b[20:30], fresh_b)
    assert worker.frames() == [(1, 20, expect, (20, 0, 0, 0, 0), [])]
    worker.stop()


def test_worker_close_forgets_the_stream(worker: Worker, voice_a: list[bytes]) -> None:
    worker.hello()
    cont = OpusDecoder()
    worker.send((OP_DECODE, 5, 5, items(3, 0, voice_a[:10])))
    assert worker.frames() == [(5, 10, decoded(3, 0, voice_a[:10], cont), (10, 0, 0, 0, 0), [])]
    # Closing an unknown stream is no error; after a close, the same id starts afresh, with
    # the conceal limit of its new first message (0: a lost frame is silence at once).
    worker.send((OP_CLOSE, 77), (OP_CLOSE, 5), (OP_DECODE, 5, 0, [(3, 11, 960 * 11, voice_a[11], 1, 11)]))
    fresh = OpusDecoder()
    expect = [(3, 10, 9600, b"", SILENCE, 11), (3, 11, 960 * 11, fresh.decode(voice_a[11]), DECODED, 11)]
    if packet_has_fec(voice_a[11]):
        fresh = OpusDecoder()
        expect = [(3, 10, 9600, fresh.decode_fec(voice_a[11]), FEC, 11)]
        expect.append((3, 11, 960 * 11, fresh.decode(voice_a[11]), DECODED, 11))
    assert worker.frames() == [(5, 1, expect, (1, int(expect[0][4] == FEC), 0, int(expect[0][4] == SILENCE), 0), [])]
    worker.stop()


# -- worker: bad input ------------------------------------------------------------------------


def test_worker_reports_bad_messages_and_keeps_going(worker: Worker, voice_a: list[bytes]) -> None:
    worker.hello()
    worker.send_raw(b"not a pickle")
    assert worker.error().startswith("worker 7: bad message: ")
    # One bad message does not cost the others of its write.
    worker.send((OP_DECODE, 1), (99, "a" * 300), (OP_DECODE, 2, 5, items(1, 0, voice_a[:2])))
    assert worker.error().startswith("worker 7: ValueError(")
    assert worker.error() == "worker 7: ValueError('unknown op 99') in (99, '" + "a" * 194
    assert worker.frames() == [(2, 2, decoded(1, 0, voice_a[:2], OpusDecoder()), (2, 0, 0, 0, 0), [])]
    # An error text is at most 1000 characters, whatever the message held.
    worker.send(("x" * 5000,))
    text = worker.error()
    assert len(text) == 1000 and text.startswith("worker 7: ValueError(\"unknown op 'xxx")
    worker.stop()


class _Exploding(list):  # type: ignore[type-arg]
    """Items whose iteration fails after the first two: decoding blows up half way."""

    def __getitem__(self, key: Any) -> Any:
        got = list.__getitem__(self, key)
        return _Exploding(got) if isinstance(key, slice) else got

    def __iter__(self) -> Iterator[Any]:
        yield from list.__iter__(self[:2])
        raise RuntimeError("boom")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Exploding, (list(list.__iter__(self)),))


def test_worker_acknowledges_every_item_when_decoding_blows_up(worker: Worker, voice_a: list[bytes]) -> None:
    worker.hello()
    batch = _Exploding([("not", "an", "item"), *items(4, 1, voice_a[1:4], 1)])
    worker.send((OP_DECODE, 9, 5, batch))
    assert worker.error() == "worker 7: decoding stream 9 failed: RuntimeError('boom')"
    # All 4 items answered (the parent's accounting needs it), with the frame made before the
    # failure; the malformed item and the failure itself are the 2 errors.
    [(sid, n, frames, counts, refused)] = worker.frames()
    assert (sid, n, frames, counts[4], refused) == (9, 4, decoded(4, 1, voice_a[1:2], OpusDecoder(), 1), 2, [])
    worker.stop()


# -- worker: life cycle ---------------------------------------------------------------------


def test_worker_stop_flushes_what_it_decoded(worker: Worker, voice_a: list[bytes]) -> None:
    worker.hello()
    worker.send((OP_DECODE, 1, 5, items(1, 0, voice_a[:3])), (OP_STOP,), (OP_DECODE, 1, 5, items(1, 3, voice_a[3:4])))
    assert worker.frames() == [(1, 3, decoded(1, 0, voice_a[:3], OpusDecoder()), (3, 0, 0, 0, 0), [])]
    worker.ends()  # nothing after the stop is decoded


def test_worker_exits_when_its_pipe_closes(worker: Worker) -> None:
    worker.hello()
    worker.conn.close()
    worker.thread.join(WAIT)
    assert not worker.thread.is_alive()


def test_idle_worker_stays_quiet_and_exits_once_orphaned(monkeypatch: pytest.MonkeyPatch, voice_a: list[bytes]) -> None:
    # The worker checks its parent between idle polls; make those polls fast and count them.
    checks = threading.Condition()
    state = {"ppid": os.getppid(), "checks": 0}

    def getppid() -> int:
        with checks:
            state["checks"] += 1
            checks.notify_all()
            return state["ppid"]

    monkeypatch.setattr(worker_mod, "_IDLE_POLL", 0.001)
    monkeypatch.setattr(worker_mod, "os", types.SimpleNamespace(getpid=os.getpid, getppid=getppid))
    w = Worker()
    try:
        w.hello()
        with checks:
            assert checks.wait_for(lambda: state["checks"] >= 3, WAIT), "the idle worker never checked its parent"
        # Idle, it sent nothing, and it still serves.
        w.send((OP_DECODE, 1, 5, items(1, 0, voice_a[:2])))
        assert w.frames() == [(1, 2, decoded(1, 0, voice_a[:2], OpusDecoder()), (2, 0, 0, 0, 0), [])]
        with checks:
            state["ppid"] = -5  # reparented: the pool's process is gone
        w.ends()
    finally:
        w.conn.close()
        w.thread.join(WAIT)


def test_worker_ignores_ctrl_c_when_it_runs_on_a_main_thread() -> None:
    # In a worker process worker_main runs on the main thread: Ctrl+C, which reaches the
    # whole process group, must not kill it (the parent decides when workers stop).
    conn, child = multiprocessing.Pipe()
    seen: list[Any] = []

    def pool_side() -> None:
        try:
            seen.append(pickle.loads(conn.recv_bytes()) if conn.poll(WAIT) else None)
            seen.append(signal.getsignal(signal.SIGINT))
            conn.send_bytes(pickle.dumps([(OP_STOP,)], 5))
        finally:
            conn.close()

    before = signal.getsignal(signal.SIGINT)
    driver = threading.Thread(target=pool_side, daemon=True)
    driver.start()
    try:
        worker_main(child, 0)
    finally:
        signal.signal(signal.SIGINT, before)
        driver.join(WAIT)
    assert seen == [(REPLY_HELLO, os.getpid()), signal.SIG_IGN]


# -- parent side: items, reset, helpers ------------------------------------------------------------


def test_normalized_coerces_each_field_and_keeps_new_stream() -> None:
    pkt = b"\xf8\xff\xfe"
    out = normalized(
        [
            (np.uint32(7), np.uint16(3), np.uint32(960), memoryview(pkt), np.int64(1), 11, np.True_),
            (1, 2, 3, None, 0, "tag"),
            (1, 3, 4, bytearray(pkt), 0, pickle.PickleBuffer(b"ab"), 0),  # extra picklable (protocol 5)
        ]
    )
    assert out[:2] == [(7, 3, 960, pkt, 1, 11, True), (1, 2, 3, None, 0, "tag", False)]
    assert out[2][:5] == (1, 3, 4, pkt, 0) and out[2][6] is False
    assert [type(x) for x in out[0][:5]] == [int, int, int, bytes, int] and out[0][6] is True
    with pytest.raises(TypeError, match=r"^a DecodeItem must be"):
        normalized([(1, 2, 3, pkt, 0, 0, False, "eighth field")])
    with pytest.raises(TypeError, match=r"^a DecodeItem must be"):
        normalized([(1, 2, 3, pkt, 0)])


def test_stream_reset_of_one_ssrc_or_all(
    pool: listening.AudioProcessPool, voice_a: list[bytes], voice_b: list[bytes]
) -> None:
    frames: list[DecodedFrame] = []
    arrived = threading.Condition()

    def on_frames(batch: list[DecodedFrame]) -> None:
        with arrived:
            frames.extend(batch)
            arrived.notify_all()

    top = 0xFFFFFFFF  # SSRCs are 32-bit: 0 and 2**32 - 1 are both valid
    stream = pool.open_stream(0, on_frames)
    try:
        for bad in (-1, 2**32, True, 1.5, "1"):
            with pytest.raises(ValueError, match="ssrc"):
                stream.reset(bad)  # type: ignore[arg-type]
        assert stream.submit(items(0, 0, voice_a[:10]) + items(top, 0, voice_b[:10]))
        stream.reset(0)
        assert stream.submit(items(0, 10, voice_a[10:20]) + items(top, 10, voice_b[10:20]))
        stream.reset(top)
        stream.reset()
        assert stream.submit(items(0, 20, voice_a[20:30]) + items(top, 20, voice_b[20:30]))
        with arrived:
            assert arrived.wait_for(lambda: len(frames) >= 60, 20), f"{len(frames)} of 60 frames"
        cont_a, fresh_a, fresh_a2 = OpusDecoder(), OpusDecoder(), OpusDecoder()
        cont_b, fresh_b = OpusDecoder(), OpusDecoder()
        expect_a = [cont_a.decode(p) for p in voice_a[:10]] + [fresh_a.decode(p) for p in voice_a[10:20]]
        expect_a += [fresh_a2.decode(p) for p in voice_a[20:30]]
        expect_b = [cont_b.decode(p) for p in voice_b[:20]] + [fresh_b.decode(p) for p in voice_b[20:30]]
        assert [f.audio for f in frames if f.ssrc == 0] == expect_a
        assert [f.audio for f in frames if f.ssrc == top] == expect_b
        assert stream.errors == 0
    finally:
        stream.close()


def test_a_failed_direct_write_hands_the_worker_to_the_monitor(voice_a: list[bytes]) -> None:
    pool = AudioProcessPool(1)  # never starts a process: no stream of it opens
    try:
        wake = threading.Event()
        slot = Slot(0, 100, wake)
        ours, theirs = multiprocessing.Pipe()
        theirs.close()  # the worker died
        inc = Incarnation(types.SimpleNamespace(pid=None), ours, True)
        inc.ready = True
        slot.inc = inc
        stream = StreamHandle(pool, 1, 0, print, slot, 5)
        slot.streams[1] = stream
        batch = items(1, 0, voice_a[:2])
        assert stream.submit(batch)  # accepted: its loss is the monitor's to account
        assert inc.eof is True and wake.is_set()
        with slot.lock:
            lost = slot.take_lost(inc)
        assert lost == {stream: batch} and stream.lost_in_worker == 2 and stream.in_flight == 0
        ours.close()
    finally:
        pool.cleanup_processes()


def test_a_backlogged_submit_goes_ahead_once_the_worker_makes_room(voice_a: list[bytes]) -> None:
    # max_backlog 20 with 15 items in flight: a batch of 10 must wait, and go ahead (not
    # after wait_timeout, and not dropped) as soon as the worker's answers leave room for
    # it, here exactly: 10 still in flight + 10 = 20.
    pool = AudioProcessPool(1, max_backlog=20, wait_timeout=60)  # never starts a process
    ours, theirs = multiprocessing.Pipe()
    slot = Slot(0, 20, threading.Event())
    inc = Incarnation(types.SimpleNamespace(pid=None), ours, False)
    inc.ready = True
    slot.inc = inc
    stream = StreamHandle(pool, 1, 0, print, slot, 5)
    slot.streams[1] = stream
    outcome: list[bool] = []
    submitter = threading.Thread(target=lambda: outcome.append(stream.submit(items(1, 15, voice_a[15:25]))))
    try:
        assert stream.submit(items(1, 0, voice_a[:15]))
        submitter.start()
        waiting = time.monotonic() + WAIT
        while not slot.space._waiters:  # type: ignore[attr-defined]  # until it waits for room
            assert time.monotonic() < waiting, "the second batch did not wait for room"
            time.sleep(0.001)
        with slot.lock:  # what the reader thread does with a reply answering 5 items
            assert slot.answered(inc, [(1, 5, [], (5, 0, 0, 0, 0), [])]) == []
        submitter.join(WAIT)
        assert outcome == [True] and slot.outstanding == 20 and stream.dropped == 0
    finally:
        stream.close()  # releases a submit still waiting
        submitter.join(WAIT)
        ours.close()
        theirs.close()
        pool.cleanup_processes()


def test_rate_limit_lets_one_line_through_per_interval_and_counts_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(slots_mod, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    limit = RateLimit()
    got = []
    for t in (100.0, 101.0, 102.0, 104.9, 106.0, 107.0, 111.5, 200.0):
        now[0] = t
        got.append(limit.ready())
    # The first line passes; within 5 s of the last one lines are swallowed and counted.
    assert got == [0, None, None, None, 3, None, 1, 0]


def test_force_eof_wakes_a_reader_while_the_other_end_stays_open() -> None:
    ours, theirs = multiprocessing.Pipe()  # ``theirs`` stays open, as under fork a sibling's copy
    outcome: list[BaseException] = []

    def reader() -> None:
        try:
            ours.recv_bytes()
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        force_eof(ours)
        thread.join(WAIT)
        assert [type(x) for x in outcome] == [EOFError]
    finally:
        theirs.close()
        thread.join(WAIT)
        ours.close()


# -- the default pool ------------------------------------------------------------------------------


@pytest.fixture
def no_default_pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """Start from no default pool; clean up whichever one the test made (none starts a process:
    no stream is opened on them)."""
    monkeypatch.setattr(default_pool_mod, "_default_pool", None)

    def cleanup() -> None:
        current = default_pool_mod._default_pool
        if current is not None:
            current.cleanup_processes()

    yield cleanup
    cleanup()


@pytest.mark.parametrize("existing", [False, True], ids=["first", "with-one-open"])
@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"max_processes": 0}, ValueError, "max_processes"),
        ({"max_processes": 1, "wait_timeout": -1}, ValueError, "wait_timeout"),
        ({"max_processes": 1, "wait_timeout": "1"}, TypeError, "wait_timeout"),
        ({"max_processes": 1, "process_patience": 0}, ValueError, "process_patience"),
        ({"max_processes": 1, "process_patience": "5"}, TypeError, "process_patience"),
    ],
)
def test_init_default_pool_names_the_bad_argument(
    no_default_pool: Callable[[], None], existing: bool, kwargs: dict[str, Any], error: type, name: str
) -> None:
    if existing:
        init_audio_processing_pool(1)
    with pytest.raises(error, match=f"^{name} must"):
        init_audio_processing_pool(**kwargs)


def test_init_default_pool_keeps_every_setting(no_default_pool: Callable[[], None]) -> None:
    p = init_audio_processing_pool(1, wait_timeout=0.5, process_patience=3)
    assert (p.max_processes, p.wait_timeout, p.process_patience) == (1, 0.5, 3.0)
    assert get_default_pool() is p


@pytest.mark.parametrize(("cpus", "workers"), [(1, 1), (None, 1), (2, 2), (8, 2)])
def test_default_pool_size_follows_the_cpu_count(
    no_default_pool: Callable[[], None], monkeypatch: pytest.MonkeyPatch, cpus: int | None, workers: int
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert get_default_pool().max_processes == workers


def test_restarts_back_off_only_past_a_burst_within_the_window() -> None:
    slot = Slot(0, 100, threading.Event())
    # three restarts within 10 s go at once, then the wait doubles from 0.5 s up to 10 s
    delays = [slot.schedule_restart(100.0 + k) for k in range(9)]
    assert delays == [0.0, 0.0, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert slot.restarts == 9 and slot.next_start == 108.0 + 10.0
    # a restart 10 s after another no longer counts it: the window is strictly shorter
    slot = Slot(0, 100, threading.Event())
    for t in (0.0, 1.0, 2.0):
        slot.schedule_restart(t)
    assert slot.schedule_restart(10.0) == 0.0  # 0.0 left the window: 1.0, 2.0, 10.0
    assert slot.restart_times == [1.0, 2.0, 10.0]
    assert slot.schedule_restart(10.5) == 0.5 and slot.next_start == 11.0  # 1.0, 2.0, 10.0, 10.5
    assert slot.schedule_restart(30.0) == 0.0 and slot.restart_times == [30.0] and slot.restarts == 6


@pytest.fixture
def idle_pool() -> Iterator[AudioProcessPool]:
    """A pool that never starts a process: the streams below are built on their own slot."""
    pool = AudioProcessPool(1)
    try:
        yield pool
    finally:
        pool.cleanup_processes()


def _stream_without_worker(pool: AudioProcessPool) -> tuple[Slot, StreamHandle]:
    """A stream on a slot with no worker process: what it submits stays in flight."""
    slot = Slot(0, 100, threading.Event())
    stream = StreamHandle(pool, 1, 0, lambda frames: None, slot, 5)
    slot.streams[1] = stream
    return slot, stream


def _answer_all(slot: Slot, stream: StreamHandle, after: float) -> threading.Thread:
    def answer() -> None:
        time.sleep(after)
        with slot.lock:
            stream._inflight = 0
            slot.space.notify_all()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread


def test_flush_waits_for_the_frames_in_flight_and_gives_up_at_its_timeout(
    idle_pool: AudioProcessPool, voice_a: list[bytes]
) -> None:
    slot, stream = _stream_without_worker(idle_pool)
    assert stream.flush(0.0) is True  # nothing in flight: at once
    assert stream.submit(items(1, 0, voice_a[:1]))  # exactly one item in flight
    started = time.monotonic()
    assert stream.flush(0.2) is False  # nobody answers: gives up
    assert 0.2 <= time.monotonic() - started < 3.0
    answering = _answer_all(slot, stream, 0.1)
    assert stream.flush(0.9) is True  # the answer comes within the timeout (under a second)
    answering.join()
    with pytest.raises(ValueError, match="timeout"):
        stream.flush(-1)
    assert inspect.signature(StreamHandle.flush).parameters["timeout"].default == 5.0


def _dead_worker_took(slot: Slot, stream: StreamHandle, conn: Any, batch: list[tuple[Any, ...]]) -> Incarnation:
    """A worker (already gone) that was handed ``batch`` by its writer thread."""
    gone = types.SimpleNamespace(
        pid=None, exitcode=-9, is_alive=lambda: False, join=lambda timeout=None: None, close=lambda: None
    )
    inc = Incarnation(gone, conn, False)
    slot.inc = inc
    assert stream.submit(batch)
    with slot.lock:
        slot.take_bundle(inc)
    return inc


def test_retiring_a_worker_twice_counts_one_restart_and_its_losses_once(
    idle_pool: AudioProcessPool, voice_a: list[bytes]
) -> None:
    slot, stream = _stream_without_worker(idle_pool)
    ours, theirs = multiprocessing.Pipe()
    inc = _dead_worker_took(slot, stream, ours, items(1, 0, voice_a[:3]))
    idle_pool._retire(slot, inc, "died", restart=True)
    idle_pool._retire(slot, inc, "died", restart=True)  # the monitor and a failed write both noticed
    assert slot.restarts == 1 and slot.inc is None and not inc.alive
    assert stream.lost_in_worker == 3 and stream.in_flight == 0
    # its replacement dies too, with two more: the losses add up
    inc2 = _dead_worker_took(slot, stream, ours, items(1, 3, voice_a[3:5]))
    idle_pool._retire(slot, inc2, "died", restart=True)
    assert stream.lost_in_worker == 5 and slot.restarts == 2
    theirs.close()


def test_a_streams_stats_snapshot_counts_what_a_closed_stream_refused(
    idle_pool: AudioProcessPool, voice_a: list[bytes]
) -> None:
    _, stream = _stream_without_worker(idle_pool)
    assert stream.submit(items(1, 0, voice_a[:2]))
    stream.close()
    assert not stream.submit(items(1, 2, voice_a[2:5]))  # refused, counted
    assert not stream.submit(items(1, 5, voice_a[5:7]))  # and again: the drops add up
    stats = stream.stats()
    assert (stats.submitted, stats.dropped, stats.lost_in_worker) == (2, 5, 0)


def test_batches_no_worker_will_get_are_counted_lost_per_stream(
    idle_pool: AudioProcessPool, voice_a: list[bytes]
) -> None:
    slot, first = _stream_without_worker(idle_pool)
    second = StreamHandle(idle_pool, 2, 0, lambda frames: None, slot, 5)
    slot.streams[2] = second
    a, b, c = items(1, 0, voice_a[:3]), items(2, 0, voice_a[:2]), items(1, 3, voice_a[3:4])
    assert first.submit(a) and second.submit(b) and first.submit(c)
    second.close()  # queues a close message: not a batch
    with slot.lock:
        lost = slot.take_pending()
    assert lost == {first: a + c, second: b}
    assert (first.lost_in_worker, second.lost_in_worker, first.in_flight) == (4, 2, 0)
    assert slot.pending == [] and slot.pending_items == 0 and slot.outstanding == 0


def test_after_a_worker_dies_with_nothing_queued_the_whole_backlog_is_free(
    idle_pool: AudioProcessPool, voice_a: list[bytes]
) -> None:
    slot, stream = _stream_without_worker(idle_pool)  # max_backlog 100
    ours, theirs = multiprocessing.Pipe()
    inc = _dead_worker_took(slot, stream, ours, items(1, 0, voice_a[:3]))
    idle_pool._retire(slot, inc, "died", restart=False)
    assert stream.submit(items(1, 3, voice_a[3:103]))  # exactly max_backlog: no wait, no drop
    assert stream.dropped == 0
    theirs.close()


def test_a_failed_write_wakes_the_monitor_at_once(idle_pool: AudioProcessPool) -> None:
    slot = idle_pool._slots[0]
    ours, theirs = multiprocessing.Pipe()
    inc = Incarnation(types.SimpleNamespace(pid=None), ours, False)
    idle_pool._wake.clear()
    slot.pipe_broke(inc)  # the writer's send failed: the worker is gone
    assert inc.eof and idle_pool._wake.is_set()  # noticed now, not at the monitor's next look
    ours.close()
    theirs.close()


@pytest.mark.skipif(os.name != "posix", reason="pipes are socketpairs only on POSIX")
def test_a_pipe_is_enlarged_for_direct_writes_on_posix_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    ours, theirs = multiprocessing.Pipe()
    try:
        with socket.socket(fileno=os.dup(ours.fileno())) as sock:
            before = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            assert enlarge_buffer(ours) is True
            after = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        assert after > before and after >= 4 * DIRECT_BYTES  # the pipe's own buffer grew
        monkeypatch.setattr(os, "name", "nt")  # Windows pipes are not sockets
        assert enlarge_buffer(theirs) is False
    finally:
        monkeypatch.undo()
        ours.close()
        theirs.close()


def test_the_monitor_looks_often_only_while_a_worker_starts_or_owes_answers(idle_pool: AudioProcessPool) -> None:
    slot = idle_pool._slots[0]
    ours, theirs = multiprocessing.Pipe()
    assert idle_pool._monitor_sleep() == processes_mod._IDLE_MONITOR_INTERVAL  # no stream: no worker wanted
    stream = StreamHandle(idle_pool, 1, 0, lambda frames: None, slot, 5)
    slot.streams[1] = stream
    assert idle_pool._monitor_sleep() == processes_mod._MONITOR_INTERVAL  # a worker to start
    inc = Incarnation(types.SimpleNamespace(pid=None), ours, False)
    slot.inc = inc
    try:
        assert idle_pool._monitor_sleep() == processes_mod._MONITOR_INTERVAL  # starting (no hello yet)
        inc.ready = True
        assert idle_pool._monitor_sleep() == processes_mod._IDLE_MONITOR_INTERVAL  # up and idle
        inc.sent = 3
        assert idle_pool._monitor_sleep() == processes_mod._MONITOR_INTERVAL  # answers owed: hang watch
        inc.done = 3
        assert idle_pool._monitor_sleep() == processes_mod._IDLE_MONITOR_INTERVAL
    finally:
        slot.inc = None  # (not a real worker: the fixture's cleanup must not retire it)
        ours.close()
        theirs.close()


def test_a_worker_start_after_cleanup_or_on_a_running_worker_starts_nothing(idle_pool: AudioProcessPool) -> None:
    slot = idle_pool._slots[0]
    ours, theirs = multiprocessing.Pipe()
    running = Incarnation(types.SimpleNamespace(pid=None), ours, False)
    slot.inc = running
    try:
        idle_pool._start_worker(slot)  # a start racing with another: the running worker stays
        assert slot.inc is running
    finally:
        slot.inc = None
    idle_pool.cleanup_processes()
    idle_pool._start_worker(slot)  # the monitor's start coming after the cleanup
    assert slot.inc is None
    ours.close()
    theirs.close()


def test_an_empty_batch_is_accepted_and_changes_nothing(idle_pool: AudioProcessPool) -> None:
    slot, stream = _stream_without_worker(idle_pool)
    assert stream.submit([]) is True
    assert (stream.submitted, stream.dropped, stream.in_flight, slot.pending) == (0, 0, 0, [])


def test_a_backlog_filled_exactly_to_its_bound_is_accepted(idle_pool: AudioProcessPool, voice_a: list[bytes]) -> None:
    _, stream = _stream_without_worker(idle_pool)  # max_backlog 100, no worker: all stays queued
    assert stream.submit(items(1, 0, voice_a[:40]))
    assert stream.submit(items(1, 40, voice_a[40:100]))  # 40 + 60 = 100: full, not over
    assert stream.dropped == 0
    assert not stream.submit(items(1, 100, voice_a[100:101]))  # one more: waits, then dropped
    assert not stream.submit(items(1, 100, voice_a[100:102]))
    assert stream.dropped == 3


def test_batches_still_queued_count_against_the_backlog_after_a_worker_dies(
    idle_pool: AudioProcessPool, voice_a: list[bytes]
) -> None:
    slot, stream = _stream_without_worker(idle_pool)  # max_backlog 100
    assert stream.submit(items(1, 0, voice_a[:30])) and stream.submit(items(1, 30, voice_a[30:60]))
    ours, theirs = multiprocessing.Pipe()
    gone = types.SimpleNamespace(
        pid=None, exitcode=-9, is_alive=lambda: False, join=lambda timeout=None: None, close=lambda: None
    )
    slot.inc = Incarnation(gone, ours, False)  # it died before its writer took anything
    idle_pool._retire(slot, slot.inc, "died", restart=False)
    assert stream.lost_in_worker == 0  # the 60 queued wait for the next worker ...
    assert not stream.submit(items(1, 60, voice_a[60:101]))  # ... and still take room: 60 + 41 > 100
    assert stream.submit(items(1, 60, voice_a[60:100]))  # 60 + 40 fits
    theirs.close()
