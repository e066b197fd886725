"""The recording file on the recording timeline: :class:`AudioFile`, the template every format fills in.

:class:`AudioFile` does what all formats share: the lock, error handling (:class:`RecordingError`),
syncs, counters, and placement on the timeline (a frame lands at its position, the gap before
it becomes silence, overlaps are trimmed or skipped). A format fills in hooks:

- ``_append_pcm(pcm)`` and ``_append_silence(samples)``: add audio or silence at the end of
  what is written (``_end``), for formats that write a stream of samples (WAV, FLAC, MP3);
- ``_write_opus(start, frame)``: a frame that arrives as Opus (default: decode it, then place
  the PCM); ``_write_silence(start, pcm)``: a silence frame (default: place it like audio);
- ``_placed_end()``: where PCM placed now starts to overlap nothing (default: ``_end``);
  ``_put_pcm(start, pcm)``: PCM that overlaps nothing, at ``start`` (default: silence up to
  it, then ``_append_pcm``); ``_silence_to(target)``: the silence :meth:`AudioFile.pad_to`
  asks for (default: ``_append_silence`` now; a format may leave it promised in
  ``_content_end`` and write it later);
- ``_sync()``, ``_finalize()``, ``_salvage()`` and ``_release()``: push buffered data and
  headers, finish, save what can be saved after an error, close.

``_end`` is the end of what the format has produced (it drives the syncs); ``_content_end`` the
end the file promises beyond it (silence or encoded audio a format writes later); the file's
length is the larger one. A format opens its file inside ``with self._creating() as out:``,
the one failure path of every constructor.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from ..decoding import DecoderSet
from ..frames import AudioFrame, FrameKind
from ..opus import SAMPLE_RATE
from .naming import StrPath, sanitize_filename, unique_path
from .output import BYTES_PER_SAMPLE, Output, is_io_error

__all__ = ("AudioFile", "RecordingError", "vendor")

_log = logging.getLogger(__name__)


@functools.cache
def vendor() -> str:
    """The software the files name as their writer (WAV ``ISFT``, the OpusTags vendor)."""
    # The version's one definition is the package's __init__; read when the first file is
    # written, so this module does not depend on the order in which the package imports it.
    from .. import __version__

    return f"discord-ext-listening {__version__}"


class RecordingError(OSError):
    """Writing a recording file failed (unwritable directory, disk full, I/O error...).

    The file that raised stays in a consistent state: it is not written to any more and
    every later :meth:`AudioFile.write` raises the same error. Whatever reached the disk
    before the failure stays readable (for WAV, :func:`repair_wav` can fix the header).

    Attributes
    ----------
    errno: Optional[:class:`int`]
        The OS error code (``errno.ENOSPC`` for a full disk), when there is one.
    filename: :class:`str`
        The recording file.
    """

    def __str__(self) -> str:
        if self.filename is None or self.strerror is None:  # built with a plain message
            return super().__str__()
        code = f"[Errno {self.errno}] " if self.errno is not None else ""
        return f"recording to {self.filename!r} failed: {code}{self.strerror}"


class AudioFile:
    """A recording file on the recording timeline; subclasses pick the format.

    Drive it from a sink: create it, :meth:`write` every frame of one speaker, call
    :meth:`sync` from a timer (every half second or so: a speaker who went quiet writes
    nothing that would trigger it), call :meth:`pad_to` with the recording's end, then
    :meth:`close` (or ``await`` :meth:`convert`). All methods are thread-safe.

    Placement rules: a frame lands at ``frame.position - origin`` samples into the file. The
    gap before it becomes silence. A frame that starts before the end of what is already
    written (a late duplicate, a clock step backwards) is trimmed to the part that is new, or
    skipped if nothing is new: the file never shifts. Both cases are counted.

    Parameters
    ----------
    path: Union[:class:`str`, :class:`os.PathLike`, BinaryIO]
        Where to write. An existing file is overwritten (see :func:`unique_path`). Or a
        seekable, readable binary file object (an :class:`io.BytesIO`...) to record into in
        memory: it is written from its start and left open at the end (:meth:`finish` then
        cannot rename it).
    origin: :class:`int`
        The timeline position of the file's first sample (0: the start of the recording).
    sync_interval: :class:`float`
        Seconds of audio, and of wall time, between header updates and flushes: what a
        killed process can lose at most, plus what an encoder holds (up to one FLAC block of
        96 ms, LAME's ~50 ms, the newest Ogg packet).
    tags: Optional[Mapping[:class:`str`, :class:`str`]]
        Metadata (``title``, ``artist``, ``comment``, ``date``...) written where the format has
        room for it.

    Attributes
    ----------
    user: Union[:class:`discord.Member`, :class:`discord.Object`, None]
        The speaker, taken from the frames written.
    ssrc: Optional[:class:`int`]
        The RTP source of the last frame written.
    converted: :class:`bool`
        Whether :meth:`convert` has finished.

    Raises
    ------
    RecordingError
        The file cannot be created.
    """

    #: The file name extension of the format, with the dot.
    extension: ClassVar[str] = ""

    def __init__(
        self,
        path: StrPath | BinaryIO,
        *,
        origin: int = 0,
        sync_interval: float = 0.5,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        if sync_interval < 0:
            raise ValueError("sync_interval must be >= 0")
        self._fileobj: Any = None
        if not isinstance(path, (str, os.PathLike)):
            for need in ("write", "seek", "tell", "read"):
                if not callable(getattr(path, need, None)):
                    raise TypeError(
                        f"path must be a path or a seekable binary file object (a BytesIO...), got {type(path).__name__}"
                    )
            self._fileobj = path
            path = str(getattr(path, "name", "") or f"<{type(path).__name__}>")
        self._path = Path(path)
        self._origin = int(origin)
        self._sync_interval = float(sync_interval)
        self._sync_samples = max(1, int(self._sync_interval * SAMPLE_RATE))
        self.tags: dict[str, str] = dict(tags or {})
        self._lock = threading.RLock()
        self._closed = False
        self._error: RecordingError | None = None
        # The end of what the format has produced and of what it promises beyond that (see
        # the module doc); samples_written is the larger one.
        self._end = 0
        self._content_end = 0
        self._frames_written = 0
        self._frames_dropped_overlap = 0
        self._frames_trimmed_overlap = 0
        self._samples_dropped_overlap = 0
        self._frames_invalid = 0
        self._synced_end = 0
        self._synced_at = time.monotonic()
        self._decoders: DecoderSet | None = None  # decodes frames that arrive as Opus; made on the first
        self._out: Output | None = None  # the open file, set by _creating()
        self.user: Any = None
        self.ssrc: int | None = None
        self.converted = False

    # ---- properties ---------------------------------------------------------------

    @property
    def path(self) -> Path:
        """Where the file is (changes when :meth:`convert` renames it)."""
        return self._path

    @property
    def fileobj(self) -> BinaryIO | None:
        """The binary file object recorded into, when one was given instead of a path."""
        return self._fileobj  # type: ignore[no-any-return]

    @property
    def origin(self) -> int:
        """The timeline position of the file's first sample."""
        return self._origin

    @property
    def samples_written(self) -> int:
        """Samples per channel in the file so far (silence included), from its start."""
        return max(self._end, self._content_end)

    @property
    def end_position(self) -> int:
        """The timeline position just after the last sample written."""
        return self._origin + self.samples_written

    @property
    def duration(self) -> float:
        """Seconds of audio in the file so far."""
        return self.samples_written / SAMPLE_RATE

    @property
    def frames_written(self) -> int:
        """Frames that went into the file (wholly or trimmed)."""
        return self._frames_written

    @property
    def frames_dropped_overlap(self) -> int:
        """Frames skipped because they lay entirely within audio already written."""
        return self._frames_dropped_overlap

    @property
    def frames_trimmed_overlap(self) -> int:
        """Frames whose beginning overlapped audio already written and was cut off."""
        return self._frames_trimmed_overlap

    @property
    def samples_dropped_overlap(self) -> int:
        """Samples not written because of overlaps (skipped and trimmed frames)."""
        return self._samples_dropped_overlap

    @property
    def frames_invalid(self) -> int:
        """Frames dropped because their audio could not be used (corrupt Opus packets)."""
        return self._frames_invalid

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    done = closed

    @property
    def error(self) -> RecordingError | None:
        """The error that stopped the recording, if one did."""
        return self._error

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("failed" if self._error else "open")
        name = type(self).__name__
        return f"<{name} {str(self._path)!r} {state} t={self.duration:.2f}s frames={self._frames_written}>"

    # ---- public API -----------------------------------------------------------------

    def write(self, frame: AudioFrame) -> None:
        """Put one frame into the file at its timeline position.

        PCM frames (any :class:`FrameKind` but ``opus``) carry 48 kHz stereo s16le audio.
        Raw Opus frames are decoded here for PCM formats (one decoder per SSRC, in the order
        written) and stored as they are by :class:`OggOpusAudioFile`.

        Raises
        ------
        RecordingError
            Writing failed now or earlier.
        ValueError
            The file is closed, or the frame's PCM is not whole stereo samples.
        """
        with self._lock:
            self._check_writable()
            if frame.user is not None:
                self.user = frame.user
            self.ssrc = frame.ssrc
            with self._io():
                self._write_frame(frame)
                self._maybe_sync()

    on_audio = write  # the seed project's name for write

    def write_pcm(self, pcm: bytes | bytearray | memoryview, position: int) -> None:
        """Put 48 kHz stereo s16le PCM at a timeline position (for mixers and generated audio).

        Same placement rules as :meth:`write`.
        """
        with self._lock:
            self._check_writable()
            with self._io():
                if self._place(position - self._origin, pcm):
                    self._frames_written += 1
                self._maybe_sync()

    def pad_to(self, position: int) -> None:
        """Extend the file with silence up to a timeline position.

        Call it with the same position on every file of a recording before closing them so
        they all end on the same sample. A sink may also call it from a timer with a position
        safely behind the newest audio (its jitter delay): the silence then reaches the disk
        as time passes and encoders release the audio they hold. Frames that arrive later for
        positions before it are dropped as overlaps.
        """
        with self._lock:
            self._check_writable()
            target = position - self._origin
            with self._io():
                if target > self._end:
                    self._pad(target)
                self._maybe_sync()

    def sync(self) -> None:
        """Push what is buffered to the OS and update the header, now.

        It happens on its own every ``sync_interval``; call it from a timer so a speaker
        who went quiet still has every sample on disk.
        """
        with self._lock:
            if self._closed:
                return
            self._raise_if_failed()
            with self._io():
                self._do_sync()

    def close(self) -> None:
        """Finish the file (final header, encoder flush) and close it. Idempotent.

        After a :class:`RecordingError` it only salvages what it can (and does not raise the
        old error again; see :attr:`error`).

        Raises
        ------
        RecordingError
            Finishing the file failed.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            failure: RecordingError | None = None
            try:
                if self._error is None:
                    self._finalize()
                else:
                    self._salvage()
            except Exception as exc:
                if self._error is None:
                    failure = self._fail(exc)
                else:
                    _log.debug("salvaging %s after %s failed too: %r", self._path, self._error, exc)
            finally:
                try:
                    self._release()
                except Exception as exc:  # closing the descriptor itself failed (EIO on NFS...)
                    if failure is None and self._error is None:
                        failure = self._fail(exc)
            if failure is not None:
                raise failure

    cleanup = close  # the seed project's name for close

    def finish(self, new_name: str | None = None) -> Path:
        """Close the file and optionally rename it; the blocking half of :meth:`convert`."""
        self.close()
        with self._lock:
            if self._error is not None:
                raise self._error.with_traceback(None)
            if new_name is not None:
                self._rename(new_name)
            self.converted = True
            return self._path

    async def convert(self, new_name: str | None = None) -> Path:
        """Finish the file off the event loop and return its final path.

        Parameters
        ----------
        new_name: Optional[:class:`str`]
            A new file name in the same directory; the extension is added unless it ends
            with it already. It is sanitized like any name, and a name in use gets a
            `` (n)`` suffix rather than replacing another file.

        Raises
        ------
        RecordingError
            The recording failed (the partial file stays at :attr:`path`).
        """
        return await asyncio.to_thread(self.finish, new_name)

    def __enter__(self) -> AudioFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- shared machinery -------------------------------------------------------------

    @contextlib.contextmanager
    def _creating(self) -> Iterator[Output]:
        """Create the file and let the format write its header; the one failure path of constructors.

        On any error the file is released and marked closed; an I/O error becomes the file's
        :class:`RecordingError`, anything else (a bad tag...) passes through unchanged.
        """
        try:
            self._out = Output(self._path, self._fileobj)
            yield self._out
        except Exception as exc:
            err = self._fail(exc) if is_io_error(exc) else None
            self._closed = True
            self._release()
            if err is None:
                raise
            raise err from None

    def _check_writable(self) -> None:
        if self._closed:
            raise ValueError(f"{self._path} is closed")
        self._raise_if_failed()

    @contextlib.contextmanager
    def _io(self) -> Iterator[None]:
        # I/O failures (OSError, FFmpeg errors) become the file's RecordingError; programming
        # errors (a ValueError about bad PCM) pass through unchanged.
        try:
            yield
        except RecordingError:
            raise
        except Exception as exc:
            if is_io_error(exc):
                raise self._fail(exc) from exc
            raise

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error.with_traceback(None)

    def _fail(self, exc: BaseException) -> RecordingError:
        if isinstance(exc, RecordingError):
            err = exc
        else:
            code = getattr(exc, "errno", None)
            reason = getattr(exc, "strerror", None) or (os.strerror(code) if code else None)
            reason = reason or str(exc) or type(exc).__name__
            err = RecordingError(code, reason, str(self._path))
            err.__cause__ = exc
        if self._error is None:
            self._error = err
            _log.error("%s", err)
        return self._error

    def _maybe_sync(self) -> None:
        due = self._end - self._synced_end >= self._sync_samples
        if due or time.monotonic() - self._synced_at >= self._sync_interval:
            self._do_sync()

    def _do_sync(self) -> None:
        self._sync()
        self._synced_end = self._end
        self._synced_at = time.monotonic()

    def _write_frame(self, frame: AudioFrame) -> None:
        start = frame.position - self._origin
        if frame.kind is FrameKind.opus:
            placed = self._write_opus(start, frame)
        elif frame.kind is FrameKind.silence:
            placed = self._write_silence(start, frame.audio)
        else:
            placed = self._place(start, frame.audio)
        if placed:
            self._frames_written += 1

    def _samples_in(self, pcm: bytes | bytearray | memoryview) -> int:
        if len(pcm) % BYTES_PER_SAMPLE:
            raise ValueError(f"PCM must be whole 16-bit stereo samples (a multiple of 4 bytes), got {len(pcm)} bytes")
        return len(pcm) // BYTES_PER_SAMPLE

    def _place(self, start: int, pcm: bytes | bytearray | memoryview) -> bool:
        """Place PCM at file offset ``start``; returns whether anything was written."""
        count = self._samples_in(pcm)
        if count == 0:
            return False
        end = self._placed_end()
        if start < end:
            overlap = end - start
            if overlap >= count:
                self._frames_dropped_overlap += 1
                self._samples_dropped_overlap += count
                _log.debug("%s: frame at %d lies within written audio (end %d)", self._path.name, start, end)
                return False
            self._frames_trimmed_overlap += 1
            self._samples_dropped_overlap += overlap
            pcm = memoryview(pcm)[overlap * BYTES_PER_SAMPLE :]
            start = end
        self._put_pcm(start, pcm)
        return True

    def _pad(self, target: int) -> None:
        """Make the file play silence up to file position ``target`` (past ``_end``)."""
        self._content_end = max(self._content_end, target)
        self._silence_to(target)

    def _rename(self, new_name: str) -> None:
        if self._fileobj is not None:
            raise ValueError("a recording into a file object has no file name to change")
        name = sanitize_filename(new_name)
        if self.extension and not name.lower().endswith(self.extension):
            name = sanitize_filename(name + self.extension)
        target = self._path.with_name(name)
        if target == self._path:
            return
        target = unique_path(self._path.parent, name)
        try:
            os.rename(self._path, target)
        except OSError as exc:
            reason = f"cannot rename to {target.name!r}: {exc.strerror}"
            raise RecordingError(exc.errno, reason, str(self._path)) from exc
        _log.debug("renamed %s -> %s", self._path, target)
        self._path = target

    # ---- format hooks (see the module doc) ------------------------------------------------

    def _write_opus(self, start: int, frame: AudioFrame) -> bool:
        """Write a frame that arrived as Opus at file offset ``start``; returns whether it was."""
        # The shared decoder set: one decoder per SSRC (a new SSRC is a new encoder on the
        # other side), fed in the order written.
        if self._decoders is None:
            self._decoders = DecoderSet()
        pcm = self._decoders.decode(frame.ssrc, frame.audio)
        if pcm is None:  # libopus refused the packet
            self._frames_invalid += 1
            return False
        return self._place(start, pcm)

    def _write_silence(self, start: int, pcm: bytes | bytearray | memoryview) -> bool:
        """Write a silence frame at file offset ``start``; returns whether anything was."""
        return self._place(start, pcm)

    def _placed_end(self) -> int:
        """Where PCM placed now starts to overlap nothing already in the file."""
        return self._end

    def _put_pcm(self, start: int, pcm: bytes | bytearray | memoryview) -> None:
        """Put PCM that overlaps nothing at file offset ``start`` (at or past ``_placed_end()``)."""
        if start > self._end:
            self._pad(start)
        self._append_pcm(pcm)
        self._end += len(pcm) // BYTES_PER_SAMPLE

    def _silence_to(self, target: int) -> None:
        """Write the silence up to file position ``target`` now, or leave it promised."""
        self._append_silence(target - self._end)
        self._end = target

    def _append_pcm(self, pcm: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def _append_silence(self, samples: int) -> None:
        raise NotImplementedError

    def _sync(self) -> None:
        raise NotImplementedError

    def _finalize(self) -> None:
        raise NotImplementedError

    def _salvage(self) -> None:
        """Best effort after an error: make what is on disk readable."""

    def _release(self) -> None:
        """Close what the file holds open (called once, also after a failed constructor)."""
        if self._out is not None:
            out, self._out = self._out, None
            out.release()
