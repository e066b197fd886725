"""FLAC bitstream pieces, as pure functions: CRC-8/CRC-16 tables, frame numbers, silent frames.

:class:`~.flac.FLACAudioFile` inserts hand-made silent frames between the encoder's frames and
gives the encoder's later frames new numbers; both need FLAC's frame header coding and its two
checksums (CRC-8 over the header, CRC-16 over the frame), which this module computes without
any file or encoder.
"""

from __future__ import annotations

from typing import ClassVar, Final

from ..opus import CHANNELS

__all__ = (
    "CRC8_TABLE",
    "CRC16_TABLE",
    "FlacSilence",
    "coded_number",
    "crc8",
    "crc16",
    "crc16_skip",
    "renumber",
    "silent_frame",
)


def _crc_table(poly: int, width: int) -> tuple[int, ...]:
    top, mask = 1 << (width - 1), (1 << width) - 1
    table = []
    for i in range(256):
        c = i << (width - 8)
        for _ in range(8):
            c = ((c << 1) ^ poly) & mask if c & top else (c << 1) & mask
        table.append(c)
    return tuple(table)


CRC8_TABLE: Final = _crc_table(0x07, 8)
CRC16_TABLE: Final = _crc_table(0x8005, 16)


def crc8(data: bytes) -> int:
    """FLAC's frame header CRC-8 (polynomial 0x07, initial value 0)."""
    crc = 0
    for byte in data:
        crc = CRC8_TABLE[crc ^ byte]
    return crc


