"""The other end of :class:`~discord.ext.listening.RedisStreamSink`: a worker that records a stream.

:class:`StreamRecorder` reads one guild's stream through a consumer group and writes the files
an :class:`~discord.ext.listening.AudioFileSink` in the bot would have written, sample for
sample: the entries carry the frames (Opus as received, decoded here by the file classes) with
their timeline positions. An entry is acknowledged only once the files holding it were synced
to the OS, so a worker that dies leaves its unwritten entries pending in the group.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import discord

from .file_sink import AudioFileSink
from .files import AudioFile, WaveAudioFile
from .frames import AudioFrame
from .redis_sink import KINDS, META

__all__ = ("StreamMember", "StreamRecorder", "frame_of")

_log = logging.getLogger(__name__)

#: Entries read per call.
_BATCH = 512


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class StreamMember(discord.Object):
    """A member as a stream names them (``member`` entries): id, name and display name."""

    def __init__(self, id: int, name: str, display_name: str) -> None:
        super().__init__(id=id)
        self.name = name
        self.display_name = display_name


def frame_of(fields: dict[bytes, bytes], members: dict[int, StreamMember] | None = None) -> AudioFrame:
    """The :class:`AudioFrame` a ``frame`` entry of :class:`RedisStreamSink` carries (its user
    from ``members`` when the stream named them, else a :class:`discord.Object`)."""
    uid, ssrc, seq, ts, pos, arrival, kind = META.unpack(fields[b"meta"])
    user = None if uid < 0 else (members or {}).get(uid) or discord.Object(id=uid)
    return AudioFrame(user, ssrc, seq, ts, fields[b"audio"], KINDS[kind], pos, arrival)


class StreamRecorder:
    """Records one stream of :class:`RedisStreamSink` into files (a worker process's job).

    Parameters
    ----------
    redis: Union[:class:`str`, :class:`redis.Redis`]
        A URL or a synchronous client.
    stream: :class:`str`
        The stream's key (``listening:<guild_id>`` by default on the bot's side).
    output_dir: Union[:class:`str`, :class:`os.PathLike`]
        Where the files go.
    file_type: Type[:class:`AudioFile`]
        The format; defaults to :class:`WaveAudioFile`.
    group, consumer: :class:`str`
        The consumer group (created at the stream's start if missing) and this worker's name
        in it (default: host and pid).
    take_over: :class:`bool`
        Replace a worker of the group that died (killed, its machine gone): rewrite the files
        from the stream's first entry up to the last one the group handed out, claim the
        group's pending entries (``XAUTOCLAIM``) and go on from there. Nothing is lost or
        written twice as long as the stream still holds its start (``maxlen``). Only with no
        other worker of the group alive: it takes their entries too.
    **sink_options
        Passed to the :class:`AudioFileSink` (``mixed=True``, ``filename=...``, parts...).
    """

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
        if isinstance(redis, str):
            import redis as redis_py

            redis = redis_py.Redis.from_url(redis)
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer or f"{os.uname().nodename}-{os.getpid()}"
        self.sink = AudioFileSink(file_type, output_dir, **sink_options)
        self.frames = 0
        self.finished = False
        self._abandoned = False
        #: Members the stream named, by user id.
        self.members: dict[int, StreamMember] = {}
        self._newest = 0
        try:
            redis.xgroup_create(stream, group, id="0", mkstream=True)
        except Exception as exc:  # BUSYGROUP: another worker made it first
            if "BUSYGROUP" not in str(exc):
                raise
        if take_over:
            self._take_over()

    def _take_over(self) -> None:
        groups = self.redis.xinfo_groups(self.stream)
        info = next(g for g in groups if _text(g["name"]) == self.group)
        last = _text(info["last-delivered-id"])
        if last != "0-0":
            start = "-"
            while True:  # everything handed out before: the files are rebuilt from the start
                entries = self.redis.xrange(self.stream, min=start, max=last, count=_BATCH)
                if not entries:
                    break
                self._handle(entries)
                start = "(" + _text(entries[-1][0])
        cursor = "0-0"
        for _ in range(1_000_000):  # claim what the dead worker never acknowledged: it is written now
            # (redis-py drops the cursor from a JUSTID reply: take whole entries and their ids)
            reply = self.redis.xautoclaim(self.stream, self.group, self.consumer, 0, cursor, _BATCH)
            cursor, claimed = reply[0], [entry_id for entry_id, _ in reply[1]]
            if claimed:
                self.redis.xack(self.stream, self.group, *claimed)
            if _text(cursor) == "0-0":
                break

    def _handle(self, entries: list[Any]) -> list[Any]:
        """Write a batch of entries; returns their ids."""
        ids = []
        stopped = None
        for entry_id, fields in entries:
            ids.append(entry_id)
            kind = fields.get(b"type")
            if kind == b"frame":
                frame = frame_of(fields, self.members)
                self.sink.on_audio(frame)
                self.frames += 1
                self._newest = max(self._newest, frame.position + frame.samples)
            elif kind == b"member":
                uid = int(fields[b"user"])
                self.members[uid] = StreamMember(
                    uid, fields[b"name"].decode(errors="replace"), fields[b"display_name"].decode(errors="replace")
                )
            elif kind == b"stop":
                stopped = int(fields[b"pos"])
        if stopped is not None:
            self.sink.on_stop(stopped)
            self.sink.cleanup()
            self.finished = True
        elif ids:
            self.sink.on_tick(self._newest)  # syncs every file: what is acknowledged is on disk
        if self.sink.error is not None:
            raise self.sink.error
        return ids

    def poll(self, block: float = 1.0) -> bool:
        """Read, write and acknowledge what is there (waiting up to ``block`` seconds for it);
        whether the stream's ``stop`` record was reached (the files are then finished)."""
        if self.finished:
            return True
        got = self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=_BATCH, block=round(block * 1000)
        )
        for _key, entries in got or ():
            ids = self._handle(entries)
            if ids:
                self.redis.xack(self.stream, self.group, *ids)
        return self.finished

    def abandon(self) -> None:
        """Make :meth:`run` return (raising) within a poll, from any thread."""
        self._abandoned = True

    def run(self, timeout: float | None = None) -> list[Path]:
        """Record until the stream's ``stop`` record (or ``timeout`` seconds); returns the files."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no stop record in {self.stream} within {timeout} s")
            if self._abandoned:
                raise RuntimeError(f"recording {self.stream} was abandoned before its stop record")
        return [
            f.path
            for f in [*self.sink.output_files.values(), *([self.sink.mixed_file] if self.sink.mixed_file else [])]
        ]
