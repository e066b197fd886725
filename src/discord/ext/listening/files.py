"""Recording files: one :class:`AudioFile` per speaker, streamed to disk as audio arrives.

Every file lies on the recording's timeline (sample 0 = the moment listening started):
:meth:`AudioFile.write` puts each frame at its :attr:`~AudioFrame.position`, fills the gap
before it with silence and never lets a late or duplicate frame shift what follows. So all
files of one recording start at the same instant, and :meth:`AudioFile.pad_to` makes them end
at the same sample: they can be laid on top of each other in any editor.

Formats
-------
- :class:`WaveAudioFile`: 48 kHz stereo 16-bit PCM; the header is rewritten every half second,
  so a reader can open the file mid-recording and a killed process leaves a playable file.
  Past 4 GiB it turns into RF64. :func:`repair_wav` fixes the header of a file cut mid-write.
- :class:`FLACAudioFile`: lossless, encoded in-process with PyAV's ``flac`` encoder.
- :class:`MP3AudioFile`: LAME (``libmp3lame`` inside PyAV's wheel), constant bitrate, gapless
  (the LAME tag tells decoders to drop the encoder delay, so sample 0 is sample 0).
- :class:`OggOpusAudioFile`: the received Opus packets stored as they came (no decoding), in an
  Ogg Opus stream written by hand (:mod:`.ogg`).

Silence is cheap: WAV gaps are holes in a sparse file, FLAC and MP3 gaps are hand-made silent
frames (a FLAC CONSTANT frame, an MP3 frame with no spectral data), Ogg Opus gaps are Opus
silence packets; the encoders only see short gaps. Memory stays bounded whatever the gap, and
two hours of silence take well under a second to write (MP3: the time to write its 115 MB of
constant-bitrate frames at 128 kbit/s).

Names
-----
:func:`render_filename` turns a template such as ``"{start:%Y%m%d-%H%M%S}-{user_name}-{user_id}"``
into one safe file name (no separators, no reserved Windows names, at most 255 bytes) and
:func:`unique_path` picks a name nobody uses yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as errno_codes
import io
import logging
import os
import string
import struct
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, Union, cast

from . import __version__
from .frames import AudioFrame, FrameKind
from .ogg import OggStreamWriter, opus_head, opus_tags
from .opus import CHANNELS, FRAME_SAMPLES, SAMPLE_RATE

if TYPE_CHECKING:
    import av
    import av.audio.stream
    import av.container

    from .opus import OpusDecoder, OpusEncoder

__all__ = (
    "FORMATS",
    "AudioFile",
    "FLACAudioFile",
    "MP3AudioFile",
    "OggOpusAudioFile",
    "RecordingError",
    "WaveAudioFile",
    "render_filename",
    "repair_wav",
    "sanitize_filename",
    "unique_path",
)

_log = logging.getLogger(__name__)

StrPath = Union[str, "os.PathLike[str]"]

_BYTES_PER_SAMPLE: Final = 2 * CHANNELS  # one s16le stereo sample frame
_TIME_BASE: Final = Fraction(1, SAMPLE_RATE)
_VENDOR: Final = f"discord-ext-listening {__version__}"


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


# --------------------------------------------------------------------------------------
# File names
# --------------------------------------------------------------------------------------

# Characters no file system of the three big OSes accepts in a name (Windows is the strict one).
_ILLEGAL_CHARS: Final = frozenset('/\\:*?"<>|')
# Format characters that joining emoji sequences and some scripts need; every other Cf
# character (bidi overrides that can fake an extension, zero-width spaces...) is removed.
_KEPT_FORMAT_CHARS: Final = frozenset("\u200c\u200d")
_RESERVED_NAMES: Final = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{dev}{n}" for dev in ("COM", "LPT") for n in (*"0123456789", "\u00b9", "\u00b2", "\u00b3")]
)
_MAX_NAME_BYTES: Final = 255


def _truncate_utf8(text: str, max_bytes: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    # errors="ignore" drops the partial character a byte cut can leave at the end
    return data[:max_bytes].decode("utf-8", errors="ignore")


def sanitize_filename(name: str, *, max_bytes: int = _MAX_NAME_BYTES, replacement: str = "_") -> str:
    """Make ``name`` a single safe file name component.

    Path separators and characters Windows forbids (``/ \\ : * ? " < > |``), control and
    invisible format characters are replaced; leading dots and spaces (hidden files, ``.`` and
    ``..``) and trailing dots and spaces (Windows drops them) are stripped; reserved Windows
    device names (``CON``, ``NUL``, ``COM1``... also with an extension) get a prefix; the result
    is cut to ``max_bytes`` of UTF-8 keeping its extension. An empty result becomes
    ``"unknown"``. The result can never name a parent directory or a path below another one.

    Parameters
    ----------
    name: :class:`str`
        Any text (a display name, a template's output...).
    max_bytes: :class:`int`
        Longest result in UTF-8 bytes (255 is the limit of ext4, NTFS, APFS, btrfs...).
    replacement: :class:`str`
        What replaces each forbidden character. Must itself be safe.
    """
    if max_bytes < 16:
        raise ValueError("max_bytes must leave room for a name (>= 16)")
    if not replacement or any(c in _ILLEGAL_CHARS or unicodedata.category(c)[0] == "C" for c in replacement):
        raise ValueError(f"unsafe replacement {replacement!r}")
    cleaned = _clean_chars(name, replacement)
    stem, dot, suffix = cleaned.rpartition(".")
    if not dot or not stem or len(suffix) > 16 or not suffix.isalnum():
        stem, suffix = cleaned, ""
    else:
        suffix = "." + suffix
    return _assemble(stem, suffix, max_bytes, replacement)


def _clean_chars(name: str, replacement: str) -> str:
    text = unicodedata.normalize("NFC", str(name))
    out = []
    for ch in text:
        category = unicodedata.category(ch)
        if ch in _ILLEGAL_CHARS or category in ("Cc", "Cs", "Co", "Cn", "Zl", "Zp"):
            out.append(replacement)
        elif category == "Cf" and ch not in _KEPT_FORMAT_CHARS:
            continue
        else:
            out.append(ch)
    return "".join(out).strip(" .")


def _assemble(stem: str, suffix: str, max_bytes: int, replacement: str) -> str:
    """Join a cleaned stem and suffix: strip, avoid device names, fit ``max_bytes``."""
    stem = stem.strip(" .")
    if not stem.replace(replacement, "").strip(" ."):
        stem = "unknown"
    if (stem + suffix).split(".")[0].rstrip(" ").upper() in _RESERVED_NAMES:
        stem = replacement + stem
    stem = _truncate_utf8(stem, max_bytes - len(suffix.encode("utf-8"))).rstrip(" .") or "unknown"
    return stem + suffix


class _TemplateFormatter(string.Formatter):
    # Only the fields given to render_filename exist; "{user_id.__class__}"-style attribute
    # walks are refused so a template cannot reach into objects.
    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        if "." in field_name or "[" in field_name:
            raise ValueError(f"attribute or index access is not allowed in file name templates: {{{field_name}}}")
        return super().get_field(field_name, args, kwargs)


_FORMATTER: Final = _TemplateFormatter()


def render_filename(
    template: str,
    *,
    user_id: int | None,
    start: datetime,
    ext: str,
    user_name: str | None = None,
    display_name: str | None = None,
    ssrc: int | None = None,
    max_bytes: int = _MAX_NAME_BYTES,
    **fields: Any,
) -> str:
    """Render a file name template into one safe file name.

    Fields: ``{user_id}``, ``{user_name}``, ``{display_name}`` (falls back to the user name),
    ``{start}`` (a :class:`~datetime.datetime`, so ``{start:%Y%m%d-%H%M%S}`` works), ``{ssrc}``,
    ``{ext}`` (without the dot) and any extra keyword given. Missing values render as
    ``unknown``. The extension is appended unless the template already ends with it.

    The whole result goes through :func:`sanitize_filename`: whatever a member puts in their
    name, and whatever the template contains (a ``/`` included), the result is a single name
    inside the output directory.

    Parameters
    ----------
    template: :class:`str`
        A :meth:`str.format` template.
    user_id: Optional[:class:`int`]
        The speaker's id.
    start: :class:`datetime.datetime`
        When the recording started.
    ext: :class:`str`
        The extension, with or without the dot (``"wav"``, ``".flac"``).
    user_name, display_name: Optional[:class:`str`]
        The speaker's user name and display name.
    ssrc: Optional[:class:`int`]
        The RTP source.
    max_bytes: :class:`int`
        Longest name in UTF-8 bytes.
    **fields
        More template fields (``guild_id``, ``channel_id``, ``index``...).

    Raises
    ------
    ValueError
        The template names an unknown field or is malformed.

    Examples
    --------
    >>> render_filename("{start:%Y%m%d}-{user_name}", user_id=1, user_name="../../etc/passwd",
    ...                 start=datetime(2026, 1, 2), ext="wav")
    '20260102-.._.._etc_passwd.wav'
    """
    ext = ext.lstrip(".")
    if not ext or len(ext) > 16 or not ext.isalnum():
        raise ValueError(f"invalid extension {ext!r}")

    def value(v: Any) -> Any:
        return "unknown" if v is None or v == "" else v

    values: dict[str, Any] = {k: value(v) for k, v in fields.items()}
    values.update(
        user_id=value(user_id),
        user_name=value(user_name),
        display_name=value(display_name if display_name else user_name),
        start=start,
        ssrc=value(ssrc),
        ext=ext,
    )
    try:
        rendered = _FORMATTER.vformat(template, (), values)
    except KeyError as exc:
        raise ValueError(f"unknown field {exc} in file name template; known: {', '.join(sorted(values))}") from None
    except (IndexError, AttributeError) as exc:
        raise ValueError(f"bad file name template {template!r}: {exc}") from None
    suffix = "." + ext
    if rendered.lower().endswith(suffix.lower()):
        rendered = rendered[: -len(suffix)]
    # the stem is cut to leave room for the extension: a long name never loses it
    return _assemble(_clean_chars(rendered, "_"), suffix, max_bytes, "_")


def unique_path(directory: StrPath, name: str, *, max_bytes: int = _MAX_NAME_BYTES) -> Path:
    """Return ``directory / name``, or ``directory / "name (n).ext"`` if that exists.

    The name is sanitized first (see :func:`sanitize_filename`), so the result is always
    directly inside ``directory``. Two processes racing for the same name can still collide:
    the check is not atomic.

    Raises
    ------
    FileExistsError
        10000 variants of the name are taken.
    """
    base = Path(directory)
    clean = sanitize_filename(name, max_bytes=max_bytes)
    candidate = base / clean
    if not os.path.lexists(candidate):
        return candidate
    stem, dot, suffix = clean.rpartition(".")
    if not dot or not stem or not suffix.isalnum():
        stem, suffix = clean, ""
    else:
        suffix = "." + suffix
    for n in range(1, 10000):
        tag = f" ({n})"
        room = max_bytes - len(tag.encode()) - len(suffix.encode())
        candidate = base / (_truncate_utf8(stem, room).rstrip(" .") + tag + suffix)
        if not os.path.lexists(candidate):
            return candidate
    raise FileExistsError(errno_codes.EEXIST, "no free variant of the file name", str(base / clean))


# --------------------------------------------------------------------------------------
# Output plumbing
# --------------------------------------------------------------------------------------


class _Output:
    """The open file of a recording: unbuffered, so what is written reaches the OS at once.

    A killed process loses nothing the OS has (the page cache survives the process); what
    Python would still hold in a buffer would be lost. PyAV writes through this object too
    (it is a file object), and :meth:`pwrite` patches headers without moving the position.
    :meth:`close` is a no-op (PyAV may call it when its container closes, before the last
    header patch); :meth:`release` closes the descriptor.
    """

    __slots__ = ("fh", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh: io.RawIOBase = open(path, "w+b", buffering=0)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        total = 0
        while total < len(view):
            n = self.fh.write(view[total:])
            if not n:  # pragma: no cover - a regular file never takes zero bytes without an error
                raise OSError(errno_codes.EIO, "write returned 0")
            total += n
        return total

    def pwrite(self, data: bytes, offset: int) -> None:
        if hasattr(os, "pwrite"):
            fd = self.fh.fileno()
            done = 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], offset + done)
        else:  # Windows has no pwrite: seek there and back
            here = self.fh.tell()
            try:
                self.fh.seek(offset)
                self.write(data)
            finally:
                self.fh.seek(here)

    def pread(self, size: int, offset: int) -> bytes:
        if hasattr(os, "pread"):
            return os.pread(self.fh.fileno(), size, offset)
        with open(self.path, "rb") as reader:  # pragma: no cover - Windows has no pread
            reader.seek(offset)
            return reader.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.fh.seek(offset, whence)

    def tell(self) -> int:
        return self.fh.tell()

    def truncate(self, size: int) -> int:
        return self.fh.truncate(size)

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def release(self) -> None:
        self.fh.close()


_ZEROS = bytes(SAMPLE_RATE * _BYTES_PER_SAMPLE)  # one second of silence, shared, never mutated


def _silence_chunks(samples: int, chunk: int = SAMPLE_RATE) -> Iterator[memoryview]:
    """Yield silent PCM in pieces of at most ``chunk`` samples (bounded memory)."""
    view = memoryview(_ZEROS)
    while samples > 0:
        n = min(samples, chunk, len(_ZEROS) // _BYTES_PER_SAMPLE)
        yield view[: n * _BYTES_PER_SAMPLE]
        samples -= n


# --------------------------------------------------------------------------------------
# The base class
# --------------------------------------------------------------------------------------


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
    path: Union[:class:`str`, :class:`os.PathLike`]
        Where to write. An existing file is overwritten (see :func:`unique_path`).
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
        path: StrPath,
        *,
        origin: int = 0,
        sync_interval: float = 0.5,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        if sync_interval < 0:
            raise ValueError("sync_interval must be >= 0")
        self._path = Path(path)
        self._origin = int(origin)
        self._sync_interval = float(sync_interval)
        self._sync_samples = max(1, int(self._sync_interval * SAMPLE_RATE))
        self.tags: dict[str, str] = dict(tags or {})
        self._lock = threading.RLock()
        self._closed = False
        self._error: RecordingError | None = None
        self._end = 0
        self._frames_written = 0
        self._frames_dropped_overlap = 0
        self._frames_trimmed_overlap = 0
        self._samples_dropped_overlap = 0
        self._frames_invalid = 0
        self._synced_end = 0
        self._synced_at = time.monotonic()
        self._decoder: OpusDecoder | None = None
        self._decoder_ssrc: int | None = None
        self.user: Any = None
        self.ssrc: int | None = None
        self.converted = False

    # ---- properties ---------------------------------------------------------------

    @property
    def path(self) -> Path:
        """Where the file is (changes when :meth:`convert` renames it)."""
        return self._path

    @property
    def origin(self) -> int:
        """The timeline position of the file's first sample."""
        return self._origin

    @property
    def samples_written(self) -> int:
        """Samples per channel in the file so far (silence included), from its start."""
        return self._end

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
            if _is_io_error(exc):
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
        if frame.kind is FrameKind.opus:
            pcm = self._decode_opus(frame)
            if pcm is None:
                return
        else:
            pcm = frame.audio
        if self._place(frame.position - self._origin, pcm):
            self._frames_written += 1

    def _decode_opus(self, frame: AudioFrame) -> bytes | None:
        from .opus import OpusDecoder, OpusError

        # one decoder per source: a new SSRC is a new encoder on the other side
        if self._decoder is None or self._decoder_ssrc != frame.ssrc:
            self._decoder = OpusDecoder()
            self._decoder_ssrc = frame.ssrc
        try:
            return self._decoder.decode(bytes(frame.audio))
        except OpusError:
            self._frames_invalid += 1
            return None

    def _place(self, start: int, pcm: bytes | bytearray | memoryview) -> bool:
        """Place PCM at file offset ``start``; returns whether anything was written."""
        if len(pcm) % _BYTES_PER_SAMPLE:
            raise ValueError(f"PCM must be whole 16-bit stereo samples (a multiple of 4 bytes), got {len(pcm)} bytes")
        count = len(pcm) // _BYTES_PER_SAMPLE
        if count == 0:
            return False
        if start < self._end:
            overlap = self._end - start
            if overlap >= count:
                self._frames_dropped_overlap += 1
                self._samples_dropped_overlap += count
                _log.debug("%s: frame at %d lies within written audio (end %d)", self._path.name, start, self._end)
                return False
            self._frames_trimmed_overlap += 1
            self._samples_dropped_overlap += overlap
            pcm = memoryview(pcm)[overlap * _BYTES_PER_SAMPLE :]
            count -= overlap
            start = self._end
        elif start > self._end:
            self._pad(start)
        self._append_pcm(pcm)
        self._end += count
        return True

    def _pad(self, target: int) -> None:
        self._append_silence(target - self._end)
        self._end = target

    def _rename(self, new_name: str) -> None:
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

    # ---- format hooks -------------------------------------------------------------------

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
        raise NotImplementedError


def _is_io_error(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return True
    try:
        import av
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, av.FFmpegError)


# --------------------------------------------------------------------------------------
# WAV
# --------------------------------------------------------------------------------------

# PCM (1), channels, rate, bytes per second, block align, bits per sample
_WAV_FMT: Final = struct.pack(
    "<HHIIHH", 1, CHANNELS, SAMPLE_RATE, SAMPLE_RATE * _BYTES_PER_SAMPLE, _BYTES_PER_SAMPLE, 16
)
# LIST/INFO ids for the common tag names
_INFO_IDS: Final = {
    "title": b"INAM",
    "artist": b"IART",
    "comment": b"ICMT",
    "date": b"ICRD",
    "album": b"IPRD",
    "genre": b"IGNR",
    "copyright": b"ICOP",
    "encoder": b"ISFT",
    "software": b"ISFT",
}
_U32_MAX: Final = 0xFFFFFFFF


def _wav_header(tags: Mapping[str, str]) -> bytes:
    # RIFF header, a JUNK chunk holding room for an RF64 ds64 chunk (EBU Tech 3306: so the
    # file can grow past 4 GiB without moving its data), fmt, optional LIST/INFO, data.
    out = bytearray(b"RIFF\0\0\0\0WAVE")
    out += b"JUNK" + struct.pack("<I", 28) + bytes(28)
    out += b"fmt " + struct.pack("<I", len(_WAV_FMT)) + _WAV_FMT
    entries = {b"ISFT": _VENDOR}
    for key, value in tags.items():
        chunk_id = _INFO_IDS.get(key.lower())
        if chunk_id is not None:
            entries[chunk_id] = str(value)
    info = bytearray()
    for chunk_id, text in entries.items():
        data = text.encode("utf-8") + b"\0"
        info += chunk_id + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")
    if info:
        out += b"LIST" + struct.pack("<I", len(info) + 4) + b"INFO" + info
    out += b"data\0\0\0\0"
    return bytes(out)


def _wav_size_fields(data_offset: int, data_size: int, *, rf64: bool) -> list[tuple[int, bytes]]:
    """The (offset, bytes) patches that make a header describe ``data_size`` bytes of audio."""
    riff_size = data_offset - 8 + data_size + (data_size & 1)
    if not rf64:
        return [(4, struct.pack("<I", riff_size)), (data_offset - 4, struct.pack("<I", data_size))]
    ds64 = b"ds64" + struct.pack("<IQQQI", 28, riff_size, data_size, data_size // _BYTES_PER_SAMPLE, 0)
    return [(0, b"RF64" + struct.pack("<I", _U32_MAX)), (12, ds64), (data_offset - 4, struct.pack("<I", _U32_MAX))]


class WaveAudioFile(AudioFile):
    """48 kHz stereo 16-bit PCM WAV, streamed to disk.

    The audio is written as it arrives and the header's sizes are rewritten every
    ``sync_interval`` (0.5 s of audio or of wall time) and on :meth:`sync`, so any reader can
    open the file while it grows and a killed process leaves a file that plays up to the last
    sync. Long silences are holes in a sparse file (no memory, no disk blocks on file systems
    that support them). A recording past 4 GiB (6.2 hours) becomes RF64, which libsndfile,
    FFmpeg and most editors read.
    """

    extension = ".wav"
    #: Largest data chunk a plain RIFF header can describe; beyond it the file turns RF64.
    _RIFF_LIMIT: ClassVar[int] = _U32_MAX - 1024
    #: Pending PCM beyond which it is written out even before the next sync.
    _MAX_PENDING: ClassVar[int] = 1 << 20
    #: Gaps up to this many bytes are written as zeros; longer ones become holes.
    _HOLE_THRESHOLD: ClassVar[int] = SAMPLE_RATE * _BYTES_PER_SAMPLE // 2

    def __init__(
        self,
        path: StrPath,
        *,
        origin: int = 0,
        sync_interval: float = 0.5,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(path, origin=origin, sync_interval=sync_interval, tags=tags)
        self._pending = bytearray()
        self._flushed = 0  # data bytes handed to the OS (holes included)
        self._rf64 = False
        self._out: _Output | None = None
        header = _wav_header(self.tags)
        self._data_offset = len(header)
        try:
            self._out = _Output(self._path)
            self._out.write(header)
        except OSError as exc:
            err = self._fail(exc)
            self._release()
            self._closed = True
            raise err from None

    def _append_pcm(self, pcm: bytes | bytearray | memoryview) -> None:
        self._pending += pcm
        if len(self._pending) >= self._MAX_PENDING:
            self._flush_pending()

    def _append_silence(self, samples: int) -> None:
        nbytes = samples * _BYTES_PER_SAMPLE
        if nbytes <= self._HOLE_THRESHOLD:
            self._pending += memoryview(_ZEROS)[:nbytes]
            return
        # A long gap: extend the file instead of writing zeros. The OS reads the hole back
        # as zeros and stores no blocks for it (POSIX and NTFS both zero-fill an extension).
        self._flush_pending()
        assert self._out is not None
        end = self._data_offset + self._flushed + nbytes
        self._out.truncate(end)
        self._out.seek(end)
        self._flushed += nbytes

    def _flush_pending(self) -> None:
        if self._pending:
            assert self._out is not None
            self._out.write(self._pending)
            self._flushed += len(self._pending)
            self._pending.clear()

    def _sync(self) -> None:
        self._flush_pending()
        self._write_sizes(self._flushed)

    def _write_sizes(self, data_size: int) -> None:
        assert self._out is not None
        if not self._rf64 and data_size > self._RIFF_LIMIT:
            self._rf64 = True
            _log.info("%s passed 4 GiB: switching the header to RF64", self._path.name)
        for offset, data in _wav_size_fields(self._data_offset, data_size, rf64=self._rf64):
            self._out.pwrite(data, offset)

    def _finalize(self) -> None:
        self._sync()  # (stereo 16-bit data is always of even size: no pad byte)

    def _salvage(self) -> None:
        # The data already on disk is good; make the header say how much there is (an
        # in-place overwrite, which works on a full disk too).
        if self._out is not None:
            self._write_sizes(self._flushed)

    def _release(self) -> None:
        if self._out is not None:
            out, self._out = self._out, None
            out.release()


def repair_wav(path: StrPath) -> int:
    """Fix the header of a WAV (or RF64) file cut mid-write; returns the samples it holds.

    The data chunk is taken to run to the end of the file (true for files this module
    writes, and for any file cut while its data was being written). A trailing partial
    sample is cut off. A file past 4 GiB is turned into RF64 when it has the usual ``JUNK``
    placeholder for it.

    Raises
    ------
    ValueError
        The file is not a RIFF/RF64 WAVE file or has no data chunk.
    """
    p = Path(path)
    with open(p, "r+b") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            raise ValueError(f"{p} is not a WAV file")
        size = fh.seek(0, os.SEEK_END)
        pos = 12
        block_align = _BYTES_PER_SAMPLE
        has_room_for_ds64 = False
        data_offset = None
        while pos + 8 <= size:
            fh.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", fh.read(8))
            if chunk_id == b"data":
                data_offset = pos + 8
                break
            if chunk_id == b"fmt " and chunk_size >= 16:
                block_align = struct.unpack_from("<H", fh.read(16), 12)[0] or block_align
            if chunk_id in (b"JUNK", b"ds64") and pos == 12 and chunk_size >= 28:
                has_room_for_ds64 = True
            pos += 8 + chunk_size + (chunk_size & 1)
        if data_offset is None:
            raise ValueError(f"{p} has no data chunk")
        data_size = max(0, size - data_offset)
        data_size -= data_size % block_align
        if data_offset + data_size < size:
            fh.truncate(data_offset + data_size)
        rf64 = data_size > _U32_MAX - 1024 or head[:4] == b"RF64"
        if rf64 and not has_room_for_ds64:
            _log.warning("%s: no room for an RF64 header; marking sizes unknown", p)
            patches = [(4, struct.pack("<I", _U32_MAX)), (data_offset - 4, struct.pack("<I", _U32_MAX))]
        else:
            patches = _wav_size_fields(data_offset, data_size, rf64=rf64)
        for offset, data in patches:
            fh.seek(offset)
            fh.write(data)
    return data_size // block_align


# --------------------------------------------------------------------------------------
# FLAC and MP3 through PyAV
# --------------------------------------------------------------------------------------


def _av() -> Any:
    # PyAV loads all of FFmpeg; only the encoded formats need it.
    import av

    return av


class _AVAudioFile(AudioFile):
    """Shared plumbing of the formats PyAV encodes and muxes.

    FFmpeg's muxer writes through :class:`_Output` with ``flush_packets`` on, so every packet
    is handed to the OS as soon as the encoder produces it; the few header fields a muxer only
    writes at the end are patched in place on every sync by the subclasses.
    """

    _format: ClassVar[str]
    _codec: ClassVar[str]
    _codec_format: ClassVar[str]

    def __init__(
        self,
        path: StrPath,
        *,
        origin: int = 0,
        sync_interval: float = 0.5,
        tags: Mapping[str, str] | None = None,
        codec_options: Mapping[str, str] | None = None,
        bit_rate: int | None = None,
    ) -> None:
        super().__init__(path, origin=origin, sync_interval=sync_interval, tags=tags)
        pyav = _av()
        self._out: _Output | None = None
        self._container: av.container.OutputContainer | None = None
        self._mux_position = 0  # pts of the next packet (samples), strictly increasing
        self._pcm = bytearray()  # input short of a whole codec frame
        try:
            self._out = _Output(self._path)
            self._container = pyav.open(
                self._out, "w", format=self._format, container_options={"flush_packets": "1"}, buffer_size=16384
            )
            for key, value in self.tags.items():
                self._container.metadata[key] = str(value)
            stream = cast("av.audio.stream.AudioStream", self._container.add_stream(self._codec, rate=SAMPLE_RATE))
            stream.codec_context.layout = "stereo"
            stream.codec_context.format = self._codec_format
            if bit_rate is not None:
                stream.codec_context.bit_rate = bit_rate
            if codec_options:
                stream.codec_context.options = dict(codec_options)
            self._stream: av.audio.stream.AudioStream = stream
            self._container.start_encoding()  # writes the header now: an empty file is valid too
        except Exception as exc:
            if not _is_io_error(exc):
                self._release()
                raise
            err = self._fail(exc)
            self._closed = True
            self._release()
            raise err from None

    def _frame(self, pcm: bytes | bytearray | memoryview, pts: int) -> Any:
        import numpy as np

        av = _av()
        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = pts
        frame.time_base = _TIME_BASE
        return frame

    def _whole_frames(self, pcm: bytes | bytearray | memoryview | None, frame_samples: int) -> bytes:
        """Buffer PCM and return the whole codec frames ready (everything when ``pcm`` is None).

        Encoders take whole frames anyway; handing them over in whole frames avoids PyAV's
        re-chunking filter graph work for every 20 ms of input.
        """
        if pcm is None:
            data = bytes(self._pcm)
            self._pcm.clear()
            return data
        self._pcm += pcm
        size = len(self._pcm) // (frame_samples * _BYTES_PER_SAMPLE) * frame_samples * _BYTES_PER_SAMPLE
        if not size:
            return b""
        data = bytes(self._pcm[:size])
        del self._pcm[:size]
        return data

    def _mux(self, packet: Any, samples: int) -> None:
        assert self._container is not None
        packet.pts = packet.dts = self._mux_position
        packet.time_base = _TIME_BASE
        packet.stream = self._stream
        self._container.mux_one(packet)
        self._mux_position += max(samples, 1)

    def _mux_bytes(self, data: bytes, samples: int) -> None:
        self._mux(_av().Packet(data), samples)

    def _release(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception as exc:  # already failing: the descriptor below still gets closed
                _log.debug("closing the container of %s: %r", self._path, exc)
        if self._out is not None:
            out, self._out = self._out, None
            out.release()


# ---- FLAC bitstream pieces ------------------------------------------------------------


def _crc_table(poly: int, width: int) -> tuple[int, ...]:
    top, mask = 1 << (width - 1), (1 << width) - 1
    table = []
    for i in range(256):
        c = i << (width - 8)
        for _ in range(8):
            c = ((c << 1) ^ poly) & mask if c & top else (c << 1) & mask
        table.append(c)
    return tuple(table)


_CRC8_TABLE: Final = _crc_table(0x07, 8)
_CRC16_TABLE: Final = _crc_table(0x8005, 16)


def _flac_crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = _CRC8_TABLE[crc ^ byte]
    return crc


def _flac_crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16_TABLE[(crc >> 8) ^ byte]
    return crc


def _gf2_mulmod(a: int, b: int, poly: int = 0x18005) -> int:
    # carry-less multiply of two 16-bit polynomials, reduced modulo the CRC polynomial
    result = 0
    while b:
        if b & 1:
            result ^= a
        a <<= 1
        if a & 0x10000:
            a ^= poly
        b >>= 1
    return result


def _zero_byte_powers() -> tuple[int, ...]:
    # x^(8 * 2^k) mod P: advancing a CRC-16 register over 2^k zero bytes multiplies it by this
    powers = [1 << 8]
    for _ in range(24):
        powers.append(_gf2_mulmod(powers[-1], powers[-1]))
    return tuple(powers)


_ZERO_BYTE_POWERS: Final = _zero_byte_powers()


def _crc16_skip(crc: int, nbytes: int) -> int:
    """The CRC-16 register after ``nbytes`` more zero bytes (linear in the register)."""
    k = 0
    while nbytes:
        if nbytes & 1:
            crc = _gf2_mulmod(crc, _ZERO_BYTE_POWERS[k])
        nbytes >>= 1
        k += 1
    return crc


def _flac_utf8(number: int) -> bytes:
    # FLAC codes frame numbers like UTF-8, extended to 36 bits
    if number < 0x80:
        return bytes([number])
    limits = (0x800, 0x10000, 0x200000, 0x4000000, 0x80000000, 1 << 36)  # for 2 .. 7 bytes
    length = next((n for n, limit in enumerate(limits, 2) if number < limit), 0)
    if not length:
        raise ValueError("FLAC frame number out of range")
    tail = []
    for _ in range(length - 1):
        tail.append(0x80 | (number & 0x3F))
        number >>= 6
    return bytes([((0xFF00 >> length) & 0xFF) | number, *reversed(tail)])


def _flac_utf8_length(first: int) -> int:
    if first < 0x80:
        return 1
    n = 0
    while first & (0x80 >> n):
        n += 1
    return n


def _flac_header_length(frame: bytes) -> int:
    """Offset of the CRC-8 byte that ends a FLAC frame header."""
    blocksize_code, rate_code = frame[2] >> 4, frame[2] & 0x0F
    end = 4 + _flac_utf8_length(frame[4])
    end += {6: 1, 7: 2}.get(blocksize_code, 0)
    end += {12: 1, 13: 2, 14: 2}.get(rate_code, 0)
    return end


def _flac_renumber(frame: bytes, number: int) -> bytes:
    """Give a fixed-blocksize FLAC frame another frame number (header CRC-8 and CRC-16 fixed).

    The CRC-16 covers the whole frame; instead of recomputing it over kilobytes in Python,
    CRC linearity gives the new one from the old: crc(H'||B) = crc(H||B) ^ skip(crc(H) ^
    crc(H'), len(B)), where skip advances a register over len(B) zero bytes.
    """
    header_end = _flac_header_length(frame)
    old_header = frame[: header_end + 1]
    new_header = frame[:4] + _flac_utf8(number) + frame[4 + _flac_utf8_length(frame[4]) : header_end]
    new_header += bytes([_flac_crc8(new_header)])
    body = frame[header_end + 1 : -2]
    old_crc = int.from_bytes(frame[-2:], "big")
    new_crc = old_crc ^ _crc16_skip(_flac_crc16(old_header) ^ _flac_crc16(new_header), len(body))
    return new_header + body + new_crc.to_bytes(2, "big")


_FLAC_BLOCKSIZE_CODES: Final = {
    192: 1,
    576: 2,
    1152: 3,
    2304: 4,
    4608: 5,
    256: 8,
    512: 9,
    1024: 10,
    2048: 11,
    4096: 12,
    8192: 13,
    16384: 14,
    32768: 15,
}


class _FlacSilence:
    """Makes FLAC frames of ``blocksize`` samples of digital silence (two CONSTANT subframes of 0).

    Frames differ only in their number, so the CRC registers after the fixed first bytes are
    computed once, and the CRC-16 over the fixed tail (six zero bytes) is two table lookups:
    a couple of microseconds a frame, because an hour of silence is 37500 of them.
    """

    __slots__ = ("_crc8", "_crc16", "_extra", "_prefix", "_skip_hi", "_skip_lo")

    _TAIL: ClassVar[bytes] = b"\x00\x00\x00" * CHANNELS  # per channel: CONSTANT subframe header, 16-bit 0

    def __init__(self, blocksize: int) -> None:
        code = _FLAC_BLOCKSIZE_CODES.get(blocksize)
        self._extra = b""
        if code is None:
            code, self._extra = 7, (blocksize - 1).to_bytes(2, "big")
        # sync + fixed blocksize; blocksize code | 48 kHz; left/right independent | 16 bits
        self._prefix = bytes([0xFF, 0xF8, (code << 4) | 0x0A, 0x18])
        self._crc8 = _flac_crc8(self._prefix)
        self._crc16 = _flac_crc16(self._prefix)
        tail = len(self._TAIL)
        self._skip_hi = tuple(_crc16_skip(b << 8, tail) for b in range(256))
        self._skip_lo = tuple(_crc16_skip(b, tail) for b in range(256))

    def frames(self, first: int, count: int) -> bytes:
        """``count`` consecutive silent frames from number ``first``, concatenated.

        Vectorized with numpy over the frames: the CRC tables are applied column by column
        to all frames whose numbers have the same coded length at once.
        """
        import numpy as np

        t8 = np.asarray(_CRC8_TABLE, dtype=np.uint16)
        t16 = np.asarray(_CRC16_TABLE, dtype=np.uint16)
        skip_hi = np.asarray(self._skip_hi, dtype=np.uint16)
        skip_lo = np.asarray(self._skip_lo, dtype=np.uint16)
        parts = []
        number, end = first, first + count
        while number < end:
            length = len(_flac_utf8(number))
            limit = (0x80, 0x800, 0x10000, 0x200000, 0x4000000, 0x80000000, 1 << 36)[length - 1]
            stop = min(end, limit)
            n = np.arange(number, stop, dtype=np.int64)
            coded = np.empty((len(n), length), dtype=np.uint16)
            if length == 1:
                coded[:, 0] = n
            else:
                for i in range(length - 1):  # continuation bytes, last first
                    coded[:, length - 1 - i] = 0x80 | ((n >> (6 * i)) & 0x3F)
                coded[:, 0] = ((0xFF00 >> length) & 0xFF) | (n >> (6 * (length - 1)))
            varying = np.concatenate([coded, np.tile(np.frombuffer(self._extra, np.uint8), (len(n), 1))], axis=1)
            c8 = np.full(len(n), self._crc8, dtype=np.uint16)
            c16 = np.full(len(n), self._crc16, dtype=np.uint16)
            for column in varying.T:
                c8 = t8[c8 ^ column]
                c16 = ((c16 << 8) & 0xFFFF) ^ t16[(c16 >> 8) ^ column]
            c16 = ((c16 << 8) & 0xFFFF) ^ t16[(c16 >> 8) ^ c8]
            c16 = skip_hi[c16 >> 8] ^ skip_lo[c16 & 0xFF]
            rows = np.concatenate(
                [
                    np.tile(np.frombuffer(self._prefix, np.uint8), (len(n), 1)),
                    varying,
                    c8[:, None],
                    np.zeros((len(n), len(self._TAIL)), dtype=np.uint16),
                    (c16 >> 8)[:, None],
                    (c16 & 0xFF)[:, None],
                ],
                axis=1,
            ).astype(np.uint8)
            parts.append(rows.tobytes())
            number = stop
        return b"".join(parts)

    def frame(self, number: int) -> bytes:
        """The silent frame with frame number ``number``."""
        varying = _flac_utf8(number) + self._extra
        c8, c16 = self._crc8, self._crc16
        for byte in varying:
            c8 = _CRC8_TABLE[c8 ^ byte]
            c16 = ((c16 << 8) & 0xFFFF) ^ _CRC16_TABLE[(c16 >> 8) ^ byte]
        c16 = ((c16 << 8) & 0xFFFF) ^ _CRC16_TABLE[(c16 >> 8) ^ c8]
        c16 = self._skip_hi[c16 >> 8] ^ self._skip_lo[c16 & 0xFF]
        return self._prefix + varying + bytes((c8,)) + self._TAIL + c16.to_bytes(2, "big")


def _flac_silent_frame(number: int, blocksize: int) -> bytes:
    """A FLAC frame of ``blocksize`` samples of digital silence, built the plain way (for tests)."""
    silence = _FlacSilence(blocksize)
    header = silence._prefix + _flac_utf8(number) + silence._extra
    header += bytes([_flac_crc8(header)])
    frame = header + _FlacSilence._TAIL
    return frame + _flac_crc16(frame).to_bytes(2, "big")


class FLACAudioFile(_AVAudioFile):
    """Lossless FLAC (48 kHz, stereo, 16-bit), encoded in-process with PyAV.

    Frames reach the disk as the encoder produces them (one every 96 ms at the default
    compression level); the STREAMINFO total-samples field is rewritten every
    ``sync_interval``, so a reader opening the file mid-recording or after a kill sees a
    correct length. Long silences are hand-made CONSTANT frames (about 15 bytes per 96 ms),
    the frames after them renumbered.

    After SIGKILL: FFmpeg/PyAV decode every complete frame on disk; libsndfile (soundfile)
    reads up to the STREAMINFO total of the last sync. Without that total (0, "unknown", as
    any streaming FLAC encoder leaves it) libsndfile reports a bogus length, so it matters.
    The MD5 field stays zero ("not computed") in a killed file, and in a finished file that
    contains inserted silence (the encoder's MD5 would not cover it).

    Parameters
    ----------
    compression_level: Optional[:class:`int`]
        FFmpeg's FLAC level 0-12 (default 5).

    Other parameters are those of :class:`AudioFile`.
    """

    extension = ".flac"
    _format = "flac"
    _codec = "flac"
    _codec_format = "s16"
    #: Gaps shorter than this many blocks go through the encoder as zeros.
    _SILENT_FRAMES_AFTER: ClassVar[int] = 2
    _STREAMINFO_OFFSET: ClassVar[int] = 8

    def __init__(
        self,
        path: StrPath,
        *,
        compression_level: int | None = None,
        origin: int = 0,
        sync_interval: float = 0.5,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        options = {} if compression_level is None else {"compression_level": str(int(compression_level))}
        super().__init__(path, origin=origin, sync_interval=sync_interval, tags=tags, codec_options=options)
        self._blocksize = self._stream.codec_context.frame_size
        self._fed = 0  # samples given to the encoder
        self._frame_number = 0  # FLAC frames muxed (encoder's and ours)
        self._encoder_frames = 0  # frames the encoder produced (its own numbering)
        self._samples_muxed = 0  # samples in the frames muxed
        self._inserted = 0  # hand-made silent frames
        self._silence: _FlacSilence | None = None
        self._streaminfo = self._read_streaminfo()

    @property
    def blocksize(self) -> int:
        """Samples per FLAC frame."""
        return self._blocksize

    def _read_streaminfo(self) -> bytearray | None:
        assert self._out is not None
        head = self._out.pread(self._STREAMINFO_OFFSET + 34, 0)
        if head[:4] != b"fLaC" or head[4] & 0x7F != 0:
            _log.warning("%s: unexpected FLAC header layout; the length is only written at close", self._path)
            return None
        return bytearray(head[self._STREAMINFO_OFFSET :])

    def _encode(self, pcm: bytes | bytearray | memoryview | None) -> None:
        """Encode PCM (whole blocks now, the rest when more comes); ``None`` ends the stream."""
        data = self._whole_frames(pcm, self._blocksize)
        if data:
            frame = self._frame(data, self._fed)
            self._fed += len(data) // _BYTES_PER_SAMPLE
            for packet in self._stream.encode(frame):
                self._mux_encoded(packet)
        if pcm is None:
            for packet in self._stream.encode(None):
                self._mux_encoded(packet)

    def _mux_encoded(self, packet: Any) -> None:
        if packet.size == 0:  # the final side-data packet carrying the new STREAMINFO
            self._mux(packet, 0)
            return
        # every frame holds a whole block but the last one, which holds what is left
        samples = min(self._blocksize, self._fed - self._samples_muxed)
        if self._frame_number != self._encoder_frames:
            renumbered = _av().Packet(_flac_renumber(bytes(packet), self._frame_number))
            for side_data in packet.iter_sidedata():  # e.g. the final STREAMINFO, if it rides here
                renumbered.set_sidedata(side_data)
            packet = renumbered
        self._encoder_frames += 1
        self._frame_number += 1
        self._mux(packet, samples)
        # counted once on disk: after a failed write the STREAMINFO total (see _salvage) must
        # not promise a frame that is not there, or readers seek past the end and give up
        self._samples_muxed += samples

    def _append_pcm(self, pcm: bytes | bytearray | memoryview) -> None:
        self._encode(pcm)

    def _append_silence(self, samples: int) -> None:
        partial = len(self._pcm) // _BYTES_PER_SAMPLE
        if samples < (self._SILENT_FRAMES_AFTER + 1) * self._blocksize:
            for chunk in _silence_chunks(samples):
                self._encode(chunk)
            return
        # complete the block the encoder holds, then whole silent blocks by hand, then the rest
        if partial:
            fill = self._blocksize - partial
            for chunk in _silence_chunks(fill):
                self._encode(chunk)
            samples -= fill
        whole, rest = divmod(samples, self._blocksize)
        self._insert_silent_frames(whole)
        for chunk in _silence_chunks(rest):
            self._encode(chunk)

    def _insert_silent_frames(self, count: int) -> None:
        if self._silence is None:
            self._silence = _FlacSilence(self._blocksize)
        done = 0
        while done < count:  # in batches: bounded memory whatever the gap
            batch = min(count - done, 4096)
            self._mux_bytes(self._silence.frames(self._frame_number, batch), batch * self._blocksize)
            self._frame_number += batch
            self._inserted += batch
            self._samples_muxed += batch * self._blocksize
            self._fed += batch * self._blocksize
            done += batch

    def _sync(self) -> None:
        self._patch_streaminfo(self._samples_muxed)

    def _patch_streaminfo(self, total: int, *, final: bool = False) -> None:
        if self._streaminfo is None or self._out is None:
            return
        info = self._streaminfo
        if final:
            info[:] = self._out.pread(34, self._STREAMINFO_OFFSET)
            if self._inserted:
                info[4:7] = b"\0\0\0"  # min frame size: ours are smaller than the encoder knows
                info[18:34] = bytes(16)  # MD5 "unknown": the encoder never saw the inserted silence
        # sample rate (20 bits) | channels-1 (3) | bits-1 (5) | total samples (36)
        packed = (SAMPLE_RATE << 44) | ((CHANNELS - 1) << 41) | (15 << 36) | (total & ((1 << 36) - 1))
        info[10:18] = packed.to_bytes(8, "big")
        self._out.pwrite(bytes(info if final else info[10:18]), self._STREAMINFO_OFFSET + (0 if final else 10))

    def _finalize(self) -> None:
        self._encode(None)  # the last (short) frame and the STREAMINFO update
        assert self._container is not None
        container, self._container = self._container, None
        container.close()  # the muxer rewrites STREAMINFO from the encoder's totals and MD5
        self._patch_streaminfo(self._end, final=True)

    def _salvage(self) -> None:
        with contextlib.suppress(OSError):  # already failing: keep what is there
            self._patch_streaminfo(self._samples_muxed)


# ---- MP3 -------------------------------------------------------------------------------

_MP3_BITRATES: Final = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MP3_FRAME_SAMPLES: Final = 1152
_MP3_DECODER_DELAY: Final = 529  # the standard decoder delay that gapless info adds to LAME's
_LAME_DEFAULT_DELAY: Final = 576


def _crc16_arc(data: bytes) -> int:
    # CRC-16/ARC (reflected 0x8005), the LAME tag's checksum
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _mp3_silent_frame(bitrate: int) -> bytes:
    """An MPEG-1 Layer III frame (48 kHz, joint stereo) with no spectral data: it decodes to 0.

    All side information is zero (``main_data_begin`` 0: it borrows nothing from the bit
    reservoir, so it can sit between any two frames), the rest of the frame is padding.
    """
    index = _MP3_BITRATES.index(bitrate // 1000) + 1
    size = 144 * bitrate // SAMPLE_RATE
    return bytes([0xFF, 0xFB, (index << 4) | (1 << 2), 0x44]) + bytes(size - 4)


class MP3AudioFile(_AVAudioFile):
    """Constant-bitrate MP3 (48 kHz, joint stereo), encoded in-process with LAME from PyAV.

    Gapless and aligned: the LAME tag tells decoders (FFmpeg, mpg123, libsndfile, most
    players) to drop the encoder delay (576 + 529 samples), so the decoded audio starts at the
    file's sample 0 and ends at its last sample. The tag is also kept current while recording,
    so a file left by a killed process decodes aligned too.

    Silence: a gap shorter than half a second is encoded; at a longer one the encoder is
    flushed and a fresh one starts where the audio resumes, and the frames between are
    hand-made silent frames (LAME costs about a millisecond of CPU per 20 ms even for
    silence, which hours of it would turn into minutes). The switch is exact: each encoder
    session starts on an MP3 frame boundary, fed zeros up to the sample where audio resumes.

    Encoder delay, measured: LAME at 48 kHz delays by 576 samples, decoders by 529 more;
    with the LAME tag both are compensated (decoded audio aligned to the sample). A reader
    that ignores the tag sees every sample 1105 samples (23 ms) late.

    CPU: LAME is the expensive part of recording, about 1.4 ms per 20 ms frame on a
    2-core cloud VM at its default quality (``quality=7``: about 0.9 ms); FLAC takes about
    70 us, WAV and Ogg Opus about 10 us.

    Parameters
    ----------
    bitrate: :class:`int`
        Bits per second, one of MPEG-1 Layer III's rates (32000 ... 320000).
    quality: Optional[:class:`int`]
        LAME's algorithm quality, 0 (best, slowest) to 9 (fastest); ``None`` for LAME's default.

    Other parameters are those of :class:`AudioFile`.
    """

    extension = ".mp3"
    _format = "mp3"
    _codec = "libmp3lame"
    _codec_format = "s16p"
    #: Gaps of at least this many samples end the encoder session (see the class doc).
    _RESTART_GAP: ClassVar[int] = SAMPLE_RATE // 2
    _SILENT_BATCH: ClassVar[int] = 1024

    def __init__(
        self,
        path: StrPath,
        *,
        bitrate: int = 128000,
        quality: int | None = None,
        origin: int = 0,
        sync_interval: float = 0.5,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        if bitrate % 1000 or bitrate // 1000 not in _MP3_BITRATES:
            raise ValueError(f"bitrate must be one of {', '.join(str(b * 1000) for b in _MP3_BITRATES)}")
        if quality is not None and not 0 <= quality <= 9:
            raise ValueError("quality must be 0 (best) .. 9 (fastest)")
        self._bitrate = bitrate
        self._options = {} if quality is None else {"compression_level": str(int(quality))}
        super().__init__(
            path, origin=origin, sync_interval=sync_interval, tags=tags, bit_rate=bitrate, codec_options=self._options
        )
        self._silent = _mp3_silent_frame(bitrate)
        self._session: Any = None  # the open encoder, None between sessions
        self._session_fed = 0  # file position up to which the session has been fed
        self._session_pts = 0
        self._first_session = True
        self._frames = 0  # MP3 frames muxed (after the Xing/LAME frame)
        self._audio_bytes = 0
        self._delay = _LAME_DEFAULT_DELAY
        self._delay_known = False
        self._xing_offset, self._xing = self._find_xing()

    @property
    def bitrate(self) -> int:
        """Bits per second."""
        return self._bitrate

    # -- the Xing/LAME frame ------------------------------------------------------------

    def _find_xing(self) -> tuple[int, bytearray | None]:
        assert self._out is not None
        head = self._out.pread(10, 0)
        offset = 0
        if head[:3] == b"ID3" and len(head) == 10:
            offset = 10 + ((head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9])
            if head[5] & 0x10:
                offset += 10  # footer
        frame = bytearray(self._out.pread(192, offset))
        if len(frame) < 192 or frame[0] != 0xFF or bytes(frame[36:40]) not in (b"Xing", b"Info"):
            _log.warning("%s: no Xing/LAME frame where expected; a killed file will decode unaligned", self._path)
            return offset, None
        return offset, frame

    def _xing_frame_size(self) -> int:
        assert self._xing is not None
        return 144 * _MP3_BITRATES[(self._xing[2] >> 4) - 1] * 1000 // SAMPLE_RATE

    def _patch_xing(self, *, final: bool = False) -> None:
        """Keep the LAME tag true while recording; after FFmpeg's trailer, fix its counts."""
        if self._xing is None or self._out is None:
            return
        tag = self._xing
        if final:
            tag[:] = self._out.pread(192, self._xing_offset)  # FFmpeg's delay, padding and music CRC
        size = self._xing_frame_size() + self._audio_bytes
        tag[36:40] = b"Info"  # CBR
        tag[44:52] = struct.pack(">II", self._frames, size)
        tag[52:152] = bytes(min(255, 256 * i // 100) for i in range(100))  # CBR: bytes are linear in time
        if not final:
            tag[36 + 141 : 36 + 144] = ((self._delay << 12) | 0).to_bytes(3, "big")
            tag[36 + 148 : 36 + 152] = struct.pack(">I", size)
        else:
            # FFmpeg takes the end padding from the last packet's discard, at most one frame;
            # when LAME's flush adds a whole frame of padding before it, that falls short and
            # the file decodes up to a frame long. Decoders play frames * 1152 - delay -
            # padding samples: make that exactly the file's length.
            delay = int.from_bytes(tag[36 + 141 : 36 + 144], "big") >> 12
            padding = self._frames * _MP3_FRAME_SAMPLES - delay - self._end
            if 0 <= padding < 4096:
                tag[36 + 141 : 36 + 144] = ((delay << 12) | padding).to_bytes(3, "big")
        tag[36 + 154 : 36 + 156] = _crc16_arc(bytes(tag[:190])).to_bytes(2, "big")
        self._out.pwrite(bytes(tag), self._xing_offset)

    # -- sessions -------------------------------------------------------------------------

    def _new_encoder(self) -> Any:
        if self._first_session:
            # the stream's own context (opened by start_encoding) serves the first session
            self._first_session = False
            return self._stream.codec_context
        av = _av()
        ctx = av.CodecContext.create(self._codec, "w")
        ctx.sample_rate = SAMPLE_RATE
        ctx.layout = "stereo"
        ctx.format = self._codec_format
        ctx.bit_rate = self._bitrate
        ctx.time_base = _TIME_BASE
        if self._options:
            ctx.options = dict(self._options)
        ctx.open()
        return ctx

    def _mux_packets(self, packets: list[Any]) -> None:
        for packet in packets:
            if packet.size == 0:
                continue
            if not self._delay_known and packet.has_sidedata("skip_samples"):
                # the encoder's delay, as the muxer will write it into the final LAME tag
                self._delay_known = True
                skip = int.from_bytes(bytes(packet.get_sidedata("skip_samples"))[:4], "little")
                if skip > _MP3_DECODER_DELAY:
                    self._delay = skip - _MP3_DECODER_DELAY
            self._audio_bytes += packet.size
            self._frames += 1
            self._mux(packet, _MP3_FRAME_SAMPLES)

    def _feed(self, pcm: bytes | bytearray | memoryview | None) -> None:
        """Give PCM to the session's encoder; ``None`` flushes it (the session ends)."""
        data = self._whole_frames(pcm, _MP3_FRAME_SAMPLES)
        if data:
            self._mux_packets(self._session.encode(self._frame(data, self._session_pts)))
            self._session_pts += len(data) // _BYTES_PER_SAMPLE
        if pcm is None:
            self._mux_packets(self._session.encode(None))
        else:
            self._session_fed += len(pcm) // _BYTES_PER_SAMPLE

    def _silent_frames_to(self, frame_index: int) -> None:
        while self._frames < frame_index:
            count = min(self._SILENT_BATCH, frame_index - self._frames)
            self._audio_bytes += len(self._silent) * count
            self._mux_bytes(self._silent * count, _MP3_FRAME_SAMPLES * count)
            self._frames += count

    def _start_session(self, position: int) -> int:
        """Open an encoder whose first input sample lands at file ``position``.

        Returns how many samples at ``position`` cannot be placed (0 unless the previous
        session's tail reaches past it, which the restart threshold rules out).
        """
        first = position // _MP3_FRAME_SAMPLES
        lost = 0
        if first < self._frames:  # pragma: no cover - guarded by _RESTART_GAP
            lost = self._frames * _MP3_FRAME_SAMPLES - position
            first = self._frames
            _log.warning("%s: encoder restart overlaps the previous session; %d samples lost", self._path, lost)
        self._silent_frames_to(first)
        self._session = self._new_encoder()
        self._session_fed = first * _MP3_FRAME_SAMPLES
        self._session_pts = 0
        lead = position + lost - self._session_fed
        for chunk in _silence_chunks(lead):
            self._feed(chunk)
        return lost

    def _end_session(self) -> None:
        if self._session is not None:
            self._feed(None)
            self._session = None
            _log.debug("%s: encoder session ended at %d (%d frames)", self._path.name, self._session_fed, self._frames)

    def _append_pcm(self, pcm: bytes | bytearray | memoryview) -> None:
        if self._session is None:
            lost = self._start_session(self._end)
            if lost:  # pragma: no cover - see _start_session
                self._samples_dropped_overlap += lost
                pcm = memoryview(pcm)[lost * _BYTES_PER_SAMPLE :]
        self._feed(pcm)

    def _append_silence(self, samples: int) -> None:
        if self._session is None:
            return  # realized as silent frames when audio resumes, at sync or at close
        if self._end + samples - self._session_fed < self._RESTART_GAP:
            for chunk in _silence_chunks(samples):
                self._feed(chunk)
        else:
            self._end_session()

    def _sync(self) -> None:
        if self._session is None and self._end:
            # the silence so far as silent frames, stopping before the frame where audio may
            # resume (or the closing session start: the frame holding the last sample)
            self._silent_frames_to((self._end - 1) // _MP3_FRAME_SAMPLES)
        self._patch_xing()

    def _finalize(self) -> None:
        end = self._end
        if end > 0:
            if self._session is not None and end - self._session_fed < self._RESTART_GAP:
                for chunk in _silence_chunks(end - self._session_fed):
                    self._feed(chunk)
            else:
                # The last packet must come from an encoder: its end-padding side data makes
                # the LAME tag trim the file to exactly ``end`` samples.
                self._end_session()
                self._start_session(max(0, end - 1) // _MP3_FRAME_SAMPLES * _MP3_FRAME_SAMPLES)
                for chunk in _silence_chunks(end - self._session_fed):
                    self._feed(chunk)
            self._end_session()
        assert self._container is not None
        container, self._container = self._container, None
        container.close()  # FFmpeg's trailer writes the final LAME tag (delay, padding, CRCs)
        self._patch_xing(final=True)

    def _salvage(self) -> None:
        with contextlib.suppress(OSError):  # already failing: keep what is there
            self._patch_xing()


# --------------------------------------------------------------------------------------
# Ogg Opus
# --------------------------------------------------------------------------------------

#: CELT-only fullband silence packets (TOC config 31/30/29/28 = 20/10/5/2.5 ms), the frame
#: payload ``FF FE`` coding the silence flag; the 20 ms one is what Discord clients send.
_OPUS_SILENCE: Final = {960: b"\xf8\xff\xfe", 480: b"\xf0\xff\xfe", 240: b"\xe8\xff\xfe", 120: b"\xe0\xff\xfe"}
#: 120 ms of silence in one packet: code 3, six CBR frames of the 20 ms silence payload.
_OPUS_SILENCE_120MS: Final = b"\xfb\x06" + b"\xff\xfe" * 6
_OPUS_GRID: Final = 120  # the shortest Opus frame (2.5 ms): gaps are rounded to it
_OPUS_LOOKAHEAD: Final = 312  # libopus' encoder delay at 48 kHz (2.5 ms + 4 ms)
_OPUS_RUN_GAP: Final = 2 * FRAME_SAMPLES  # shorter gaps in encoded PCM are encoded as zeros


def _opus_silence(samples: int) -> Any:
    """Yield ``(packet, duration)`` pairs of silence packets covering ``samples`` (a multiple of 120)."""
    while samples >= 5760:
        yield _OPUS_SILENCE_120MS, 5760
        samples -= 5760
    for size in (960, 480, 240, 120):
        while samples >= size:
            yield _OPUS_SILENCE[size], size
            samples -= size


class OggOpusAudioFile(AudioFile):
    """The received Opus packets, undecoded, in an Ogg Opus file (RFC 7845).

    Frames of kind :attr:`FrameKind.opus` (``listen(decode=False)``) are stored as they came:
    no decoding, no re-encoding, about 8 kB/s at Discord's 64 kbit/s. Ogg Opus has no
    per-packet timestamps, only page granule positions that count samples, so gaps are
    filled with Opus silence packets to keep every granule position true. A gap is rounded
    to 2.5 ms (120 samples, the shortest Opus frame): a packet lands within 60 samples of its
    position, and the error never accumulates.

    Pre-skip is 0. Opus decoders delay audio by the encoder's lookahead (312 samples at
    48 kHz); a pre-skip of 312 would remove that delay, but the PCM path (the pool decoding
    the same packets) does not remove it, and the files of one recording must line up
    whatever their format. With 0, libopus decoding this file gives, bit for bit, what
    decoding its packet sequence gives, at the same timeline positions. Against the PCM path
    (one decoder over the received packets, gaps as zeros) it is identical too, save the
    first ~5 ms of a speaker's first talk spurt when the recording started before it: there
    the pool's decoder starts fresh while the file's has decoded the leading silence
    (measured: at most 70 of 32768). Silence packets after a client's five silence frames
    leave the decoder's state unchanged, so later spurts match exactly.

    PCM frames (and :meth:`~AudioFile.write_pcm`, e.g. a mixed track) are encoded with libopus
    (``bitrate``), in runs of contiguous audio, exactly where they belong: the encoder is fed
    the audio 312 samples (its lookahead) ahead of the packets' slots, starting in the
    silence before the run, so the decoded audio lies at its positions like the other
    formats' (not 6.5 ms late), and a run of any length ends on its exact sample (input short
    of a whole 20 ms packet waits for the next write). Gaps shorter than two frames are
    encoded as zeros; longer ones end the run and become silence packets. A run that starts
    less than 312 samples after earlier content cannot start early: it plays that much late.

    Pages are written every ``sync_interval``, so a killed process leaves a playable file
    (the newest packet is held back to carry the end-of-stream page).

    Parameters
    ----------
    serial: Optional[:class:`int`]
        The Ogg stream serial number (random if not given).
    bitrate: :class:`int`
        For PCM frames only: the Opus encoder's bitrate.

    Other parameters are those of :class:`AudioFile`.
    """

    extension = ".opus"

    def __init__(
        self,
        path: StrPath,
        *,
        serial: int | None = None,
        bitrate: int = 64000,
        origin: int = 0,
        sync_interval: float = 0.5,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(path, origin=origin, sync_interval=sync_interval, tags=tags)
        if serial is None:
            serial = int.from_bytes(os.urandom(4), "little")
        self._ogg = OggStreamWriter(serial)
        self._bitrate = bitrate
        self._encoder: OpusEncoder | None = None
        # An open run of encoded PCM: encoder input short of a whole packet, the position
        # the run's audio reaches, and how late the run plays (0 unless it had no room to
        # start early, see the class doc).
        self._run_pending = bytearray()
        self._run_end: int | None = None
        self._run_shift = 0
        # The end of what the file must play (frames, silence asked for, encoded audio);
        # packets may run a little past it (whole packets), and the end-of-stream granule
        # trims them back to it.
        self._content_end = 0
        self._out: _Output | None = None
        try:
            self._out = _Output(self._path)
            # RFC 7845: OpusHead alone on the first page, OpusTags ending its own page
            self._ogg.add_packet(opus_head(channels=CHANNELS, pre_skip=0, input_sample_rate=SAMPLE_RATE), 0)
            pages = self._ogg.pages(flush=True)
            comments = [(k.upper(), str(v)) for k, v in self.tags.items()]
            self._ogg.add_packet(opus_tags(_VENDOR, comments), 0)
            self._out.write(pages + self._ogg.pages(flush=True))
        except OSError as exc:
            err = self._fail(exc)
            self._closed = True
            self._release()
            raise err from None

    @property
    def serial(self) -> int:
        """The Ogg stream serial number."""
        return self._ogg.serial

    @property
    def samples_written(self) -> int:
        """Samples per channel in the file so far (silence included), from its start."""
        return max(self._end, self._content_end)

    def _write_frame(self, frame: AudioFrame) -> None:
        from .opus import OpusError, packet_samples

        start = frame.position - self._origin
        if frame.kind is FrameKind.opus:
            packet = bytes(frame.audio)
            try:
                duration = packet_samples(packet)
            except OpusError:
                self._frames_invalid += 1
                return
            if duration <= 0:
                self._frames_invalid += 1
                return
            self._end_run()
            if not self._make_room(start, frame.samples):
                return
            self._add(packet, duration)
            self._content_end = max(self._content_end, self._end)
        else:
            if len(frame.audio) % _BYTES_PER_SAMPLE:
                raise ValueError("PCM must be whole 16-bit stereo samples")
            if frame.kind is FrameKind.silence and self._run_end is None:
                duration = len(frame.audio) // _BYTES_PER_SAMPLE
                if start + duration <= max(self._end, self._content_end):
                    self._frames_dropped_overlap += 1
                    self._samples_dropped_overlap += duration
                    return
                self._pad(start + duration)
            elif not self._put_pcm(start, frame.audio):
                return
        self._frames_written += 1

    def _place(self, start: int, pcm: bytes | bytearray | memoryview) -> bool:
        # write_pcm: PCM is encoded
        if len(pcm) % _BYTES_PER_SAMPLE:
            raise ValueError("PCM must be whole 16-bit stereo samples")
        return bool(pcm) and self._put_pcm(start, pcm)

    def _make_room(self, start: int, samples: int) -> bool:
        gap = round((start - self._end) / _OPUS_GRID) * _OPUS_GRID
        if gap < 0 or start < self._content_end - _OPUS_GRID // 2:
            self._frames_dropped_overlap += 1
            self._samples_dropped_overlap += samples
            _log.debug("%s: packet at %d lies within written audio (end %d)", self._path.name, start, self._end)
            return False
        if gap:
            self._add_silence(gap)
        return True

    # -- encoded PCM runs ----------------------------------------------------------------

    def _put_pcm(self, start: int, pcm: bytes | bytearray | memoryview) -> bool:
        """Encode PCM at file position ``start``; returns whether any of it was used."""
        count = len(pcm) // _BYTES_PER_SAMPLE
        end = self._run_end if self._run_end is not None else max(self._end, self._content_end)
        if start < end:  # overlaps what the file has: keep the new part only
            overlap = end - start
            if overlap >= count:
                self._frames_dropped_overlap += 1
                self._samples_dropped_overlap += count
                return False
            self._frames_trimmed_overlap += 1
            self._samples_dropped_overlap += overlap
            pcm = memoryview(pcm)[overlap * _BYTES_PER_SAMPLE :]
            count -= overlap
            start = end
        if self._run_end is not None:
            gap = start - self._run_end
            if gap < _OPUS_RUN_GAP:  # go on through a short gap
                self._feed(memoryview(_ZEROS)[: gap * _BYTES_PER_SAMPLE])
                self._feed(pcm)
                self._run_end = start + count
                self._content_end = max(self._content_end, self._run_end + self._run_shift)
                return True
            self._end_run()
        # A new run: its first packet's slot starts _OPUS_LOOKAHEAD before the audio (on the
        # silence grid after the content so far), fed zeros until the audio begins.
        lead = start - _OPUS_LOOKAHEAD - self._end
        if lead >= _OPUS_GRID:
            self._fill_silence(lead // _OPUS_GRID * _OPUS_GRID)
        self._run_shift = max(0, self._end + _OPUS_LOOKAHEAD - start)
        self._run_pending.clear()
        self._feed(memoryview(_ZEROS)[: max(0, start - _OPUS_LOOKAHEAD - self._end) * _BYTES_PER_SAMPLE])
        self._feed(pcm)
        self._run_end = start + count
        self._content_end = max(self._content_end, self._run_end + self._run_shift)
        return True

    def _feed(self, pcm: bytes | bytearray | memoryview) -> None:
        """Give the encoder more input; every whole 20 ms of it becomes a packet."""
        from .opus import OpusEncoder

        if not pcm:
            return
        if self._encoder is None:
            self._encoder = OpusEncoder(self._bitrate, fec=False, expected_loss=0)
        pending = self._run_pending
        pending += pcm
        size = FRAME_SAMPLES * _BYTES_PER_SAMPLE
        whole = len(pending) // size * size
        for offset in range(0, whole, size):
            self._add(self._encoder.encode(bytes(pending[offset : offset + size])), FRAME_SAMPLES)
        del pending[:whole]

    def _end_run(self) -> None:
        """Close the open run: the encoder's lookahead and the last partial packet go out."""
        if self._run_end is None:
            return
        size = FRAME_SAMPLES * _BYTES_PER_SAMPLE
        tail = _OPUS_LOOKAHEAD * _BYTES_PER_SAMPLE
        tail += -(len(self._run_pending) + tail) % size
        self._feed(memoryview(_ZEROS)[:tail])
        self._run_end = None
        self._run_shift = 0

    def _add(self, packet: bytes, duration: int) -> None:
        self._end += duration
        self._ogg.add_packet(packet, self._end)
        self._write_pages(self._ogg.pages())

    def _add_silence(self, samples: int) -> None:
        exact = self._end + samples
        self._fill_silence(-(-samples // _OPUS_GRID) * _OPUS_GRID)
        self._content_end = max(self._content_end, exact)

    def _fill_silence(self, samples: int) -> None:
        # long gaps: a run of 120 ms packets (14 bytes each), pages written as they fill
        runs, samples = divmod(samples, 5760)
        while runs:  # 16 pages at a time: bounded memory however long the gap
            count = min(runs, 16 * 255)
            self._ogg.add_repeated(_OPUS_SILENCE_120MS, count, self._end + 5760, 5760)
            self._end += count * 5760
            self._write_pages(self._ogg.pages())
            runs -= count
        for packet, duration in _opus_silence(samples):
            self._add(packet, duration)

    def _write_pages(self, data: bytes) -> None:
        if data:
            assert self._out is not None
            self._out.write(data)

    def _pad(self, target: int) -> None:
        # Silence is only promised here (the content's end moves) and written when content
        # follows, at a sync or at the end: a run of encoded PCM that comes next can then
        # still start its packets early (see the class doc).
        if self._run_end is not None:
            if target <= self._run_end:
                return
            if target - self._run_end < _OPUS_RUN_GAP:  # zeros through the open run
                self._put_pcm(self._run_end, memoryview(_ZEROS)[: (target - self._run_end) * _BYTES_PER_SAMPLE])
                return
            self._end_run()
        self._content_end = max(self._content_end, target)

    def _write_silence_to(self, position: int) -> None:
        """Write the promised silence up to ``position`` (on the 2.5 ms grid, never past it)."""
        samples = (position - self._end) // _OPUS_GRID * _OPUS_GRID
        if samples > 0:
            self._fill_silence(samples)

    def _sync(self) -> None:
        if self._run_end is None:  # leave room for a run to start early
            self._write_silence_to(self._content_end - _OPUS_LOOKAHEAD - _OPUS_GRID)
        self._write_pages(self._ogg.pages(flush=True, keep=1))

    def _finalize(self) -> None:
        self._end_run()
        if self._content_end > self._end:
            self._add_silence(self._content_end - self._end)
        # the last page's granule trims the packets back to the content's end (RFC 7845 4.5)
        self._write_pages(self._ogg.pages(eos=True, eos_granule=self._content_end))
        self._end = self._ogg.granule

    def _salvage(self) -> None:
        with contextlib.suppress(OSError):  # already failing: keep what is there
            self._write_pages(self._ogg.pages(flush=True))

    def _release(self) -> None:
        if self._out is not None:
            out, self._out = self._out, None
            out.release()


#: File classes by format name, for sinks that take a format as a string.
FORMATS: Final[Mapping[str, Callable[..., AudioFile]]] = {
    "wav": WaveAudioFile,
    "flac": FLACAudioFile,
    "mp3": MP3AudioFile,
    "opus": OggOpusAudioFile,
    "ogg": OggOpusAudioFile,
}
