"""Multi-process Opus decoding: :class:`AudioProcessPool` and the per-session :class:`StreamHandle`.

Opus decoding is the one heavy step of voice receive (~50-130 us per 20 ms frame), so it
runs in worker processes (:mod:`discord.ext.listening.worker`) while everything cheap
(decryption, reordering, timeline) stays in the parent. One pool serves every voice
connection of the process: a guild's audio always goes to worker ``guild_id %
max_processes``, so each SSRC's packets meet the same stateful decoder, in order.

How a batch travels::

    receive thread --submit()--+--------(pipe has room)--------+--> pipe --> worker process
                               +--> slot.pending --> writer ---+
    on_frames(list) <-- reader thread <-- pipe <-- worker (decode in order, conceal gaps)

- One message per batch each way (a pickle of plain tuples; see the worker module for the
  wire format and ``benchmarks/bench_pool.py`` for why pickle and not :mod:`struct`).
- :meth:`StreamHandle.submit` writes to the pipe itself while little is unread in it (a
  write that cannot block); otherwise it queues the batch for the worker's writer thread,
  which coalesces everything queued into one write. Either way it never blocks on the
  pipe, only (bounded by ``wait_timeout``) on a full backlog.
- A reader thread per worker receives the decoded frames and calls each stream's
  ``on_frames`` with a list, in order.
- A monitor thread per pool restarts workers that die or hang.

The contract with the receive pipeline: every well-formed item given to
:meth:`StreamHandle.submit` comes back exactly once, either as frames through
``on_frames`` (its own frame, whose ``sequence`` is the item's, preceded by one frame per
frame lost before it) or through ``on_lost`` (worker died or hung, batch dropped by
backpressure, pool cleaned up), until the stream is closed.

Processes are started with the ``forkserver`` method where it exists and ``spawn``
elsewhere (``fork`` is allowed but unsafe once discord.py's threads run: a child forked
while another thread holds a lock, e.g. logging's, can deadlock). Both import the main
module in every worker, so a script that creates a pool must keep its top level behind
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import math
import multiprocessing
import multiprocessing.util
import os
import pickle
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Final, NamedTuple

from .frames import FrameKind
from .opus import FRAME_BYTES, FRAME_SAMPLES, OpusDecoder
from .worker import (
    DEFAULT_CONCEAL_LIMIT,
    KIND_SILENCE,
    MAX_GAP,
    OP_CLOSE,
    OP_DECODE,
    OP_RESET,
    OP_STOP,
    REPLY_ERROR,
    REPLY_FRAMES,
    REPLY_HELLO,
    DecodeItem,
    worker_main,
)

__all__ = (
    "DEFAULT_CONCEAL_LIMIT",
    "DEFAULT_MAX_BACKLOG",
    "DEFAULT_PROCESS_PATIENCE",
    "DEFAULT_WAIT_TIMEOUT",
    "AudioProcessPool",
    "DecodeItem",
    "DecodedFrame",
    "StreamHandle",
    "StreamStats",
    "get_default_pool",
    "init_audio_processing_pool",
)

_log = logging.getLogger(__name__)

#: Default seconds :meth:`StreamHandle.submit` may wait for room in a backlogged worker.
DEFAULT_WAIT_TIMEOUT: Final = 0.1
#: Default seconds a busy worker may go without answering before it is restarted.
DEFAULT_PROCESS_PATIENCE: Final = 5.0
#: Default packets queued or in flight per worker (2 s of 50 speakers at 50 packets/s).
DEFAULT_MAX_BACKLOG: Final = 5000
MAX_PROCESSES: Final = 64

# A fresh worker imports discord.py (the package lives in its namespace) before it can
# answer; on a loaded machine that takes seconds, so start-up gets its own, longer limit.
_STARTUP_TIMEOUT: Final = 30.0
# How often the monitor looks at its workers; bounds how late a death is noticed.
_MONITOR_INTERVAL: Final = 0.1
# Packets per write by the writer thread: bounds one message (~100 KB) and how much a
# worker holds at once while it catches up.
_BUNDLE_ITEMS: Final = 512
# submit() writes to the pipe itself (no writer-thread hop, ~2 us/packet less) while fewer
# bytes than this sit unread in it: far below the socket buffer, so the write cannot block.
_DIRECT_BYTES: Final = 32768
_SOCKET_BUFFER: Final = 1 << 20
# Waits on threads and processes during restarts and shutdown.
_JOIN_TIMEOUT: Final = 2.0
# Restart backoff: more than this many restarts in the window means a crash loop.
_RESTART_BURST: Final = 3
_RESTART_WINDOW: Final = 10.0
_RESTART_MAX_DELAY: Final = 10.0
_LOG_INTERVAL: Final = 5.0

_KINDS: Final = (FrameKind.decoded, FrameKind.fec, FrameKind.plc, FrameKind.silence, FrameKind.opus)
# Every silence frame shares this one object: a long gap costs a list slot per frame, not 3840 bytes.
_SILENCE_PCM: Final = bytes(FRAME_BYTES)

# Serializes process starts across pools: under ``fork`` a child inherits every pipe end
# open at that moment, and a sibling holding a worker's pipe hides that worker's death.
_START_LOCK = threading.Lock()


class DecodedFrame(NamedTuple):
    """One 20 ms frame out of the pool, in sequence order per SSRC.

    Attributes
    ----------
    ssrc: :class:`int`
        The SSRC of the item that produced it.
    sequence: :class:`int`
        RTP sequence number (16 bit); concealed frames carry the lost packet's number.
    timestamp: :class:`int`
        RTP timestamp (32 bit); concealed frames carry ``timestamp - 960 * k`` of the
        packet after the gap (Discord frames are 20 ms).
    audio: :class:`bytes`
        48 kHz stereo s16le PCM (3840 bytes for a 20 ms frame, all zero for ``silence``)
        in a decoding stream; in a ``decode=False`` stream the Opus payload for ``opus``
        frames and ``b""`` for ``silence`` frames (a lost-packet marker).
    kind: :class:`~discord.ext.listening.frames.FrameKind`
        ``decoded``, ``fec``, ``plc`` or ``silence`` (decoding streams); ``opus`` or
        ``silence`` (``decode=False`` streams).
    extra: :class:`int`
        The ``extra`` of the :class:`DecodeItem` the frame came from (gap frames share
        the ``extra`` of the packet after the gap).
    """

    ssrc: int
    sequence: int
    timestamp: int
    audio: bytes
    kind: FrameKind
    extra: int


@dataclass(frozen=True, slots=True)
class StreamStats:
    """A snapshot of a :class:`StreamHandle`'s counters.

    Attributes
    ----------
    submitted: :class:`int`
        Items accepted by :meth:`StreamHandle.submit`.
    decoded: :class:`int`
        Frames decoded from their own packet (``opus`` frames in a ``decode=False`` stream).
    fec: :class:`int`
        Lost frames recovered from the next packet's in-band FEC.
    plc: :class:`int`
        Lost frames synthesized by packet loss concealment.
    silence: :class:`int`
        Lost frames past the concealment limit, reported as silence.
    errors: :class:`int`
        Corrupt packets (each still produced a concealed frame) and malformed items.
    lost_in_worker: :class:`int`
        Items whose frames never came back because their worker died or hung (or that
        were still queued when the pool was cleaned up).
    dropped: :class:`int`
        Items refused by :meth:`StreamHandle.submit` (worker backlogged past
        ``wait_timeout``, or the stream/pool closed).
    """

    submitted: int = 0
    decoded: int = 0
    fec: int = 0
    plc: int = 0
    silence: int = 0
    errors: int = 0
    lost_in_worker: int = 0
    dropped: int = 0

    @property
    def concealed(self) -> int:
        """Frames made up for lost packets: FEC + PLC."""
        return self.fec + self.plc


class _RateLimit:
    """Lets a log line through at most once per interval, counting what it swallowed."""

    __slots__ = ("_last", "_suppressed")

    def __init__(self) -> None:
        self._last = -math.inf
        self._suppressed = 0

    def ready(self) -> int | None:
        now = time.monotonic()
        if now - self._last < _LOG_INTERVAL:
            self._suppressed += 1
            return None
        self._last, n, self._suppressed = now, self._suppressed, 0
        return n


class _Incarnation:
    """One worker process and the two threads that talk to it; replaced whole on restart."""

    __slots__ = (
        "alive",
        "conn",
        "direct",
        "done",
        "eof",
        "in_worker",
        "last_progress",
        "pid",
        "process",
        "read_bytes",
        "reader",
        "ready",
        "retired",
        "send_lock",
        "sent",
        "sent_bytes",
        "started",
        "writer",
    )

    def __init__(self, process: Any, conn: Connection, direct: bool) -> None:
        self.process = process
        self.conn = conn
        # Held for every write to the pipe, by the writer thread or a direct submit().
        self.send_lock = threading.Lock()
        self.direct = direct  # the pipe is a socket with a buffer we know to be large
        self.sent_bytes = 0  # message bytes written to the worker (guarded by the slot lock)
        self.read_bytes = 0  # ... and read by it, as of its last reply
        # Decode messages written to the worker and not fully answered, in wire order (the
        # worker answers in that order): [stream, items, answered so far]. What is left
        # here when the worker dies is exactly what died with it.
        self.in_worker: deque[list[Any]] = deque()
        self.pid: int | None = process.pid
        self.reader: threading.Thread | None = None
        self.writer: threading.Thread | None = None
        self.alive = True  # False once retired: its threads exit, its replies are ignored
        self.retired = False
        self.ready = False  # the worker said hello
        self.eof = False  # the reader saw the pipe close
        self.started = time.monotonic()
        self.last_progress = self.started
        self.sent = 0  # items written to this worker (guarded by the slot lock)
        self.done = 0  # items it answered


class _Slot:
    """Worker number ``index`` of a pool: its queue, its streams, its current incarnation."""

    def __init__(self, index: int, max_backlog: int) -> None:
        self.index = index
        self.max_backlog = max_backlog
        self.lock = threading.Lock()
        self.has_work = threading.Condition(self.lock)  # writer waits here
        self.space = threading.Condition(self.lock)  # submit() and flush() wait here
        self.deliver_lock = threading.Lock()  # keeps on_frames calls of a slot in order across restarts
        self.start_lock = threading.Lock()
        self.pending: list[tuple] = []  # messages not yet taken by the writer
        self.pending_items = 0
        self.outstanding = 0  # decode items pending or in the worker
        self.streams: dict[int, StreamHandle] = {}
        self.inc: _Incarnation | None = None
        self.restarts = 0
        self.restart_times: list[float] = []
        self.next_start = 0.0

    def wants_worker(self) -> bool:
        return any(not s._closed for s in self.streams.values())


class StreamHandle:
    """One consumer of the pool: a voice connection's (or listening session's) audio.

    Created by :meth:`AudioProcessPool.open_stream`; not instantiated directly. Thread-safe:
    :meth:`submit` may run on the receive thread while :meth:`stats` runs elsewhere, but
    the items of one SSRC must be submitted in sequence order (from one thread, or
    serialized by the caller).

    Attributes
    ----------
    stream_id: :class:`int`
        Unique within the pool; names the stream's decoder states in the worker.
    guild_id: :class:`int`
        The guild the stream was opened for.
    worker_index: Optional[:class:`int`]
        ``guild_id % max_processes``; ``None`` for ``decode=False`` streams.
    decode: :class:`bool`
        Whether frames are decoded to PCM (``False``: Opus passed through in the parent).
    conceal_limit: :class:`int`
        Consecutive lost frames concealed by PLC before reporting silence.
    """

    def __init__(
        self,
        pool: AudioProcessPool,
        stream_id: int,
        guild_id: int,
        on_frames: Callable[[list[DecodedFrame]], None],
        slot: _Slot | None,
        decode: bool,
        conceal_limit: int,
        on_lost: Callable[[list[tuple]], None] | None = None,
    ) -> None:
        self._pool = pool
        self.stream_id = stream_id
        self.guild_id = guild_id
        self.worker_index = None if slot is None else slot.index
        self.decode = decode
        self.conceal_limit = conceal_limit
        self._on_frames = on_frames
        self._on_lost = on_lost
        self._slot = slot
        # decode=False streams never touch a slot; their own lock orders their callbacks
        # (reentrant: on_frames runs under it and may call stats() or submit()).
        self._lock: Any = slot.lock if slot is not None else threading.RLock()
        self._closed = False
        self._inflight = 0
        self._submitted = 0
        self._decoded = 0
        self._fec = 0
        self._plc = 0
        self._silence = 0
        self._errors = 0
        self._lost_in_worker = 0
        self._dropped = 0
        self._callback_log = _RateLimit()
        self._drop_log = _RateLimit()

    # -- the packet path -------------------------------------------------------------

    def submit(self, items: Iterable[DecodeItem | tuple]) -> bool:
        """Queue one batch of packets for decoding; never blocks longer than ``wait_timeout``.

        Call it once per jitter-buffer release with everything released (all SSRCs of the
        connection), not once per packet: the per-call overhead (~10-30 us) is then shared.

        Parameters
        ----------
        items: Iterable[:class:`DecodeItem`]
            Items (``DecodeItem`` or plain tuples in its field order), in sequence order per
            SSRC. Payloads must be :class:`bytes`. The pool keeps its own copy of the list.

        Returns
        -------
        :class:`bool`
            ``True`` if the batch was queued (or, for ``decode=False``, delivered); ``False``
            if it was dropped and counted in :attr:`dropped` because the worker stayed
            backlogged for ``wait_timeout`` seconds or the stream is closed.
        """
        # Plain tuples pickle ~8x faster than NamedTuples; tuple() of a tuple is free.
        batch = list(map(tuple, items))
        n = len(batch)
        if not n:
            return True
        slot = self._slot
        if slot is None:
            return self._pass_through(batch)
        message = (OP_DECODE, self.stream_id, self.conceal_limit, batch)
        # Pickled before taking the lock, in case the pipe has room for a direct write (the
        # usual case: the worker keeps up). If it has not, the writer thread re-pickles the
        # message together with others; that only happens while the worker lags behind.
        try:
            data = pickle.dumps([message], 5)
        except Exception:
            batch = _normalized(batch)
            message = (OP_DECODE, self.stream_id, self.conceal_limit, batch)
            data = pickle.dumps([message], 5)
        direct: _Incarnation | None = None
        dropped = False
        with slot.lock:
            if self._closed:
                self._dropped += n
                return False
            if slot.outstanding and slot.outstanding + n > slot.max_backlog:
                # Backlogged: wait a bounded time for the worker to catch up, then drop the
                # newest batch (the caller's) rather than grow memory or stall the socket.
                deadline = time.monotonic() + self._pool.wait_timeout
                while slot.outstanding and slot.outstanding + n > slot.max_backlog and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    slot.space.wait(remaining)
                if self._closed or (slot.outstanding and slot.outstanding + n > slot.max_backlog):
                    self._dropped += n
                    suppressed = self._drop_log.ready()
                    if suppressed is not None and not self._closed:
                        _log.warning(
                            "decode worker %d is backlogged (%d packets queued); dropped %d packets of stream %d "
                            "(%d more drops not logged)",
                            slot.index,
                            slot.outstanding,
                            n,
                            self.stream_id,
                            suppressed,
                        )
                    dropped = True
            if not dropped:
                slot.outstanding += n
                self._inflight += n
                self._submitted += n
                inc = slot.inc
                if (
                    inc is not None
                    and inc.direct
                    and inc.ready
                    and not slot.pending  # nothing queued ahead of this batch: order is kept
                    and inc.sent_bytes - inc.read_bytes + len(data) <= _DIRECT_BYTES
                    # Never wait for the writer here: it may be blocked on a full pipe while
                    # the reader needs this slot lock to drain the replies that would free it.
                    and inc.send_lock.acquire(blocking=False)
                ):
                    direct = inc
                    if inc.sent == inc.done:
                        inc.last_progress = time.monotonic()  # the patience clock starts now
                    inc.sent += n
                    inc.sent_bytes += len(data)
                    inc.in_worker.append([self.stream_id, self, batch, 0])
                else:
                    slot.pending.append(message)
                    slot.pending_items += n
                    slot.has_work.notify()
        if dropped:
            self._lost(batch)
            return False
        if direct is not None:
            try:
                direct.conn.send_bytes(data)
            except (OSError, ValueError):
                # The worker died; the monitor counts this batch as lost with the rest.
                direct.eof = True
                self._pool._wake.set()
            finally:
                direct.send_lock.release()
        return True

    def _pass_through(self, batch: list[tuple]) -> bool:
        # decode=False: nothing to decode, so no process hop; the order of the batch is the
        # order of the frames, and gaps become empty silence markers, as the worker does.
        out: list[DecodedFrame] = []
        append = out.append
        opus_kind, silence_kind = FrameKind.opus, FrameKind.silence
        opus = silence = errors = 0
        for item in batch:
            try:
                ssrc, seq, ts, payload, lost, extra = item
                lost = min(int(lost), MAX_GAP)
                for k in range(lost, 0, -1):
                    append(
                        DecodedFrame(
                            ssrc, (seq - k) & 0xFFFF, (ts - FRAME_SAMPLES * k) & 0xFFFFFFFF, b"", silence_kind, extra
                        )
                    )
                silence += max(lost, 0)
                if payload:
                    append(DecodedFrame(ssrc, seq & 0xFFFF, ts & 0xFFFFFFFF, bytes(payload), opus_kind, extra))
                    opus += 1
                else:
                    append(DecodedFrame(ssrc, seq & 0xFFFF, ts & 0xFFFFFFFF, b"", silence_kind, extra))
                    silence += 1
            except Exception:
                errors += 1
        with self._lock:
            if self._closed:
                self._dropped += len(batch)
                return False
            self._submitted += len(batch)
            self._decoded += opus
            self._silence += silence
            self._errors += errors
            if out:
                self._deliver_list(out)
        return True

    def _deliver(self, frames: list[tuple]) -> None:
        # Runs on the slot's reader thread with the slot's deliver lock held.
        kinds, silence_pcm, new = _KINDS, _SILENCE_PCM, tuple.__new__
        out = [
            new(DecodedFrame, (s, q, t, silence_pcm if k == KIND_SILENCE else a, kinds[k], e))
            for s, q, t, a, k, e in frames
        ]
        self._deliver_list(out)

    def _lost(self, items: list[tuple]) -> None:
        # Tells the owner which items will never produce frames (never under a pool lock).
        if self._on_lost is None or not items:
            return
        try:
            self._on_lost(items)
        except Exception:
            suppressed = self._callback_log.ready()
            if suppressed is not None:
                _log.exception("on_lost of stream %d raised (%d more not logged)", self.stream_id, suppressed)

    def _deliver_list(self, out: list[DecodedFrame]) -> None:
        try:
            self._on_frames(out)
        except Exception:
            suppressed = self._callback_log.ready()
            if suppressed is not None:
                _log.exception("on_frames of stream %d raised (%d more not logged)", self.stream_id, suppressed)

    # -- control ------------------------------------------------------------------------

    def reset(self, ssrc: int | None = None) -> None:
        """Drop the decoder state of ``ssrc`` (all SSRCs of this stream when ``None``).

        Use it when an SSRC is reused or its sender restarted (sequence numbers jumped):
        the next packet then decodes on a fresh decoder instead of one predicting from
        unrelated audio. Ordered with :meth:`submit`: items submitted before the reset
        still use the old state.
        """
        if ssrc is not None and (not isinstance(ssrc, int) or isinstance(ssrc, bool) or not 0 <= ssrc <= 0xFFFFFFFF):
            raise ValueError(f"ssrc must be a 32-bit unsigned int or None, got {ssrc!r}")
        slot = self._slot
        if slot is None:
            return
        with slot.lock:
            if self._closed or self._pool.closed:
                return
            slot.pending.append((OP_RESET, self.stream_id, -1 if ssrc is None else ssrc))
            slot.has_work.notify()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every submitted item's frames were delivered (or counted lost).

        Parameters
        ----------
        timeout: :class:`float`
            Seconds to wait at most.

        Returns
        -------
        :class:`bool`
            Whether nothing is in flight any more.
        """
        slot = self._slot
        if slot is None:
            return True
        deadline = time.monotonic() + _check_seconds("timeout", timeout)
        with slot.lock:
            while self._inflight > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                slot.space.wait(min(remaining, 0.25))
        return True

    def close(self) -> None:
        """Stop the stream: later submits are dropped, in-flight frames are discarded, and the
        worker frees the stream's decoder states. Idempotent. Call :meth:`flush` first to
        receive the frames still in flight."""
        slot = self._slot
        if slot is None:
            with self._lock:
                self._closed = True
            return
        with slot.lock:
            if self._closed:
                return
            self._closed = True
            if self._inflight <= 0:
                slot.streams.pop(self.stream_id, None)
            if not self._pool.closed:
                slot.pending.append((OP_CLOSE, self.stream_id))
                slot.has_work.notify()
            slot.space.notify_all()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (or the pool was cleaned up)."""
        return self._closed

    def __enter__(self) -> StreamHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- counters -----------------------------------------------------------------------

    def stats(self) -> StreamStats:
        """A consistent snapshot of every counter."""
        with self._lock:
            return StreamStats(
                self._submitted,
                self._decoded,
                self._fec,
                self._plc,
                self._silence,
                self._errors,
                self._lost_in_worker,
                self._dropped,
            )

    @property
    def submitted(self) -> int:
        """Items accepted by :meth:`submit`."""
        return self._submitted

    @property
    def decoded(self) -> int:
        """Frames decoded from their own packet (passed through, for ``decode=False``)."""
        return self._decoded

    @property
    def concealed(self) -> int:
        """Lost frames recovered by FEC or synthesized by PLC."""
        return self._fec + self._plc

    @property
    def lost_in_worker(self) -> int:
        """Items whose frames were lost because their worker died or hung (or the pool closed)."""
        return self._lost_in_worker

    @property
    def errors(self) -> int:
        """Corrupt packets and malformed items."""
        return self._errors

    @property
    def dropped(self) -> int:
        """Items refused because the worker was backlogged or the stream closed."""
        return self._dropped

    @property
    def in_flight(self) -> int:
        """Items submitted whose frames have not come back yet."""
        return self._inflight

    def __repr__(self) -> str:
        return (
            f"<StreamHandle id={self.stream_id} guild={self.guild_id} worker={self.worker_index} "
            f"decode={self.decode} closed={self._closed}>"
        )


def _enlarge_buffer(conn: Connection) -> bool:
    """Grow the send buffer of a socketpair end; whether it can take direct writes safely."""
    if os.name != "posix":  # Windows pipes are not sockets: everything goes through the writer
        return False
    try:
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        with sock:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            except OSError:
                pass  # capped by the system (net.core.wmem_max): the default may still do
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 4 * _DIRECT_BYTES
    except OSError:
        return False


def _force_eof(conn: Connection) -> None:
    # Wakes a reader blocked in recv_bytes when the worker's death did not (another
    # process still holds its end: only possible with the fork start method).
    if os.name == "posix":
        try:
            sock = socket.socket(fileno=os.dup(conn.fileno()))
            with sock:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _normalized(batch: list[tuple]) -> list[tuple]:
    # The slow path for batches pickle refuses (memoryview payloads, numpy ints...): coerce
    # each field to what the worker expects, or say which item is wrong.
    out = []
    for item in batch:
        try:
            ssrc, seq, ts, payload, lost, extra = item
            out.append((int(ssrc), int(seq), int(ts), None if payload is None else bytes(payload), int(lost), extra))
            pickle.dumps(extra, 5)
        except Exception as exc:
            raise TypeError(
                "a DecodeItem must be (ssrc: int, sequence: int, timestamp: int, payload: bytes | None, "
                f"lost_before: int, extra: picklable), got {item!r:.200}"
            ) from exc
    return out


def _check_seconds(name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number of seconds {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be within {low}..{high}, got {value!r}")
    return value


def _default_start_method() -> str:
    # forkserver: children fork from a clean single-threaded server (safe with discord.py's
    # threads running) and start faster than spawn; Windows and some platforms only spawn.
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _preload_in_forkserver() -> None:
    # The forkserver forks every worker from one server process; having it import this
    # package (and discord.py, ~0.7 s) once makes each worker start, and restart after a
    # crash, in ~10 ms instead of re-importing. Only matters before the server starts, and
    # keeps whatever was configured (``__main__`` by default).
    try:
        from multiprocessing import forkserver

        current = list(getattr(forkserver._forkserver, "_preload_modules", None) or ["__main__"])
        if worker_main.__module__ not in current:
            forkserver.set_forkserver_preload([*current, worker_main.__module__])
    except Exception:  # pragma: no cover - private layout changed: workers just start slower
        _log.debug("could not add the decode worker to the forkserver preload list", exc_info=True)


_pool_ids = itertools.count(1)
_live_pools: weakref.WeakSet[AudioProcessPool] = weakref.WeakSet()


class AudioProcessPool:
    """Worker processes that decode Opus for every voice connection of this process.

    A guild's streams always go to worker ``guild_id % max_processes``; workers start
    when their first stream opens and are restarted when they die or hang. Close it with
    :meth:`cleanup_processes` or use it as a context manager::

        if __name__ == "__main__":  # required: workers re-import the main module
            with AudioProcessPool(2) as pool:
                ...

    Parameters
    ----------
    max_processes: :class:`int`
        Number of worker processes (1..64). Each uses up to one core and decodes
        ~7000-20000 frames a second depending on the CPU (50-140 us a frame), i.e. about
        140-400 simultaneous speakers.
    wait_timeout: :class:`float`
        Seconds :meth:`StreamHandle.submit` may block when the worker already has
        ``max_backlog`` packets queued or in flight; past it the batch is dropped and
        counted. ``0`` never blocks. Defaults to 0.1.
    process_patience: :class:`float`
        Seconds a worker with work outstanding may go without answering before it is
        considered hung, killed and restarted (its in-flight packets are counted in
        :attr:`StreamHandle.lost_in_worker`). A healthy worker answers every ~10 ms under
        full load. Start-up gets at least 30 s. Defaults to 5.
    start_method: Optional[:class:`str`]
        :mod:`multiprocessing` start method; ``None`` picks ``"forkserver"`` where
        available, else ``"spawn"``. Under both the worker imports the main module, so the
        script must guard its top level with ``if __name__ == "__main__":``.
    max_backlog: :class:`int`
        Packets queued or in flight per worker before :meth:`StreamHandle.submit` waits.
        Defaults to 5000 (2 s of 50 speakers).
    conceal_limit: :class:`int`
        Default for :meth:`open_stream`: consecutive lost frames concealed by PLC before
        reporting silence (5 = 100 ms). 0 disables PLC (FEC still applies).

    Raises
    ------
    TypeError
        An argument has the wrong type.
    ValueError
        An argument is out of range or the start method is unknown.
    """

    def __init__(
        self,
        max_processes: int,
        *,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
        process_patience: float = DEFAULT_PROCESS_PATIENCE,
        start_method: str | None = None,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        conceal_limit: int = DEFAULT_CONCEAL_LIMIT,
    ) -> None:
        self.max_processes = _check_int("max_processes", max_processes, 1, MAX_PROCESSES)
        self.wait_timeout = _check_seconds("wait_timeout", wait_timeout)
        self.process_patience = _check_seconds("process_patience", process_patience, positive=True)
        self.max_backlog = _check_int("max_backlog", max_backlog, 1, 10_000_000)
        self.conceal_limit = _check_int("conceal_limit", conceal_limit, 0, 1000)
        if start_method is None:
            start_method = _default_start_method()
        elif not isinstance(start_method, str):
            raise TypeError(f"start_method must be a str or None, got {type(start_method).__name__}")
        available = multiprocessing.get_all_start_methods()
        if start_method not in available:
            raise ValueError(f"start_method must be one of {available} on this platform, got {start_method!r}")
        self.start_method = start_method
        self._ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            _preload_in_forkserver()
        self._id = next(_pool_ids)
        self._lock = threading.Lock()
        self._closed = False
        self._stream_ids = itertools.count(1)
        self._slots = [_Slot(i, self.max_backlog) for i in range(self.max_processes)]
        self._monitor: threading.Thread | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        _live_pools.add(self)

    # -- public API -----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`cleanup_processes` was called."""
        return self._closed

    def worker_index(self, guild_id: int) -> int:
        """The worker a guild's audio goes to: ``guild_id % max_processes``."""
        return guild_id % self.max_processes

    def open_stream(
        self,
        guild_id: int,
        on_frames: Callable[[list[DecodedFrame]], None],
        *,
        decode: bool = True,
        conceal_limit: int | None = None,
        on_lost: Callable[[list[tuple]], None] | None = None,
    ) -> StreamHandle:
        """Register a consumer (one per voice connection or listening session).

        Parameters
        ----------
        guild_id: :class:`int`
            Picks the worker (``guild_id % max_processes``).
        on_frames: Callable[[List[:class:`DecodedFrame`]], None]
            Called with each batch of frames, in order per SSRC. For decoding streams it runs
            on the worker's reader thread and must be cheap (enqueue and return): it delays
            every stream of the worker, and one call longer than ``process_patience`` makes
            the worker look hung. For ``decode=False`` streams it runs inside
            :meth:`StreamHandle.submit`, on the caller's thread. Exceptions are logged.
        decode: :class:`bool`
            ``False`` passes the Opus payloads through (``FrameKind.opus``) without a worker.
        conceal_limit: Optional[:class:`int`]
            Overrides the pool's ``conceal_limit`` for this stream.
        on_lost: Optional[Callable[[List[:class:`DecodeItem`]], None]]
            Called with the items (as plain tuples) that will never produce frames: those
            a dead or hung worker took with it (monitor thread), those still queued when the
            pool is cleaned up, and a batch :meth:`StreamHandle.submit` drops (inside
            ``submit``, just before it returns ``False``). With it, every submitted item
            ends up either in ``on_frames`` or in ``on_lost``, until :meth:`StreamHandle.close`
            (after which neither is called). Must be cheap; exceptions are logged.

        Raises
        ------
        RuntimeError
            The pool was cleaned up.
        """
        _check_int("guild_id", guild_id, 0, 2**64 - 1)
        if not callable(on_frames):
            raise TypeError(f"on_frames must be callable, got {type(on_frames).__name__}")
        if not isinstance(decode, bool):
            raise TypeError(f"decode must be a bool, got {type(decode).__name__}")
        if on_lost is not None and not callable(on_lost):
            raise TypeError(f"on_lost must be callable or None, got {type(on_lost).__name__}")
        limit = self.conceal_limit if conceal_limit is None else _check_int("conceal_limit", conceal_limit, 0, 1000)
        with self._lock:
            if self._closed:
                raise RuntimeError("this AudioProcessPool was cleaned up; create a new one")
            sid = next(self._stream_ids)
        if not decode:
            return StreamHandle(self, sid, guild_id, on_frames, None, False, limit, on_lost)
        slot = self._slots[self.worker_index(guild_id)]
        handle = StreamHandle(self, sid, guild_id, on_frames, slot, True, limit, on_lost)
        with slot.lock:
            slot.streams[sid] = handle
        # The monitor thread starts the worker now rather than on the first packet (start-up
        # then overlaps with the voice handshake) and off the caller's thread: the first
        # start of a forkserver takes ~0.7 s, which must not block an event loop.
        self._ensure_monitor()
        self._wake.set()
        return handle

    def worker_pids(self) -> list[int | None]:
        """The pid of each worker process (``None`` where none runs)."""
        return [None if s.inc is None else s.inc.pid for s in self._slots]

    @property
    def restarts(self) -> list[int]:
        """How many times each worker was restarted after dying or hanging."""
        return [s.restarts for s in self._slots]

    def cleanup_processes(self, timeout: float = _JOIN_TIMEOUT) -> None:
        """Stop every worker and thread of the pool. Idempotent; safe from any thread.

        Each worker first finishes the batches already queued (delivering their frames),
        then exits; one that does not within ``timeout`` seconds is killed. Every stream is
        closed afterwards. It blocks for up to about ``timeout`` + 2 seconds: from a
        coroutine, run it in a thread (``await asyncio.to_thread(pool.cleanup_processes)``).
        """
        timeout = _check_seconds("timeout", timeout)
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._wake.set()
        monitor = self._monitor
        if monitor is not None and monitor is not threading.current_thread():
            monitor.join(_JOIN_TIMEOUT)
        incs: list[tuple[_Slot, _Incarnation]] = []
        for slot in self._slots:
            with slot.start_lock:  # waits out a start in progress
                with slot.lock:
                    inc = slot.inc
                    if inc is not None and inc.alive:
                        slot.pending.append((OP_STOP,))
                        slot.has_work.notify_all()
                        incs.append((slot, inc))
        deadline = time.monotonic() + timeout
        for _slot, inc in incs:
            inc.process.join(max(0.0, deadline - time.monotonic()))
        for slot, inc in incs:
            # A clean exit leaves the last replies in the pipe: let the reader drain them.
            if inc.reader is not None and inc.reader is not threading.current_thread():
                inc.reader.join(max(0.05, deadline - time.monotonic()))
            self._retire(slot, inc, "pool cleanup", restart=False)
        for slot in self._slots:
            with slot.lock:
                # Batches no worker ever got (it was dead, or the stop came first) are lost too.
                never_sent: dict[StreamHandle, list[tuple]] = {}
                for message in slot.pending:
                    stream = slot.streams.get(message[1]) if message[0] == OP_DECODE else None
                    if stream is not None:
                        never_sent.setdefault(stream, []).extend(message[3])
                for stream, items in never_sent.items():
                    stream._lost_in_worker += len(items)
                    stream._inflight -= len(items)
                slot.pending.clear()
                slot.pending_items = 0
                slot.outstanding = 0
                slot.space.notify_all()
            for stream, items in never_sent.items():
                if not stream._closed:
                    stream._lost(items)
            with slot.lock:
                for stream in slot.streams.values():
                    stream._closed = True
                slot.streams.clear()
        _live_pools.discard(self)
        _log.debug("audio process pool %d cleaned up", self._id)

    def __enter__(self) -> AudioProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup_processes()

    def __repr__(self) -> str:
        return (
            f"<AudioProcessPool max_processes={self.max_processes} start_method={self.start_method!r} "
            f"pids={self.worker_pids()} closed={self._closed}>"
        )

    # -- workers --------------------------------------------------------------------------

    def _ensure_monitor(self) -> None:
        with self._lock:
            if self._monitor is None and not self._closed:
                self._monitor = threading.Thread(
                    target=self._monitor_loop, name=f"listening-pool{self._id}-monitor", daemon=True
                )
                self._monitor.start()

    def _start_worker(self, slot: _Slot) -> None:
        with slot.start_lock:
            if self._closed or slot.inc is not None:
                return
            if self.start_method == "fork":
                # A forked child inherits locks as they are: if another thread were loading
                # libopus (opus.py holds a lock while it does) the child would wait forever.
                # Loading it here first leaves nothing held. Other libraries' locks remain a
                # hazard of fork; the default start methods do not have it.
                OpusDecoder()
            with _START_LOCK:  # (see _START_LOCK: no fork may happen while this pipe is half made)
                parent_conn, child_conn = self._ctx.Pipe(duplex=True)
                try:
                    direct = _enlarge_buffer(parent_conn) & _enlarge_buffer(child_conn)
                    process = self._ctx.Process(
                        target=worker_main,
                        args=(child_conn, slot.index),
                        name=f"listening-decoder-{slot.index}",
                        daemon=True,  # multiprocessing terminates daemons at exit if we never clean up
                    )
                    process.start()
                except BaseException:
                    parent_conn.close()
                    raise
                finally:
                    # The parent must not keep the child's end, or a dead child never shows EOF.
                    child_conn.close()
            inc = _Incarnation(process, parent_conn, direct)
            name = f"listening-pool{self._id}-w{slot.index}"
            inc.reader = threading.Thread(
                target=self._reader_loop, args=(slot, inc), name=name + "-reader", daemon=True
            )
            inc.writer = threading.Thread(
                target=self._writer_loop, args=(slot, inc), name=name + "-writer", daemon=True
            )
            with slot.lock:
                slot.inc = inc
            inc.reader.start()
            inc.writer.start()
            _log.debug("started decode worker %d (pid %s, %s)", slot.index, inc.pid, self.start_method)

    def _writer_loop(self, slot: _Slot, inc: _Incarnation) -> None:
        dumps = pickle.dumps
        while True:
            with slot.lock:
                while inc.alive and not slot.pending:
                    slot.has_work.wait(0.5)
                if not inc.alive:
                    return
            # The send lock comes first, the slot lock second: while we hold it, submit()
            # cannot write directly, so nothing overtakes the bundle we are about to take.
            with inc.send_lock:
                with slot.lock:
                    if not inc.alive:
                        return
                    # Take what is queued (bounded), so batches of every stream that arrived
                    # while we were busy go out in one write.
                    taken = 0
                    cut = 0
                    for message in slot.pending:
                        cut += 1
                        if message[0] == OP_DECODE:
                            taken += len(message[3])
                            if taken >= _BUNDLE_ITEMS:
                                break
                    bundle = slot.pending[:cut]
                    del slot.pending[:cut]
                    slot.pending_items -= taken
                    for message in bundle:
                        if message[0] == OP_DECODE:
                            inc.in_worker.append([message[1], slot.streams.get(message[1]), message[3], 0])
                    if taken and inc.sent == inc.done:
                        inc.last_progress = time.monotonic()  # the patience clock starts now
                    inc.sent += taken
                if not bundle:
                    continue
                data = dumps(bundle, 5)  # cannot fail: submit() pickled every message once already
                with slot.lock:
                    inc.sent_bytes += len(data)
                try:
                    inc.conn.send_bytes(data)
                except (OSError, ValueError) as exc:
                    # Broken pipe: the worker died; the monitor accounts the loss and restarts it.
                    inc.eof = True
                    self._wake.set()
                    _log.debug("decode worker %d: send failed: %r", slot.index, exc)
                    return

    def _reader_loop(self, slot: _Slot, inc: _Incarnation) -> None:
        # Blocks in recv_bytes (no poll loop: one wake-up per reply, not two): the pipe
        # reports EOF when the worker exits or is killed, which ends this thread.
        conn, loads = inc.conn, pickle.loads
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                break
            try:
                message = loads(data)
                op = message[0]
                if op == REPLY_FRAMES:
                    self._handle_frames(slot, inc, message[1], message[2])
                elif op == REPLY_HELLO:
                    with slot.lock:
                        inc.ready = True
                        inc.last_progress = time.monotonic()
                elif op == REPLY_ERROR:
                    _log.error("decode worker %d: %s", slot.index, message[1])
            except Exception:
                _log.exception("decode worker %d: could not handle a reply", slot.index)
        inc.eof = True
        self._wake.set()

    def _handle_frames(self, slot: _Slot, inc: _Incarnation, replies: list[tuple], bytes_read: int) -> None:
        deliveries: list[tuple[StreamHandle, list[tuple]]] = []
        with slot.deliver_lock:
            with slot.lock:
                if not inc.alive:
                    return  # retired meanwhile: these items were already counted as lost
                inc.last_progress = time.monotonic()
                inc.read_bytes = bytes_read
                streams = slot.streams
                in_worker = inc.in_worker
                for sid, n, frames, counts in replies:
                    inc.done += n
                    slot.outstanding -= n
                    # Answers come in wire order: retire the oldest in-flight items.
                    left = n
                    while left and in_worker:
                        head = in_worker[0]
                        if head[0] != sid:  # cannot happen unless a message vanished: resync
                            _log.error("decode worker %d answered stream %d, expected %d", slot.index, sid, head[0])
                            in_worker.popleft()
                            continue
                        take = min(left, len(head[2]) - head[3])
                        head[3] += take
                        left -= take
                        if head[3] == len(head[2]):
                            in_worker.popleft()
                    stream = streams.get(sid)
                    if stream is None:
                        continue
                    stream._inflight -= n
                    stream._decoded += counts[0]
                    stream._fec += counts[1]
                    stream._plc += counts[2]
                    stream._silence += counts[3]
                    stream._errors += counts[4]
                    if stream._closed:
                        if stream._inflight <= 0:
                            del streams[sid]
                    elif frames:
                        deliveries.append((stream, frames))
                slot.space.notify_all()
            for stream, frames in deliveries:
                stream._deliver(frames)

    def _retire(self, slot: _Slot, inc: _Incarnation, reason: str, *, restart: bool) -> None:
        """Take ``inc`` out of service: account its in-flight items as lost, stop its process
        and threads, and (``restart``) schedule a replacement."""
        with slot.lock:
            if inc.retired:
                return
            inc.retired = True
            inc.alive = False
            if slot.inc is inc:
                slot.inc = None
            # Items still in slot.pending never reached the dead worker: they wait for the
            # next one. What the worker had been given and not answered died with it.
            lost: dict[StreamHandle, list[tuple]] = {}
            for _sid, stream, items, answered in inc.in_worker:
                if stream is not None:
                    lost.setdefault(stream, []).extend(items[answered:])
            inc.in_worker.clear()
            lost_total = 0
            for stream, items in lost.items():
                stream._lost_in_worker += len(items)
                stream._inflight -= len(items)
                lost_total += len(items)
            for sid, stream in list(slot.streams.items()):
                if stream._closed and stream._inflight <= 0:
                    del slot.streams[sid]
            slot.outstanding = slot.pending_items
            slot.has_work.notify_all()
            slot.space.notify_all()
        for stream, items in lost.items():
            if not stream._closed:
                stream._lost(items)
        process = inc.process
        if process.is_alive():
            process.kill()
        process.join(_JOIN_TIMEOUT)
        exitcode = process.exitcode
        me = threading.current_thread()
        joined = True
        for thread in (inc.writer, inc.reader):
            if thread is not None and thread is not me:
                thread.join(_JOIN_TIMEOUT)
                if thread.is_alive() and thread is inc.reader:
                    _force_eof(inc.conn)
                    thread.join(_JOIN_TIMEOUT)
                joined = joined and not thread.is_alive()
        if joined:
            # Only once both threads are gone: closing a descriptor another thread still
            # uses could hand its number to an unrelated file.
            inc.conn.close()
        else:
            _log.warning("decode worker %d: its threads did not stop; leaving its pipe open", slot.index)
        if exitcode is not None:
            try:
                process.close()
            except ValueError:
                pass
        if not restart:
            if lost_total:
                _log.warning("decode worker %d stopped (%s); %d packets lost", slot.index, reason, lost_total)
            return
        now = time.monotonic()
        slot.restarts += 1
        slot.restart_times = [t for t in slot.restart_times if now - t < _RESTART_WINDOW] + [now]
        burst = len(slot.restart_times) - _RESTART_BURST
        delay = 0.0 if burst <= 0 else min(_RESTART_MAX_DELAY, 0.5 * 2 ** (burst - 1))
        slot.next_start = now + delay
        hint = ""
        if not inc.ready and self.start_method != "fork":
            hint = ' (it died before starting: is the main module guarded by `if __name__ == "__main__":`?)'
        _log.warning(
            "decode worker %d (pid %s) %s, exit code %s; %d in-flight packets lost; restarting%s%s",
            slot.index,
            inc.pid,
            reason,
            exitcode,
            lost_total,
            f" in {delay:.1f}s" if delay else "",
            hint,
        )

    def _monitor_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(_MONITOR_INTERVAL)
            self._wake.clear()
            if self._stop.is_set():
                return
            for slot in self._slots:
                try:
                    self._check(slot)
                except Exception:
                    _log.exception("decode worker %d: monitor check failed", slot.index)

    def _check(self, slot: _Slot) -> None:
        inc = slot.inc
        now = time.monotonic()
        if inc is not None:
            reason = None
            if inc.eof or not inc.process.is_alive():
                reason = "died"
            elif not inc.ready:
                if now - inc.started > max(_STARTUP_TIMEOUT, self.process_patience):
                    reason = "did not start in time"
            else:
                with slot.lock:
                    busy = inc.sent > inc.done
                    silent_for = now - inc.last_progress
                if busy and silent_for > self.process_patience:
                    reason = f"hung (no answer for {silent_for:.1f}s)"
            if reason is not None and not self._closed:
                self._retire(slot, inc, reason, restart=True)
                inc = None
        if inc is None and not self._closed and now >= slot.next_start:
            with slot.lock:
                wanted = slot.wants_worker()
            if wanted:
                try:
                    self._start_worker(slot)
                except Exception:
                    _log.exception("could not start decode worker %d; retrying in 1s", slot.index)
                    slot.next_start = time.monotonic() + 1.0


