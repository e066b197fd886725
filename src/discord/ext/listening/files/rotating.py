"""One track as numbered parts: :class:`RotatingAudioFile`, for recordings that last all day.

Each part is a whole file of its format, playable on its own, that knows where it starts on
the recording's timeline (:attr:`AudioFile.origin`). With ``max_seconds`` the parts of every
track of a recording cut at the same timeline positions (part ``n`` covers
``[n * max_seconds, (n + 1) * max_seconds)``), so part files with the same number line up;
a track has no part for a stretch in which it has no audio. With ``max_bytes`` a part ends at
the first write after it reached that size; its successor starts where it ended.

PCM is split at a boundary to the sample. Opus frames kept as they are (``listen(decode=False)``
into Ogg Opus) cannot be split: a frame that straddles a boundary goes whole into the part it
starts in, which then runs up to 20 ms past the boundary.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from ..frames import AudioFrame, FrameKind
from ..opus import SAMPLE_RATE
from .base import AudioFile, RecordingError
from .naming import unique_path
from .output import BYTES_PER_SAMPLE

__all__ = ("RotatingAudioFile",)


class RotatingAudioFile:
    """A track written as parts of at most ``max_seconds`` of timeline or ``max_bytes`` on disk.

    It offers what a sink and :class:`~discord.ext.listening.Mixer` use of an
    :class:`AudioFile` (``write``, ``write_pcm``, ``pad_to``, ``sync``, ``close``,
    ``convert``...), each call going to the part it belongs in.

    Parameters
    ----------
    file_type: Type[:class:`AudioFile`]
        The format of every part.
    path: Union[:class:`str`, :class:`os.PathLike`]
        The track's name: part ``n`` is ``<stem>-<n, from 1, 3 digits><ext>`` beside it.
    max_seconds: Optional[:class:`float`]
        Timeline seconds per part (at least 1).
    max_bytes: Optional[:class:`int`]
        Bytes per part on disk (at least 64 KiB), checked at every sync (every
        ``sync_interval``): a part may exceed it by what is written between two syncs.
    **file_options
        Passed to every part (``sync_interval=``, ``bitrate=``...).

    Raises
    ------
    ValueError
        Neither or a bad limit.
    """

    def __init__(
        self,
        file_type: type[AudioFile],
        path: str | Path,
        *,
        max_seconds: float | None = None,
        max_bytes: int | None = None,
        **file_options: Any,
    ) -> None:
        if max_seconds is None and max_bytes is None:
            raise ValueError("give max_seconds or max_bytes")
        if max_seconds is not None and not (isinstance(max_seconds, (int, float)) and 1.0 <= max_seconds < 1e9):
            raise ValueError(f"max_seconds must be a number of seconds >= 1, got {max_seconds!r}")
        if max_bytes is not None and not (isinstance(max_bytes, int) and max_bytes >= 65536):
            raise ValueError(f"max_bytes must be an int >= 65536, got {max_bytes!r}")
        self.file_type = file_type
        self._base = Path(path)
        self._span = None if max_seconds is None else round(max_seconds * SAMPLE_RATE)
        self.max_bytes = max_bytes
        self.file_options = file_options
        self._lock = threading.RLock()
        self._part: AudioFile | None = None
        self._number = 0  # the current part's number (from 1)
        #: Every part made so far, in order.
        self.parts: list[AudioFile] = []
        self._closed = False
        self.user: Any = None

    # -- where a position goes ---------------------------------------------------------------

    def _boundary(self) -> int | None:
        """The timeline position where the current part ends (``max_seconds``), else None."""
        return None if self._span is None or self._part is None else self._number * self._span

    def _part_at(self, position: int) -> AudioFile:
        """The part that takes audio starting at ``position``, opened if need be."""
        part = self._part
        if part is not None and self._span is not None and position >= self._number * self._span:
            self._finish_part(self._number * self._span)
            part = None
        if part is None:
            if self._span is not None:
                number = position // self._span + 1
                origin = (number - 1) * self._span
            else:  # a part follows the one before it; the first starts with the recording
                number = self._number + 1
                origin = self.parts[-1].end_position if self.parts else 0
            self._open(number, origin)
            part = self._part
            assert part is not None
        return part

    def _open(self, number: int, origin: int) -> None:
        name = f"{self._base.stem}-{number:03d}{self._base.suffix}"
        part = self.file_type(unique_path(self._base.parent, name), origin=origin, **self.file_options)
        self._part, self._number = part, number
        self.parts.append(part)

    def _finish_part(self, end: int | None) -> None:
        part, self._part = self._part, None
        if part is None:
            return
        if end is not None and end > part.end_position:
            part.pad_to(end)
        part.close()

    # -- the AudioFile interface -------------------------------------------------------------

    def write(self, frame: AudioFrame) -> None:
        """Put a frame into the part(s) its audio belongs in."""
        with self._lock:
            self._check_open()
            if frame.user is not None:
                self.user = frame.user
            part = self._part_at(frame.position)
            boundary = self._boundary()
            samples = frame.samples
            if boundary is None or frame.position + samples <= boundary or frame.kind is FrameKind.opus:
                part.write(frame)
                return
            cut = (boundary - frame.position) * BYTES_PER_SAMPLE
            part.write_pcm(frame.audio[:cut], frame.position)
            self._part_at(boundary).write_pcm(frame.audio[cut:], boundary)

    def write_pcm(self, pcm: bytes | bytearray | memoryview, position: int) -> None:
        """Put PCM at a timeline position, split over parts where it crosses boundaries."""
        with self._lock:
            self._check_open()
            view = memoryview(pcm)
            while len(view):
                part = self._part_at(position)
                boundary = self._boundary()
                take = len(view) if boundary is None else min(len(view), (boundary - position) * BYTES_PER_SAMPLE)
                part.write_pcm(view[:take], position)
                view, position = view[take:], position + take // BYTES_PER_SAMPLE

    def pad_to(self, position: int) -> None:
        """Extend the current part with silence up to ``position``, or to its end if that
        comes first (no part is made of silence alone)."""
        with self._lock:
            self._check_open()
            part = self._part
            if part is None:
                return
            boundary = self._boundary()
            if boundary is not None and position >= boundary:
                self._finish_part(boundary)
            else:
                part.pad_to(position)

    def sync(self) -> None:
        """Sync the current part; with ``max_bytes``, end it if it reached that size."""
        with self._lock:
            part = self._part
            if part is None or self._closed:
                return
            part.sync()
            if self.max_bytes is not None and part.path.stat().st_size >= self.max_bytes:
                self._finish_part(None)

    def close(self) -> None:
        """Finish the current part. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._finish_part(None)

    cleanup = close

    def finish(self) -> list[Path]:
        """Close, and return every part's path."""
        self.close()
        errors = [p.error for p in self.parts if p.error is not None]
        if errors:
            raise errors[0].with_traceback(None)
        return [p.path for p in self.parts]

    async def convert(self) -> list[Path]:
        """:meth:`finish` off the event loop."""
        return await asyncio.to_thread(self.finish)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self._base.name}: the recording is closed")

    # -- what callers read -----------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The current (or last) part's path; before any audio, the track's name."""
        return self.parts[-1].path if self.parts else self._base

    @property
    def paths(self) -> list[Path]:
        """Every part's path, in order."""
        return [p.path for p in self.parts]

    @property
    def end_position(self) -> int:
        """The timeline position just after the last sample written, in any part."""
        return self.parts[-1].end_position if self.parts else 0

    @property
    def error(self) -> RecordingError | None:
        """The first error of a part."""
        return next((p.error for p in self.parts if p.error is not None), None)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    def __repr__(self) -> str:
        return f"<RotatingAudioFile {str(self._base)!r} parts={len(self.parts)}>"
