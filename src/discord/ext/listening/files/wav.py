"""WAV: :class:`WaveAudioFile` (RIFF, RF64 past 4 GiB) and :func:`repair_wav`."""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO, ClassVar, Final

from ..opus import CHANNELS, SAMPLE_RATE
from .base import AudioFile, vendor
from .naming import StrPath
from .output import BYTES_PER_SAMPLE, ZEROS

__all__ = ("WaveAudioFile", "repair_wav")

_log = logging.getLogger(__name__)

# PCM (1), channels, rate, bytes per second, block align, bits per sample
_WAV_FMT: Final = struct.pack("<HHIIHH", 1, CHANNELS, SAMPLE_RATE, SAMPLE_RATE * BYTES_PER_SAMPLE, BYTES_PER_SAMPLE, 16)
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
    entries = {b"ISFT": vendor()}
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
    ds64 = b"ds64" + struct.pack("<IQQQI", 28, riff_size, data_size, data_size // BYTES_PER_SAMPLE, 0)
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
    _HOLE_THRESHOLD: ClassVar[int] = SAMPLE_RATE * BYTES_PER_SAMPLE // 2

    def __init__(
        self,
        path: StrPath | BinaryIO,
        *,
        origin: int = 0,
        sync_interval: float = 0.5,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(path, origin=origin, sync_interval=sync_interval, tags=tags)
        self._pending = bytearray()
        self._flushed = 0  # data bytes handed to the OS (holes included)
        self._rf64 = False
        header = _wav_header(self.tags)
        self._data_offset = len(header)
        with self._creating() as out:
            out.write(header)

    def _append_pcm(self, pcm: bytes | bytearray | memoryview) -> None:
        self._pending += pcm
        if len(self._pending) >= self._MAX_PENDING:
            self._flush_pending()

    def _append_silence(self, samples: int) -> None:
        nbytes = samples * BYTES_PER_SAMPLE
        if nbytes <= self._HOLE_THRESHOLD:
            self._pending += memoryview(ZEROS)[:nbytes]
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
        block_align = BYTES_PER_SAMPLE
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
