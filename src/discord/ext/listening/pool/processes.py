"""The process pool itself: :class:`AudioProcessPool`, its worker processes and their threads.

Per worker (a :class:`~discord.ext.listening.pool.slots.Slot`) the pool runs one process at
a time (an :class:`~discord.ext.listening.pool.slots.Incarnation`) with a writer thread,
which coalesces queued batches into one pipe write, and a reader thread, which hands the
decoded frames to their streams; one monitor thread per pool restarts workers that die or
hang.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import multiprocessing
import pickle
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final

from ..checks import check_int, check_seconds
from ..decoding import DEFAULT_CONCEAL_LIMIT
from ..opus import OpusDecoder
from .protocol import OP_STOP, REPLY_ERROR, REPLY_FRAMES, REPLY_HELLO, DecodedFrame
from .slots import DIRECT_BYTES, Incarnation, Slot, enlarge_buffer, force_eof
from .stream import StreamHandle
from .worker import worker_main

__all__ = (
    "DEFAULT_MAX_BACKLOG",
    "DEFAULT_PROCESS_PATIENCE",
    "DEFAULT_WAIT_TIMEOUT",
    "MAX_PROCESSES",
    "SPEAKERS_PER_WORKER",
    "AudioProcessPool",
)

_log = logging.getLogger(__name__)

#: Default seconds :meth:`StreamHandle.submit` may wait for room in a backlogged worker.
DEFAULT_WAIT_TIMEOUT: Final = 0.1
#: Default seconds a busy worker may go without answering before it is restarted.
DEFAULT_PROCESS_PATIENCE: Final = 5.0
#: Default packets queued or in flight per worker (2 s of 50 speakers at 50 packets/s).
DEFAULT_MAX_BACKLOG: Final = 5000
MAX_PROCESSES: Final = 64
#: :meth:`AudioProcessPool.assign_speaker` fills a worker up to this many speakers before it
#: uses the next: each worker that has audio costs a wake-up, a reply and a reader wake-up
#: every round (~250 us of CPU on a VM, four packets' worth of decoding), so light loads
#: share a worker; 32 speakers at once take ~20% of a core.
SPEAKERS_PER_WORKER = 32

# A fresh worker imports discord.py (the package lives in its namespace) before it can
# answer; on a loaded machine that takes seconds, so start-up gets its own, longer limit.
_STARTUP_TIMEOUT: Final = 30.0
# How often the monitor looks at a worker that is starting, restarting or has work out
# (bounds how late a hang is noticed). A death wakes it at once (EOF, failed write).
_MONITOR_INTERVAL: Final = 0.1
# How often it looks at idle workers: only a death that shows no EOF (a forked sibling
# holding the pipe) waits for this.
_IDLE_MONITOR_INTERVAL: Final = 5.0
# Waits on threads and processes during restarts and shutdown.
_JOIN_TIMEOUT: Final = 2.0

# Serializes process starts across pools: under ``fork`` a child inherits every pipe end
# open at that moment, and a sibling holding a worker's pipe hides that worker's death.
_START_LOCK = threading.Lock()


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

    Listening sessions place each speaker on a worker with :meth:`assign_speaker`: the first
    :data:`SPEAKERS_PER_WORKER` on worker 0, then the next worker, then the least loaded.
    A stream opened without ``worker`` goes to ``guild_id % max_processes``. Workers start
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
        self.max_processes = check_int("max_processes", max_processes, 1, MAX_PROCESSES)
        self.wait_timeout = check_seconds("wait_timeout", wait_timeout)
        self.process_patience = check_seconds("process_patience", process_patience, positive=True)
        self.max_backlog = check_int("max_backlog", max_backlog, 1, 10_000_000)
        self.conceal_limit = check_int("conceal_limit", conceal_limit, 0, 1000)
        if start_method is None:
            start_method = _default_start_method()
        elif not isinstance(start_method, str):
            raise TypeError(f"start_method must be a str or None, got {type(start_method).__name__}")
        available = multiprocessing.get_all_start_methods()
        if start_method not in available:
            raise ValueError(f"start_method must be one of {available} on this platform, got {start_method!r}")
        self.start_method = start_method
        # get_context() is typed as BaseContext, which lacks Process; every concrete context has it.
        self._ctx: Any = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            _preload_in_forkserver()
        self._id = next(_pool_ids)
        self._lock = threading.Lock()
        self._closed = False
        self._stream_ids = itertools.count(1)
        self._wake = threading.Event()
        self._slots = [Slot(i, self.max_backlog, self._wake) for i in range(self.max_processes)]
        self._speakers = [0] * self.max_processes  # assigned by assign_speaker (under _lock)
        self._monitor: threading.Thread | None = None
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

    def next_speaker_worker(self) -> int:
        """The worker :meth:`assign_speaker` would pick now (nothing is counted)."""
        with self._lock:
            return self._fill_target()

    def assign_speaker(self) -> int:
        """Pick the worker for one more speaker and count it there until
        :meth:`release_speaker`.

        Fills worker 0 up to :data:`SPEAKERS_PER_WORKER` speakers, then worker 1, and so on;
        once all are that full, the one with the fewest. A speaker must stay on the worker it
        got (its decoder state lives there). Light loads then wake one worker a round instead
        of all of them, and heavy ones use every worker. The next worker starts when one is
        half full.

        Returns
        -------
        :class:`int`
            The worker's index, for :meth:`open_stream`'s ``worker``.
        """
        with self._lock:
            index = self._fill_target()
            self._speakers[index] += 1
            half = self._speakers[index] >= SPEAKERS_PER_WORKER // 2
        if half and index + 1 < self.max_processes and not self._slots[index + 1].prestart:
            # Half full: start the next worker now, so that the first speaker it gets is
            # not kept waiting for a process start.
            self._slots[index + 1].prestart = True
            self._ensure_monitor()
            self._wake.set()
        return index

    def release_speaker(self, worker: int) -> None:
        """A speaker placed by :meth:`assign_speaker` is gone (its session ended).

        Raises
        ------
        TypeError, ValueError
            ``worker`` is not a worker index of this pool.
        """
        check_int("worker", worker, 0, self.max_processes - 1)
        with self._lock:
            if self._speakers[worker] > 0:
                self._speakers[worker] -= 1

    @property
    def speakers(self) -> list[int]:
        """Speakers assigned to each worker and not released."""
        with self._lock:
            return list(self._speakers)

    def _fill_target(self) -> int:
        counts = self._speakers
        for index, n in enumerate(counts):
            if n < SPEAKERS_PER_WORKER:
                return index
        return min(range(len(counts)), key=counts.__getitem__)

    def open_stream(
        self,
        guild_id: int,
        on_frames: Callable[[list[DecodedFrame]], None],
        *,
        conceal_limit: int | None = None,
        on_lost: Callable[[list[tuple[Any, ...]]], None] | None = None,
        on_decode_error: Callable[[list[tuple[Any, ...]]], None] | None = None,
        worker: int | None = None,
    ) -> StreamHandle:
        """Register a consumer (one per voice connection or listening session, or several:
        one per worker it spreads its speakers over).

        Parameters
        ----------
        guild_id: :class:`int`
            Picks the worker (``guild_id % max_processes``) unless ``worker`` is given.
        on_frames: Callable[[List[:class:`DecodedFrame`]], None]
            Called with each batch of frames, in order per SSRC, on the worker's reader
            thread. It must be cheap (enqueue and return): it delays every stream of the
            worker, and one call longer than ``process_patience`` makes the worker look
            hung. Exceptions are logged.
        conceal_limit: Optional[:class:`int`]
            Overrides the pool's ``conceal_limit`` for this stream.
        on_lost: Optional[Callable[[List[:class:`DecodeItem`]], None]]
            Called with the items (as plain tuples) that will never produce frames: those
            a dead or hung worker took with it (monitor thread), those still queued when the
            pool is cleaned up, and a batch :meth:`StreamHandle.submit` drops (inside
            ``submit``, just before it returns ``False``). With it, every submitted item
            ends up either in ``on_frames`` or in ``on_lost``, until :meth:`StreamHandle.close`
            (after which neither is called). Must be cheap; exceptions are logged.
        on_decode_error: Optional[Callable[[List[:class:`DecodeItem`]], None]]
            Called on the reader thread with the items (as plain tuples) whose payload
            libopus refused, just before the ``on_frames`` call that carries their frames
            (each still gets one, concealed). Must be cheap; exceptions are logged.
        worker: Optional[:class:`int`]
            The worker (0 .. ``max_processes - 1``) to decode this stream on, instead of
            the guild's.

        Raises
        ------
        RuntimeError
            The pool was cleaned up.
        TypeError, ValueError
            Bad arguments.
        """
        check_int("guild_id", guild_id, 0, 2**64 - 1)
        for name, callback in (("on_frames", on_frames), ("on_lost", on_lost), ("on_decode_error", on_decode_error)):
            if not callable(callback) and (callback is not None or name == "on_frames"):
                raise TypeError(f"{name} must be callable, got {type(callback).__name__}")
        limit = self.conceal_limit if conceal_limit is None else check_int("conceal_limit", conceal_limit, 0, 1000)
        index = (
            self.worker_index(guild_id) if worker is None else check_int("worker", worker, 0, self.max_processes - 1)
        )
        with self._lock:
            if self._closed:
                raise RuntimeError("this AudioProcessPool was cleaned up; create a new one")
            sid = next(self._stream_ids)
        slot = self._slots[index]
        handle = StreamHandle(self, sid, guild_id, on_frames, slot, limit, on_lost, on_decode_error)
        with slot.lock:
            slot.streams[sid] = handle
        # The monitor thread starts the worker now rather than on the first packet (start-up
        # then overlaps with the voice handshake) and off the caller's thread: the first
        # start of a forkserver takes ~0.7 s, which must not block an event loop.
        self._ensure_monitor()
        self._wake.set()
        return handle

    def send_deferred(self) -> None:
        """Send what :meth:`StreamHandle.submit` was asked to defer: one write per worker
        for all of its streams. Never blocks on a pipe: what does not fit in it now goes
        to the worker's writer thread."""
        for slot in self._slots:
            if not slot.pending:  # (unlocked: a worker with nothing deferred costs no lock)
                continue
            with slot.lock:
                inc = slot.inc
                if not slot.pending:
                    continue
                room = 0 if inc is None else DIRECT_BYTES - (inc.sent_bytes - inc.read_bytes)
                if not (
                    inc is not None
                    and inc.direct
                    and inc.ready
                    and room > 0
                    and inc.send_lock.acquire(blocking=False)  # never wait: see Slot.queue
                ):
                    slot.has_work.notify()
                    continue
            try:
                self._send_bundle(slot, inc, room)
            finally:
                inc.send_lock.release()
            with slot.lock:
                if slot.pending:  # past the room or the bundle bound: the writer takes the rest
                    slot.has_work.notify()

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
        timeout = check_seconds("timeout", timeout)
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._wake.set()
        monitor = self._monitor
        if monitor is not None and monitor is not threading.current_thread():
            monitor.join(_JOIN_TIMEOUT)
        incs: list[tuple[Slot, Incarnation]] = []
        for slot in self._slots:
            with slot.start_lock:  # waits out a start in progress
                with slot.lock:
                    inc = slot.inc
                    if inc is not None and inc.alive:
                        slot.push((OP_STOP,))
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
                never_sent = slot.take_pending()
            for stream, items in never_sent.items():
                if not stream.closed:
                    stream._lost(items)
            with slot.lock:
                for stream in slot.streams.values():
                    stream._shut()
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

    def _start_worker(self, slot: Slot) -> None:
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
                    direct = enlarge_buffer(parent_conn) & enlarge_buffer(child_conn)
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
            inc = Incarnation(process, parent_conn, direct)
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

    def _writer_loop(self, slot: Slot, inc: Incarnation) -> None:
        while True:
            with slot.lock:
                while inc.alive and not slot.pending:
                    slot.has_work.wait()  # every change to either notifies
                if not inc.alive:
                    return
            # The send lock comes first, the slot lock second: while we hold it, submit()
            # cannot write directly, so nothing overtakes the bundle we are about to take.
            with inc.send_lock:
                if not self._send_bundle(slot, inc):
                    return

    def _send_bundle(self, slot: Slot, inc: Incarnation, room: int | None = None) -> bool:
        """Write the queued messages (up to ``room`` bytes) to ``inc``, whose send lock the
        caller holds; ``False`` if it is retired or its pipe broke."""
        with slot.lock:
            if not inc.alive:
                return False
            bundle = slot.take_bundle(inc, room)
        if not bundle:
            return True
        data = pickle.dumps(bundle, 5)  # cannot fail: submit() pickled every message once already
        with slot.lock:
            inc.sent_bytes += len(data)
        try:
            inc.conn.send_bytes(data)
        except (OSError, ValueError) as exc:
            slot.pipe_broke(inc)
            _log.debug("decode worker %d: send failed: %r", slot.index, exc)
            return False
        return True

    def _reader_loop(self, slot: Slot, inc: Incarnation) -> None:
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

    def _handle_frames(self, slot: Slot, inc: Incarnation, replies: list[tuple[Any, ...]], bytes_read: int) -> None:
        with slot.deliver_lock:
            with slot.lock:
                if not inc.alive:
                    return  # retired meanwhile: these items were already counted as lost
                inc.last_progress = time.monotonic()
                inc.read_bytes = bytes_read
                deliveries = slot.answered(inc, replies)
            for stream, frames, refused in deliveries:
                stream._deliver(frames, refused)

    def _retire(self, slot: Slot, inc: Incarnation, reason: str, *, restart: bool) -> None:
        """Take ``inc`` out of service: account its in-flight items as lost, stop its process
        and threads, and (``restart``) schedule a replacement."""
        with slot.lock:
            if inc.retired:
                return
            inc.retired = True
            inc.alive = False
            if slot.inc is inc:
                slot.inc = None
            lost = slot.take_lost(inc)
        lost_total = sum(map(len, lost.values()))
        for stream, items in lost.items():
            if not stream.closed:
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
                    force_eof(inc.conn)
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
        delay = slot.schedule_restart(time.monotonic())
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
            self._wake.wait(self._monitor_sleep())
            self._wake.clear()
            if self._stop.is_set():
                return
            for slot in self._slots:
                try:
                    self._check(slot)
                except Exception:
                    _log.exception("decode worker %d: monitor check failed", slot.index)

    def _monitor_sleep(self) -> float:
        for slot in self._slots:
            with slot.lock:
                inc = slot.inc
                if slot.wants_worker() if inc is None else not inc.ready or inc.sent > inc.done:
                    return _MONITOR_INTERVAL  # to start, starting, or answers owed
        return _IDLE_MONITOR_INTERVAL

    def _check(self, slot: Slot) -> None:
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


@atexit.register
def _cleanup_at_exit() -> None:
    # Registered after multiprocessing's own exit hook, so it runs first: workers get a
    # clean stop and our threads are joined before multiprocessing terminates daemons.
    for pool in list(_live_pools):
        try:
            pool.cleanup_processes(timeout=1.0)
        except Exception:  # pragma: no cover - interpreter shutdown
            pass
