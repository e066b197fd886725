"""Frames to a Redis Stream: :class:`RedisStreamSink`, for workers on other machines.

The bot's process stays thin: each frame becomes one stream entry (its audio, Opus as received
with ``listen(decode=False)``, and its metadata), written by a publisher thread in pipelined
batches with approximate ``MAXLEN`` trimming, so Redis memory stays bounded. The sink itself
only appends to a bounded local buffer: a slow or unreachable Redis costs counted drops, never
a blocked receiver. Redis Streams (Redis 6.2+ or Valkey) give the workers consumer groups,
acknowledgements and the claiming of a dead worker's entries.

Entries: ``type`` is ``start`` (with ``guild``), ``stop`` (with ``pos``, where every track of
the recording ends), ``member`` (``user``, ``name``, ``display_name``: once per member, before
their first frame, when the bot knows their name) or ``frame``. A frame has two more fields: ``audio`` (the frame's bytes) and
``meta``, 43 bytes packed as :data:`META` (little-endian): user id (``q``, -1 when unknown), SSRC
(``I``), RTP sequence (``H``), RTP timestamp (``I``), timeline position in samples (``q``),
arrival (``d``, seconds on the receiver's monotonic clock), kind (``B``, an index into
:data:`KINDS`), tick (``q``: the position of the sink's last ``on_tick`` before this frame, -1
if none came since the frame before). The ticks let a worker replay the sink's calls as they
were: a mix or an utterance that depends on when the clock moved comes out the same. Packed, not one field each: redis-py spends ~1 us a field packing a command,
which at 100 speakers is most of the bot's cost.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import deque
from typing import Any

from .checks import check_int, check_seconds, check_text
from .frames import AudioFrame, FrameKind
from .sink import AudioSink

__all__ = ("KINDS", "META", "RedisStreamSink")

_log = logging.getLogger(__name__)

#: The layout of a frame entry's ``meta`` field.
META = struct.Struct("<qIHIqdBq")
#: Frame kinds by their index in ``meta``.
KINDS: tuple[FrameKind, ...] = tuple(FrameKind)
_KIND_INDEX = {kind: i for i, kind in enumerate(KINDS)}

#: Seconds between reconnection attempts while Redis is unreachable (doubling up to 5 s).
_RETRY_FIRST = 0.1
_RETRY_MAX = 5.0


class RedisStreamSink(AudioSink):
    """Publishes every frame to a Redis Stream (redis-py; ``pip install discord-ext-listening[redis]``).

    ::

        vc.listen(listening.RedisStreamSink("redis://127.0.0.1:6379", guild_id=vc.guild.id), decode=False)

    Parameters
    ----------
    redis: Union[:class:`str`, :class:`redis.Redis`]
        A ``redis://`` or ``rediss://`` URL (TLS and ACL credentials as redis-py takes them),
        or a connected synchronous client.
    guild_id: :class:`int`
        The guild listened to: it names the stream and is in every entry.
    stream: :class:`str`
        The stream's key; ``{guild_id}`` and ``{started}`` (when the sink was made, UTC, to the
        millisecond: ``20261203-174512-345``) are replaced. A stream holds one recording, so
        the default, ``"listening:{guild_id}:{started}"``, makes a new one each time.
    maxlen: :class:`int`
        Entries Redis keeps in the stream (approximately: trimmed in whole nodes). Defaults to
        100000 (about 3 minutes of 10 speakers).
    buffer: :class:`int`
        Frames the sink holds while Redis is slow or down; past it new ones are dropped and
        counted in :attr:`dropped` (the start, member and stop records always get in).
        Defaults to 50000.
    keep: Optional[:class:`float`]
        Seconds Redis keeps the stream after its stop record (``EXPIRE``), for workers that
        were down to catch up. Defaults to one day; ``None`` keeps it until deleted.

    Attributes
    ----------
    published: :class:`int`
        Entries Redis accepted.
    dropped: :class:`int`
        Entries dropped because the local buffer was full.
    reconnects: :class:`int`
        Times a write failed and was tried again.
    """

    def __init__(
        self,
        redis: Any,
        *,
        guild_id: int,
        stream: str = "listening:{guild_id}:{started}",
        maxlen: int = 100_000,
        buffer: int = 50_000,
        keep: float | None = 86400.0,
    ) -> None:
        super().__init__()
        check_int("guild_id", guild_id, 0, 2**64 - 1)
        self.maxlen = check_int("maxlen", maxlen, 1, 2**63 - 1)
        self.buffer = check_int("buffer", buffer, 1, 10_000_000)
        check_text("stream", stream)
        self.keep = None if keep is None else max(1, round(check_seconds("keep", keep, positive=True)))
        self.guild_id = guild_id
        now = time.time()
        started = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"-{int(now % 1 * 1000):03d}"
        self.stream = stream.format(guild_id=guild_id, started=started)
        if isinstance(redis, str):
            import redis as redis_py

            self._client = redis_py.Redis.from_url(redis, socket_timeout=5.0, socket_connect_timeout=5.0)
        elif callable(getattr(redis, "pipeline", None)):
            self._client = redis
        else:
            raise TypeError(f"redis must be a URL or a redis.Redis client, got {type(redis).__name__}")
        self._pending: deque[dict[Any, Any]] = deque()
        self._pack = META.pack
        self._named: set[int] = set()  # members whose names were published
        self._tick = -1
        self._wake = threading.Event()
        self._closing = False
        self.published = 0
        self.dropped = 0
        self.reconnects = 0
        self._thread = threading.Thread(target=self._publish_loop, name=f"listening-redis:{guild_id}", daemon=True)
        self._thread.start()
        self._put({"type": "start", "guild": str(guild_id)}, always=True)

    # -- the sink (dispatcher thread) -------------------------------------------------

    def on_audio(self, frame: AudioFrame) -> None:
        uid = frame.user_id
        if uid is not None and uid not in self._named:
            name = getattr(frame.user, "name", None)
            if name is not None:  # a cached Member: the workers name files as the bot would
                self._named.add(uid)
                display = getattr(frame.user, "display_name", None) or name
                self._put({"type": b"member", "user": str(uid), "name": name, "display_name": display}, always=True)
        meta = self._pack(
            -1 if uid is None else uid,
            frame.ssrc,
            frame.sequence,
            frame.timestamp,
            frame.position,
            frame.arrival,
            _KIND_INDEX[frame.kind],
            self._tick,
        )
        self._tick = -1
        self._put({"type": b"frame", "meta": meta, "audio": frame.audio})

    def on_tick(self, position: int) -> None:
        self._tick = position  # rides on the next frame: no entry while nobody speaks

    def on_stop(self, position: int) -> None:
        self._put({"type": "stop", "guild": str(self.guild_id), "pos": str(position)}, always=True)

    def cleanup(self) -> None:
        """Publish what is buffered (waiting up to 5 s for Redis), then stop the publisher."""
        self._closing = True
        self._wake.set()
        self._thread.join(5.0)
        if self._pending:
            _log.warning("%d entries for %s were never published (Redis unreachable)", len(self._pending), self.stream)

    def _put(self, entry: dict[Any, Any], *, always: bool = False) -> None:
        # ``always``: records a worker needs (start, member, stop) pass the bound; frames do not.
        # No lock: one producer (a sink's calls never overlap) appends, the publisher pops from
        # the other end, both atomic on a deque; the bound is approximate by a batch at most.
        if len(self._pending) >= self.buffer and not always:
            self.dropped += 1
            return
        self._pending.append(entry)
        if not self._wake.is_set():  # one wake-up a batch, not one a frame (set() takes a lock)
            self._wake.set()

    # -- the publisher thread ---------------------------------------------------------

    def _publish_loop(self) -> None:
        delay = _RETRY_FIRST
        while True:
            self._wake.wait()  # set by new entries and by cleanup: no polling while quiet
            self._wake.clear()
            while self._pending:
                batch = [self._pending[i] for i in range(min(len(self._pending), 256))]
                try:
                    pipe = self._client.pipeline(transaction=False)
                    for entry in batch:
                        pipe.xadd(self.stream, entry, maxlen=self.maxlen, approximate=True)
                        if self.keep is not None and entry["type"] == "stop":
                            pipe.expire(self.stream, self.keep)
                    pipe.execute()
                except Exception as exc:  # Redis slow or down: keep the entries, try again
                    self.reconnects += 1
                    if self.reconnects == 1 or self.reconnects % 100 == 0:
                        _log.warning("publishing to %s failed (%r); retrying", self.stream, exc)
                    if self._closing:
                        return
                    time.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX)
                    continue
                delay = _RETRY_FIRST
                for _ in batch:
                    self._pending.popleft()
                self.published += len(batch)
            if self._closing:
                return
