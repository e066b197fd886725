"""A worker process's main loop: every recording published to Redis, shared among workers.

:class:`RedisWorker` finds the streams of :class:`~discord.ext.listening.RedisStreamSink`
(one per recording) that still have work for its consumer group, takes each under a lease
(:class:`StreamLease`: one owner per stream and group at a time, because a member's audio must
reach one writer in order), and runs a :class:`~discord.ext.listening.StreamWorker` for it.
Many workers on many machines share the streams this way; a worker that dies stops renewing
its leases, and another takes its streams over once they expire, replaying each from its
start into a fresh sink, so every recording is written whole and once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .checks import check_int, check_seconds, check_text
from .redis_stream import BATCH, StreamWorker, default_consumer, redis_client, text
from .sink import AudioSink

__all__ = ("RedisWorker", "StreamLease")

_log = logging.getLogger(__name__)

# Compare-and-act on the owner, atomically (a lease renewed or released only by its holder).
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def _redis_errors() -> type[Exception]:
    import redis

    return redis.ConnectionError


class StreamLease:
    """Ownership of one stream for one consumer group, for ``seconds`` unless renewed.

    Parameters
    ----------
    redis: :class:`redis.Redis`
        A synchronous client.
    stream, group: :class:`str`
        What is owned; the lease's key is ``<stream>:lease:<group>`` (a string key: a scan
        for streams by type does not see it).
    owner: :class:`str`
        The holder's name.
    seconds: :class:`float`
        How long the lease lasts without renewal: how soon another worker takes over a dead
        one's stream.
    """

    def __init__(self, redis: Any, stream: str, group: str, owner: str, seconds: float) -> None:
        self.redis = redis
        self.key = f"{stream}:lease:{group}"
        self.owner = owner
        self.ms = max(1, round(check_seconds("seconds", seconds, positive=True) * 1000))
        self.renewed_at = 0.0

    def acquire(self) -> bool:
        """Take the lease if nobody holds it; whether it is now ours."""
        if self.redis.set(self.key, self.owner, nx=True, px=self.ms):
            self.renewed_at = time.monotonic()
            return True
        return False

    def renew(self) -> bool:
        """Extend the lease; ``False`` if it expired and someone else took it (or nobody holds it)."""
        if self.redis.eval(_RENEW, 1, self.key, self.owner, self.ms):
            self.renewed_at = time.monotonic()
            return True
        return False

    def release(self) -> None:
        """Give the lease up (if still ours)."""
        self.redis.eval(_RELEASE, 1, self.key, self.owner)


class _Job:
    __slots__ = ("lease", "worker")

    def __init__(self, lease: StreamLease, worker: StreamWorker) -> None:
        self.lease = lease
        self.worker = worker


class RedisWorker:
    """Works on every stream matching ``pattern`` that has work for its group, sharing them
    with other workers through leases.

    ::

        def files_for(stream: str) -> listening.AudioSink:
            return listening.AudioFileSink(listening.WaveAudioFile, Path("recordings") / stream.replace(":", "-"))

        listening.RedisWorker("redis://redis.internal:6379", files_for).run()

    Parameters
    ----------
    redis: Union[:class:`str`, :class:`redis.Redis`]
        A URL or a synchronous client.
    make_sink: Callable[[:class:`str`], :class:`AudioSink`]
        Called with a stream's key when this worker takes the stream: the sink its frames go
        to. Called again for a stream taken over from a dead worker (the stream is replayed
        from its start into the new sink).
    pattern: :class:`str`
        Which keys are streams of recordings (a Redis ``SCAN`` pattern). Defaults to
        ``"listening:*"``.
    group: :class:`str`
        The consumer group: workers of one group share the streams, each stream to one of
        them; another group gets every stream again (recorders and transcribers).
    consumer: Optional[:class:`str`]
        This worker's name (default: host and pid).
    lease: :class:`float`
        Seconds a stream stays with a worker that stopped renewing (died): how long a dead
        worker's streams wait for another. Defaults to 10.
    max_streams: :class:`int`
        Streams this worker works on at once; the others are left to other workers.
    decode: :class:`bool`
        Decode Opus frames to PCM for the sinks (see :class:`StreamWorker`).
    scan_every: :class:`float`
        Seconds between looks for new streams. Defaults to 1.

    Attributes
    ----------
    finished: List[:class:`StreamWorker`]
        The streams this worker finished (reached their stop record), in order.
    failed: Dict[:class:`str`, :class:`BaseException`]
        Streams whose sink failed, by key (the stream is left to another worker).
    """

    def __init__(
        self,
        redis: Any,
        make_sink: Callable[[str], AudioSink],
        *,
        pattern: str = "listening:*",
        group: str = "listening-recorders",
        consumer: str | None = None,
        lease: float = 10.0,
        max_streams: int = 64,
        decode: bool = False,
        scan_every: float = 1.0,
    ) -> None:
        if not callable(make_sink):
            raise TypeError(f"make_sink must be callable, got {type(make_sink).__name__}")
        check_text("pattern", pattern)
        check_text("group", group)
        self.redis = redis_client(redis)
        self.make_sink = make_sink
        self.pattern = pattern
        self.group = group
        self.consumer = consumer or default_consumer()
        self.lease = check_seconds("lease", lease, positive=True)
        self.max_streams = check_int("max_streams", max_streams, 1, 1_000_000)
        self.decode = bool(decode)
        self.scan_every = check_seconds("scan_every", scan_every, positive=True)
        self.finished: list[StreamWorker] = []
        self.failed: dict[str, BaseException] = {}
        self._jobs: dict[str, _Job] = {}
        self._behind = False  # the last read filled a batch: more is waiting
        self._done: set[str] = set()  # streams whose stop record the group acknowledged
        self._scanned_at = float("-inf")
        self._work_seen = time.monotonic()  # when a stream with work was last seen, ours or not
        self._stop = threading.Event()
        #: Rounds that failed because Redis could not be reached.
        self.reconnects = 0

    @property
    def streams(self) -> list[str]:
        """The streams this worker holds now."""
        return list(self._jobs)

    # -- finding work --------------------------------------------------------------------

    def _has_work(self, stream: str) -> bool:
        """Whether the group has not finished ``stream``: entries never handed out, or handed
        out and never acknowledged."""
        try:
            groups = self.redis.xinfo_groups(stream)
            info = self.redis.xinfo_stream(stream)
        except Exception:  # the stream expired between the scan and now
            return False
        mine = next((g for g in groups if text(g["name"]) == self.group), None)
        if mine is None:
            return int(info["length"]) > 0
        if int(mine["pending"]) > 0 or text(mine["last-delivered-id"]) != text(info["last-generated-id"]):
            return True
        last = info.get("last-entry")
        if last and last[1].get(b"type") == b"stop":  # finished for good: a stream holds one recording
            self._done.add(stream)
        return False

    def _scan(self) -> None:
        self._scanned_at = time.monotonic()
        if self._jobs:
            self._work_seen = self._scanned_at
        keys = self.redis.scan_iter(match=self.pattern, count=1000, _type="stream")
        for key in sorted(text(k) for k in keys):
            if len(self._jobs) >= self.max_streams:
                return
            if key in self._jobs or key in self.failed or key in self._done:
                continue
            lease = StreamLease(self.redis, key, self.group, self.consumer, self.lease)
            if self.redis.exists(lease.key):
                self._work_seen = time.monotonic()  # another worker has it, and may die
                continue
            if not self._has_work(key):
                continue
            self._work_seen = time.monotonic()
            if self._behind:
                return  # catching up on what it holds: new streams are for workers with room
            if not lease.acquire():
                continue  # another worker took it first
            try:
                self._start(key, lease)
            except Exception as exc:
                lease.release()
                self._fail(key, exc)
            return  # one new stream a look: workers looking at the same time share the new ones

    def _start(self, stream: str, lease: StreamLease) -> None:
        sink = self.make_sink(stream)
        if not isinstance(sink, AudioSink):
            raise TypeError(f"make_sink must return an AudioSink, got {type(sink).__name__}")
        # Always as a take-over: a stream still with work and without a lease either was never
        # started (nothing to replay) or lost its worker (replayed into the new sink).
        worker = StreamWorker(
            self.redis, stream, sink, group=self.group, consumer=self.consumer, take_over=True, decode=self.decode
        )
        self._jobs[stream] = _Job(lease, worker)
        _log.info("working on %s", stream)
        self._check(stream)

    def _fail(self, stream: str, exc: BaseException) -> None:
        _log.error("work on %s failed: %r", stream, exc)
        self.failed[stream] = exc
        self._drop(stream)

    def _drop(self, stream: str) -> None:
        """Let a stream go unfinished: close its sink (its files play up to here) and give the
        lease up (if still ours), so another worker takes it over."""
        job = self._jobs.pop(stream, None)
        if job is None:
            return
        try:
            job.worker.sink.cleanup()
        except Exception as exc:  # a sink that cannot even close: the files are the new owner's job
            _log.warning("closing the sink of %s failed: %r", stream, exc)
        job.lease.release()

    def _check(self, stream: str) -> None:
        job = self._jobs[stream]
        if job.worker.finished:
            del self._jobs[stream]
            job.lease.release()
            self._done.add(stream)
            self.finished.append(job.worker)
            _log.info("finished %s (%d frames)", stream, job.worker.frames)

    def _renew(self) -> None:
        now = time.monotonic()
        for stream, job in list(self._jobs.items()):
            if now - job.lease.renewed_at < self.lease / 3:
                continue
            if not job.lease.renew():  # stalled past the lease: another worker owns it now
                _log.warning("lost the lease on %s; leaving it to its new owner", stream)
                self._drop(stream)

    # -- the loop -------------------------------------------------------------------------

    def poll(self, block: float = 1.0) -> None:
        """One round: renew leases, look for streams if due, read what the held streams have
        (waiting up to ``block`` seconds) and hand it on."""
        self._renew()
        if time.monotonic() - self._scanned_at >= self.scan_every:
            self._scan()
        if not self._jobs:
            self._stop.wait(min(block, self.scan_every))
            return
        wait = max(1, round(min(block, self.lease / 3, self.scan_every) * 1000))
        got = self.redis.xreadgroup(self.group, self.consumer, {s: ">" for s in self._jobs}, count=BATCH, block=wait)
        self._behind = False
        for key, entries in got or ():
            self._behind = self._behind or len(entries) >= BATCH
            stream = text(key)
            job = self._jobs.get(stream)
            if job is None:
                continue
            try:
                job.worker.acknowledge(job.worker.handle(entries))
            except Exception as exc:  # a sink that cannot write: this stream fails, the others go on
                self._fail(stream, exc)
                continue
            self._check(stream)

    def stop(self) -> None:
        """Make :meth:`run` return after the current round, from any thread. Streams not
        finished are let go (their sinks closed, their leases given up): their entries stay
        pending, and another worker (or this one, run again) takes them over."""
        self._stop.set()

    def run(self, *, idle_exit: float | None = None, timeout: float | None = None) -> list[StreamWorker]:
        """Work until :meth:`stop`, until nothing was there to do for ``idle_exit`` seconds, or
        for ``timeout`` seconds; returns the streams finished.

        Parameters
        ----------
        idle_exit: Optional[:class:`float`]
            Return once no stream has had work for this long, for this worker or another
            (``None``: keep waiting for recordings, as a service does).
        timeout: Optional[:class:`float`]
            Return after this long in any case.
        """
        started = self._work_seen = time.monotonic()
        delay = 0.1
        while not self._stop.is_set():
            try:
                self.poll()
                delay = 0.1
            except (OSError, _redis_errors()) as exc:  # Redis restarting or unreachable: wait, go on
                self.reconnects += 1
                _log.warning("Redis unreachable (%r); retrying in %.1f s", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
            now = time.monotonic()
            if not self._jobs and idle_exit is not None and now - self._work_seen >= idle_exit:
                break
            if timeout is not None and now - started >= timeout:
                break
        for stream in list(self._jobs):  # stopped early: another worker (or a run again) goes on
            self._drop(stream)
        return self.finished
