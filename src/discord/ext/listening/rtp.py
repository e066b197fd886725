"""RTP and RTCP wire formats, sans-I/O: parse and build headers, extensions, padding, reports.

Only byte layout lives here. Encryption is :mod:`.transport`, DAVE is :mod:`.dave`.
Layouts follow RFC 3550 (RTP/RTCP), RFC 8285 (one-byte header extensions) and what Discord
sends (docs/architecture.md, "Protocol facts"): payload type 120 is Opus, audio carries a
``0xBEDE`` extension whose body is encrypted together with the payload in the ``*_rtpsize``
modes.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Final, NamedTuple

__all__ = (
    "OPUS_PAYLOAD_TYPE",
    "ApplicationDefined",
    "Feedback",
    "Goodbye",
    "MalformedPacket",
    "RTCPMessageType",
    "RTCPPacket",
    "RTPHeader",
    "ReceiverReport",
    "ReportBlock",
    "SenderReport",
    "SourceDescription",
    "SourceDescriptionChunk",
    "UnknownRTCP",
    "audio_level_extension",
    "build_goodbye",
    "build_receiver_report",
    "build_rtp_header",
    "build_sender_report",
    "is_rtcp",
    "ntp_to_unix",
    "parse_audio_level",
    "parse_rtcp",
    "parse_rtp_header",
    "split_plaintext",
    "unix_to_ntp",
)

OPUS_PAYLOAD_TYPE: Final = 120
RTP_VERSION: Final = 2
ONE_BYTE_EXTENSION_PROFILE: Final = 0xBEDE
AUDIO_LEVEL_EXTENSION_ID: Final = 1
_NTP_EPOCH_OFFSET: Final = 2208988800  # seconds from 1900-01-01 to 1970-01-01

_HEADER = struct.Struct(">BBHII")
_EXT_PREAMBLE = struct.Struct(">HH")


class MalformedPacket(ValueError):
    """The bytes are not a well-formed RTP or RTCP packet (the reason says which rule broke)."""


class RTPHeader(NamedTuple):
    """The clear-text part of an RTP packet as Discord sends it.

    ``aad_length`` is the number of leading bytes that are authenticated but not encrypted in
    the ``*_rtpsize`` modes: fixed header, CSRCs and (if present) the 4-byte extension
    preamble. ``extension_length`` is the size in bytes of the (encrypted) extension body.
    """

    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    has_padding: bool
    csrc_count: int
    extension_profile: int | None
    extension_length: int
    aad_length: int


def parse_rtp_header(data: bytes) -> RTPHeader:
    """Parse the unencrypted RTP header of a received packet.

    Raises
    ------
    MalformedPacket
        Too short, wrong version, or the CSRC list / extension preamble runs past the end.
    """
    if len(data) < 12:
        raise MalformedPacket(f"RTP packet of {len(data)} bytes is shorter than the 12-byte header")
    b0, b1, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    if b0 >> 6 != RTP_VERSION:
        raise MalformedPacket(f"RTP version {b0 >> 6}, expected 2")
    cc = b0 & 0x0F
    offset = 12 + 4 * cc
    profile: int | None = None
    ext_len = 0
    if b0 & 0x10:
        if len(data) < offset + 4:
            raise MalformedPacket("RTP extension preamble runs past the end of the packet")
        profile, words = _EXT_PREAMBLE.unpack_from(data, offset)
        offset += 4
        ext_len = 4 * words
    elif len(data) < offset:
        raise MalformedPacket("RTP CSRC list runs past the end of the packet")
    return RTPHeader(
        bool(b1 & 0x80), b1 & 0x7F, sequence, timestamp, ssrc, bool(b0 & 0x20), cc, profile, ext_len, offset
    )


def build_rtp_header(
    sequence: int,
    timestamp: int,
    ssrc: int,
    *,
    payload_type: int = OPUS_PAYLOAD_TYPE,
    marker: bool = False,
    padding: bool = False,
    extension_length: int | None = None,
) -> bytes:
    """Build the clear-text RTP header (the AAD of the ``*_rtpsize`` modes).

    ``extension_length`` is the byte length of the extension body that will follow (inside
    the encrypted part); when given, the X bit and a ``0xBEDE`` preamble are added.
    """
    if not 0 <= sequence <= 0xFFFF:
        raise ValueError(f"sequence must fit 16 bits, got {sequence!r}")
    if not 0 <= timestamp <= 0xFFFFFFFF:
        raise ValueError(f"timestamp must fit 32 bits, got {timestamp!r}")
    if not 0 <= ssrc <= 0xFFFFFFFF:
        raise ValueError(f"ssrc must fit 32 bits, got {ssrc!r}")
    if not 0 <= payload_type <= 127:
        raise ValueError(f"payload_type must fit 7 bits, got {payload_type!r}")
    b0 = 0x80 | (0x20 if padding else 0)
    ext = b""
    if extension_length is not None:
        if extension_length % 4 or not 0 <= extension_length <= 4 * 0xFFFF:
            raise ValueError(f"extension_length must be a multiple of 4 up to 262140, got {extension_length!r}")
        b0 |= 0x10
        ext = _EXT_PREAMBLE.pack(ONE_BYTE_EXTENSION_PROFILE, extension_length // 4)
    return _HEADER.pack(b0, (0x80 if marker else 0) | payload_type, sequence, timestamp, ssrc) + ext


def split_plaintext(plaintext: bytes, header: RTPHeader) -> tuple[bytes, bytes]:
    """Split a decrypted ``*_rtpsize`` body into (extension body, payload), removing padding.

    Raises
    ------
    MalformedPacket
        The extension or the padding count claims more bytes than there are.
    """
    ext_len = header.extension_length
    end = len(plaintext)
    if header.has_padding:
        if not end:
            raise MalformedPacket("RTP padding bit set on an empty payload")
        pad = plaintext[-1]
        if pad == 0 or pad > end - ext_len:
            raise MalformedPacket(f"RTP padding count {pad} does not fit a {end - ext_len}-byte payload")
        end -= pad
    if ext_len > end:
        raise MalformedPacket(f"RTP extension of {ext_len} bytes is longer than the decrypted body ({end})")
    return plaintext[:ext_len], plaintext[ext_len:end]


def audio_level_extension(level: int, *, voice: bool = True) -> bytes:
    """Build a one-byte-header extension body with an RFC 6464 audio-level element.

    ``level`` is the level in -dBov (0 loudest, 127 silence).
    """
    if not 0 <= level <= 127:
        raise ValueError(f"audio level must be 0..127 -dBov, got {level!r}")
    # element header: id in the high nibble, length-1 in the low nibble; then zero padding to 4
    return bytes((AUDIO_LEVEL_EXTENSION_ID << 4, (0x80 if voice else 0) | level, 0, 0))


def parse_audio_level(extension_body: bytes, end: int | None = None) -> int | None:
    """Return the RFC 6464 audio level (-dBov) from a one-byte extension body, if present.

    ``end``: the body is ``extension_body[:end]`` (a decrypted payload whose extension body
    comes first can be read in place, without a copy).
    """
    i, n = 0, len(extension_body) if end is None else min(end, len(extension_body))
    while i < n:
        b = extension_body[i]
        if b == 0:  # padding byte between elements
            i += 1
            continue
        ident, length = b >> 4, (b & 0x0F) + 1
        if ident == 15:  # reserved: stop parsing, per RFC 8285
            return None
        if ident == AUDIO_LEVEL_EXTENSION_ID and i + 1 < n:
            return extension_body[i + 1] & 0x7F
        i += 1 + length
    return None


def is_rtcp(data: bytes) -> bool:
    """Whether a datagram is RTCP (packet type byte 200..206) rather than RTP.

    205 and 206 are RTCP feedback (RFC 4585), which Discord's SFU sends as well as reports.
    """
    return len(data) >= 2 and 200 <= data[1] <= 206


# -- RTCP --------------------------------------------------------------------------------


class RTCPMessageType(enum.IntEnum):
    """RTCP packet types (RFC 3550 section 12.1)."""

    sender_report = 200
    receiver_report = 201
    source_description = 202
    goodbye = 203
    application_defined = 204
    #: RTPFB (RFC 4585): transport-layer feedback, e.g. NACK (FMT 1), transport-wide CC (FMT 15).
    transport_feedback = 205
    #: PSFB (RFC 4585): payload-specific feedback, e.g. PLI (FMT 1), REMB (FMT 15).
    payload_feedback = 206


@dataclass(slots=True)
class ReportBlock:
    """One reception report block: how a receiver hears the source ``ssrc``."""

    ssrc: int
    fraction_lost: int
    cumulative_lost: int
    highest_sequence: int
    jitter: int
    last_sender_report: int
    delay_since_last_sender_report: int

    _STRUCT = struct.Struct(">IB3sIIII")

    @classmethod
    def _parse(cls, data: bytes, offset: int) -> ReportBlock:
        ssrc, fraction, lost, highest, jitter, lsr, dlsr = cls._STRUCT.unpack_from(data, offset)
        cumulative = int.from_bytes(lost, "big", signed=True)
        return cls(ssrc, fraction, cumulative, highest, jitter, lsr, dlsr)

    def _build(self) -> bytes:
        lost = self.cumulative_lost.to_bytes(3, "big", signed=True)
        return self._STRUCT.pack(
            self.ssrc,
            self.fraction_lost,
            lost,
            self.highest_sequence,
            self.jitter,
            self.last_sender_report,
            self.delay_since_last_sender_report,
        )


@dataclass(slots=True)
class RTCPPacket:
    """Base of all RTCP packets; ``type`` tells which one (a plain int for unknown types)."""

    type: RTCPMessageType | int


@dataclass(slots=True)
class SenderReport(RTCPPacket):
    """RTCP SR: maps the sender's RTP clock to wall-clock (NTP) time."""

    ssrc: int
    ntp_timestamp: int  # 64-bit NTP: seconds since 1900 << 32 | fraction
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: list[ReportBlock] = field(default_factory=list)
    extension: bytes = b""

    @property
    def wall_time(self) -> float:
        """The NTP timestamp as Unix time in seconds."""
        return ntp_to_unix(self.ntp_timestamp)


