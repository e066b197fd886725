"""The pool's bookkeeping per worker: a slot (queue, streams, counters) and its current incarnation.

A slot is worker number ``i`` of a pool for the pool's whole life; an incarnation is one
process of it with the two threads that talk to it, replaced whole when the process dies
or hangs. Also the small helpers both the pool and its streams use (argument checks, the
pipe's buffer size, log rate limiting).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Final

from .protocol import OP_DECODE

if TYPE_CHECKING:
    from .stream import StreamHandle

_log = logging.getLogger(__name__)

# Packets per write by the writer thread: bounds one message (~100 KB) and how much a
# worker holds at once while it catches up.
_BUNDLE_ITEMS: Final = 512
# submit() writes to the pipe itself (no writer-thread hop, ~2 us/packet less) while fewer
# bytes than this sit unread in it: far below the socket buffer, so the write cannot block.
DIRECT_BYTES: Final = 32768
_SOCKET_BUFFER: Final = 1 << 20
_LOG_INTERVAL: Final = 5.0
# Restart backoff: more than this many restarts in the window means a crash loop.
RESTART_BURST: Final = 3
RESTART_WINDOW: Final = 10.0
RESTART_MAX_DELAY: Final = 10.0


class Incarnation:
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
        # worker answers in that order): [stream id, stream, items, answered so far]. What
        # is left here when the worker dies is exactly what died with it.
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


class Slot:
    """Worker number ``index`` of a pool: its queue, its streams, its current incarnation.

    Every method runs with :attr:`lock` held unless it says otherwise.
    """

    def __init__(self, index: int, max_backlog: int, wake: threading.Event) -> None:
        self.index = index
        self.max_backlog = max_backlog
        self.wake = wake  # the pool's monitor waits on it
        self.lock = threading.Lock()
        self.has_work = threading.Condition(self.lock)  # writer waits here
        self.space = threading.Condition(self.lock)  # submit() and flush() wait here
        self.deliver_lock = threading.Lock()  # keeps on_frames calls of a slot in order across restarts
        self.start_lock = threading.Lock()
        self.pending: list[tuple[Any, ...]] = []  # messages not yet written to the worker
        self.pending_sizes: list[int] = []  # pickled size of each (0 for control messages)
        self.pending_items = 0
        self.outstanding = 0  # decode items pending or in the worker
        self.streams: dict[int, StreamHandle] = {}
        self.inc: Incarnation | None = None
        self.prestart = False  # start the worker before any stream uses it (it will be needed soon)
        self.restarts = 0
        self.restart_times: list[float] = []
        self.next_start = 0.0

    def schedule_restart(self, now: float) -> float:
        """Count a restart at ``now`` and set :attr:`next_start`; returns the delay before it.

        Up to :data:`RESTART_BURST` restarts within :data:`RESTART_WINDOW` seconds go at
        once; each one more doubles the wait from 0.5 s, up to :data:`RESTART_MAX_DELAY`
        (a worker that dies on start must not spin a core)."""
        self.restarts += 1
        self.restart_times = [t for t in self.restart_times if now - t < RESTART_WINDOW] + [now]
        burst = len(self.restart_times) - RESTART_BURST
        delay = 0.0 if burst <= 0 else min(RESTART_MAX_DELAY, 0.5 * 2 ** (burst - 1))
        self.next_start = now + delay
        return delay

    def wants_worker(self) -> bool:
        """Whether an open stream uses this worker, or it is to start ahead of its first."""
        return self.prestart or any(not s.closed for s in self.streams.values())

    def forget_finished(self) -> None:
        """Drop closed streams with nothing in flight."""
        for sid, stream in list(self.streams.items()):
            if stream._finished:
                del self.streams[sid]

    def push(self, message: tuple[Any, ...], size: int = 0) -> None:
        """Queue ``message`` (``size`` pickled bytes) behind those pending; wakes nobody."""
        self.pending.append(message)
        self.pending_sizes.append(size)
        if message[0] == OP_DECODE:
            self.pending_items += len(message[3])

    def queue(
        self, stream: StreamHandle, message: tuple[Any, ...], size: int, defer: bool = False
    ) -> Incarnation | None:
        """Take a decode message of ``size`` pickled bytes from ``stream``.

        Returns the incarnation the caller must write the message to itself, after the
        lock, and whose send lock it then holds; ``None`` when the message was queued, for
        the writer thread or (``defer``) for the pool's next ``send_deferred``.
        """
        n = len(message[3])
        self.outstanding += n
        inc = self.inc
        if (
            not defer
            and inc is not None
            and inc.direct
            and inc.ready
            and not self.pending  # nothing queued ahead of this batch: order is kept
            and inc.sent_bytes - inc.read_bytes + size <= DIRECT_BYTES
            # Never wait for the writer here: it may be blocked on a full pipe while the
            # reader needs this slot lock to drain the replies that would free it.
            and inc.send_lock.acquire(blocking=False)
        ):
            if inc.sent == inc.done:
                inc.last_progress = time.monotonic()  # the patience clock starts now
            inc.sent += n
            inc.sent_bytes += size
            inc.in_worker.append([message[1], stream, message[3], 0])
            return inc
        self.push(message, size)
        if not defer:
            self.has_work.notify()
        return None

    def take_bundle(self, inc: Incarnation, room: int | None = None) -> list[tuple[Any, ...]]:
        """What goes to ``inc`` in its next write: the queued messages, up to a bound (and
        up to ``room`` pickled bytes), so the batches of every stream go out in one write."""
        taken = 0
        cut = 0
        size = 0
        for message, message_size in zip(self.pending, self.pending_sizes):
            size += message_size
            if room is not None and size > room:
                break
            cut += 1
            if message[0] == OP_DECODE:
                taken += len(message[3])
                if taken >= _BUNDLE_ITEMS:
                    break
        bundle = self.pending[:cut]
        del self.pending[:cut]
        del self.pending_sizes[:cut]
        self.pending_items -= taken
        for message in bundle:
            if message[0] == OP_DECODE:
                inc.in_worker.append([message[1], self.streams.get(message[1]), message[3], 0])
        if taken and inc.sent == inc.done:
            inc.last_progress = time.monotonic()  # the patience clock starts now
        inc.sent += taken
        return bundle

    def pipe_broke(self, inc: Incarnation) -> None:
        """A write to ``inc`` failed: its worker died. The monitor accounts the loss and
        restarts it. (Needs no lock.)"""
        inc.eof = True
        self.wake.set()

    def answered(
        self, inc: Incarnation, replies: list[tuple[Any, ...]]
    ) -> list[tuple[StreamHandle, list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
        """Account the worker's ``replies``; returns ``(stream, frames, refused)`` to deliver."""
        deliveries = []
        streams = self.streams
        in_worker = inc.in_worker
        for sid, n, frames, counts, refused in replies:
            inc.done += n
            self.outstanding -= n
            # Answers come in wire order: retire the oldest in-flight items.
            left = n
            while left and in_worker:
                head = in_worker[0]
                if head[0] != sid:  # cannot happen unless a message vanished: resync
                    _log.error("decode worker %d answered stream %d, expected %d", self.index, sid, head[0])
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
            if stream._answered(n, counts):
                if frames or refused:
                    deliveries.append((stream, frames, refused))
            elif stream._finished:
                del streams[sid]
        self.space.notify_all()
        return deliveries

    def take_lost(self, inc: Incarnation) -> dict[StreamHandle, list[tuple[Any, ...]]]:
        """Account what ``inc`` had been given and not answered as lost; returns it by stream.

        Items still in :attr:`pending` never reached the dead worker: they wait for the
        next one.
        """
        lost: dict[StreamHandle, list[tuple[Any, ...]]] = {}
        for _sid, stream, items, answered in inc.in_worker:
            if stream is not None:
                lost.setdefault(stream, []).extend(items[answered:])
        inc.in_worker.clear()
        for stream, items in lost.items():
            stream._worker_lost(len(items))
        self.forget_finished()
        self.outstanding = self.pending_items
        self.has_work.notify_all()
        self.space.notify_all()
        return lost

    def take_pending(self) -> dict[StreamHandle, list[tuple[Any, ...]]]:
        """Account the queued batches no worker will ever get (pool cleanup) as lost;
        returns them by stream."""
        never_sent: dict[StreamHandle, list[tuple[Any, ...]]] = {}
        for message in self.pending:
            stream = self.streams.get(message[1]) if message[0] == OP_DECODE else None
            if stream is not None:
                never_sent.setdefault(stream, []).extend(message[3])
        for stream, items in never_sent.items():
            stream._worker_lost(len(items))
        self.pending.clear()
        self.pending_sizes.clear()
        self.pending_items = 0
        self.outstanding = 0
        self.space.notify_all()
        return never_sent


class RateLimit:
    """Lets a log line through at most once per interval, counting what it swallowed."""

    __slots__ = ("_last", "_suppressed")

    def __init__(self) -> None:
        self._last = -math.inf
        self._suppressed = 0

    def ready(self) -> int | None:
        """``None`` to stay quiet, else how many lines were swallowed since the last one."""
        now = time.monotonic()
        if now - self._last < _LOG_INTERVAL:
            self._suppressed += 1
            return None
        self._last, n, self._suppressed = now, self._suppressed, 0
        return n


def enlarge_buffer(conn: Connection) -> bool:
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
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 4 * DIRECT_BYTES
    except OSError:
        return False


def force_eof(conn: Connection) -> None:
    """Wake a reader blocked in ``recv_bytes`` when the worker's death did not (another
    process still holds its end: only possible with the fork start method)."""
    if os.name == "posix":
        try:
            sock = socket.socket(fileno=os.dup(conn.fileno()))
            with sock:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
