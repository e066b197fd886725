"""Ogg Opus: :class:`OggOpusAudioFile`, the received Opus packets undecoded in an Ogg stream (:mod:`.ogg`)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, BinaryIO, Final

from ..frames import AudioFrame
from ..opus import CHANNELS, FRAME_SAMPLES, SAMPLE_RATE
from .base import AudioFile, vendor
from .naming import StrPath
from .ogg import OggStreamWriter, opus_head, opus_tags
from .output import BYTES_PER_SAMPLE, ZEROS

if TYPE_CHECKING:
    from ..opus import OpusEncoder

__all__ = ("OggOpusAudioFile",)

_log = logging.getLogger(__name__)

#: CELT-only fullband silence packets (TOC config 31/30/29/28 = 20/10/5/2.5 ms), the frame
#: payload ``FF FE`` coding the silence flag; the 20 ms one is what Discord clients send.
_OPUS_SILENCE: Final = {960: b"\xf8\xff\xfe", 480: b"\xf0\xff\xfe", 240: b"\xe8\xff\xfe", 120: b"\xe0\xff\xfe"}
#: 120 ms of silence in one packet: code 3, six CBR frames of the 20 ms silence payload.
_OPUS_SILENCE_120MS: Final = b"\xfb\x06" + b"\xff\xfe" * 6
_OPUS_GRID: Final = 120  # the shortest Opus frame (2.5 ms): gaps are rounded to it
_OPUS_LOOKAHEAD: Final = 312  # libopus' encoder delay at 48 kHz (2.5 ms + 4 ms)
_OPUS_RUN_GAP: Final = 2 * FRAME_SAMPLES  # shorter gaps in encoded PCM are encoded as zeros


def _opus_silence(samples: int) -> Iterator[tuple[bytes, int]]:
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

    Parameters not listed here are those of :class:`AudioFile`.

    Parameters
    ----------
    serial: Optional[:class:`int`]
        The Ogg stream serial number (random if not given).
    bitrate: :class:`int`
        For PCM frames only: the Opus encoder's bitrate.
    """

    extension = ".opus"

    def __init__(
        self,
        path: StrPath | BinaryIO,
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
        # The base class's _end is here the end of the packets (the granule position), and
        # _content_end the end of what the file must play (frames, silence asked for, encoded
        # audio): packets may run a little past it (whole packets), and the end-of-stream
        # granule trims them back to it.
        with self._creating() as out:
            # RFC 7845: OpusHead alone on the first page, OpusTags ending its own page
            self._ogg.add_packet(opus_head(channels=CHANNELS, pre_skip=0, input_sample_rate=SAMPLE_RATE), 0)
            pages = self._ogg.pages(flush=True)
            comments = [(k.upper(), str(v)) for k, v in self.tags.items()]
            self._ogg.add_packet(opus_tags(vendor(), comments), 0)
            out.write(pages + self._ogg.pages(flush=True))

    @property
    def serial(self) -> int:
        """The Ogg stream serial number."""
        return self._ogg.serial

    # -- the template's hooks (see base.py) ----------------------------------------------

    def _write_opus(self, start: int, frame: AudioFrame) -> bool:
        # stored as it came: its duration from its TOC, its place rounded to the silence grid
        from ..opus import OpusError, packet_samples

        packet = bytes(frame.audio)
        try:
            duration = packet_samples(packet)
        except OpusError:
            duration = 0
        if duration <= 0:
            self._frames_invalid += 1
            return False
        self._end_run()
        if not self._make_room(start, frame.samples):
            return False
        self._add(packet, duration)
        self._content_end = max(self._content_end, self._end)
        return True

    def _write_silence(self, start: int, pcm: bytes | bytearray | memoryview) -> bool:
        # Outside a run of encoded PCM, a silence frame is silence promised up to its end
        # (written as silence packets later); inside one it is encoded like audio.
        if self._run_end is not None:
            return self._place(start, pcm)
        duration = self._samples_in(pcm)
        if start + duration <= self.samples_written:
            self._frames_dropped_overlap += 1
            self._samples_dropped_overlap += duration
            return False
        self._pad(start + duration)
        return True

    def _placed_end(self) -> int:
        return self._run_end if self._run_end is not None else self.samples_written

    def _silence_to(self, target: int) -> None:
        # Silence is only promised here (the base class moved _content_end) and written when
        # content follows, at a sync or at the end: a run of encoded PCM that comes next can
        # then still start its packets early (see the class doc).
        if self._run_end is None or target <= self._run_end:
            return
        if target - self._run_end < _OPUS_RUN_GAP:  # zeros through the open run
            self._put_pcm(self._run_end, memoryview(ZEROS)[: (target - self._run_end) * BYTES_PER_SAMPLE])
        else:
            self._end_run()

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

    def _put_pcm(self, start: int, pcm: bytes | bytearray | memoryview) -> None:
        """Encode PCM at file position ``start`` (past what the file has)."""
        count = len(pcm) // BYTES_PER_SAMPLE
        if self._run_end is not None:
            gap = start - self._run_end
            if gap < _OPUS_RUN_GAP:  # go on through a short gap
                self._feed(memoryview(ZEROS)[: gap * BYTES_PER_SAMPLE])
                self._feed(pcm)
                self._run_end = start + count
                self._content_end = max(self._content_end, self._run_end + self._run_shift)
                return
            self._end_run()
        # A new run: its first packet's slot starts _OPUS_LOOKAHEAD before the audio (on the
        # silence grid after the content so far), fed zeros until the audio begins.
        lead = start - _OPUS_LOOKAHEAD - self._end
        if lead >= _OPUS_GRID:
            self._fill_silence(lead // _OPUS_GRID * _OPUS_GRID)
        self._run_shift = max(0, self._end + _OPUS_LOOKAHEAD - start)
        self._run_pending.clear()
        self._feed(memoryview(ZEROS)[: max(0, start - _OPUS_LOOKAHEAD - self._end) * BYTES_PER_SAMPLE])
        self._feed(pcm)
        self._run_end = start + count
        self._content_end = max(self._content_end, self._run_end + self._run_shift)

    def _feed(self, pcm: bytes | bytearray | memoryview) -> None:
        """Give the encoder more input; every whole 20 ms of it becomes a packet."""
        from ..opus import OpusEncoder

        if not pcm:
            return
        if self._encoder is None:
            self._encoder = OpusEncoder(self._bitrate, fec=False, expected_loss=0)
        pending = self._run_pending
        pending += pcm
        size = FRAME_SAMPLES * BYTES_PER_SAMPLE
        whole = len(pending) // size * size
        for offset in range(0, whole, size):
            self._add(self._encoder.encode(bytes(pending[offset : offset + size])), FRAME_SAMPLES)
        del pending[:whole]

    def _end_run(self) -> None:
        """Close the open run: the encoder's lookahead and the last partial packet go out."""
        if self._run_end is None:
            return
        size = FRAME_SAMPLES * BYTES_PER_SAMPLE
        tail = _OPUS_LOOKAHEAD * BYTES_PER_SAMPLE
        tail += -(len(self._run_pending) + tail) % size
        self._feed(memoryview(ZEROS)[:tail])
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

    def _write_promised_silence(self, position: int) -> None:
        """Write the promised silence up to ``position`` (on the 2.5 ms grid, never past it)."""
        samples = (position - self._end) // _OPUS_GRID * _OPUS_GRID
        if samples > 0:
            self._fill_silence(samples)

    def _sync(self) -> None:
        if self._run_end is None:  # leave room for a run to start early
            self._write_promised_silence(self._content_end - _OPUS_LOOKAHEAD - _OPUS_GRID)
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