# -- the process-wide default pool ---------------------------------------------------------

_default_pool: AudioProcessPool | None = None
_default_lock = threading.Lock()


def init_audio_processing_pool(
    max_processes: int,
    *,
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
    process_patience: float = DEFAULT_PROCESS_PATIENCE,
) -> AudioProcessPool:
    """Create the process-wide default pool that ``listen()`` uses when given none.

    Call it once at start-up (inside ``if __name__ == "__main__":``). Calling it again with
    the same arguments returns the same pool; with different ones while that pool is open
    raises, because replacing it would cut off the streams using it: call its
    :meth:`~AudioProcessPool.cleanup_processes` first.

    Parameters
    ----------
    max_processes: :class:`int`
        Worker processes (see :class:`AudioProcessPool`).
    wait_timeout: :class:`float`
        See :class:`AudioProcessPool`.
    process_patience: :class:`float`
        See :class:`AudioProcessPool`.

    Raises
    ------
    RuntimeError
        A default pool with other settings is already open.
    TypeError, ValueError
        Bad arguments.
    """
    global _default_pool
    _check_int("max_processes", max_processes, 1, MAX_PROCESSES)
    wait_timeout = _check_seconds("wait_timeout", wait_timeout)
    process_patience = _check_seconds("process_patience", process_patience, positive=True)
    with _default_lock:
        current = _default_pool
        if current is not None and not current.closed:
            same = (current.max_processes, current.wait_timeout, current.process_patience) == (
                max_processes,
                wait_timeout,
                process_patience,
            )
            if same:
                return current
            raise RuntimeError(
                "the default audio processing pool already exists with "
                f"max_processes={current.max_processes}, wait_timeout={current.wait_timeout}, "
                f"process_patience={current.process_patience}; call cleanup_processes() on it "
                "(get_default_pool()) before initializing another"
            )
        _default_pool = AudioProcessPool(max_processes, wait_timeout=wait_timeout, process_patience=process_patience)
        return _default_pool


def get_default_pool() -> AudioProcessPool:
    """The process-wide default pool, created on first use with ``min(2, os.cpu_count())``
    workers unless :func:`init_audio_processing_pool` made one (a closed one is replaced)."""
    global _default_pool
    with _default_lock:
        if _default_pool is None or _default_pool.closed:
            _default_pool = AudioProcessPool(max(1, min(2, os.cpu_count() or 1)))
        return _default_pool


@atexit.register
def _cleanup_at_exit() -> None:
    # Registered after multiprocessing's own exit hook, so it runs first: workers get a
    # clean stop and our threads are joined before multiprocessing terminates daemons.
    for pool in list(_live_pools):
        try:
            pool.cleanup_processes(timeout=1.0)
        except Exception:  # pragma: no cover - interpreter shutdown
            pass
