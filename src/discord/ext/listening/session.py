"""One ``listen()`` call: the receiver, the decode stream and the sink, run by the receive engine.

Threads (none of them is the event loop; every datagram still reaches discord.py's other
socket listeners):

* discord.py's socket reader calls :meth:`ListeningSession._on_datagram` with the first
  datagram of a burst. The session takes it in, then holds that thread (asleep) and has the
  receive engine read the socket from then on, once per round with every other session
  that has audio (``engine.py``); the thread goes back to discord.py once the socket stays
  quiet, the socket changes or discord.py pauses or stops its reader. A thread wake-up
  costs ~35 us of CPU on a VM, more than all the Python work for a packet: one per round
  for the whole process, instead of one per datagram or one per guild, is most of the
  receive path's cost.
* the *engine* (one thread per process) runs :meth:`ListeningSession.run_round`: it reads
  the held socket (``udp_read.py``), releases ordered packets from the jitter buffers, and
  sends them to the pool in one batch (or, with ``decode=False``, turns them into frames
  itself). A silent session asks for no round: only its sink's ticks (sinks that implement
  ``on_tick``), a datagram or a gateway message wake it.
* the pool's reader threads hand decoded frames back to :meth:`_on_decoded`, which only
  enqueues.
* the *sink dispatcher* (``dispatch.py``, a few threads for every session) calls the sink,
  one callback at a time, from a bounded queue; a slow sink
  costs counted drops, never a blocked receiver.
* when listening stops, a short-lived thread waits for the frames still in the workers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import discord

from . import _discord
from .engine import ReceiveEngine, default_engine
from .frames import AudioFrame, FrameKind, ReceivedPacket, SpeakingChange
from .opus import SAMPLE_RATE
from .receive import KEEPALIVE_SIZE, PacketReceiver
from .rtp import RTCPPacket, is_rtcp
from .seqmath import seq_diff
from .sink import AudioSink
from .ssrc import SSRCMap
from .stats import DropReason, ListenStats
from .stream import Subscription
from .udp_read import DatagramReader

if TYPE_CHECKING:
    from .pool import AudioProcessPool, DecodedFrame

__all__ = ("ListeningSession",)

_log = logging.getLogger(__name__)

#: Quiet reads (one per engine round) before discord.py's socket thread gets its socket back.
IDLE_READS = 3
#: Seconds between ``on_tick`` calls to the sink (file sinks flush to disk on it).
TICK_INTERVAL = 0.5
#: How long stop() waits for frames still inside the decode workers.
DRAIN_TIMEOUT = 5.0
#: How often a held socket thread looks whether the engine is still there (a safety net).
_HOLD_CHECK = 1.0
#: Queue items (a list of frames counts as one) a session delivers before the dispatcher
#: thread serves the next session that has some.
_SINK_SHARE = 32
_STOP = object()
_TICK = object()


class ListeningSession:
    """The machinery of one :meth:`VoiceClient.listen` call (internal; see VoiceClient)."""

    def __init__(
        self,
        voice_client: Any,
        sink: AudioSink,
        pool: AudioProcessPool | None,
        *,
        ssrc_map: SSRCMap,
        decode: bool,
        after: Callable[..., Coroutine[Any, Any, Any]] | None,
        after_kwargs: dict[str, Any],
        jitter_depth: float,
        sink_queue_size: int,
        engine: ReceiveEngine | None = None,
    ) -> None:
        if sink_queue_size < 1:
            raise ValueError(f"sink_queue_size must be at least 1, got {sink_queue_size!r}")
        if decode and pool is None:
            raise ValueError("decoding needs a processing pool")
        self.voice_client = voice_client
        self.sink = sink
        self.decode = decode
        self.loop: asyncio.AbstractEventLoop = voice_client.loop
        self.stats = ListenStats()
        self.origin = time.monotonic()
        self.receiver = PacketReceiver(ssrc_map, self.stats, origin=self.origin, jitter_depth=jitter_depth)
        self._after = after
        self._after_kwargs = after_kwargs
        # Frames travel to the dispatcher in lists (one queue operation per batch, not per
        # frame); the bound counts frames (and ticks / RTCP packets), not queue items.
        self._queue: deque[Any] = deque()
        self._queue_limit = sink_queue_size
        self._queued = 0
        self._qlock = threading.Lock()
        self._pool = pool
        self._streams: dict[int, Any] = {}  # worker index -> StreamHandle
        self._worker_of: dict[int, int] = {}  # SSRC -> worker index
        self._meta: dict[int, ReceivedPacket] = {}
        self._meta_lock = threading.Lock()
        self._next_id = 0
        self._pump_lock = threading.Lock()  # poll + submit: one releaser at a time, in order
        self._flushed = False
        self._engine = engine if engine is not None else default_engine()
        self._sinks = self._engine.sinks
        self._udp = DatagramReader(self.stats)
        # discord.py's reader thread and socket while the engine reads that socket for it
        self._held: tuple[_discord.SocketReaderView, Any] | None = None
        self._give_back = threading.Event()
        self._idle_rounds = 0
        self._cleaned = asyncio.Event()
        self._stop_lock = threading.Lock()
        self._error: BaseException | None = None
        self._sink_errors_logged: set[str] = set()
        self._stop_reason: str | None = None
        # Sinks fed beside the main one (VoiceClient.subscribe); replaced whole, never mutated,
        # so the dispatcher reads it without a lock.
        self._taps: tuple[AudioSink, ...] = ()
        #: User ids of the members speaking now (the receiver's speaking state).
        self.speaking: frozenset[int] = frozenset()
        self.paused = False
        self.done = False
        self.cleaned_up = False
        self._pause_started: float | None = None
        # A sink without its own on_tick gets no ticks: a silent connection then wakes no thread.
        self._next_tick: float | None = None
        if type(sink).on_tick is not AudioSink.on_tick:
            self._next_tick = self.origin + TICK_INTERVAL

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self.decode:
            assert self._pool is not None
            # The worker the first speaker will likely get: it starts during the handshake.
            self._open_stream(self._pool.next_speaker_worker())
        self._engine.add(self)
        _discord.add_socket_listener(self.voice_client, self._on_datagram)
        _log.info("listening in guild %s (decode=%s)", self.voice_client.guild.id, self.decode)

    def stop(self, reason: str = "stopped", error: BaseException | None = None) -> None:
        """Begin stopping (idempotent, any thread); cleanup and ``after`` follow asynchronously."""
        with self._stop_lock:
            if self.done:
                return
            self.done = True
            self._stop_reason = reason
            self._error = error
        try:
            _discord.remove_socket_listener(self.voice_client, self._on_datagram)
        except Exception:
            _log.debug("removing the socket listener failed", exc_info=True)
        self._give_back.set()
        self._engine.remove(self)

    def pause(self) -> None:
        if not self.paused and not self.done:
            self.paused = True
            self.receiver.paused = True

    def resume(self) -> None:
        if self.paused and not self.done:
            # Start every stream afresh: the sequence gap of the pause is not packet loss.
            with self._pump_lock:  # in order with the releases of the other threads
                if not self._flushed:
                    self._submit(self.receiver.reset_streams(time.monotonic()))
            self.receiver.paused = False
            self.paused = False

    def add_tap(self, sink: AudioSink) -> None:
        """Feed ``sink`` too, from now on (event loop); it gets ticks whatever the main sink does."""
        self._taps += (sink,)
        if self._next_tick is None:
            self._next_tick = time.monotonic() + TICK_INTERVAL
            self._engine.wake(self)

    def remove_tap(self, sink: AudioSink) -> None:
        """Stop feeding ``sink`` (any thread)."""
        self._taps = tuple(t for t in self._taps if t is not sink)

    def member_left(self, user_id: int) -> None:
        """A member left the call: end what follows only them (their subscriptions)."""
        for tap in self._taps:
            if isinstance(tap, Subscription) and tap.user_id == user_id:
                tap.close()

    async def wait_cleaned_up(self) -> None:
        await self._cleaned.wait()

    def position(self) -> int:
        """The recording timeline's current sample position."""
        return round((time.monotonic() - self.origin) * SAMPLE_RATE)

    # -- discord.py's socket thread ------------------------------------------------------

    def _on_datagram(self, data: bytes) -> None:
        now = time.monotonic()
        found = None if self._reading or self.done else _discord.socket_reader(self.voice_client)
        if found is None:
            self._receive([data], [now])  # not discord.py's reader as we know it: one at a time
            self._engine.wake(self)
            return
        try:
            arrival = self._udp.attach(found[1], now)
            self._receive([data], [arrival])
        except Exception:  # never kill discord.py's reader thread
            _log.exception("listening could not take a datagram in")
            return
        if not self._udp.stamped:
            # Without kernel arrival times a later read would misplace audio: one at a time.
            self._engine.wake(self)
            return
        if len(data) == KEEPALIVE_SIZE or is_rtcp(data):
            # A keepalive echo or a receiver report every few seconds on a silent connection:
            # no audio follows it, so holding the thread would only cost idle rounds.
            return
        # Hold the thread (asleep) while the engine reads the socket: two readers would race
        # for each datagram, and discord.py's would wake once per datagram.
        self._give_back.clear()
        self._idle_rounds = 0
        self._held = found
        self._engine.wake(self)
        while not self._give_back.wait(_HOLD_CHECK):
            if self.done or not self._engine.running:
                break
        self._held = None

    @property
    def _reading(self) -> bool:
        """Whether the engine reads the socket for discord.py's (held) reader thread."""
        return self._held is not None

    def _receive(self, batch: list[bytes], arrivals: list[float]) -> None:
        for packet in self.receiver.datagrams(batch, arrivals):
            self._enqueue_event(packet)

    # -- the engine thread ---------------------------------------------------------------

    def run_round(self, now: float) -> float | None:
        """Read the held socket, release what is due, tick the sink; returns when to run next."""
        if self.done:
            return None
        held = self._held
        if held is not None:
            self._read(held)
        self._release(now)
        due = self._next_tick
        if due is not None and now >= due:
            due = self._next_tick = now + TICK_INTERVAL
            self._enqueue_event(_TICK)
        if self._held is not None:
            return now  # the next round: audio is flowing
        deadline = self.receiver.next_deadline(now)
        if deadline is not None and (due is None or deadline < due):
            due = deadline
        return due

    def _read(self, held: tuple[_discord.SocketReaderView, Any]) -> None:
        reader, sock = held
        batch, arrivals, full = self._udp.read()
        if batch:
            self._idle_rounds = 0
            me = self._on_datagram
            others = [cb for cb in reader.listeners() if cb != me]
            for d in batch if others else ():  # e.g. discord.py's IP discovery: it must see them
                for cb in others:
                    try:
                        cb(d)
                    except Exception:
                        _log.exception("socket listener %r failed", cb)
            self._receive(batch, arrivals)
        else:
            self._idle_rounds += 1
        if full is None or self._idle_rounds >= IDLE_READS or reader.must_yield(sock):
            self._held = None
            self._give_back.set()

    def _release(self, now: float) -> None:
        """Release what the jitter buffers have ready and send it on (engine or event loop)."""
        with self._pump_lock:
            if self._flushed:
                return
            packets, changes = self.receiver.poll(now)
            if packets:
                self._submit(packets, defer=True)
        if changes:
            self._speaking(changes)
        if self.receiver.take_dave_recoveries():
            recover = getattr(self.voice_client, "_recover_dave", None)
            if recover is not None:
                self.loop.call_soon_threadsafe(recover)

    def wake(self) -> None:
        """Have the engine run this session now (a gateway message may have unblocked held packets)."""
        self._engine.wake(self)

    def round_failed(self, error: Exception) -> None:
        self.stop(reason="failed", error=error)

    def finish_on_engine(self) -> None:
        """Release everything still buffered, then let the frames in the workers come back."""
        try:
            with self._pump_lock:
                self._flushed = True
                self._submit(self.receiver.flush(time.monotonic()))
        except Exception as exc:  # a bug; end listening loudly, not silently
            _log.exception("flushing the jitter buffers failed")
            self._error = self._error or exc
        if not self._streams:
            self._put_stop()
            return
        threading.Thread(
            target=self._drain_then_stop, name=f"listening-drain:{self.voice_client.guild.id}", daemon=True
        ).start()

    def _drain_then_stop(self) -> None:
        try:
            self._drain()
        except Exception as exc:  # pragma: no cover - a bug; end listening loudly, not silently
            _log.exception("waiting for the decode workers failed")
            self._error = self._error or exc
        finally:
            assert self._pool is not None
            for w in self._worker_of.values():
                self._pool.release_speaker(w)
            self._put_stop()

    def _submit(self, packets: list[ReceivedPacket], defer: bool = False) -> None:
        """Send released packets on: to the sink (decode off) or to the decode workers.

        ``defer`` (engine rounds only): the batches go to the workers when the round ends,
        with those of every other session (one write and one reply per worker a round).
        """
        if not packets:
            return
        if not self.decode:
            # Opus passthrough: nothing to conceal; a gap stays a gap (positions say where).
            members: dict[int | None, Any] = {}
            opus = FrameKind.opus
            out = []
            for p in packets:
                uid = p.user_id
                user = members[uid] if uid in members else members.setdefault(uid, self._user(uid))
                out.append(
                    AudioFrame(
                        user, p.ssrc, p.sequence, p.timestamp, p.opus, opus, p.position, p.arrival, p.audio_level
                    )
                )
            self._enqueue_frames(out)
            return
        from .pool import DecodeItem

        by_worker: dict[int, list[Any]] = {}
        worker_of = self._worker_of
        with self._meta_lock:
            for p in packets:
                ident = self._next_id
                self._next_id += 1
                self._meta[ident] = p
                w = worker_of.get(p.ssrc)
                if w is None:
                    w = self._place_speaker(p.ssrc)
                by_worker.setdefault(w, []).append(
                    DecodeItem(p.ssrc, p.sequence, p.timestamp, p.opus, len(p.lost_positions), ident, p.new_stream)
                )
        for w, batch in by_worker.items():
            try:
                stream = self._streams.get(w) or self._open_stream(w)
                stream.submit(batch, defer=defer)  # a batch it cannot take comes back through _on_lost
            except Exception:
                _log.exception("submitting %d packets to the decode pool failed", len(batch))
                self._on_lost(batch)
        if defer:
            assert self._pool is not None
            self._engine.after_round(self._pool.send_deferred)

    def _place_speaker(self, ssrc: int) -> int:
        # Pool-wide: light loads of many guilds share one worker, heavy ones use them all. A
        # speaker stays on its worker, so its frames keep their order.
        assert self._pool is not None
        w = self._worker_of[ssrc] = self._pool.assign_speaker()
        return w

    def _open_stream(self, worker: int) -> Any:
        assert self._pool is not None
        stream = self._streams[worker] = self._pool.open_stream(
            self.voice_client.guild.id,
            self._on_decoded,
            on_lost=self._on_lost,
            on_decode_error=self._on_decode_error,
            worker=worker,
        )
        return stream

    def _on_lost(self, items: list[Any]) -> None:
        """The pool gave up on these packets (a worker died, or it was backlogged)."""
        with self._meta_lock:
            for it in items:
                p = self._meta.pop(it[5], None)  # DecodeItem.extra
                if p is not None:
                    self.stats.drop(p.user_id, DropReason.worker_lost, 1 + p.lost_before)

    def _on_decode_error(self, items: list[Any]) -> None:
        """libopus refused these packets (each still becomes a concealed frame, which follows)."""
        with self._meta_lock:
            for it in items:
                p = self._meta.get(it[5])  # DecodeItem.extra; its frame has not been delivered yet
                if p is not None:
                    self.stats.drop(p.user_id, DropReason.decode_error)

    def _drain(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT
        for stream in self._streams.values():
            stream.flush(max(0.0, deadline - time.monotonic()))
        with self._meta_lock:
            for p in self._meta.values():
                self.stats.drop(p.user_id, DropReason.worker_lost, 1 + p.lost_before)
            self._meta.clear()
        for stream in self._streams.values():
            try:
                stream.close()
            except Exception:
                _log.debug("closing the decode stream failed", exc_info=True)

    def _speaking(self, changes: list[SpeakingChange]) -> None:
        speaking = set(self.speaking)
        for c in changes:
            if c.user_id is not None:
                (speaking.add if c.speaking else speaking.discard)(c.user_id)
        self.speaking = frozenset(speaking)
        client = self.voice_client.client if hasattr(self.voice_client, "client") else None
        if client is None:
            return
        for c in changes:
            if c.user_id is None:
                continue
            member = self._user(c.user_id)
            event = "voice_member_speaking_start" if c.speaking else "voice_member_speaking_stop"
            self.loop.call_soon_threadsafe(client.dispatch, event, member)

    # -- pool reader threads -------------------------------------------------------------

    def _on_decoded(self, frames: list[DecodedFrame]) -> None:
        meta = self._meta
        found = []
        with self._meta_lock:  # once per batch
            for f in frames:
                p = meta.get(f.extra)
                if p is not None and f.sequence == p.sequence:
                    del meta[f.extra]
                found.append(p)
        out = []
        members: dict[int | None, Any] = {}
        counts: dict[tuple[int | None, str], int] = {}
        decoded = FrameKind.decoded
        for f, p in zip(frames, found):
            if p is None:
                continue  # arrived after stop() gave up on it; already counted as lost
            kind = FrameKind(f.kind) if not isinstance(f.kind, FrameKind) else f.kind
            back = seq_diff(p.sequence, f.sequence)  # >0 for frames concealing losses before p
            lost = p.lost_positions
            position = p.position if back <= 0 or back > len(lost) else lost[len(lost) - back]
            uid = p.user_id
            user = members[uid] if uid in members else members.setdefault(uid, self._user(uid))
            out.append(
                AudioFrame(
                    user,
                    f.ssrc,
                    f.sequence,
                    f.timestamp,
                    f.audio,
                    kind,
                    position,
                    p.arrival,
                    p.audio_level if back == 0 else None,
                )
            )
            key = (uid, "decoded" if kind is decoded else "concealed")
            counts[key] = counts.get(key, 0) + 1
        for (uid, name), n in counts.items():
            self.stats.add(uid, name, n)
        self._enqueue_frames(out)

    # -- dispatcher thread ---------------------------------------------------------------

    def _user(self, user_id: int | None) -> Any:
        if user_id is None:
            return None
        guild = self.voice_client.guild
        return guild.get_member(user_id) or discord.Object(id=user_id)

    def _enqueue_event(self, item: Any) -> None:
        """A tick or an RTCP packet for the sink; dropped (RTCP counted) when the sink is behind."""
        with self._qlock:
            if self._queued >= self._queue_limit:
                if isinstance(item, RTCPPacket):
                    self.stats.rtcp_dropped += 1
                return
            self._queued += 1
        self._queue.append(item)
        self._sinks.schedule(self)

    def _enqueue_frames(self, frames: list[AudioFrame]) -> None:
        """Hand frames to the dispatcher in one piece; past ``sink_queue_size`` waiting, the
        newest are dropped (and counted)."""
        if not frames:
            return
        with self._qlock:
            room = self._queue_limit - self._queued
            if room >= len(frames):
                take, rest = frames, []
            else:
                take, rest = frames[: max(room, 0)], frames[max(room, 0) :]
            self._queued += len(take)
        if take:
            self._queue.append(take)
            self._sinks.schedule(self)
        if rest:
            dropped: dict[int | None, int] = {}
            for f in rest:
                uid = f.user_id
                dropped[uid] = dropped.get(uid, 0) + 1
            for uid, n in dropped.items():
                self.stats.drop(uid, DropReason.sink_overflow, n)

    def _call_sink(self, method: str, *args: Any) -> None:
        self._call(self.sink, method, *args)

    def _call_taps(self, method: str, *args: Any) -> None:
        for tap in self._taps:
            self._call(tap, method, *args)

    def _call(self, sink: AudioSink, method: str, *args: Any) -> None:
        try:
            getattr(sink, method)(*args)
        except Exception:
            self._sink_failed(method)

    def _sink_failed(self, method: str) -> None:
        """Count a sink callback that raised; log the first of each kind with its traceback."""
        self.stats.sink_errors += 1
        if method in self._sink_errors_logged:
            _log.debug("sink %r raised in %s again", self.sink, method, exc_info=True)
            return
        self._sink_errors_logged.add(method)
        _log.exception(
            "sink %r raised in %s (further errors are counted in listen_stats.sink_errors)", self.sink, method
        )

    def _put_stop(self) -> None:
        # The stop marker always gets in: the queue itself is unbounded, the bound is ours.
        self._queue.append(_STOP)
        self._sinks.schedule(self, now=True)

    def has_sink_calls(self) -> bool:
        return bool(self._queue)

    def run_sink_calls(self) -> None:
        """Deliver what is queued, up to ``_SINK_SHARE`` queue items (dispatcher thread)."""
        sink, take = self.sink, self._queue.popleft
        for _ in range(_SINK_SHARE):
            try:
                item = take()
            except IndexError:
                return
            if item is _STOP:
                position = self.position()
                self._call_sink("on_stop", position)
                self._call_taps("on_stop", position)
                self._taps = ()
                self._call_sink("cleanup")
                self._finish()
                return
            if type(item) is list:
                counts: dict[int | None, int] = {}
                for frame in item:
                    uid = frame.user_id
                    counts[uid] = counts.get(uid, 0) + 1
                for uid, n in counts.items():
                    self.stats.add(uid, "frames", n)
                on_audio = sink.on_audio
                for frame in item:
                    try:
                        on_audio(frame)
                    except Exception:
                        self._sink_failed("on_audio")
                for frame in item if self._taps else ():
                    self._call_taps("on_audio", frame)
                with self._qlock:
                    self._queued -= len(item)
                continue
            with self._qlock:
                self._queued -= 1
            if item is _TICK:
                position = self.position()
                self._call_sink("on_tick", position)
                self._call_taps("on_tick", position)
            else:
                self._call_sink("on_rtcp", item)

    def _finish(self) -> None:
        self.cleaned_up = True
        error = self._error or getattr(self.sink, "error", None)
        _log.info("listening ended in guild %s (%s): %r", self.voice_client.guild.id, self._stop_reason, self.stats)

        async def finish() -> None:
            try:
                if self._after is not None:
                    try:
                        await self._after(self.sink, error, **self._after_kwargs)
                    except Exception:
                        _log.exception("the after callback of listen() raised")
            finally:
                self._cleaned.set()

        try:
            asyncio.run_coroutine_threadsafe(finish(), self.loop)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            _log.debug("event loop closed before listening finished")
