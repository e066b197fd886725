"""The threads that call the sinks: a few for every session of the process, not one each.

A sink's callbacks must not run on the receive path (a slow sink would stall everyone's
audio), so each session queues what its sink should get and the dispatcher's threads call
it. Each session used to own a thread for that, asleep while silent and woken once per batch
of frames: a bot in 20 guilds woke 20 threads every round while people spoke. Here one
thread serves every session with something queued, one after the other, so a round's frames
for all guilds cost one wake-up.

A session's calls never overlap and keep their order: a session is in the ready queue at
most once and only one thread runs it at a time. A sink that blocks holds one thread;
another starts when a session has waited :data:`STUCK_AFTER` seconds with no thread free
(:meth:`SinkDispatcher.check`, which the receive engine calls every round), so a slow sink
delays its own audio and nobody else's for longer than that. A thread that finds nothing to
do for :data:`IDLE_EXIT` seconds ends; a silent bot has none.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from typing import Final, Protocol

__all__ = ("IDLE_EXIT", "STUCK_AFTER", "SinkClient", "SinkDispatcher")

_log = logging.getLogger(__name__)

#: Seconds a queued session may wait while every thread is busy before another one starts.
STUCK_AFTER: Final = 0.02
#: Seconds a thread waits for work before it ends.
IDLE_EXIT: Final = 5.0


class SinkClient(Protocol):
    """What the dispatcher asks of a session (:class:`~discord.ext.listening.session.ListeningSession`)."""

    def run_sink_calls(self) -> None:
        """Call the sink with what is queued (a bounded share of it: others wait meanwhile)."""
        ...

    def has_sink_calls(self) -> bool:
        """Whether anything is still queued for the sink."""
        ...


class SinkDispatcher:
    """Runs the sink calls of many sessions on as few threads as their sinks allow."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: deque[tuple[SinkClient, float]] = deque()  # (session, queued at)
        self._scheduled: set[SinkClient] = set()  # in _ready or being run
        self._idle: list[threading.Event] = []  # one per waiting thread; set = work handed over
        self._names = itertools.count(1)
        self.threads = 0  # alive
        self.started = 0  # ever (for benchmarks and tests)

    def schedule(self, client: SinkClient, *, now: bool = False) -> None:
        """``client`` has sink calls queued: run them soon (any thread).

        ``now``: start a thread rather than wait for a busy one (a session's last call: its
        ``after`` must not wait for another session's slow sink).
        """
        with self._lock:
            if client in self._scheduled:
                return
            self._scheduled.add(client)
            self._ready.append((client, time.monotonic()))
            if self._idle:
                self._idle.pop().set()
            elif self.threads == 0 or now:
                self._start()

    def check(self, now: float) -> None:
        """Start another thread if a session has waited :data:`STUCK_AFTER` with none free."""
        if not self._ready:  # (unlocked: a stale answer costs one round)
            return
        with self._lock:
            if self._ready and not self._idle and now - self._ready[0][1] >= STUCK_AFTER:
                self._start()

    def _start(self) -> None:
        self.threads += 1
        self.started += 1
        threading.Thread(target=self._run, name=f"listening-sink-{next(self._names)}", daemon=True).start()

    def _run(self) -> None:
        lock, ready, scheduled, idle = self._lock, self._ready, self._scheduled, self._idle
        woken = threading.Event()
        while True:
            with lock:
                if ready:
                    client = ready.popleft()[0]
                else:
                    woken.clear()
                    idle.append(woken)
                    client = None
            if client is None:
                woken.wait(IDLE_EXIT)
                with lock:
                    if woken in idle:  # nobody handed it work for IDLE_EXIT: it ends
                        idle.remove(woken)
                        self.threads -= 1
                        return
                continue  # handed work (which another thread may have taken first)
            try:
                client.run_sink_calls()
            except Exception:  # pragma: no cover - a bug: the session catches its sink's errors
                _log.exception("sink calls of %r failed", client)
            with lock:
                # Under the lock: a producer queues before it schedules, so either it found
                # the client still scheduled and its calls show here, or it schedules anew.
                if client.has_sink_calls():
                    ready.append((client, time.monotonic()))
                else:
                    scheduled.discard(client)