@dataclass(slots=True)
class ReceiverReport(RTCPPacket):
    """RTCP RR: reception statistics from ``ssrc``."""

    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)
    extension: bytes = b""


@dataclass(slots=True)
class SourceDescriptionChunk:
    """The SDES items (type -> value) describing one source."""

    ssrc: int
    items: dict[int, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class SourceDescription(RTCPPacket):
    """RTCP SDES: names (CNAME...) of sources."""

    chunks: list[SourceDescriptionChunk] = field(default_factory=list)


@dataclass(slots=True)
class Goodbye(RTCPPacket):
    """RTCP BYE: the listed sources left."""

    ssrcs: list[int] = field(default_factory=list)
    reason: bytes = b""


@dataclass(slots=True)
class ApplicationDefined(RTCPPacket):
    """RTCP APP: application-defined data."""

    subtype: int
    ssrc: int
    name: bytes
    data: bytes


@dataclass(slots=True)
class Feedback(RTCPPacket):
    """RTCP feedback (RFC 4585): ``type`` is 205 (transport) or 206 (payload-specific).

    ``fmt`` says which message it is (the 5-bit count field of the header); ``fci`` is the
    feedback control information, uninterpreted.
    """

    fmt: int
    sender_ssrc: int
    media_ssrc: int
    fci: bytes = b""


@dataclass(slots=True)
class UnknownRTCP(RTCPPacket):
    """An RTCP packet type this module does not interpret (kept raw)."""

    raw: bytes


def _check(cond: bool, why: str) -> None:
    if not cond:
        raise MalformedPacket(why)


def parse_rtcp(data: bytes) -> list[RTCPPacket]:
    """Parse a (compound) clear-text RTCP packet into its parts.

    Every length field is checked against the bytes that are really there: a packet that lies
    about its length raises instead of reading past its end.

    Raises
    ------
    MalformedPacket
        A header or length field is inconsistent with the data.
    """
    packets: list[RTCPPacket] = []
    offset, total = 0, len(data)
    while offset < total:
        _check(total - offset >= 4, "RTCP header truncated")
        b0, pt, words = struct.unpack_from(">BBH", data, offset)
        _check(b0 >> 6 == RTP_VERSION, f"RTCP version {b0 >> 6}, expected 2")
        end = offset + 4 * (words + 1)
        _check(end <= total, f"RTCP length field claims {4 * (words + 1)} bytes, {total - offset} remain")
        body_end = end
        if b0 & 0x20:  # padding: last byte counts the padding bytes
            pad = data[end - 1]
            _check(0 < pad <= end - offset - 4, "RTCP padding count out of range")
            body_end -= pad
        count = b0 & 0x1F
        packets.append(_parse_one(pt, count, data, offset + 4, body_end))
        offset = end
    return packets


def _parse_blocks(data: bytes, offset: int, end: int, count: int) -> tuple[list[ReportBlock], int]:
    _check(offset + 24 * count <= end, f"{count} RTCP report blocks do not fit the packet")
    blocks = [ReportBlock._parse(data, offset + 24 * i) for i in range(count)]
    return blocks, offset + 24 * count


def _parse_one(pt: int, count: int, data: bytes, offset: int, end: int) -> RTCPPacket:
    if pt == RTCPMessageType.sender_report:
        _check(end - offset >= 24, "RTCP sender report truncated")
        ssrc, ntp, rtp, packets, octets = struct.unpack_from(">IQIII", data, offset)
        blocks, pos = _parse_blocks(data, offset + 24, end, count)
        return SenderReport(RTCPMessageType.sender_report, ssrc, ntp, rtp, packets, octets, blocks, data[pos:end])
    if pt == RTCPMessageType.receiver_report:
        _check(end - offset >= 4, "RTCP receiver report truncated")
        (ssrc,) = struct.unpack_from(">I", data, offset)
        blocks, pos = _parse_blocks(data, offset + 4, end, count)
        return ReceiverReport(RTCPMessageType.receiver_report, ssrc, blocks, data[pos:end])
    if pt == RTCPMessageType.source_description:
        chunks: list[SourceDescriptionChunk] = []
        pos = offset
        for _ in range(count):
            _check(pos + 4 <= end, "RTCP SDES chunk truncated")
            chunk = SourceDescriptionChunk(struct.unpack_from(">I", data, pos)[0])
            pos += 4
            while True:
                _check(pos < end, "RTCP SDES items run past the packet")
                item = data[pos]
                if item == 0:  # end of list, then pad to a 32-bit boundary
                    pos = (pos + 4) & ~3
                    break
                _check(pos + 2 <= end and pos + 2 + data[pos + 1] <= end, "RTCP SDES item runs past the packet")
                length = data[pos + 1]
                chunk.items[item] = bytes(data[pos + 2 : pos + 2 + length])
                pos += 2 + length
            chunks.append(chunk)
        return SourceDescription(RTCPMessageType.source_description, chunks)
    if pt == RTCPMessageType.goodbye:
        _check(offset + 4 * count <= end, "RTCP BYE source list runs past the packet")
        ssrcs = list(struct.unpack_from(f">{count}I", data, offset))
        pos = offset + 4 * count
        reason = b""
        if pos < end:
            length = data[pos]
            _check(pos + 1 + length <= end, "RTCP BYE reason runs past the packet")
            reason = bytes(data[pos + 1 : pos + 1 + length])
        return Goodbye(RTCPMessageType.goodbye, ssrcs, reason)
    if pt == RTCPMessageType.application_defined:
        _check(end - offset >= 8, "RTCP APP packet truncated")
        (ssrc,) = struct.unpack_from(">I", data, offset)
        return ApplicationDefined(
            RTCPMessageType.application_defined,
            count,
            ssrc,
            bytes(data[offset + 4 : offset + 8]),
            bytes(data[offset + 8 : end]),
        )
    if pt == RTCPMessageType.transport_feedback or pt == RTCPMessageType.payload_feedback:
        _check(end - offset >= 8, "RTCP feedback packet truncated")
        sender, media = struct.unpack_from(">II", data, offset)
        return Feedback(RTCPMessageType(pt), count, sender, media, bytes(data[offset + 8 : end]))
    # Extended reports and anything newer appear in compound packets; keep them whole.
    return UnknownRTCP(pt, bytes(data[offset - 4 : end]))


def _rtcp_header(pt: int, count: int, body_len: int) -> bytes:
    return struct.pack(">BBH", 0x80 | count, pt, (body_len + 4) // 4 - 1)


def build_sender_report(
    ssrc: int,
    ntp_timestamp: int,
    rtp_timestamp: int,
    packet_count: int,
    octet_count: int,
    reports: list[ReportBlock] | tuple[ReportBlock, ...] = (),
) -> bytes:
    """Build a clear-text RTCP sender report."""
    if len(reports) > 31:
        raise ValueError("an RTCP report carries at most 31 report blocks")
    body = struct.pack(
        ">IQIII",
        ssrc,
        ntp_timestamp & 0xFFFFFFFFFFFFFFFF,
        rtp_timestamp & 0xFFFFFFFF,
        packet_count & 0xFFFFFFFF,
        octet_count & 0xFFFFFFFF,
    ) + b"".join(r._build() for r in reports)
    return _rtcp_header(RTCPMessageType.sender_report, len(reports), len(body)) + body


def build_receiver_report(ssrc: int, reports: list[ReportBlock] | tuple[ReportBlock, ...] = ()) -> bytes:
    """Build a clear-text RTCP receiver report."""
    if len(reports) > 31:
        raise ValueError("an RTCP report carries at most 31 report blocks")
    body = struct.pack(">I", ssrc) + b"".join(r._build() for r in reports)
    return _rtcp_header(RTCPMessageType.receiver_report, len(reports), len(body)) + body


def build_goodbye(ssrcs: list[int] | tuple[int, ...], reason: bytes = b"") -> bytes:
    """Build a clear-text RTCP BYE."""
    if not 0 < len(ssrcs) <= 31:
        raise ValueError("an RTCP BYE names 1..31 sources")
    if len(reason) > 255:
        raise ValueError("an RTCP BYE reason is at most 255 bytes")
    body = struct.pack(f">{len(ssrcs)}I", *ssrcs)
    if reason:
        body += bytes((len(reason),)) + reason
        body += b"\x00" * (-len(body) % 4)
    return _rtcp_header(RTCPMessageType.goodbye, len(ssrcs), len(body)) + body


def unix_to_ntp(t: float) -> int:
    """Unix time in seconds -> 64-bit NTP timestamp."""
    seconds = int(t)
    return ((seconds + _NTP_EPOCH_OFFSET) << 32) | int((t - seconds) * (1 << 32)) & 0xFFFFFFFF


def ntp_to_unix(ntp: int) -> float:
    """64-bit NTP timestamp -> Unix time in seconds."""
    return (ntp >> 32) - _NTP_EPOCH_OFFSET + (ntp & 0xFFFFFFFF) / (1 << 32)
