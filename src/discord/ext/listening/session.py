"""One ``listen()`` call: the threads around the sans-I/O receiver, the decode pool and the sink.

Threads (none of them is the event loop; discord.py's socket thread is borrowed only while
audio flows, and every datagram still reaches its other listeners):

* discord.py's socket reader calls :meth:`ListeningSession._on_datagram` with the first
  datagram of a burst. From there the session reads the socket itself in batches: it takes
  every datagram queued (forwarding each to discord.py's other socket listeners, such as IP
  discovery), parses, decrypts and buffers them, releases what is ready to the pool, sleeps
  ``PUMP_INTERVAL`` and reads again, handing the thread back to discord.py once the socket
  stays quiet, the socket changes or discord.py pauses or stops its reader. A thread
  wake-up costs ~35 us of CPU on a VM, more than all the Python work for a packet: one per
  10 ms instead of one per datagram is most of the receive path's cost at 10-100 speakers.
* the *pump* releases ordered packets from the jitter buffers while the socket thread is
  not doing it (no traffic: gaps to declare, speaking to time out), and sends them to the
  pool in one batch (or, with ``decode=False``, turns them into frames itself). It sleeps
  until the receiver's next deadline: a silent connection wakes it only for the sink's
  ticks (sinks that implement ``on_tick``) and whatever datagram comes.
* the pool's reader threads hand decoded frames back to :meth:`_on_decoded`, which only
  enqueues.
* the *dispatcher* calls the sink, one callback at a time, from a bounded queue; a slow sink
  costs counted drops, never a blocked receiver.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import discord

from . import _discord
from .frames import AudioFrame, FrameKind, ReceivedPacket, SpeakingChange
from .opus import SAMPLE_RATE
from .receive import PacketReceiver
from .rtp import RTCPPacket
from .seqmath import seq_diff
from .sink import AudioSink
from .ssrc import SSRCMap
from .stats import DropReason, ListenStats

if TYPE_CHECKING:
    from .pool import AudioProcessPool, DecodedFrame

__all__ = ("ListeningSession",)

_log = logging.getLogger(__name__)

PUMP_INTERVAL = 0.01
#: How often the pump looks while the socket thread does its work (ticks, stop).
BUSY_PUMP_INTERVAL = 0.1
#: Quiet reads (``PUMP_INTERVAL`` apart) before the socket thread goes back to discord.py.
IDLE_READS = 3
#: Datagrams read per batch at most (bounds the time between two releases under a flood).
MAX_BATCH = 2000
#: Kernel receive buffer asked for on discord.py's socket: 10 ms of batching at hundreds of
#: speakers would overflow Linux's default (~200 datagrams). The system may cap it.
RECEIVE_BUFFER = 1 << 21
# Kernel receive timestamps (Linux SO_TIMESTAMPNS; Python has no name for it): a batch read
# 10 ms after its first datagram arrived still places every packet at its own arrival time.
# Without them the socket thread does not linger: it reads what is queued and returns.
_SO_TIMESTAMPNS = 35 if sys.platform.startswith("linux") else None
# The socket's own drop count (Linux SO_RXQ_OVFL; no Python name either): once the kernel has
# dropped a datagram because the receive buffer was full, each datagram queued after that
# carries the socket's cumulative drop count (uint32) next to its timestamp.
_SO_RXQ_OVFL = 40 if sys.platform.startswith("linux") else None
# getsockopt(SO_MEMINFO): the socket's memory counters (uint32 each); SK_MEMINFO_DROPS is the
# same count, read once when we start counting (drops before the session are not its own).
_SO_MEMINFO = 55
_MEMINFO_DROPS = 8
_U32 = struct.Struct("@I")
# ioctl for the kernel timestamp of the datagram discord.py's reader has just read.
_SIOCGSTAMPNS = 0x8907
_TIMESPEC = struct.Struct("@ll")
#: Seconds between ``on_tick`` calls to the sink (file sinks flush to disk on it).
TICK_INTERVAL = 0.5
#: The longest the pump sleeps without being woken: a safety net should some path buffer
#: packets without waking it (every known one does).
MAX_PUMP_SLEEP = 1.0
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
        pool: AudioProcessPool | None,
        *,
        ssrc_map: SSRCMap,
        decode: bool,
        after: Callable[..., Coroutine[Any, Any, Any]] | None,
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
        self.receiver = PacketReceiver(ssrc_map, self.stats, origin=self.origin, jitter_depth=jitter_depth)
        self._after = after
        self._after_kwargs = after_kwargs
        # Frames travel to the dispatcher in lists (one queue operation per batch, not per
        # frame); the bound counts frames (and ticks / RTCP packets), not queue items.
        self._queue: queue.Queue[Any] = queue.Queue()
        self._queue_limit = sink_queue_size
        self._queued = 0
        self._qlock = threading.Lock()
        self._pool = pool
        self._stream: Any = None
        self._meta: dict[int, ReceivedPacket] = {}
        self._meta_lock = threading.Lock()
        self._next_id = 0
        self._stopping = threading.Event()
        self._pump_done = threading.Event()
        self._pump_wake = threading.Event()
        self._pump_lock = threading.Lock()  # poll + submit: one releaser at a time, in order
        self._flushed = False
        self._last_release = 0.0
        self._reading = False  # the socket thread is in _read_loop
        self._sized_socket: Any = None
        self._stamped = False
        self._drops_offset = 0  # socket_drops = the kernel's count on the socket + this
        self._cleaned = asyncio.Event()
        self._stop_lock = threading.Lock()
        self._error: BaseException | None = None
        self._sink_errors_logged: set[str] = set()
        self._stop_reason: str | None = None
        self._pump_thread = threading.Thread(
            target=self._pump, name=f"listening-pump:{voice_client.guild.id}", daemon=True
        )
        self._dispatch_thread = threading.Thread(
            target=self._dispatch, name=f"listening-sink:{voice_client.guild.id}", daemon=True
        )
        self.paused = False
        self.done = False
        self.cleaned_up = False
        self._pause_started: float | None = None
        # A sink without its own on_tick gets no ticks: a silent connection then wakes no thread.
        self._ticks = type(sink).on_tick is not AudioSink.on_tick

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self.decode:
            assert self._pool is not None
            self._stream = self._pool.open_stream(
                self.voice_client.guild.id,
                self._on_decoded,
                on_lost=self._on_lost,
                on_decode_error=self._on_decode_error,
            )
        self._pump_thread.start()
        self._dispatch_thread.start()
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
        self._stopping.set()
        self._pump_wake.set()

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

    async def wait_cleaned_up(self) -> None:
        await self._cleaned.wait()

    def position(self) -> int:
        """The recording timeline's current sample position."""
        return round((time.monotonic() - self.origin) * SAMPLE_RATE)

    # -- socket thread -------------------------------------------------------------------

    def _on_datagram(self, data: bytes) -> None:
        now = time.monotonic()
        found = None if self._reading else _discord.socket_reader(self.voice_client)
        if found is None:
            self._receive([data], [now])  # not discord.py's reader as we know it: one at a time
            self._pump_wake.set()
            return
        try:
            self._read_loop(found[0], found[1], data, now)
        except Exception:  # never kill discord.py's reader thread
            _log.exception("listening socket loop failed; back to one datagram at a time")

    def _read_loop(self, reader: _discord.SocketReaderView, sock: socket.socket, data: bytes, now: float) -> None:
        new_socket = sock is not self._sized_socket
        if new_socket:
            self._sized_socket = sock
            try:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < RECEIVE_BUFFER:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            except OSError:
                pass
            self._stamped = False
            if _SO_TIMESTAMPNS is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                    self._stamped = sock.getsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS) == 1
                except OSError:
                    pass
            # Count from here on; a replacement socket's drops add to the earlier sockets'.
            self._drops_offset = self.stats.socket_drops
            if _SO_RXQ_OVFL is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, _SO_RXQ_OVFL, 1)
                    info = sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, 4 * (_MEMINFO_DROPS + 1))
                    if len(info) >= 4 * (_MEMINFO_DROPS + 1):
                        self._drops_offset -= _U32.unpack_from(info, 4 * _MEMINFO_DROPS)[0]
                except OSError:
                    pass
        stamped = self._stamped
        stats = self.stats
        recv, recvmsg = sock.recv, sock.recvmsg
        sol, kind, unpack, size = socket.SOL_SOCKET, _SO_TIMESTAMPNS, _TIMESPEC.unpack_from, _TIMESPEC.size
        ovfl = _SO_RXQ_OVFL
        drops: bytes | None = None  # the newest drop count read (raw), parsed once per batch
        me = self._on_datagram
        batch = [data]
        arrivals = [now]
        if stamped and new_socket:
            # The datagram discord.py just read, before SO_TIMESTAMPNS was on: the socket's
            # last-receive stamp is its kernel arrival time. Only this once: with
            # SO_TIMESTAMPNS on, Linux stops updating that stamp, and it would date every
            # later burst's first datagram back to this one (a spurt placed up to a second
            # early). Those are timed when discord.py's reader hands them over (~0.3-4 ms
            # late under load) until one receive thread reads every socket itself.
            try:
                import fcntl

                sec, nsec = unpack(fcntl.ioctl(sock.fileno(), _SIOCGSTAMPNS, bytes(size)))
                t = sec + nsec * 1e-9 - (time.time() - now)
                if now - 1.0 < t < now:
                    arrivals[0] = t
            except (OSError, ImportError, ValueError):
                pass
        fresh = 1
        idle = 0
        self._reading = True
        try:
            while True:
                # Everything queued now, in one go (the socket is non-blocking).
                full: bool | None = False
                try:
                    if stamped:
                        offset = time.time() - now  # kernel stamps are wall-clock time
                        while True:
                            d, anc, _, _ = recvmsg(2048, 64)
                            t = now
                            # (the timestamp, then the drop count once the socket has dropped)
                            for level, k, cdata in anc:
                                if level == sol and k == kind and len(cdata) >= size:
                                    sec, nsec = unpack(cdata)
                                    t = sec + nsec * 1e-9 - offset
                                    if t > now:
                                        t = now
                                elif k == ovfl and level == sol:
                                    drops = cdata
                            batch.append(d)
                            arrivals.append(t)
                            if len(batch) >= MAX_BATCH:
                                full = True
                                break
                    else:
                        while True:
                            batch.append(recv(2048))
                            arrivals.append(now)
                            if len(batch) >= MAX_BATCH:
                                full = True
                                break
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    full = None  # closed under us: process what we have and give back the thread
                if drops is not None:  # counts only grow: the batch's newest is its largest
                    n = _U32.unpack_from(drops)[0] + self._drops_offset
                    if n > stats.socket_drops:
                        stats.socket_drops = n
                    drops = None
                others = [cb for cb in reader.listeners() if cb != me]
                if others:  # e.g. discord.py's IP discovery: it must see what we read
                    # (discord.py itself hands the first datagram to every listener)
                    for d in batch[fresh:]:
                        for cb in others:
                            try:
                                cb(d)
                            except Exception:
                                _log.exception("socket listener %r failed", cb)
                if batch:
                    idle = 0
                    self._receive(batch, arrivals)
                    self._release(now)
                else:
                    idle += 1
                if full is None or not stamped or idle >= IDLE_READS or self.done or reader.must_yield(sock):
                    return
                if not full:
                    self._stopping.wait(PUMP_INTERVAL)
                now = time.monotonic()
                batch = []
                arrivals = []
                fresh = 0
        finally:
            self._reading = False
            self._pump_wake.set()  # the pump takes over the timing

    def _receive(self, batch: list[bytes], arrivals: list[float]) -> None:
        for packet in self.receiver.datagrams(batch, arrivals):
            self._enqueue_event(packet)

    def _release(self, now: float) -> None:
        """Release what the jitter buffers have ready and send it on (either thread)."""
        with self._pump_lock:
            if self._flushed:
                return
            packets, changes = self.receiver.poll(now)
            self._last_release = now
            if packets:
                self._submit(packets)
        if changes:
            self._speaking(changes)
        if self.receiver.take_dave_recoveries():
            recover = getattr(self.voice_client, "_recover_dave", None)
            if recover is not None:
                self.loop.call_soon_threadsafe(recover)

    # -- pump thread ---------------------------------------------------------------------

    def wake(self) -> None:
        """Have the pump look again now (a gateway message may have unblocked held packets)."""
        self._pump_wake.set()

    def _pump(self) -> None:
        try:
            next_tick = time.monotonic() + TICK_INTERVAL if self._ticks else None
            sleep: float | None = PUMP_INTERVAL
            while not self._stopping.is_set():
                self._pump_wake.wait(sleep)
                self._pump_wake.clear()
                if self._stopping.is_set():
                    break
                now = time.monotonic()
                if next_tick is not None and now >= next_tick:
                    next_tick = now + TICK_INTERVAL
                    self._enqueue_event(_TICK)
                if not (self._reading and now - self._last_release < PUMP_INTERVAL):
                    self._release(now)  # (unless the socket thread released moments ago)
                sleep = self._pump_sleep(next_tick)
            with self._pump_lock:
                self._flushed = True
                self._submit(self.receiver.flush(time.monotonic()))
            self._drain()
        except Exception as exc:  # pragma: no cover - a bug; end listening loudly, not silently
            _log.exception("listening pump failed")
            self._error = self._error or exc
        finally:
            self._pump_done.set()
            # The stop marker always gets in: the queue itself is unbounded, the bound is ours.
            self._queue.put_nowait(_STOP)

    def _pump_sleep(self, next_tick: float | None) -> float:
        if self._reading:
            return BUSY_PUMP_INTERVAL  # the socket thread times the releases; it wakes us when done
        now = time.monotonic()
        due = self.receiver.next_deadline(now)
        if next_tick is not None and (due is None or next_tick < due):
            due = next_tick
        if due is None:
            return MAX_PUMP_SLEEP
        return min(max(0.0, due - now), MAX_PUMP_SLEEP)

    def _submit(self, packets: list[ReceivedPacket]) -> None:
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

        items = []
        with self._meta_lock:
            for p in packets:
                ident = self._next_id
                self._next_id += 1
                self._meta[ident] = p
                items.append(
                    DecodeItem(p.ssrc, p.sequence, p.timestamp, p.opus, len(p.lost_positions), ident, p.new_stream)
                )
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

    def _on_decode_error(self, items: list[Any]) -> None:
        """libopus refused these packets (each still becomes a concealed frame, which follows)."""
        with self._meta_lock:
            for it in items:
                p = self._meta.get(it[5])  # DecodeItem.extra; its frame has not been delivered yet
                if p is not None:
                    self.stats.drop(p.user_id, DropReason.decode_error)

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
        self._queue.put_nowait(item)

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
            self._queue.put_nowait(take)
        if rest:
            dropped: dict[int | None, int] = {}
            for f in rest:
                uid = f.user_id
                dropped[uid] = dropped.get(uid, 0) + 1
            for uid, n in dropped.items():
                self.stats.drop(uid, DropReason.sink_overflow, n)

    def _call_sink(self, method: str, *args: Any) -> None:
        try:
            getattr(self.sink, method)(*args)
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

    def _dispatch(self) -> None:
        sink = self.sink
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
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
                with self._qlock:
                    self._queued -= len(item)
                continue
            with self._qlock:
                self._queued -= 1
            if item is _TICK:
                self._call_sink("on_tick", self.position())
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
