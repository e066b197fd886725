"""Matroska audio: :class:`MatroskaAudioFile`, Opus in a ``.mka`` written as a live stream.

FFmpeg's Matroska muxer in live mode writes clusters of unknown size and no index at the end,
so a file left by a killed process plays up to its last cluster (clusters last one sync
interval); the Opus encoder's pre-skip
and the last frame's padding are in the container (CodecDelay, DiscardPadding), so decoders
give back exactly the samples written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import BinaryIO

from .av_encoded import EncoderFedAudioFile
from .naming import StrPath

__all__ = ("MatroskaAudioFile",)


class MatroskaAudioFile(EncoderFedAudioFile):
    """Opus (libopus through PyAV) in Matroska audio, 48 kHz stereo.

    Unlike :class:`OggOpusAudioFile` it re-encodes decoded PCM (for received Opus kept as it
    is, use that class with ``listen(decode=False)``); Matroska is what video editors and
    many players take directly. Parameters not listed here are those of :class:`AudioFile`.

    Parameters
    ----------
    bitrate: :class:`int`
        Bits per second, 6000 to 510000. Defaults to 96000.
    """

    extension = ".mka"
    _format = "matroska"
    _codec = "libopus"
    _codec_format = "s16"
    _frame_samples = 960  # 20 ms: what libopus takes per call at 48 kHz

    def __init__(
        self,
        path: StrPath | BinaryIO,
        *,
        bitrate: int = 96000,
        origin: int = 0,
        sync_interval: float = 0.5,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(bitrate, bool) or not isinstance(bitrate, int) or not 6000 <= bitrate <= 510000:
            raise ValueError(f"bitrate must be an int within 6000..510000, got {bitrate!r}")
        super().__init__(path, origin=origin, sync_interval=sync_interval, tags=tags, bit_rate=bitrate)

    def _muxer_options(self) -> Mapping[str, str]:
        # Live mode: clusters of unknown size, no index to write at the end. A cluster goes
        # to the file when it closes, so clusters last one sync interval: what a killed
        # process can lose, as for every format.
        return {"live": "1", "cluster_time_limit": str(max(20, round(self._sync_interval * 1000)))}
