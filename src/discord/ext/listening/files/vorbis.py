"""Ogg Vorbis: :class:`OggVorbisAudioFile`, encoded by libvorbis through libsndfile.

PyAV's FFmpeg has only FFmpeg's own, experimental Vorbis encoder (measured: a file 32
samples long, 5 dB SNR on two sines). The ``soundfile`` wheel ships libsndfile built with
libvorbis and libogg, which write Ogg pages as they fill and give the last page the exact
sample count, so decoders give back exactly the samples written.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, BinaryIO, Final

from ..opus import CHANNELS, SAMPLE_RATE
from .base import AudioFile
from .naming import StrPath
from .output import Output, silence_chunks

__all__ = ("OggVorbisAudioFile",)

_log = logging.getLogger(__name__)

#: The tags libsndfile writes as Vorbis comments; others have no room in its API.
_TAGS: Final = ("title", "artist", "album", "comment", "date", "genre", "copyright", "license", "tracknumber")


def _soundfile() -> Any:
    try:
        import soundfile
    except ImportError as exc:
        raise ImportError("Ogg Vorbis needs soundfile: pip install 'discord-ext-listening[vorbis]'") from exc
    return soundfile


class _KeepsErrors:
    """The file object libsndfile writes through. An exception raised inside its callbacks
    would be printed by cffi and lost, and libsndfile would go on; this keeps the first I/O
    error and reports a short write instead, so the file can raise it."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        if self.error is not None:
            return 0
        try:
            return self.out.write(data)
        except OSError as exc:
            self.error = exc
            return 0

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.out.seek(offset, whence)

    def tell(self) -> int:
        return self.out.tell()


class OggVorbisAudioFile(AudioFile):
    """Vorbis (libvorbis, through libsndfile) in Ogg, 48 kHz stereo; extra ``[vorbis]``.

    Lossy, and played by browsers, Android and most desktop players; the decoded length is
    exactly the samples written. Parameters not listed here are those of :class:`AudioFile`.

    Two costs differ from the other formats. A killed process loses the Ogg page being filled
    (pages of about 4 kB: up to 0.6 s of speech at the default quality), not one sync
    interval: libsndfile has no call that ends a page early. And silence is encoded like
    audio, as in Matroska (libsndfile cannot write ready-made silent packets): 0.4% of a core
    a second of it, so a member silent for an hour costs about 13 s of CPU when they speak
    again. Prefer FLAC, WAV or MP3 for members silent for hours.

    Parameters
    ----------
    quality: :class:`float`
        Vorbis quality, 0.0 (about 50 kbit/s on stereo speech) to 1.0 (highest). Defaults to
        0.5 (about 100 kbit/s).

    Raises
    ------
    ImportError
        soundfile is not installed.
    """

    extension = ".ogg"

    def __init__(
        self,
        path: StrPath | BinaryIO,
        *,
        quality: float = 0.5,
        origin: int = 0,
        sync_interval: float = 0.5,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(quality, bool) or not isinstance(quality, (int, float)) or not 0 <= quality <= 1:
            raise ValueError(f"quality must be a number within 0.0..1.0, got {quality!r}")
        soundfile = _soundfile()
        super().__init__(path, origin=origin, sync_interval=sync_interval, tags=tags)
        self._encoder: Any = None
        self._target: _KeepsErrors | None = None
        with self._creating() as out:
            self._target = _KeepsErrors(out)
            self._encoder = soundfile.SoundFile(
                self._target,
                "w",
                samplerate=SAMPLE_RATE,
                channels=CHANNELS,
                format="OGG",
                subtype="VORBIS",
                compression_level=1.0 - float(quality),
            )
            for key, value in self.tags.items():
                if key in _TAGS:  # before the first samples: they go into the header
                    setattr(self._encoder, key, str(value))

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Call the encoder; an I/O error underneath comes out as that :exc:`OSError`."""
        assert self._target is not None
        try:
            getattr(self._encoder, method)(*args, **kwargs)
        except RuntimeError as exc:  # soundfile.LibsndfileError
            raise self._target.error or OSError(str(exc)) from exc
        if self._target.error is not None:
            raise self._target.error

    def _append_pcm(self, pcm: bytes | bytearray | memoryview) -> None:
        self._call("buffer_write", bytes(pcm), dtype="int16")

    def _append_silence(self, samples: int) -> None:
        for chunk in silence_chunks(samples):
            self._append_pcm(chunk)

    def _sync(self) -> None:
        # libsndfile hands each Ogg page to the file object once it is full (about 4 kB);
        # this flush is what it offers, and it does not end the open page.
        self._call("flush")

    def _finalize(self) -> None:
        self._call("close")  # the last page, with the exact sample count

    def _salvage(self) -> None:
        pass  # every page on disk is complete and plays

    def _release(self) -> None:
        encoder, self._encoder = self._encoder, None
        if encoder is not None and not encoder.closed:
            try:
                encoder.close()
            except Exception as exc:  # already failing: the descriptor below still gets closed
                _log.debug("closing the encoder of %s: %r", self._path, exc)
        super()._release()
