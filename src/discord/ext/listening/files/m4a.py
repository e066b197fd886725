"""M4A: :class:`M4AAudioFile`, AAC (FFmpeg's encoder) in fragmented MP4, through PyAV.

The file is a fragmented MP4 with its index (``moov``) held back until the first fragment is
written (``delay_moov``): by then the encoder has said how many priming samples it put in
front, and the muxer records them in an edit list, so a decoder starts at sample 0. Each
fragment is one sync interval and goes to the file whole, so a file left by a killed process
plays up to its last fragment. FFmpeg's MP4 muxer does not record the padding at the end of
the last AAC frame: the file decodes up to 1,023 samples (21 ms) longer than was written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import BinaryIO

from .av_encoded import EncoderFedAudioFile
from .naming import StrPath

__all__ = ("M4AAudioFile",)


class M4AAudioFile(EncoderFedAudioFile):
    """AAC (FFmpeg's native encoder, inside PyAV's wheel) in an ``.m4a``, 48 kHz stereo.

    What Apple's players, phones and most editors open directly. Its start is on the
    recording's timeline like every format's; it may end up to 1,023 samples (21 ms) after
    the other tracks, the padding of its last AAC frame, which MP4 as FFmpeg writes it does
    not mark. Silence is encoded like audio. Parameters not listed here are those of
    :class:`AudioFile`.

    Parameters
    ----------
    bitrate: :class:`int`
        Bits per second, 32000 to 512000. Defaults to 128000.
    """

    extension = ".m4a"
    _format = "ipod"  # the MP4 muxer with the M4A brand
    _codec = "aac"
    _codec_format = "fltp"
    _frame_samples = 1024  # what an AAC frame holds

    def __init__(
        self,
        path: StrPath | BinaryIO,
        *,
        bitrate: int = 128000,
        origin: int = 0,
        sync_interval: float = 0.5,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(bitrate, bool) or not isinstance(bitrate, int) or not 32000 <= bitrate <= 512000:
            raise ValueError(f"bitrate must be an int within 32000..512000, got {bitrate!r}")
        super().__init__(path, origin=origin, sync_interval=sync_interval, tags=tags, bit_rate=bitrate)

    def _muxer_options(self) -> Mapping[str, str]:
        # Fragments of one sync interval; the index waits for the first one (delay_moov), when
        # the encoder's priming is known and goes into the edit list.
        fragment_us = max(20_000, round(self._sync_interval * 1_000_000))
        return {"movflags": "frag_keyframe+empty_moov+delay_moov+default_base_moof", "frag_duration": str(fragment_us)}