def crc16(data: bytes) -> int:
    """FLAC's frame CRC-16 (polynomial 0x8005, initial value 0)."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ CRC16_TABLE[(crc >> 8) ^ byte]
    return crc


def _gf2_mulmod(a: int, b: int, poly: int = 0x18005) -> int:
    # carry-less multiply of two 16-bit polynomials, reduced modulo the CRC polynomial
    result = 0
    while b:
        if b & 1:
            result ^= a
        a <<= 1
        if a & 0x10000:
            a ^= poly
        b >>= 1
    return result


def _zero_byte_powers() -> tuple[int, ...]:
    # x^(8 * 2^k) mod P: advancing a CRC-16 register over 2^k zero bytes multiplies it by this
    powers = [1 << 8]
    for _ in range(24):
        powers.append(_gf2_mulmod(powers[-1], powers[-1]))
    return tuple(powers)


_ZERO_BYTE_POWERS: Final = _zero_byte_powers()


def crc16_skip(crc: int, nbytes: int) -> int:
    """The CRC-16 register after ``nbytes`` more zero bytes (linear in the register)."""
    k = 0
    while nbytes:
        if nbytes & 1:
            crc = _gf2_mulmod(crc, _ZERO_BYTE_POWERS[k])
        nbytes >>= 1
        k += 1
    return crc


def coded_number(number: int) -> bytes:
    """A frame number as FLAC codes it in a frame header: like UTF-8, extended to 36 bits."""
    if number < 0x80:
        return bytes([number])
    limits = (0x800, 0x10000, 0x200000, 0x4000000, 0x80000000, 1 << 36)  # for 2 .. 7 bytes
    length = next((n for n, limit in enumerate(limits, 2) if number < limit), 0)
    if not length:
        raise ValueError("FLAC frame number out of range")
    tail = []
    for _ in range(length - 1):
        tail.append(0x80 | (number & 0x3F))
        number >>= 6
    return bytes([((0xFF00 >> length) & 0xFF) | number, *reversed(tail)])


def _coded_number_length(first: int) -> int:
    if first < 0x80:
        return 1
    n = 0
    while first & (0x80 >> n):
        n += 1
    return n


def _header_length(frame: bytes) -> int:
    """Offset of the CRC-8 byte that ends a FLAC frame header."""
    blocksize_code, rate_code = frame[2] >> 4, frame[2] & 0x0F
    end = 4 + _coded_number_length(frame[4])
    end += {6: 1, 7: 2}.get(blocksize_code, 0)
    end += {12: 1, 13: 2, 14: 2}.get(rate_code, 0)
    return end


def renumber(frame: bytes, number: int) -> bytes:
    """Give a fixed-blocksize FLAC frame another frame number (header CRC-8 and CRC-16 fixed).

    The CRC-16 covers the whole frame; instead of recomputing it over kilobytes in Python,
    CRC linearity gives the new one from the old: crc(H'||B) = crc(H||B) ^ skip(crc(H) ^
    crc(H'), len(B)), where skip advances a register over len(B) zero bytes.
    """
    header_end = _header_length(frame)
    old_header = frame[: header_end + 1]
    new_header = frame[:4] + coded_number(number) + frame[4 + _coded_number_length(frame[4]) : header_end]
    new_header += bytes([crc8(new_header)])
    body = frame[header_end + 1 : -2]
    old_crc = int.from_bytes(frame[-2:], "big")
    new_crc = old_crc ^ crc16_skip(crc16(old_header) ^ crc16(new_header), len(body))
    return new_header + body + new_crc.to_bytes(2, "big")


_BLOCKSIZE_CODES: Final = {
    192: 1,
    576: 2,
    1152: 3,
    2304: 4,
    4608: 5,
    256: 8,
    512: 9,
    1024: 10,
    2048: 11,
    4096: 12,
    8192: 13,
    16384: 14,
    32768: 15,
}


class FlacSilence:
    """Makes FLAC frames of ``blocksize`` samples of digital silence (two CONSTANT subframes of 0).

    Frames differ only in their number, so the CRC registers after the fixed first bytes are
    computed once, and the CRC-16 over the fixed tail (six zero bytes) is two table lookups:
    a couple of microseconds a frame, because an hour of silence is 37500 of them.
    """

    __slots__ = ("_crc8", "_crc16", "_extra", "_prefix", "_skip_hi", "_skip_lo")

    _TAIL: ClassVar[bytes] = b"\x00\x00\x00" * CHANNELS  # per channel: CONSTANT subframe header, 16-bit 0

    def __init__(self, blocksize: int) -> None:
        code = _BLOCKSIZE_CODES.get(blocksize)
        self._extra = b""
        if code is None:
            code, self._extra = 7, (blocksize - 1).to_bytes(2, "big")
        # sync + fixed blocksize; blocksize code | 48 kHz; left/right independent | 16 bits
        self._prefix = bytes([0xFF, 0xF8, (code << 4) | 0x0A, 0x18])
        self._crc8 = crc8(self._prefix)
        self._crc16 = crc16(self._prefix)
        tail = len(self._TAIL)
        self._skip_hi = tuple(crc16_skip(b << 8, tail) for b in range(256))
        self._skip_lo = tuple(crc16_skip(b, tail) for b in range(256))

    def frames(self, first: int, count: int) -> bytes:
        """``count`` consecutive silent frames from number ``first``, concatenated.

        Vectorized with numpy over the frames: the CRC tables are applied column by column
        to all frames whose numbers have the same coded length at once.
        """
        import numpy as np

        t8 = np.asarray(CRC8_TABLE, dtype=np.uint16)
        t16 = np.asarray(CRC16_TABLE, dtype=np.uint16)
        skip_hi = np.asarray(self._skip_hi, dtype=np.uint16)
        skip_lo = np.asarray(self._skip_lo, dtype=np.uint16)
        parts = []
        number, end = first, first + count
        while number < end:
            length = len(coded_number(number))
            limit = (0x80, 0x800, 0x10000, 0x200000, 0x4000000, 0x80000000, 1 << 36)[length - 1]
            stop = min(end, limit)
            n = np.arange(number, stop, dtype=np.int64)
            coded = np.empty((len(n), length), dtype=np.uint16)
            if length == 1:
                coded[:, 0] = n
            else:
                for i in range(length - 1):  # continuation bytes, last first
                    coded[:, length - 1 - i] = 0x80 | ((n >> (6 * i)) & 0x3F)
                coded[:, 0] = ((0xFF00 >> length) & 0xFF) | (n >> (6 * (length - 1)))
            varying = np.concatenate([coded, np.tile(np.frombuffer(self._extra, np.uint8), (len(n), 1))], axis=1)
            c8 = np.full(len(n), self._crc8, dtype=np.uint16)
            c16 = np.full(len(n), self._crc16, dtype=np.uint16)
            for column in varying.T:
                c8 = t8[c8 ^ column]
                c16 = ((c16 << 8) & 0xFFFF) ^ t16[(c16 >> 8) ^ column]
            c16 = ((c16 << 8) & 0xFFFF) ^ t16[(c16 >> 8) ^ c8]
            c16 = skip_hi[c16 >> 8] ^ skip_lo[c16 & 0xFF]
            rows = np.concatenate(
                [
                    np.tile(np.frombuffer(self._prefix, np.uint8), (len(n), 1)),
                    varying,
                    c8[:, None],
                    np.zeros((len(n), len(self._TAIL)), dtype=np.uint16),
                    (c16 >> 8)[:, None],
                    (c16 & 0xFF)[:, None],
                ],
                axis=1,
            ).astype(np.uint8)
            parts.append(rows.tobytes())
            number = stop
        return b"".join(parts)

    def frame(self, number: int) -> bytes:
        """The silent frame with frame number ``number``."""
        varying = coded_number(number) + self._extra
        c8, c16 = self._crc8, self._crc16
        for byte in varying:
            c8 = CRC8_TABLE[c8 ^ byte]
            c16 = ((c16 << 8) & 0xFFFF) ^ CRC16_TABLE[(c16 >> 8) ^ byte]
        c16 = ((c16 << 8) & 0xFFFF) ^ CRC16_TABLE[(c16 >> 8) ^ c8]
        c16 = self._skip_hi[c16 >> 8] ^ self._skip_lo[c16 & 0xFF]
        return self._prefix + varying + bytes((c8,)) + self._TAIL + c16.to_bytes(2, "big")


def silent_frame(number: int, blocksize: int) -> bytes:
    """A FLAC frame of ``blocksize`` samples of digital silence, built the plain way (for tests)."""
    silence = FlacSilence(blocksize)
    header = silence._prefix + coded_number(number) + silence._extra
    header += bytes([crc8(header)])
    frame = header + FlacSilence._TAIL
    return frame + crc16(frame).to_bytes(2, "big")
