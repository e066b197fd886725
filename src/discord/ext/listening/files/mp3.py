"""MP3: :class:`MP3AudioFile`, LAME through PyAV, gapless thanks to a LAME tag kept true while recording."""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import Mapping
from typing import Any, BinaryIO, ClassVar, Final

from ..opus import SAMPLE_RATE
from .av_encoded import TIME_BASE, AVEncodedAudioFile, load_av
from .naming import StrPath
from .output import BYTES_PER_SAMPLE, silence_chunks

__all__ = ("MP3AudioFile",)

_log = logging.getLogger(__name__)

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


class MP3AudioFile(AVEncodedAudioFile):
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

    Parameters not listed here are those of :class:`AudioFile`.

    Parameters
    ----------
    bitrate: :class:`int`
        Bits per second, one of MPEG-1 Layer III's rates (32000 ... 320000).
    quality: Optional[:class:`int`]
        LAME's algorithm quality, 0 (best, slowest) to 9 (fastest); ``None`` for LAME's default.
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
        path: StrPath | BinaryIO,
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
        av = load_av()
        ctx = av.CodecContext.create(self._codec, "w")
        ctx.sample_rate = SAMPLE_RATE
        ctx.layout = "stereo"
        ctx.format = self._codec_format
        ctx.bit_rate = self._bitrate
        ctx.time_base = TIME_BASE
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
            self._session_pts += len(data) // BYTES_PER_SAMPLE
        if pcm is None:
            self._mux_packets(self._session.encode(None))
        else:
            self._session_fed += len(pcm) // BYTES_PER_SAMPLE

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
        for chunk in silence_chunks(lead):
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
                pcm = memoryview(pcm)[lost * BYTES_PER_SAMPLE :]
        self._feed(pcm)

    def _append_silence(self, samples: int) -> None:
        if self._session is None:
            return  # realized as silent frames when audio resumes, at sync or at close
        if self._end + samples - self._session_fed < self._RESTART_GAP:
            for chunk in silence_chunks(samples):
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
                for chunk in silence_chunks(end - self._session_fed):
                    self._feed(chunk)
            else:
                # The last packet must come from an encoder: its end-padding side data makes
                # the LAME tag trim the file to exactly ``end`` samples.
                self._end_session()
                self._start_session(max(0, end - 1) // _MP3_FRAME_SAMPLES * _MP3_FRAME_SAMPLES)
                for chunk in silence_chunks(end - self._session_fed):
                    self._feed(chunk)
            self._end_session()
        self._close_container()  # FFmpeg's trailer writes the final LAME tag (delay, padding, CRCs)
        self._patch_xing(final=True)

    def _salvage(self) -> None:
        with contextlib.suppress(OSError):  # already failing: keep what is there
            self._patch_xing()
