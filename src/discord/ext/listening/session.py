"""One ``listen()`` call: the threads around the sans-I/O receiver, the decode pool and the sink.

Threads (none of them is the event loop, none blocks discord.py's socket thread):

* discord.py's socket reader calls :meth:`ListeningSession._on_datagram` (parse, decrypt,
  buffer: microseconds).
* the *pump* wakes every 10 ms, releases ordered packets from the jitter buffers and sends
  them to the pool in one batch (or, with ``decode=False``, turns them into frames itself).
* the pool's reader threads hand decoded frames back to :meth:`_on_decoded`, which only
  enqueues.
* the *dispatcher* calls the sink, one callback at a time, from a bounded queue; a slow sink
  costs counted drops, never a blocked receiver.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Optional

import discord

from .frames import AudioFrame, FrameKind
from .receive import PacketReceiver, ReceivedPacket, SpeakingChange
from .rtp import RTCPPacket
from .reorder import seq_diff
from .sink import AudioSink
from .ssrc import SSRCMap
from .stats import DropReason, ListenStats

if TYPE_CHECKING:
    from .pool import AudioProcessPool, DecodedFrame

__all__ = ("ListeningSession",)

_log = logging.getLogger(__name__)

PUMP_INTERVAL = 0.01
#: Seconds between ``on_tick`` calls to the sink (file sinks flush to disk on it).
TICK_INTERVAL = 0.5
#: How long stop() waits for frames still inside the decode workers.
DRAIN_TIMEOUT = 5.0
_STOP = object()
_TICK = object()


class ListeningSession:
    """The machinery of one :meth:`VoiceClient.listen` call (internal; see VoiceClient)."""

    def __init__(
        self,
        voice_client: Any,
        sink: AudioSink,
        pool: Optional[AudioProcessPool],
        *,
        ssrc_map: SSRCMap,
        decode: bool,
        after: Optional[Callable[..., Coroutine[Any, Any, Any]]],
        after_kwargs: dict[str, Any],
        jitter_depth: float,
        sink_queue_size: int,
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
        self.receiver = PacketReceiver(
            voice_client._connection, ssrc_map, self.stats, origin=self.origin, jitter_depth=jitter_depth
        )
        self._after = after
        self._after_kwargs = after_kwargs
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=sink_queue_size)
        self._pool = pool
        self._stream: Any = None
        self._meta: dict[int, ReceivedPacket] = {}
        self._meta_lock = threading.Lock()
        self._next_id = 0
        self._stopping = threading.Event()
        self._pump_done = threading.Event()
        self._cleaned = asyncio.Event()
        self._stop_lock = threading.Lock()
        self._error: Optional[BaseException] = None
        self._stop_reason: Optional[str] = None
        self._pump_thread = threading.Thread(target=self._pump, name=f"listening-pump:{voice_client.guild.id}", daemon=True)
        self._dispatch_thread = threading.Thread(
            target=self._dispatch, name=f"listening-sink:{voice_client.guild.id}", daemon=True
        )
        self.paused = False
        self.done = False
        self.cleaned_up = False
        self._pause_started: Optional[float] = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self.decode:
            assert self._pool is not None
            self._stream = self._pool.open_stream(self.voice_client.guild.id, self._on_decoded, on_lost=self._on_lost)
        self._pump_thread.start()
        self._dispatch_thread.start()
        self.voice_client._connection.add_socket_listener(self._on_datagram)
        _log.info("listening in guild %s (decode=%s)", self.voice_client.guild.id, self.decode)

    def stop(self, reason: str = "stopped", error: Optional[BaseException] = None) -> None:
        """Begin stopping (idempotent, any thread); cleanup and ``after`` follow asynchronously."""
        with self._stop_lock:
            if self.done:
                return
            self.done = True
            self._stop_reason = reason
            self._error = error
        try:
            self.voice_client._connection.remove_socket_listener(self._on_datagram)
        except Exception:
            _log.debug("removing the socket listener failed", exc_info=True)
        self._stopping.set()

    def pause(self) -> None:
        if not self.paused and not self.done:
            self.paused = True
            self.receiver.paused = True

    def resume(self) -> None:
        if self.paused and not self.done:
            # Start every stream afresh: the sequence gap of the pause is not packet loss.
            self._submit(self.receiver.reset_streams(time.monotonic()))
            self.receiver.paused = False
            self.paused = False

    async def wait_cleaned_up(self) -> None:
        await self._cleaned.wait()

    def position(self) -> int:
        """The recording timeline's current sample position."""
        return int((time.monotonic() - self.origin) * 48000)

    # -- socket thread -------------------------------------------------------------------

    def _on_datagram(self, data: bytes) -> None:
        rtcp = self.receiver.datagram(data, time.monotonic())
        if rtcp:
            for packet in rtcp:
                self._enqueue(packet, None)

    def on_gateway_message(self, op: Any, data: Any) -> None:
        """Called from the voice client's gateway hook (event loop thread)."""
        # The SSRC map is already updated by the voice client; nothing else is needed yet.

    # -- pump thread ---------------------------------------------------------------------

    def _pump(self) -> None:
        try:
            next_tick = time.monotonic() + TICK_INTERVAL
            while not self._stopping.wait(PUMP_INTERVAL):
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + TICK_INTERVAL
                    self._enqueue(_TICK, None)
                packets, changes = self.receiver.poll(now)
                if packets:
                    self._submit(packets)
                if changes:
                    self._speaking(changes)
            self._submit(self.receiver.flush(time.monotonic()))
            self._drain()
        except Exception as exc:  # pragma: no cover - a bug; end listening loudly, not silently
            _log.exception("listening pump failed")
            self._error = self._error or exc
        finally:
            self._pump_done.set()
            self._put_blocking(_STOP)

    def _submit(self, packets: list[ReceivedPacket]) -> None:
        if not packets:
            return
        if not self.decode:
            # Opus passthrough: nothing to conceal; a gap stays a gap (positions say where).
            for p in packets:
                self._enqueue(
                    AudioFrame(self._user(p.user_id), p.ssrc, p.sequence, p.timestamp, p.opus, FrameKind.opus,
                               p.position, p.arrival, p.audio_level),
                    p.user_id,
                )
            return
        from .pool import DecodeItem

        items = []
        with self._meta_lock:
            for p in packets:
                ident = self._next_id
                self._next_id += 1
                self._meta[ident] = p
                items.append(DecodeItem(p.ssrc, p.sequence, p.timestamp, p.opus, len(p.lost_positions), ident))
        try:
            self._stream.submit(items)  # a batch it cannot take comes back through _on_lost
        except Exception:
            _log.exception("submitting %d packets to the decode pool failed", len(items))
            self._on_lost(items)

    def _on_lost(self, items: list[Any]) -> None:
        """The pool gave up on these packets (a worker died, or it was backlogged)."""
        with self._meta_lock:
            for it in items:
                p = self._meta.pop(it[5], None)  # DecodeItem.extra
                if p is not None:
                    self.stats.drop(p.user_id, DropReason.worker_lost, 1 + p.lost_before)

    def _drain(self) -> None:
        if self._stream is not None:
            self._stream.flush(DRAIN_TIMEOUT)
        with self._meta_lock:
            for p in self._meta.values():
                self.stats.drop(p.user_id, DropReason.worker_lost, 1 + p.lost_before)
            self._meta.clear()
        if self._stream is not None:
            try:
                self._stream.close()
            except Exception:
                _log.debug("closing the decode stream failed", exc_info=True)

    def _speaking(self, changes: list[SpeakingChange]) -> None:
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
        for f in frames:
            with self._meta_lock:
                p = self._meta.get(f.extra)
                if p is not None and f.sequence == p.sequence:
                    del self._meta[f.extra]
            if p is None:
                continue  # arrived after stop() gave up on it; already counted as lost
            kind = FrameKind(f.kind) if not isinstance(f.kind, FrameKind) else f.kind
            back = seq_diff(p.sequence, f.sequence)  # >0 for frames concealing losses before p
            lost = p.lost_positions
            position = p.position if back <= 0 or back > len(lost) else lost[len(lost) - back]
            frame = AudioFrame(
                self._user(p.user_id), f.ssrc, f.sequence, f.timestamp, f.audio, kind, position,
                p.arrival, p.audio_level if back == 0 else None,
            )
            self.stats.add(p.user_id, "concealed" if frame.concealed else "decoded")
            self._enqueue(frame, p.user_id)

    # -- dispatcher thread ---------------------------------------------------------------

    def _user(self, user_id: Optional[int]) -> Any:
        if user_id is None:
            return None
        guild = self.voice_client.guild
        return guild.get_member(user_id) or discord.Object(id=user_id)

    def _enqueue(self, item: Any, user_id: Optional[int]) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            if isinstance(item, AudioFrame):
                self.stats.drop(user_id, DropReason.sink_overflow)

    def _put_blocking(self, item: Any) -> None:
        # The stop marker must get in even if the sink is slow; bounded wait, then make room.
        for _ in range(200):
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue
        try:
            self._queue.get_nowait()
        except queue.Empty:
            pass
        self._queue.put_nowait(item)

    def _call_sink(self, method: str, *args: Any) -> None:
        try:
            getattr(self.sink, method)(*args)
        except Exception:
            _log.exception("sink %r raised in %s", self.sink, method)

    def _dispatch(self) -> None:
        sink = self.sink
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            if item is _TICK:
                self._call_sink("on_tick", self.position())
            elif isinstance(item, AudioFrame):
                self.stats.add(item.user_id, "frames")
                try:
                    sink.on_audio(item)
                except Exception:
                    _log.exception("sink %r raised in on_audio", sink)
            else:
                self._call_sink("on_rtcp", item)
        self._call_sink("on_stop", self.position())
        self._call_sink("cleanup")
        self._finish()

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
