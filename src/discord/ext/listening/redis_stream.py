"""One stream of :class:`~discord.ext.listening.RedisStreamSink` into a sink, on a worker.

:class:`StreamWorker` reads one recording's stream through a consumer group and replays its
entries into any :class:`~discord.ext.listening.AudioSink`: the calls the bot's sink got, in
the same order, frames at their own timeline positions and ``on_tick`` where the bot's clock
moved, so what depends on timing (the mixed track, where an utterance ends) comes out the same.
An entry is acknowledged once the sink has handled it; a worker that dies leaves the rest
pending in the group, and the worker that takes its stream over rebuilds the output from the
stream's start, so nothing the dead worker wrote is needed. :class:`StreamRecorder` is the
worker that writes the files an ``AudioFileSink`` in the bot would have written, byte for byte.

A stream holds one recording: a ``start`` record, the frames, a ``stop`` record.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import discord

from .checks import check_text
from .decoding import DecoderSet
from .file_sink import AudioFileSink
from .files import AudioFile, WaveAudioFile
from .frames import AudioFrame, FrameKind
from .redis_sink import KINDS, META
from .sink import AudioSink

__all__ = ("StreamMember", "StreamRecorder", "StreamWorker", "frame_of", "redis_client")

_log = logging.getLogger(__name__)

#: Entries read per call.
BATCH = 512


def text(value: Any) -> str:
    """A reply field as :class:`str` (redis-py gives bytes unless told to decode)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def default_consumer() -> str:
    """A worker's name in its group when none is given: host and pid."""
    return f"{os.uname().nodename}-{os.getpid()}"


def redis_client(redis: Any) -> Any:
    """A synchronous redis-py client from a URL, or the client given."""
    if isinstance(redis, str):
        import redis as redis_py

        return redis_py.Redis.from_url(redis, socket_timeout=30.0, socket_connect_timeout=5.0)
    if not callable(getattr(redis, "xreadgroup", None)):
        raise TypeError(f"redis must be a URL or a redis.Redis client, got {type(redis).__name__}")
    return redis


class StreamMember(discord.Object):
    """A member as a stream names them (``member`` entries): id, name and display name."""

    def __init__(self, id: int, name: str, display_name: str) -> None:
        super().__init__(id=id)
        self.name = name
        self.display_name = display_name


def frame_of(fields: dict[bytes, bytes], members: dict[int, StreamMember] | None = None) -> tuple[AudioFrame, int]:
    """The :class:`AudioFrame` a ``frame`` entry of :class:`RedisStreamSink` carries (its user
    from ``members`` when the stream named them, else a :class:`discord.Object`), and the
    position of the sink's ``on_tick`` that came before it (-1 if none)."""
    uid, ssrc, seq, ts, pos, arrival, kind, tick = META.unpack(fields[b"meta"])
    user = None if uid < 0 else (members or {}).get(uid) or discord.Object(id=uid)
    return AudioFrame(user, ssrc, seq, ts, fields[b"audio"], KINDS[kind], pos, arrival), tick


