"""Ogg pages and Ogg Opus headers, written by hand (sans-I/O).

Recordings made with ``listen(decode=False)`` keep the Opus packets exactly as they were
received. They go into an Ogg Opus stream (RFC 3533 framing, RFC 7845 mapping); this module
turns packets into page bytes and knows nothing about files.

The Ogg CRC is CRC-32 with polynomial ``0x04C11DB7``, initial value 0, no bit reflection and
no final XOR. :func:`zlib.crc32` uses the same polynomial *reflected* (and inverts the register
before and after), so it cannot compute the Ogg CRC directly; but a non-reflected CRC equals
the bit-reversal of the reflected CRC of the bit-reversed input bytes. :func:`crc32` uses that
identity (one :meth:`bytes.translate` and one :func:`zlib.crc32` in C): about 90 times faster
than a table-driven loop in Python (33 us against 2.9 ms for a 5 kB page).
:func:`crc32_reference` is the plain table-driven version the tests compare it with.
"""

from __future__ import annotations

import collections
import logging
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = (
    "FLAG_BOS",
    "FLAG_CONTINUED",
    "FLAG_EOS",
    "OggError",
    "OggPage",
    "OggStreamWriter",
    "crc32",
    "crc32_reference",
    "opus_head",
    "opus_tags",
    "parse_pages",
)

_log = logging.getLogger(__name__)

#: Header type flag: the page's first segment continues a packet from the previous page.
FLAG_CONTINUED: Final = 0x01
#: Header type flag: first page of the logical stream.
FLAG_BOS: Final = 0x02
#: Header type flag: last page of the logical stream.
FLAG_EOS: Final = 0x04

_CAPTURE: Final = b"OggS"
_HEADER: Final = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, seq, crc, nsegs
_MAX_SEGMENTS: Final = 255
#: Granule position of a page on which no packet ends (RFC 3533).
NO_GRANULE: Final = -1


class OggError(ValueError):
    """Bytes that are not a well-formed Ogg page."""


# --- CRC -------------------------------------------------------------------------------

_BITREV: Final = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _reverse32(value: int) -> int:
    # Bit-reverse a 32-bit integer with the byte table: reverse each byte, then the byte order.
    return int.from_bytes(value.to_bytes(4, "little").translate(_BITREV), "big")


