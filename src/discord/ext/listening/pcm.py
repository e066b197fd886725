"""PCM in the shape a consumer asks for: sample rate, channels and sample type.

Frames leave the decoders as 48 kHz stereo int16; a speech recogniser wants 16 kHz mono float32.
:class:`PCMFormat` names a shape and :class:`PCMConverter` turns one member's consecutive
frames into it. Resampling is soxr's (a maintained, high-quality resampler), run as a stream
so that 20 ms chunks join without the clicks and delay jumps of resampling each chunk alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from .opus import CHANNELS, SAMPLE_RATE

__all__ = ("PCMConverter", "PCMFormat")

_DTYPES: Final = ("int16", "float32")
_INT16_SCALE: Final = 32768.0


@dataclass(frozen=True, slots=True)
class PCMFormat:
    """A PCM shape: ``rate`` Hz, ``channels`` interleaved, samples of ``dtype``.

    The default is what the decoders produce (48 kHz stereo int16), which needs no conversion.
    ``float32`` samples lie in [-1, 1).

    Parameters
    ----------
    rate: :class:`int`
        Samples per second per channel, 8000 to 192000.
    channels: :class:`int`
        1 (stereo is averaged) or 2.
    dtype: :class:`str`
        ``"int16"`` or ``"float32"``.

    Raises
    ------
    TypeError, ValueError
        An argument has the wrong type or is out of range.
    """

    rate: int = SAMPLE_RATE
    channels: int = CHANNELS
    dtype: str = "int16"

    def __post_init__(self) -> None:
        if isinstance(self.rate, bool) or not isinstance(self.rate, int):
            raise TypeError(f"rate must be an int, got {type(self.rate).__name__}")
        if not 8000 <= self.rate <= 192000:
            raise ValueError(f"rate must be within 8000..192000 Hz, got {self.rate!r}")
        if self.channels not in (1, 2) or isinstance(self.channels, bool):
            raise ValueError(f"channels must be 1 or 2, got {self.channels!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")

    @property
    def is_native(self) -> bool:
        """Whether this is the decoders' own format (frames pass unchanged)."""
        return self.rate == SAMPLE_RATE and self.channels == CHANNELS and self.dtype == "int16"

    def samples(self, seconds: float) -> int:
        """Samples per channel in ``seconds`` of audio at this rate."""
        return round(seconds * self.rate)


class PCMConverter:
    """One member's frames, in order, converted to ``format`` (not thread-safe: one per member).

    Parameters
    ----------
    format: :class:`PCMFormat`
        The shape wanted.
    """

    def __init__(self, format: PCMFormat) -> None:
        if not isinstance(format, PCMFormat):
            raise TypeError(f"format must be a PCMFormat, got {type(format).__name__}")
        self.format = format
        self._stream: Any = None
        if format.rate != SAMPLE_RATE:
            import soxr  # only when a rate change is asked for

            self._stream = soxr.ResampleStream(SAMPLE_RATE, format.rate, format.channels, dtype="float32")

    def convert(self, pcm: bytes, *, last: bool = False) -> np.ndarray:
        """The next frame(s) of 48 kHz stereo s16le ``pcm`` in :attr:`format`.

        A resampler holds back about 30 ms of audio (its filter's delay): it comes out
        with later calls, and with the one that passes ``last=True`` at the end of the member's
        audio. So the arrays of consecutive calls, joined, are the whole converted signal.

        Returns
        -------
        :class:`numpy.ndarray`
            Shape ``(samples,)`` for mono, ``(samples, 2)`` for stereo.
        """
        fmt = self.format
        x: np.ndarray = np.frombuffer(pcm, "<i2").reshape(-1, CHANNELS)
        if fmt.is_native:
            return x.copy()
        f: np.ndarray
        if fmt.channels == 1:
            # (left + right) / 2, exact in float32; a strided mean() costs 3x this
            f = (x[:, 0].astype(np.float32) + x[:, 1]) * np.float32(0.5 / _INT16_SCALE)
        else:
            f = x.astype(np.float32) * np.float32(1 / _INT16_SCALE)
        if self._stream is not None:
            f = np.asarray(self._stream.resample_chunk(f, last=last), dtype=np.float32)
        if fmt.dtype == "int16":
            out: np.ndarray = np.clip(np.rint(f * _INT16_SCALE), -32768, 32767).astype(np.int16)
            return out
        return f.astype(np.float32, copy=False)
