"""The formats PyAV encodes and muxes (FLAC, MP3, Matroska): their shared base class."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from fractions import Fraction
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, Final, cast

from ..opus import SAMPLE_RATE
from .base import AudioFile
from .naming import StrPath
from .output import BYTES_PER_SAMPLE, silence_chunks

if TYPE_CHECKING:
    import av
    import av.audio.stream
    import av.container

__all__ = ("TIME_BASE", "AVEncodedAudioFile", "EncoderFedAudioFile", "load_av")

_log = logging.getLogger(__name__)

#: PyAV timestamps count samples.
TIME_BASE: Final = Fraction(1, SAMPLE_RATE)


def load_av() -> Any:
    """PyAV, imported on first use: it loads all of FFmpeg, which only the encoded formats need."""
    import av

    return av


class AVEncodedAudioFile(AudioFile):
    """Shared plumbing of the formats PyAV encodes and muxes.

    FFmpeg's muxer writes through :class:`~.output.Output` with ``flush_packets`` on, so every packet
    is handed to the OS as soon as the encoder produces it; the few header fields a muxer only
    writes at the end are patched in place on every sync by the subclasses.
    """

    _format: ClassVar[str]
    _codec: ClassVar[str]
    _codec_format: ClassVar[str]

    def __init__(
        self,
        path: StrPath | BinaryIO,
        *,
        origin: int = 0,
        sync_interval: float = 0.5,
        tags: Mapping[str, str] | None = None,
        codec_options: Mapping[str, str] | None = None,
        bit_rate: int | None = None,
    ) -> None:
        super().__init__(path, origin=origin, sync_interval=sync_interval, tags=tags)
        pyav = load_av()
        self._container: av.container.OutputContainer | None = None
        self._mux_position = 0  # pts of the next packet (samples), strictly increasing
        self._pcm = bytearray()  # input short of a whole codec frame
        with self._creating() as out:
            self._container = pyav.open(
                out,
                "w",
                format=self._format,
                container_options={"flush_packets": "1", **self._muxer_options()},
                buffer_size=16384,
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

    def _muxer_options(self) -> Mapping[str, str]:
        """Options of the format's muxer, beside ``flush_packets`` (called before it opens)."""
        return {}

    def _frame(self, pcm: bytes | bytearray | memoryview, pts: int) -> Any:
        import numpy as np

        av = load_av()
        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = pts
        frame.time_base = TIME_BASE
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
        size = len(self._pcm) // (frame_samples * BYTES_PER_SAMPLE) * frame_samples * BYTES_PER_SAMPLE
        if not size:
            return b""
        data = bytes(self._pcm[:size])
        del self._pcm[:size]
        return data

    def _mux(self, packet: Any, samples: int) -> None:
        assert self._container is not None
        packet.pts = packet.dts = self._mux_position
        packet.time_base = TIME_BASE
        packet.stream = self._stream
        self._container.mux_one(packet)
        self._mux_position += max(samples, 1)

    def _mux_bytes(self, data: bytes, samples: int) -> None:
        self._mux(load_av().Packet(data), samples)

    def _close_container(self) -> None:
        """Close the container: the muxer writes its trailer (the headers' final values)."""
        assert self._container is not None
        container, self._container = self._container, None
        container.close()

    def _release(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception as exc:  # already failing: the descriptor below still gets closed
                _log.debug("closing the container of %s: %r", self._path, exc)
        super()._release()


class EncoderFedAudioFile(AVEncodedAudioFile):
    """A format whose encoder is fed everything, silence included, in whole codec frames of
    ``_frame_samples``; the container records the last frame's padding where it can."""

    _frame_samples: ClassVar[int]

    def __init__(self, path: StrPath | BinaryIO, **options: Any) -> None:
        self._fed = 0  # samples handed to the encoder
        super().__init__(path, **options)

    def _encode(self, pcm: bytes | bytearray | memoryview | None) -> None:
        """Encode whole frames now, the rest when more comes; ``None`` ends the stream (the
        last, shorter frame included)."""
        data = self._whole_frames(pcm, self._frame_samples)
        if data:
            frame = self._frame(data, self._fed)
            self._fed += len(data) // BYTES_PER_SAMPLE
            self._mux_all(self._stream.encode(frame))
        if pcm is None:
            self._mux_all(self._stream.encode(None))

    def _mux_all(self, packets: Any) -> None:
        assert self._container is not None
        for packet in packets:
            self._container.mux_one(packet)

    def _append_pcm(self, pcm: bytes | bytearray | memoryview) -> None:
        self._encode(pcm)

    def _append_silence(self, samples: int) -> None:
        for chunk in silence_chunks(samples):
            self._encode(chunk)

    def _sync(self) -> None:
        pass  # the muxer hands each cluster or fragment to the file whole, as it closes

    def _finalize(self) -> None:
        self._encode(None)
        self._close_container()

    def _salvage(self) -> None:
        pass  # every cluster or fragment on disk plays