def crc32(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """Return the Ogg CRC-32 of ``data`` (polynomial 0x04C11DB7, not reflected, init 0).

    Parameters
    ----------
    data: :term:`py:bytes-like object`
        The bytes to checksum.
    crc: :class:`int`
        The CRC of the bytes before ``data``, to continue a running checksum.
    """
    # reflected-register update with init r and no final xor == zlib.crc32(d, r ^ ~0) ^ ~0
    reflected_start = _reverse32(crc)
    raw = zlib.crc32(bytes(data).translate(_BITREV), reflected_start ^ 0xFFFFFFFF) ^ 0xFFFFFFFF
    return _reverse32(raw)


def _make_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        c = i << 24
        for _ in range(8):
            c = ((c << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if c & 0x80000000 else (c << 1) & 0xFFFFFFFF
        table.append(c)
    return tuple(table)


_TABLE: Final = _make_table()


def crc32_reference(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """The Ogg CRC-32, table-driven, one byte at a time (the definition; slow)."""
    for byte in bytes(data):
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _TABLE[(crc >> 24) ^ byte]
    return crc


# --- pages -----------------------------------------------------------------------------


@dataclass(slots=True)
class OggPage:
    """One parsed Ogg page.

    Attributes
    ----------
    flags: :class:`int`
        Header type: :data:`FLAG_CONTINUED`, :data:`FLAG_BOS`, :data:`FLAG_EOS` bits.
    granule: :class:`int`
        Granule position (-1 when no packet ends on the page).
    serial: :class:`int`
        Bitstream serial number.
    sequence: :class:`int`
        Page sequence number.
    segments: List[:class:`int`]
        The lacing values.
    body: :class:`bytes`
        The page body (concatenated segments).
    offset: :class:`int`
        Where the page starts in the parsed data.
    size: :class:`int`
        Header plus body length.
    """

    flags: int
    granule: int
    serial: int
    sequence: int
    segments: list[int]
    body: bytes
    offset: int = 0
    size: int = 0

    def packets(self) -> Iterator[tuple[bytes, bool]]:
        """Yield ``(data, complete)`` for each packet piece on the page.

        ``complete`` is False for the last piece when the packet continues on the next page.
        """
        start = pos = 0
        for lace in self.segments:
            pos += lace
            if lace < 255:
                yield self.body[start:pos], True
                start = pos
        if start < pos:
            yield self.body[start:pos], False


def parse_pages(data: bytes, *, strict: bool = True) -> list[OggPage]:
    """Split ``data`` into Ogg pages, checking capture patterns and CRCs.

    Parameters
    ----------
    data: :class:`bytes`
        A whole Ogg file (or its beginning: a truncated last page is ignored).
    strict: :class:`bool`
        Raise :exc:`OggError` on a bad CRC or garbage between pages; otherwise stop there.

    Raises
    ------
    OggError
        A page is malformed (only when ``strict``).
    """
    pages: list[OggPage] = []
    pos = 0
    view = memoryview(data)
    while pos + _HEADER.size <= len(data):
        capture, version, flags, granule, serial, seq, crc, nsegs = _HEADER.unpack_from(data, pos)
        if capture != _CAPTURE or version != 0:
            if strict:
                raise OggError(f"no Ogg page at offset {pos}")
            _log.debug("no Ogg page at offset %d: stopping", pos)
            break
        seg_end = pos + _HEADER.size + nsegs
        if seg_end > len(data):
            break
        segments = list(data[pos + _HEADER.size : seg_end])
        end = seg_end + sum(segments)
        if end > len(data):
            break  # truncated final page (a file cut mid-write): not an error
        header = bytearray(view[pos:seg_end])
        header[22:26] = b"\0\0\0\0"
        if crc32(view[seg_end:end], crc32(header)) != crc:
            if strict:
                raise OggError(f"bad CRC in page {seq} at offset {pos}")
            _log.debug("bad CRC in page %d at offset %d: stopping", seq, pos)
            break
        pages.append(OggPage(flags, granule, serial, seq, segments, bytes(view[seg_end:end]), pos, end - pos))
        pos = end
    return pages


@dataclass(slots=True)
class _Pending:
    data: bytes
    granule: int  # at the end of the (first) packet
    offset: int = 0  # bytes of ``data`` already put on earlier pages
    count: int = 1  # a run of identical packets (silence)
    step: int = 0  # granule increase per packet of a run


class OggStreamWriter:
    """Paginates the packets of one logical Ogg stream.

    Sans-I/O: :meth:`add_packet` queues a packet, :meth:`pages` returns page bytes for the
    caller to write. A page is produced when 255 lacing values are queued (the format's
    limit) or when the caller asks for a flush; flushing after each header packet puts it on
    a page of its own, as RFC 7845 requires for OpusHead and OpusTags.

    Parameters
    ----------
    serial: :class:`int`
        The bitstream serial number (32-bit).
    """

    def __init__(self, serial: int) -> None:
        if not 0 <= serial <= 0xFFFFFFFF:
            raise ValueError(f"serial must be a 32-bit unsigned integer, got {serial!r}")
        self.serial = serial
        #: Sequence number of the next page.
        self.sequence = 0
        self._pending: collections.deque[_Pending] = collections.deque()
        self._pending_segments = 0
        self._pending_packets = 0
        self._bos_done = False
        self._eos_done = False
        self._last_granule = 0  # granule of the last page on which a packet ended
        self._granule_before = 0  # the one before it (the floor for end trimming)

    def __repr__(self) -> str:
        return f"<OggStreamWriter serial={self.serial:#010x} sequence={self.sequence} pending={len(self._pending)}>"

    @property
    def pending_packets(self) -> int:
        """Packets queued (wholly or partly) that are not on a page yet."""
        return self._pending_packets

    @property
    def pending_segments(self) -> int:
        """Lacing values the queued packets need."""
        return self._pending_segments

    @property
    def granule(self) -> int:
        """Granule position of the last page on which a packet ended."""
        return self._last_granule

    @property
    def finished(self) -> bool:
        """Whether the end-of-stream page has been produced."""
        return self._eos_done

    def add_packet(self, packet: bytes, granule: int) -> None:
        """Queue a packet.

        Parameters
        ----------
        packet: :class:`bytes`
            The packet (any length).
        granule: :class:`int`
            The granule position at the end of this packet (for Opus: samples at 48 kHz from
            the start of the stream, pre-skip included).
        """
        if self._eos_done:
            raise ValueError("the stream has ended (EOS page written)")
        self._pending.append(_Pending(bytes(packet), granule))
        self._pending_segments += _lacing_count(len(packet))
        self._pending_packets += 1

    def add_repeated(self, packet: bytes, count: int, granule: int, step: int) -> None:
        """Queue ``count`` copies of a short packet (hours of silence without a Python object each).

        Parameters
        ----------
        packet: :class:`bytes`
            The packet, shorter than 255 * 255 bytes.
        count: :class:`int`
            How many times.
        granule: :class:`int`
            The granule position at the end of the first copy.
        step: :class:`int`
            The granule increase per copy (the packet's duration).
        """
        if self._eos_done:
            raise ValueError("the stream has ended (EOS page written)")
        if _lacing_count(len(packet)) > _MAX_SEGMENTS:
            raise ValueError("repeated packets must fit on one page")
        if count <= 0:
            return
        self._pending.append(_Pending(bytes(packet), granule, count=count, step=step))
        self._pending_segments += _lacing_count(len(packet)) * count
        self._pending_packets += count

    def pages(self, *, flush: bool = False, keep: int = 0, eos: bool = False, eos_granule: int | None = None) -> bytes:
        """Return the bytes of the pages that are ready.

        Parameters
        ----------
        flush: :class:`bool`
            Put every queued packet (but the last ``keep``) on pages now, even on a page that
            is not full.
        keep: :class:`int`
            With ``flush``, how many of the newest packets stay queued (so that a later
            end-of-stream page still has a packet to carry an end-trimming granule).
        eos: :class:`bool`
            Flush everything and mark the last page end-of-stream.
        eos_granule: Optional[:class:`int`]
            The granule of the end-of-stream page when it trims samples off the end of the
            last packets (RFC 7845 section 4.5). It is kept between the previous page's
            granule and the last packet's end: trimming never reaches into an earlier page.
        """
        if self._eos_done:
            return b""
        if eos:
            flush, keep = True, 0
        pages: list[bytes] = []
        # Full pages first, whatever ``flush`` says: a page never holds more than 255 segments.
        while self._pending_segments > _MAX_SEGMENTS:
            pages.append(self._page(limit=None))
        if flush:
            flushable = self._pending_packets - keep
            while flushable > 0:
                before = self._pending_packets
                pages.append(self._page(limit=flushable))
                flushable -= before - self._pending_packets
        if eos:
            self._eos_done = True
            if pages:
                # the EOS flag (and the trimming granule) go on the last page just built
                last = parse_pages(pages[-1])[0]
                granule = last.granule
                if eos_granule is not None:  # trim within this page's packets only
                    granule = min(max(eos_granule, self._granule_before), last.granule)
                pages[-1] = _encode_page(
                    last.flags | FLAG_EOS, granule, self.serial, last.sequence, last.segments, last.body
                )
                self._last_granule = granule
            else:
                # nothing left to put on a page: an empty page (no segments) ends the stream
                flags = FLAG_EOS | (0 if self._bos_done else FLAG_BOS)
                self._bos_done = True
                pages.append(_encode_page(flags, self._last_granule, self.serial, self.sequence, [], b""))
                self.sequence += 1
        return b"".join(pages)

    def _page(self, limit: int | None) -> bytes:
        segments: list[int] = []
        body = bytearray()
        flags = 0
        if not self._bos_done:
            flags |= FLAG_BOS
            self._bos_done = True
        if self._pending and self._pending[0].offset:
            flags |= FLAG_CONTINUED
        granule = NO_GRANULE
        taken = 0
        while self._pending and len(segments) < _MAX_SEGMENTS and (limit is None or taken < limit):
            pkt = self._pending[0]
            remaining = len(pkt.data) - pkt.offset
            room = _MAX_SEGMENTS - len(segments)
            need = _lacing_count(remaining)
            if pkt.count > 1:
                # a run: as many copies as fit (and as the limit allows) in one go
                k = min(pkt.count, room // need, pkt.count if limit is None else limit - taken)
                if k == 0:
                    break  # the next copy goes on the next page
                segments.extend(_lacing(remaining) * k)
                body += pkt.data * k
                granule = pkt.granule + (k - 1) * pkt.step
                pkt.granule += k * pkt.step
                pkt.count -= k
                self._pending_segments -= need * k
                self._pending_packets -= k
                taken += k
                if pkt.count == 0:
                    self._pending.popleft()
            elif need <= room:
                segments.extend(_lacing(remaining))
                body += pkt.data[pkt.offset :] if pkt.offset else pkt.data
                granule = pkt.granule
                self._pending.popleft()
                self._pending_segments -= need
                self._pending_packets -= 1
                taken += 1
            else:
                # the packet continues on the next page: fill this one with 255-byte segments
                chunk = room * 255
                segments.extend([255] * room)
                body += pkt.data[pkt.offset : pkt.offset + chunk]
                pkt.offset += chunk
                self._pending_segments -= room
        page = _encode_page(flags, granule, self.serial, self.sequence, segments, bytes(body))
        self.sequence += 1
        if granule != NO_GRANULE:
            self._granule_before = self._last_granule
            self._last_granule = granule
        return page


def _lacing_count(length: int) -> int:
    return length // 255 + 1


def _lacing(length: int) -> list[int]:
    return [255] * (length // 255) + [length % 255]


def _encode_page(flags: int, granule: int, serial: int, sequence: int, segments: list[int], body: bytes) -> bytes:
    header = bytearray(_HEADER.pack(_CAPTURE, 0, flags, granule, serial, sequence, 0, len(segments)))
    header += bytes(segments)
    crc = crc32(body, crc32(header))
    struct.pack_into("<I", header, 22, crc)
    return bytes(header) + body


# --- Ogg Opus headers (RFC 7845 section 5) ---------------------------------------------


def opus_head(*, channels: int = 2, pre_skip: int = 0, input_sample_rate: int = 48000, output_gain: int = 0) -> bytes:
    """Build an OpusHead identification header (channel mapping family 0).

    Parameters
    ----------
    channels: :class:`int`
        1 or 2 (family 0 allows no more).
    pre_skip: :class:`int`
        Samples (at 48 kHz) a player discards from the start of the decoded stream.
    input_sample_rate: :class:`int`
        The original sample rate, informational only.
    output_gain: :class:`int`
        Gain in Q7.8 dB a player applies.
    """
    if channels not in (1, 2):
        raise ValueError("channel mapping family 0 allows 1 or 2 channels")
    if not 0 <= pre_skip <= 0xFFFF:
        raise ValueError("pre_skip must fit in 16 bits")
    return struct.pack("<8sBBHIhB", b"OpusHead", 1, channels, pre_skip, input_sample_rate, output_gain, 0)


_Comments = Mapping[str, str] | Iterable[tuple[str, str]]


def opus_tags(vendor: str, comments: _Comments | None = None) -> bytes:
    """Build an OpusTags comment header.

    Parameters
    ----------
    vendor: :class:`str`
        The vendor string (who wrote the stream).
    comments: Union[Mapping[:class:`str`, :class:`str`], Iterable[Tuple[:class:`str`, :class:`str`]]]
        ``KEY=value`` user comments (keys are ASCII without ``=``; values UTF-8).
    """
    items = list(comments.items()) if isinstance(comments, Mapping) else list(comments or ())
    vendor_b = vendor.encode()
    out = bytearray(b"OpusTags" + struct.pack("<I", len(vendor_b)) + vendor_b + struct.pack("<I", len(items)))
    for key, value in items:
        if not key or "=" in key or not all(0x20 <= ord(c) <= 0x7D for c in key):
            raise ValueError(f"invalid comment key {key!r} (printable ASCII without '=')")
        entry = f"{key}={value}".encode()
        out += struct.pack("<I", len(entry)) + entry
    return bytes(out)
