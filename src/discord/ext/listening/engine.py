"""The one thread that runs every listening session's rounds: socket reads, releases, ticks.

Each session used to own a thread that woke every 10 ms, and borrowed discord.py's socket
thread to read in its own 10 ms rhythm; a bot in many small guilds paid one round of
wake-ups per guild. The engine runs all of them on one thread and one clock: a session asks
to run again at a time (its next jitter-buffer deadline, its next read while audio flows,
its sink's next tick) or not at all, and the engine wakes once for every session due by then.

Times are rounded up to :data:`ROUND` (a grid on the monotonic clock), so sessions with
audio flowing share their wake-ups: at most ``1 / ROUND`` a second for the whole process,
however many guilds. A release that waits for the grid is at most one round late; the
timeline does not move (it comes from arrival times, which the kernel stamps).

A silent session asks for nothing: it costs no wake-up until a datagram or a gateway message
arrives (:meth:`ReceiveEngine.wake`). With no session at all the thread ends; the next
session starts it again.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

from .dispatch import SinkDispatcher

__all__ = ("MAX_SLEEP", "ROUND", "EngineClient", "ReceiveEngine", "default_engine")

_log = logging.getLogger(__name__)

#: The engine's grid: sessions with audio flowing read and release once per round.
ROUND = 0.01
#: Every session runs a round at least this often: a safety net should some path buffer
#: packets without waking its session (every known one does). One wake-up in all, not one
#: per session: on a VM a wake-up of an idle process costs ~2 ms of CPU.
MAX_SLEEP = 5.0


class EngineClient(Protocol):
    """What the engine asks of a session (:class:`~discord.ext.listening.session.ListeningSession`)."""

    def run_round(self, now: float) -> float | None:
        """Do what is due at ``now``; returns when to run next.

        ``None``: only when woken; a time at or before ``now``: at the next round of the grid.
        """
        ...

    def round_failed(self, error: Exception) -> None:
        """:meth:`run_round` raised: end the session (the engine serves the others on)."""
        ...

    def finish_on_engine(self) -> None:
        """The session was removed: flush what it holds (on the engine thread, in order)."""
        ...


class ReceiveEngine:
    """Runs the rounds of every session added to it, on one thread.

    Parameters
    ----------
    round_interval: :class:`float`
        The grid the wake-up times are rounded up to, in seconds.
    """

    def __init__(self, round_interval: float = ROUND) -> None:
        if not round_interval > 0:
            raise ValueError(f"round_interval must be positive, got {round_interval!r}")
        self.round_interval = round_interval
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._clients: set[EngineClient] = set()
        self._woken: set[EngineClient] = set()
        self._removed: list[EngineClient] = []
        # (due, order, client): several entries per client may be queued; _due says which is current.
        self._heap: list[tuple[float, int, EngineClient]] = []
        self._due: dict[EngineClient, float] = {}
        self._order = itertools.count()
        self._next_sweep = 0.0
        self._thread: threading.Thread | None = None
        self.rounds = 0  # times the thread woke and ran something (for benchmarks and tests)
        #: The threads that call the sinks of this engine's sessions.
        self.sinks = SinkDispatcher()
        self._after: dict[Callable[[], None], None] = {}  # engine thread only

    # -- any thread ------------------------------------------------------------------

    def add(self, client: EngineClient) -> None:
        """Serve ``client`` from now on; it runs a first round at once."""
        with self._lock:
            self._clients.add(client)
            self._woken.add(client)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="listening-engine", daemon=True)
                self._thread.start()
        self._wake.set()

    def remove(self, client: EngineClient) -> None:
        """Stop serving ``client``; its :meth:`~EngineClient.finish_on_engine` follows on the
        engine thread, after any round of it already under way. Idempotent."""
        with self._lock:
            if client not in self._clients:
                return
            self._clients.discard(client)
            self._woken.discard(client)
            self._due.pop(client, None)
            self._removed.append(client)
        self._wake.set()

    def wake(self, client: EngineClient) -> None:
        """Run ``client``'s round as soon as possible (a datagram or a gateway message came)."""
        with self._lock:
            if client not in self._clients:
                return
            self._woken.add(client)
        self._wake.set()

    def after_round(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once when the current round ends, however many sessions asked
        for it (e.g. the decode pool's :meth:`~discord.ext.listening.pool.AudioProcessPool.send_deferred`:
        one write per worker for every session of the round). Only on the engine thread,
        from :meth:`~EngineClient.run_round` or :meth:`~EngineClient.finish_on_engine`."""
        self._after[callback] = None

    @property
    def running(self) -> bool:
        """Whether the engine's thread is alive (it ends when no session is left)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    # -- the engine thread -------------------------------------------------------------

    def _run(self) -> None:
        wait = self._wake.wait
        while True:
            self._wake.clear()
            with self._lock:
                removed, self._removed = self._removed, []
                woken, self._woken = self._woken, set()
                if not self._clients and not removed:
                    self._thread = None  # (under the lock: add() starts a new thread after this)
                    return
                now = time.monotonic()
                if now >= self._next_sweep:
                    self._next_sweep = now + MAX_SLEEP
                    woken |= self._clients
                heap, due_of = self._heap, self._due
                while heap and heap[0][0] <= now:
                    due, _, client = heapq.heappop(heap)
                    if due_of.get(client) == due:
                        del due_of[client]
                        woken.add(client)
            for client in removed:
                self._finish(client)
            if woken:
                self.rounds += 1
                for client in woken:
                    self._run_round(client, now)
            self._end_round()
            self.sinks.check(time.monotonic())
            with self._lock:
                # With nobody left, go round once more at once: the thread ends there.
                sleep = self._next_sweep - time.monotonic() if self._clients else 0.0
                heap = self._heap
                while heap and self._due.get(heap[0][2]) != heap[0][0]:
                    heapq.heappop(heap)  # superseded or removed
                if heap:
                    sleep = min(sleep, max(0.0, heap[0][0] - time.monotonic()))
            if sleep > 0:
                wait(sleep)

    def _run_round(self, client: EngineClient, now: float) -> None:
        try:
            due = client.run_round(now)
        except Exception as exc:
            _log.exception("a listening session's round failed; ending that session")
            try:
                client.round_failed(exc)
            except Exception:  # pragma: no cover - a bug in the failure path itself
                _log.exception("ending the failed session failed too")
            return
        if due is None:
            return
        # Round up to the grid: sessions due within one round share a wake-up.
        step = self.round_interval
        due = (math.floor(now / step) + 1) * step if due <= now else math.ceil(due / step) * step
        with self._lock:
            if client not in self._clients or client in self._woken:
                return
            current = self._due.get(client)
            if current is not None and current <= due:
                return
            self._due[client] = due
            heapq.heappush(self._heap, (due, next(self._order), client))

    def _end_round(self) -> None:
        if not self._after:
            return
        after, self._after = self._after, {}
        for callback in after:
            try:
                callback()
            except Exception:
                _log.exception("an end-of-round callback (%r) failed", callback)

    def _finish(self, client: EngineClient) -> None:
        try:
            client.finish_on_engine()
        except Exception:
            _log.exception("finishing a listening session failed")


_default: ReceiveEngine | None = None
_default_lock = threading.Lock()


def default_engine() -> ReceiveEngine:
    """The process's engine, shared by every :class:`~discord.ext.listening.VoiceClient`."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ReceiveEngine()
        return _default
