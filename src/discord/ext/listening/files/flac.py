"""FLAC: :class:`FLACAudioFile`, encoded by PyAV, long silences as hand-made frames (:mod:`.flac_bits`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any, BinaryIO, ClassVar

from ..opus import CHANNELS, SAMPLE_RATE
from .av_encoded import AVEncodedAudioFile, load_av
from .flac_bits import FlacSilence, renumber
from .naming import StrPath
from .output import BYTES_PER_SAMPLE, silence_chunks

__all__ = ("FLACAudioFile",)

_log = logging.getLogger(__name__)


class FLACAudioFile(AVEncodedAudioFile):
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

    Parameters not listed here are those of :class:`AudioFile`.

    Parameters
    ----------
    compression_level: Optional[:class:`int`]
        FFmpeg's FLAC level 0-12 (default 5).
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
        path: StrPath | BinaryIO,
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
        self._silence: FlacSilence | None = None
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
            self._fed += len(data) // BYTES_PER_SAMPLE
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
            renumbered = load_av().Packet(renumber(bytes(packet), self._frame_number))
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
        partial = len(self._pcm) // BYTES_PER_SAMPLE
        if samples < (self._SILENT_FRAMES_AFTER + 1) * self._blocksize:
            for chunk in silence_chunks(samples):
                self._encode(chunk)
            return
        # complete the block the encoder holds, then whole silent blocks by hand, then the rest
        if partial:
            fill = self._blocksize - partial
            for chunk in silence_chunks(fill):
                self._encode(chunk)
            samples -= fill
        whole, rest = divmod(samples, self._blocksize)
        self._insert_silent_frames(whole)
        for chunk in silence_chunks(rest):
            self._encode(chunk)

    def _insert_silent_frames(self, count: int) -> None:
        if self._silence is None:
            self._silence = FlacSilence(self._blocksize)
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
        self._close_container()  # the muxer rewrites STREAMINFO from the encoder's totals and MD5
        self._patch_streaminfo(self._end, final=True)

    def _salvage(self) -> None:
        with contextlib.suppress(OSError):  # already failing: keep what is there
            self._patch_streaminfo(self._samples_muxed)