class StreamWorker:
    """Replays one stream of :class:`RedisStreamSink` into a sink, through a consumer group.

    Parameters
    ----------
    redis: Union[:class:`str`, :class:`redis.Redis`]
        A URL or a synchronous client.
    stream: :class:`str`
        The stream's key (:attr:`RedisStreamSink.stream`).
    sink: :class:`AudioSink`
        What the frames go to, with the bot's own calls: its ``on_tick`` where the bot's
        sink had it (file sinks sync there), its ``on_stop`` and ``cleanup`` at the stream's
        stop record.
    group, consumer: :class:`str`
        The consumer group (created at the stream's start if missing) and this worker's name
        in it (default: host and pid). Workers doing different jobs on the same streams
        (recording, transcribing) use different groups.
    take_over: :class:`bool`
        Replace a worker of the group that died (killed, its machine gone): replay the stream
        from its first entry up to the last one the group handed out, claim the group's
        pending entries (``XAUTOCLAIM``) and go on from there. A recording is then written
        whole and once, as long as the stream still holds its start (``maxlen``). Only with
        no other worker of the group alive on this stream (:class:`RedisWorker` makes sure
        with a lease).
    decode: :class:`bool`
        Decode Opus frames (``listen(decode=False)`` in the bot) to PCM before the sink sees
        them: for sinks that need PCM, such as :class:`AudioStream`. File sinks decode Opus
        themselves.

    Attributes
    ----------
    frames: :class:`int`
        Frames handed to the sink.
    finished: :class:`bool`
        Whether the stop record was reached (the sink was then stopped and cleaned up).
    members: Dict[:class:`int`, :class:`StreamMember`]
        Members the stream named, by user id.
    """

    def __init__(
        self,
        redis: Any,
        stream: str,
        sink: AudioSink,
        *,
        group: str = "listening-recorders",
        consumer: str | None = None,
        take_over: bool = False,
        decode: bool = False,
    ) -> None:
        if not isinstance(sink, AudioSink):
            raise TypeError(f"sink must be an AudioSink, got {type(sink).__name__}")
        check_text("stream", stream)
        check_text("group", group)
        self.redis = redis_client(redis)
        self.stream = stream
        self.sink = sink
        self.group = group
        self.consumer = consumer or default_consumer()
        self.frames = 0
        self.finished = False
        #: When the stop record was handled (:func:`time.monotonic`), once :attr:`finished`.
        self.finished_at: float | None = None
        self.members: dict[int, StreamMember] = {}
        self._decoders = DecoderSet() if decode else None
        self._abandoned = False
        try:
            self.redis.xgroup_create(stream, group, id="0", mkstream=True)
        except Exception as exc:  # BUSYGROUP: another worker made it first
            if "BUSYGROUP" not in str(exc):
                raise
        if take_over:
            self._take_over()

    def _take_over(self) -> None:
        info = next(g for g in self.redis.xinfo_groups(self.stream) if text(g["name"]) == self.group)
        last = text(info["last-delivered-id"])
        if last != "0-0":
            start = "-"
            for _ in range(1 << 40):  # everything handed out before: replayed from the start
                entries = self.redis.xrange(self.stream, min=start, max=last, count=BATCH)
                if not entries:
                    break
                self.handle(entries)
                start = "(" + text(entries[-1][0])
        cursor = "0-0"
        for _ in range(1 << 40):  # claim what the dead worker never acknowledged: it is handled now
            # (redis-py drops the cursor from a JUSTID reply: take whole entries and their ids)
            reply = self.redis.xautoclaim(self.stream, self.group, self.consumer, 0, cursor, BATCH)
            cursor, claimed = reply[0], [entry_id for entry_id, _ in reply[1]]
            if claimed:
                self.redis.xack(self.stream, self.group, *claimed)
            if text(cursor) == "0-0":
                break

    def handle(self, entries: list[Any]) -> list[Any]:
        """Hand a batch of entries to the sink; returns their ids, to acknowledge.

        Entries after the stop record are not handled (a stream holds one recording).
        """
        ids = []
        stopped = None
        for entry_id, fields in entries:
            if self.finished or stopped is not None:
                break
            ids.append(entry_id)
            kind = fields.get(b"type")
            if kind == b"frame":
                frame, tick = frame_of(fields, self.members)
                if tick >= 0:
                    self.sink.on_tick(tick)  # where the bot's clock moved: the same mix, the same cuts
                if self._decoders is not None and frame.kind is FrameKind.opus:
                    pcm = self._decoders.decode(frame.ssrc, frame.audio)
                    if pcm is None:
                        continue  # libopus refused it: counted in decode_errors
                    frame.audio, frame.kind = pcm, FrameKind.decoded
                self.sink.on_audio(frame)
                self.frames += 1
            elif kind == b"member":
                uid = int(fields[b"user"])
                name, display = fields[b"name"], fields[b"display_name"]
                self.members[uid] = StreamMember(uid, name.decode(errors="replace"), display.decode(errors="replace"))
            elif kind == b"stop":
                stopped = int(fields[b"pos"])
        if stopped is not None:
            self.sink.on_stop(stopped)
            self.sink.cleanup()
            self.finished = True
            self.finished_at = time.monotonic()
        if self.sink.error is not None:
            raise self.sink.error
        return ids

    @property
    def decode_errors(self) -> int:
        """Opus frames libopus refused (with ``decode=True``)."""
        return 0 if self._decoders is None else self._decoders.counts.errors

    def poll(self, block: float = 1.0) -> bool:
        """Read, hand on and acknowledge what is there (waiting up to ``block`` seconds for
        it); whether the stream's stop record was reached."""
        if self.finished:
            return True
        got = self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=BATCH, block=max(1, round(block * 1000))
        )
        for _key, entries in got or ():
            self.acknowledge(self.handle(entries))
        return self.finished

    def acknowledge(self, ids: list[Any]) -> None:
        """Acknowledge handled entries (after :meth:`handle` returned)."""
        if ids:
            self.redis.xack(self.stream, self.group, *ids)

    def abandon(self) -> None:
        """Make :meth:`run` return (raising) within a poll, from any thread."""
        self._abandoned = True

    def run(self, timeout: float | None = None) -> None:
        """Work until the stream's stop record (or ``timeout`` seconds, raising
        :class:`TimeoutError`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no stop record in {self.stream} within {timeout} s")
            if self._abandoned:
                raise RuntimeError(f"work on {self.stream} was abandoned before its stop record")


class StreamRecorder(StreamWorker):
    """Records one stream of :class:`RedisStreamSink` into files: those an
    :class:`AudioFileSink` in the bot would have written, byte for byte.

    Parameters
    ----------
    redis: Union[:class:`str`, :class:`redis.Redis`]
        A URL or a synchronous client.
    stream: :class:`str`
        The stream's key (:attr:`RedisStreamSink.stream`).
    output_dir: Union[:class:`str`, :class:`os.PathLike`]
        Where the files go.
    file_type: Type[:class:`AudioFile`]
        The format; defaults to :class:`WaveAudioFile`.
    group, consumer, take_over:
        As for :class:`StreamWorker`.
    **sink_options
        Passed to the :class:`AudioFileSink` (``mixed=True``, ``filename=...``, parts...).
    """

    sink: AudioFileSink

    def __init__(
        self,
        redis: Any,
        stream: str,
        output_dir: str | os.PathLike[str],
        *,
        file_type: type[AudioFile] = WaveAudioFile,
        group: str = "listening-recorders",
        consumer: str | None = None,
        take_over: bool = False,
        **sink_options: Any,
    ) -> None:
        files = AudioFileSink(file_type, output_dir, **sink_options)
        super().__init__(redis, stream, files, group=group, consumer=consumer, take_over=take_over)

    @property
    def paths(self) -> list[Path]:
        """The files written: one per member, then the mixed track if there is one."""
        mixed = [self.sink.mixed_file] if self.sink.mixed_file else []
        return [f.path for f in [*self.sink.output_files.values(), *mixed]]

    def run(self, timeout: float | None = None) -> list[Path]:  # type: ignore[override]
        """Record until the stream's stop record (or ``timeout`` seconds); returns the files."""
        super().run(timeout)
        return self.paths
