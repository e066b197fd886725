"""AudioFileSink: one file per user (and optionally a mixed track), all on one timeline."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Union

import numpy as np

from .decoding import DecoderSet
from .files import AudioFile, RecordingError, render_filename, unique_path
from .files.rotating import RotatingAudioFile
from .frames import AudioFrame, FrameKind
from .opus import CHANNELS, FRAME_SAMPLES, SAMPLE_RATE
from .sink import AudioSink

__all__ = ("AudioFileSink", "Mixer")

_log = logging.getLogger(__name__)

StrPath = Union[str, "os.PathLike[str]"]

#: While people talk, the mixed track is written (and synced) every this many samples.
_MIX_STEP = SAMPLE_RATE // 4


class Mixer:
    """Sums every user's frames into one track, streamed to an :class:`AudioFile`.

    Frames of different users reach the sink at different times (each user's pipeline runs
    at its own pace), so the mix is kept in a sliding window of ``window`` seconds and only
    the part older than the newest frame minus the window is written. A frame older than the
    window is too late to be mixed: it is counted in :attr:`late_frames`. Memory is fixed:
    ``window`` seconds of 32-bit stereo samples.

    The written mix equals the sum of the users' tracks, clipped to 16 bits, sample for
    sample: a frame that overlaps audio of its own user already added is trimmed to the new
    part, or skipped, exactly as :meth:`AudioFile.write` does in that user's file (the
    concealment of a loss can overlap the frame before it).

    Opus frames (``listen(decode=False)``) are decoded here, one decoder per SSRC; a packet
    libopus refuses adds nothing to the mix and is counted in :attr:`decode_errors`.
    """

    def __init__(self, file: AudioFile, *, window: float = 10.0) -> None:
        if not 1.0 <= window <= 600.0:
            raise ValueError(f"window must be within 1..600 seconds, got {window!r}")
        self.file = file
        # whole 20 ms frames, so every block written is too (codecs with frames, e.g. Opus)
        self._size = -(-int(window * SAMPLE_RATE) // FRAME_SAMPLES) * FRAME_SAMPLES
        # A ring over the timeline: position p lives at index p % size.
        self._buf = np.zeros((self._size, CHANNELS), dtype=np.int32)
        self._written = 0  # everything before this position is in the file
        self._newest = 0
        self._decoders = DecoderSet()
        self._user_ends: dict[int | None, int] = {}  # per user: end of their newest frame
        #: Frames that arrived after their part of the mix was written.
        self.late_frames = 0

    def add(self, frame: AudioFrame) -> None:
        """Add one frame (PCM, or Opus which is decoded here) at its timeline position."""
        audio = frame.audio
        if frame.kind is FrameKind.opus:
            pcm = self._decoders.decode(frame.ssrc, audio)
            if pcm is None:
                return  # counted in decode_errors
            audio = pcm
        samples = np.frombuffer(audio, dtype="<i2").reshape(-1, CHANNELS)
        start = frame.position
        user = frame.user_id
        user_end = self._user_ends.get(user, 0)  # a user's file starts at 0 too
        if start < user_end:
            if user_end - start >= len(samples):
                return  # within this user's audio already mixed: their file skips it too
            samples, start = samples[user_end - start :], user_end
        if start + len(samples) > user_end:
            self._user_ends[user] = start + len(samples)
        if start < self._written:
            skip = self._written - start
            if skip >= len(samples):
                self.late_frames += 1
                return
            samples, start = samples[skip:], self._written
        end = start + len(samples)
        if end - self._written > self._size:
            self._flush_to(end - self._size)
        i = start % self._size
        n = len(samples)
        first = min(n, self._size - i)
        self._buf[i : i + first] += samples[:first]
        if first < n:
            self._buf[: n - first] += samples[first:]
        if end > self._newest:
            self._newest = end

    def _flush_to(self, position: int) -> None:
        # Write [written, position) and zero it for reuse. Silence goes in as padding, which
        # every format stores cheaply (a WAV hole, FLAC/MP3 silent frames, Opus silence
        # packets) instead of encoding zeros: an hour of quiet costs no LAME time. So does
        # the silence before a block's first sound: a format that needs room before audio
        # (Ogg Opus starts its encoder early) gets it.
        silent_from: int | None = None  # start of a run of silence not yet padded
        while self._written < position:
            if self._written >= self._newest:  # nothing was added from here on
                self._written = position
                break
            i = self._written % self._size
            n = min(position - self._written, self._size - i, SAMPLE_RATE)
            block = self._buf[i : i + n]
            both = block.view(np.int64).reshape(-1)  # one number per stereo sample: fast scans
            if np.count_nonzero(both):
                first = int(np.argmax(both != 0))
                if silent_from is not None or first:
                    self.file.pad_to(self._written + first)
                    silent_from = None
                pcm = np.clip(block[first:], -32768, 32767).astype("<i2").tobytes()
                self.file.write_pcm(pcm, self._written + first)
                block[:] = 0
            elif silent_from is None:
                silent_from = self._written
            self._written += n
        if silent_from is not None or self._written > self.file.end_position:
            self.file.pad_to(self._written)

    @property
    def decode_errors(self) -> int:
        """Opus frames that could not be decoded (left out of the mix)."""
        return self._decoders.counts.errors

    @property
    def newest(self) -> int:
        """The timeline position right after the newest sample added."""
        return self._newest

    @property
    def written(self) -> int:
        """Everything before this timeline position is in the file."""
        return self._written

    def flush(self, position: int | None = None) -> None:
        """Write everything up to ``position`` (default: the newest sample)."""
        self._flush_to(self._newest if position is None else max(position, self._written))


class AudioFileSink(AudioSink):
    """Records every user into their own file, sample-aligned, optionally with a mixed track.

    Every file starts at the moment listening started and all of them end on the same
    sample, so they can be laid on top of each other in any editor. A user whose SSRC
    changes (a reconnect) continues the same file.

    Parameters
    ----------
    file_type: Type[:class:`AudioFile`]
        :class:`WaveAudioFile`, :class:`FLACAudioFile`, :class:`MP3AudioFile` or
        :class:`OggOpusAudioFile` (use ``listen(decode=False)`` with the latter to store the
        received Opus without decoding it).
    output_dir: Union[:class:`str`, :class:`os.PathLike`, None]
        Directory for the files (created if missing); ``None`` records in memory: each file is
        an :class:`io.BytesIO` (``sink.output_files[user_id].fileobj.getvalue()``), named as
        it would be on disk.
    mixed: :class:`bool`
        Also write ``mixed.<ext>``: the sum of everyone.
    filename: :class:`str`
        Template for per-user file names; fields ``{user_id}``, ``{user_name}``,
        ``{display_name}``, ``{start}`` (a datetime: ``{start:%Y%m%d-%H%M%S}``), ``{ssrc}``.
        Names are sanitized and never collide.
    mix_window: :class:`float`
        Seconds of audio the mixer can hold (see :class:`Mixer`): the most a frame may lag
        the newest one and still be mixed.
    mix_delay: :class:`float`
        Seconds the mixed track trails the newest audio on disk. The mix is written (and
        synced) up to ``mix_delay`` before the newest frame every quarter second of audio
        and on every ``on_tick``, so a reader or a killed process finds all the mixed audio
        up to about ``mix_delay`` + 0.25 s ago (plus what an encoder holds). A frame that comes
        more than ``mix_delay`` after newer frames of others (e.g. first words held until
        their DAVE key arrives) is left out of the mix (counted in :attr:`Mixer.late_frames`);
        its user's own file still gets it.
    max_file_seconds: Optional[:class:`float`]
        Write each track as numbered parts of this many seconds of the timeline
        (``1001-alice-001.wav``, ``-002``...), each a playable file; parts with the same
        number line up across tracks (see :class:`RotatingAudioFile`). For day-long sessions.
    max_file_bytes: Optional[:class:`int`]
        Start a track's next part once its file reached this size.
    **file_options
        Passed to every file (e.g. ``bitrate=`` for MP3, ``sync_interval=``).

    Attributes
    ----------
    output_files: Dict[Optional[:class:`int`], :class:`AudioFile`]
        The per-user files by user id (``None``: audio of an SSRC never mapped to a user).
    mixed_file: Optional[:class:`AudioFile`]
        The mixed track, when ``mixed=True``.
    error: Optional[:class:`RecordingError`]
        The first file error (full disk, unwritable directory); listening's ``after``
        receives it. Other files keep recording.
    """

    def __init__(
        self,
        file_type: type[AudioFile],
        output_dir: StrPath | None = ".",
        *,
        mixed: bool = False,
        filename: str = "{user_id}-{user_name}",
        mix_window: float = 10.0,
        mix_delay: float = 0.2,
        max_file_seconds: float | None = None,
        max_file_bytes: int | None = None,
        **file_options: Any,
    ) -> None:
        super().__init__()
        if not 0.0 <= mix_delay <= mix_window:
            raise ValueError(f"mix_delay must be within 0..mix_window seconds, got {mix_delay!r}")
        if not (isinstance(file_type, type) and issubclass(file_type, AudioFile)):
            raise TypeError(f"file_type must be an AudioFile subclass such as WaveAudioFile, got {file_type!r}")
        self.file_type = file_type
        self.in_memory = output_dir is None
        if self.in_memory and (max_file_seconds is not None or max_file_bytes is not None):
            raise ValueError("numbered parts (max_file_seconds, max_file_bytes) need an output_dir")
        self.output_dir = Path("." if output_dir is None else output_dir)
        if not self.in_memory:
            try:
                self.output_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RecordingError(f"cannot create the output directory {self.output_dir}: {exc.strerror}") from exc
            if not os.access(self.output_dir, os.W_OK):
                raise RecordingError(f"the output directory {self.output_dir} is not writable")
        self.filename = filename
        self.file_options = file_options
        self.mix_delay = float(mix_delay)
        self._mix_lag = round(self.mix_delay * SAMPLE_RATE)
        self.started = datetime.now(UTC)
        self._max_seconds, self._max_bytes = max_file_seconds, max_file_bytes
        if max_file_seconds is not None or max_file_bytes is not None:  # validated now; opens nothing
            RotatingAudioFile(
                file_type, self.output_dir / "check", max_seconds=max_file_seconds, max_bytes=max_file_bytes
            )
        self.output_files: dict[int | None, AudioFile | RotatingAudioFile] = {}
        self.mixed_file: AudioFile | RotatingAudioFile | None = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._failed: set[int | str | None] = set()  # user ids, and "mixed"
        self._mixer: Mixer | None = None
        self._closed = False
        if mixed:
            path = self._path_for(f"mixed{file_type.extension}")
            self.mixed_file = self._new_file(path)
            self._mixer = Mixer(self.mixed_file, window=mix_window)  # type: ignore[arg-type]

    def _path_for(self, name: str) -> Path:
        # in memory, names only need to differ from those already taken
        if self.in_memory:
            taken = {
                f.path.name for f in [*self.output_files.values(), *([self.mixed_file] if self.mixed_file else [])]
            }
            stem, dot, ext = name.rpartition(".")
            n, candidate = 1, name
            while candidate in taken:
                n += 1
                candidate = f"{stem} ({n}){dot}{ext}"
            return Path(candidate)
        return unique_path(self.output_dir, name)

    def _new_file(self, path: Path) -> AudioFile | RotatingAudioFile:
        if self.in_memory:
            buffer = io.BytesIO()
            buffer.name = path.name
            return self.file_type(buffer, **self.file_options)
        if self._max_seconds is None and self._max_bytes is None:
            return self.file_type(path, **self.file_options)
        return RotatingAudioFile(
            self.file_type, path, max_seconds=self._max_seconds, max_bytes=self._max_bytes, **self.file_options
        )

    def __repr__(self) -> str:
        return f"<AudioFileSink {self.file_type.__name__} dir={str(self.output_dir)!r} users={len(self.output_files)}>"

    def _file_for(self, frame: AudioFrame) -> AudioFile | RotatingAudioFile:
        key = frame.user_id
        f = self.output_files.get(key)
        if f is None:
            user = frame.user
            name = getattr(user, "name", None)
            display = getattr(user, "display_name", None)
            stem = render_filename(
                self.filename,
                user_id=key,
                user_name=name,
                display_name=display,
                start=self.started,
                ssrc=frame.ssrc,
                ext=self.file_type.extension.lstrip("."),
            )
            path = self._path_for(stem)  # render_filename always ends it with the extension
            f = self._new_file(path)
            self.output_files[key] = f
        return f

    def _fail(self, key: object, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        _log.error("recording %s failed: %s", key, exc)

    def on_audio(self, frame: AudioFrame) -> None:
        key = frame.user_id
        if key not in self._failed:
            try:
                self._file_for(frame).write(frame)
            except (RecordingError, OSError) as exc:
                self._failed.add(key)
                self._fail(key, exc)
        if self._mixer is not None and "mixed" not in self._failed:
            try:
                self._mixer.add(frame)
            except (RecordingError, OSError) as exc:
                self._failed.add("mixed")
                self._fail("the mixed track", exc)
            else:
                # while people talk, the mix follows them to disk in quarter seconds
                if self._mixer.newest - self._mixer.written >= self._mix_lag + _MIX_STEP:
                    self._flush_mix(self._mixer.newest)

    def _flush_mix(self, newest: int) -> None:
        # Write and sync the mix up to ``mix_delay`` before ``newest``, in whole 20 ms frames
        # from 0 (blocks a frame-based codec such as Opus takes exactly).
        assert self._mixer is not None
        try:
            self._mixer.flush((newest - self._mix_lag) // FRAME_SAMPLES * FRAME_SAMPLES)
            self._mixer.file.sync()
        except (RecordingError, OSError) as exc:
            self._failed.add("mixed")
            self._fail("the mixed track", exc)

    def on_tick(self, position: int) -> None:
        """Flush buffered audio to disk (called periodically while listening).

        Per-user files sync what they have; the mixed track is written up to ``mix_delay``
        before ``position`` or before the newest frame, whichever is earlier, and synced.
        """
        if self._mixer is not None and "mixed" not in self._failed:
            # Behind the newest frame, not only behind the clock: when this thread is late
            # (a slow disk, a busy CPU), the frames queued for it are older than ``position``
            # and must still be mixed.
            self._flush_mix(min(position, self._mixer.newest))
        for key, f in list(self.output_files.items()):
            if key not in self._failed:
                try:
                    f.sync()
                except (RecordingError, OSError) as exc:
                    self._failed.add(key)
                    self._fail(key, exc)

    def on_stop(self, position: int) -> None:
        """Extend every file with silence to the recording's end so all end on one sample.

        The end is ``position``, or later if a frame reaches past it (frames placed by RTP
        time can end a little after the moment listening stopped): no audio is cut, and
        every file still ends on the same sample.
        """
        ends = [f.end_position for key, f in self.output_files.items() if key not in self._failed]
        if self._mixer is not None:
            ends.append(self._mixer.newest)
        position = max([position, *ends])
        if self._mixer is not None and "mixed" not in self._failed:
            try:
                self._mixer.flush(position)
                self._mixer.file.pad_to(position)
            except (RecordingError, OSError) as exc:
                self._failed.add("mixed")
                self._fail("the mixed track", exc)
        for key, f in self.output_files.items():
            if key not in self._failed:
                try:
                    f.pad_to(position)
                except (RecordingError, OSError) as exc:
                    self._failed.add(key)
                    self._fail(key, exc)

    def cleanup(self) -> None:
        """Close every file (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for f in [*self.output_files.values(), *([self.mixed_file] if self.mixed_file else [])]:
            try:
                f.close()
            except Exception as exc:  # keep closing the others
                self._fail(f.path, exc)

    async def convert_files(self) -> list[Path]:
        """Finish every file off the event loop; returns their paths (per-user files, then mixed)."""
        files = [*self.output_files.values(), *([self.mixed_file] if self.mixed_file else [])]
        paths: list[Any] = await asyncio.gather(*(f.convert() for f in files), return_exceptions=True)
        out: list[Path] = []
        for f, p in zip(files, paths):
            if isinstance(p, BaseException):
                self._fail(f.path, p)
            else:
                out.extend(p if isinstance(p, list) else [p])  # a rotating track: its parts
        return out
