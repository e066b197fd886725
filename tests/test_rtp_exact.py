"""Byte-exact RTCP parsing and building, and the small sans-I/O helpers around the wire.

Every RTCP packet below is laid out by hand from RFC 3550 section 6 (SR, RR, SDES, BYE, APP)
and RFC 4585 section 6.1 (feedback), not produced by our builders; our builders' output is
compared with the same hand-laid bytes. Every length rule is tested at its edge: the packet
one byte too short is rejected with the exact reason, the packet of exactly the right size is
accepted. RTCP padding (the P bit, last byte = count of padding bytes, RFC 3550 6.4.1) is what
lets a test end a packet's body at any byte.
"""

from __future__ import annotations

import pytest

from discord.ext.listening.padding import PaddingRun
from discord.ext.listening.reorder import Released
from discord.ext.listening.rtp import (
    ApplicationDefined,
    Feedback,
    Goodbye,
    MalformedPacket,
    ReceiverReport,
    ReportBlock,
    RTCPMessageType,
    RTPHeader,
    SenderReport,
    SourceDescription,
    SourceDescriptionChunk,
    UnknownRTCP,
    audio_level_extension,
    build_goodbye,
    build_receiver_report,
    build_rtp_header,
    build_sender_report,
    is_rtcp,
    parse_audio_level,
    parse_rtcp,
    parse_rtp_header,
    split_plaintext,
    unix_to_ntp,
)
from discord.ext.listening.seqmath import seq_add, seq_diff, ts_add, ts_diff
from discord.ext.listening.ssrc import MAX_ENTRIES, SSRCMap
from discord.ext.listening.transport import (
    AES_GCM,
    XCHACHA20,
    AESGCMCipher,
    DecryptionFailed,
    XChaCha20Cipher,
    transport_cipher,
)
from discord.ext.listening.transport_keys import MAX_PARKED, TransportKeyRing


def h(text: str) -> bytes:
    """Bytes from hex written in the RFC's field order (spaces and newlines are ignored)."""
    return bytes.fromhex(text)


def rejects(data: bytes, reason: str) -> None:
    """``parse_rtcp`` rejects ``data`` with exactly this reason."""
    with pytest.raises(MalformedPacket) as info:
        parse_rtcp(data)
    assert str(info.value) == reason


# -- RTP fixed header (RFC 3550 5.1: V P X CC | M PT | sequence | timestamp | SSRC | CSRCs),
#    one-byte header extension preamble (RFC 8285: 0xBEDE, length in words) ----------------


def rtp_rejects(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket) as info:
        parse_rtp_header(data)
    assert str(info.value) == reason


def test_rtp_fixed_header_alone_parses_and_one_byte_less_is_rejected() -> None:
    header = h("80 78 0001 000003C0 00001234")  # V=2, PT 120, seq 1, ts 960
    assert parse_rtp_header(header) == RTPHeader(False, 120, 1, 960, 0x1234, False, 0, None, 0, 12)
    rtp_rejects(header[:11], "RTP packet of 11 bytes is shorter than the 12-byte header")
    rtp_rejects(h("40 78 0001 000003C0 00001234"), "RTP version 1, expected 2")
    rtp_rejects(h("C0 78 0001 000003C0 00001234"), "RTP version 3, expected 2")


def test_rtp_csrc_list_is_counted_and_must_be_there() -> None:
    # CC=1, no P, no X, M=0 with an odd payload type (121): no bit is read from its neighbour
    header = h("81 79 1234 89ABCDEF FEDCBA98 01020304")
    assert parse_rtp_header(header) == RTPHeader(False, 121, 0x1234, 0x89ABCDEF, 0xFEDCBA98, False, 1, None, 0, 16)
    rtp_rejects(header[:15], "RTP CSRC list runs past the end of the packet")


def test_rtp_extension_preamble_follows_the_csrcs() -> None:
    # P=1 X=1 CC=2, M=1 PT=120; 0xBEDE extension of 2 words (8 bytes, encrypted, not here)
    header = h("B2 F8 FFFF FFFFFFFF 00000001 0A0A0A0A 0B0B0B0B BEDE 0002")
    assert parse_rtp_header(header) == RTPHeader(True, 120, 0xFFFF, 0xFFFFFFFF, 1, True, 2, 0xBEDE, 8, 24)
    rtp_rejects(header[:23], "RTP extension preamble runs past the end of the packet")


def test_rtp_header_builder_lays_out_rfc_3550_bytes() -> None:
    assert build_rtp_header(0x1234, 0x89ABCDEF, 0xFEDCBA98) == h("80 78 1234 89ABCDEF FEDCBA98")
    assert build_rtp_header(0, 0, 0, payload_type=0, marker=True, padding=True, extension_length=8) == h(
        "B0 80 0000 00000000 00000000 BEDE 0002"
    )
    assert build_rtp_header(0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, payload_type=127, extension_length=0) == h(
        "90 7F FFFF FFFFFFFF FFFFFFFF BEDE 0000"
    )
    assert build_rtp_header(1, 2, 3, extension_length=4 * 0xFFFF)[12:] == h("BEDE FFFF")


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"sequence": -1}, "sequence must fit 16 bits, got -1"),
        ({"sequence": 0x10000}, "sequence must fit 16 bits, got 65536"),
        ({"timestamp": -1}, "timestamp must fit 32 bits, got -1"),
        ({"timestamp": 1 << 32}, "timestamp must fit 32 bits, got 4294967296"),
        ({"ssrc": -1}, "ssrc must fit 32 bits, got -1"),
        ({"ssrc": 1 << 32}, "ssrc must fit 32 bits, got 4294967296"),
        ({"payload_type": -1}, "payload_type must fit 7 bits, got -1"),
        ({"payload_type": 128}, "payload_type must fit 7 bits, got 128"),
        ({"extension_length": 6}, "extension_length must be a multiple of 4 up to 262140, got 6"),
        ({"extension_length": -4}, "extension_length must be a multiple of 4 up to 262140, got -4"),
        ({"extension_length": 4 * 0x10000}, "extension_length must be a multiple of 4 up to 262140, got 262144"),
    ],
)
def test_rtp_header_builder_rejects_values_that_do_not_fit_their_field(kwargs: dict[str, int], reason: str) -> None:
    args = {"sequence": 1, "timestamp": 2, "ssrc": 3} | kwargs
    with pytest.raises(ValueError) as info:
        build_rtp_header(args.pop("sequence"), args.pop("timestamp"), args.pop("ssrc"), **args)
    assert str(info.value) == reason


def test_audio_level_element_is_rfc_6464_bytes() -> None:
    assert audio_level_extension(5) == h("10 85 0000")  # ID 1, L=0; V=1, level 5; padding
    assert audio_level_extension(0, voice=False) == h("10 00 0000")
    assert audio_level_extension(127) == h("10 FF 0000")
    assert audio_level_extension(64) == h("10 C0 0000")  # the V bit is bit 7 alone
    for level in (-1, 128):
        with pytest.raises(ValueError) as info:
            audio_level_extension(level)
        assert str(info.value) == f"audio level must be 0..127 -dBov, got {level}"


def test_rtcp_is_told_from_rtp_by_the_packet_type_byte() -> None:
    assert not is_rtcp(b"") and not is_rtcp(b"\x80")
    assert [is_rtcp(bytes((0x80, pt))) for pt in (199, 200, 206, 207)] == [False, True, True, False]
    assert not is_rtcp(h("80 78 0001"))  # RTP, PT 120


def test_sequence_and_timestamp_arithmetic_wraps() -> None:
    assert seq_diff(1, 0xFFFF) == 2 and seq_diff(0xFFFF, 1) == -2 and seq_diff(7, 7) == 0
    assert seq_diff(0x8003, 3) == -0x8000  # half the range away counts as behind
    assert seq_add(0xFFFF, 2) == 1 and seq_add(0, -1) == 0xFFFF and seq_add(5, 3) == 8
    assert ts_diff(5, 0xFFFFFFFF) == 6 and ts_diff(0, 960) == -960
    assert ts_add(0xFFFFFFFF, 960) == 959 and ts_add(960, -960) == 0 and ts_add(1, 2) == 3


def test_split_plaintext_strips_extension_and_padding() -> None:
    padded = RTPHeader(False, 120, 1, 960, 1, True, 0, 0xBEDE, 4, 16)
    ext = h("10 85 0000")
    assert split_plaintext(ext + b"opus" + h("0000 03"), padded) == (ext, b"opus")
    # padding may take everything after the extension (a bandwidth probe), not one byte more
    assert split_plaintext(ext + h("0000 03"), padded) == (ext, b"")
    for body, reason in [
        (ext + h("000004"), "RTP padding count 4 does not fit a 3-byte payload"),
        (ext + b"opus" + h("00"), "RTP padding count 0 does not fit a 5-byte payload"),
        (b"", "RTP padding bit set on an empty payload"),
    ]:
        with pytest.raises(MalformedPacket) as info:
            split_plaintext(body, padded)
        assert str(info.value) == reason
    unpadded = padded._replace(has_padding=False, extension_length=8)
    assert split_plaintext(ext * 2, unpadded) == (ext * 2, b"")
    with pytest.raises(MalformedPacket) as info:
        split_plaintext(ext + b"opu", unpadded)
    assert str(info.value) == "RTP extension of 8 bytes is longer than the decrypted body (7)"


def test_audio_level_is_found_among_other_one_byte_elements() -> None:
    # RFC 8285 one-byte elements: ID 2 with 2 bytes, ID 3 with 3 bytes, a padding byte, then
    # the RFC 6464 audio level (ID 1, 1 byte: V=1, level 5 -dBov) as the very last byte
    body = h("21 AABB 32 112233 00 10 85")
    assert parse_audio_level(body) == 5
    # an element's data bytes that look like an element header are data
    assert parse_audio_level(h("21 1010 00 10 85 32 99")) == 5
    # ID 15 is reserved: parsing stops there (RFC 8285 4.2)
    assert parse_audio_level(h("F1 0000 10 85")) is None


def test_audio_level_reads_only_up_to_end() -> None:
    body = h("21 AABB 10 85 32 112233")
    assert parse_audio_level(body, end=5) == 5
    assert parse_audio_level(body, end=100) == 5
    assert parse_audio_level(body, end=4) is None  # the level byte itself is past the end
    assert parse_audio_level(body, end=3) is None


# -- report blocks (RFC 3550 6.4.1: SSRC, fraction lost, cumulative lost (signed 24 bit),
#    extended highest sequence number, jitter, LSR, DLSR) -----------------------------------

BLOCK_1_HEX = "11111111 40 FFFFFE 0001FFFF 00000100 A2B38000 00010000"
BLOCK_1 = ReportBlock(
    ssrc=0x11111111,
    fraction_lost=64,  # 64/256 = 25 %
    cumulative_lost=-2,  # 0xFFFFFE: more duplicates than losses
    highest_sequence=0x0001FFFF,  # one wrap (cycles = 1), sequence 65535
    jitter=256,
    last_sender_report=0xA2B38000,
    delay_since_last_sender_report=65536,  # one second in 1/65536 s
)
BLOCK_2_HEX = "22222222 00 000005 00001234 00000010 00000000 00000000"
BLOCK_2 = ReportBlock(0x22222222, 0, 5, 0x1234, 16, 0, 0)

SR_FIELDS_HEX = (
    "DEADBEEF"  # SSRC of sender
    "E8F1A2B380000000"  # NTP timestamp: seconds since 1900, fraction 0.5
    "01020304"  # RTP timestamp
    "00000123"  # sender's packet count (291)
    "00012345"  # sender's octet count (74565)
)
# V=2 P=0 RC=2, PT=200; 84 bytes = 21 words, and the length field counts words minus one: 20
SR_2_BLOCKS_WITH_EXTENSION = h("82 C8 0014" + SR_FIELDS_HEX + BLOCK_1_HEX + BLOCK_2_HEX + "50524F46 01020304")
# the same without the profile-specific extension: 76 bytes, length = 18
SR_2_BLOCKS = h("82 C8 0012" + SR_FIELDS_HEX + BLOCK_1_HEX + BLOCK_2_HEX)

# RR from an SSRC with the top bit set (unsigned!), two blocks, 4 bytes of extension: 60 bytes
RR_2_BLOCKS_WITH_EXTENSION = h("82 C9 000E 87654321" + BLOCK_1_HEX + BLOCK_2_HEX + "45585421")
RR_2_BLOCKS = h("82 C9 000D 87654321" + BLOCK_1_HEX + BLOCK_2_HEX)


def test_sender_report_fields_blocks_and_extension_parse_exactly() -> None:
    (sr,) = parse_rtcp(SR_2_BLOCKS_WITH_EXTENSION)
    assert sr == SenderReport(
        RTCPMessageType.sender_report,
        ssrc=0xDEADBEEF,
        ntp_timestamp=0xE8F1A2B380000000,
        rtp_timestamp=0x01020304,
        packet_count=291,
        octet_count=74565,
        reports=[BLOCK_1, BLOCK_2],
        extension=b"PROF\x01\x02\x03\x04",
    )
    assert isinstance(sr, SenderReport) and sr.type is RTCPMessageType.sender_report
    assert sr.wall_time == 3908149939 - 2208988800 + 0.5


def test_receiver_report_with_unsigned_ssrc_blocks_and_extension_parses_exactly() -> None:
    (rr,) = parse_rtcp(RR_2_BLOCKS_WITH_EXTENSION)
    assert rr == ReceiverReport(RTCPMessageType.receiver_report, 0x87654321, [BLOCK_1, BLOCK_2], b"EXT!")
    assert rr.type is RTCPMessageType.receiver_report


def test_builders_lay_out_reports_as_rfc_3550_says() -> None:
    assert (
        build_sender_report(0xDEADBEEF, 0xE8F1A2B380000000, 0x01020304, 291, 74565, [BLOCK_1, BLOCK_2]) == SR_2_BLOCKS
    )
    # the counters are 32-bit fields: larger values wrap instead of failing
    assert build_sender_report(1, 0, 0, (1 << 32) + 7, (1 << 32) + 9) == h(
        "80 C8 0006 00000001 00000000 00000000 00000000 00000007 00000009"
    )
    assert build_receiver_report(0x87654321, [BLOCK_1, BLOCK_2]) == RR_2_BLOCKS
    assert build_receiver_report(0x87654321) == h("80 C9 0001 87654321")


def test_a_report_carries_at_most_31_blocks() -> None:
    sr = build_sender_report(1, 0, 0, 0, 0, [BLOCK_2] * 31)
    assert sr[:4] == h("9F C8 00C0") and len(sr) == 4 + 24 + 31 * 24  # RC = 31, 196 words
    rr = build_receiver_report(1, [BLOCK_2] * 31)
    assert rr[:4] == h("9F C9 00BB") and len(rr) == 4 + 4 + 31 * 24
    for build in (
        lambda: build_sender_report(1, 0, 0, 0, 0, [BLOCK_2] * 32),
        lambda: build_receiver_report(1, [BLOCK_2] * 32),
    ):
        with pytest.raises(ValueError) as info:
            build()
        assert str(info.value) == "an RTCP report carries at most 31 report blocks"


def test_sender_report_one_byte_short_is_rejected_and_exact_size_accepted() -> None:
    # 28-byte body, P bit, 5 padding bytes: 23 bytes of SR fields, one short of 24
    rejects(h("A0 C8 0007" + SR_FIELDS_HEX[:46] + "00000000 05"), "RTCP sender report truncated")
    (sr,) = parse_rtcp(h("A0 C8 0007" + SR_FIELDS_HEX + "00000004"))
    assert sr == SenderReport(RTCPMessageType.sender_report, 0xDEADBEEF, 0xE8F1A2B380000000, 0x01020304, 291, 74565)


def test_receiver_report_one_byte_short_is_rejected_and_exact_size_accepted() -> None:
    rejects(h("A0 C9 0002 876543 0000000005"), "RTCP receiver report truncated")
    assert parse_rtcp(h("A0 C9 0002 87654321 00000004")) == [
        ReceiverReport(RTCPMessageType.receiver_report, 0x87654321)
    ]


def test_report_blocks_one_byte_short_are_rejected() -> None:
    # RR claiming 2 blocks, 51 of the 52 bytes (SSRC + 2 blocks) present, then 1 padding byte
    rejects(
        h("A2 C9 000D 87654321" + BLOCK_1_HEX + BLOCK_2_HEX[:-2] + "01"), "2 RTCP report blocks do not fit the packet"
    )
    rejects(h("A1 C8 000C" + SR_FIELDS_HEX + BLOCK_2_HEX[:-2] + "01"), "1 RTCP report blocks do not fit the packet")
    (sr,) = parse_rtcp(h("81 C8 000C" + SR_FIELDS_HEX + BLOCK_2_HEX))
    assert isinstance(sr, SenderReport) and sr.reports == [BLOCK_2] and sr.extension == b""


# -- SDES (RFC 3550 6.5): chunks of SSRC + items (type, length, text), a null octet ends the
#    items, then null octets up to the next 32-bit boundary ---------------------------------

SDES_3_CHUNKS = h(
    "83 CA 0009"  # SC=3, PT=202, 40 bytes
    "800000FF 01 01 71 02 00 00 00 00"  # CNAME "q", empty NAME, end at byte 13: next chunk at 16
    "12345678 01 05 78 40 79 2E 7A 00"  # CNAME "x@y.z", end at byte 27: next chunk at 28
    "0000ABCD 02 03 41 6C 69 00 00 00"  # NAME "Ali", end at byte 37, two more null octets
)


def test_source_description_chunks_and_items_parse_exactly() -> None:
    assert parse_rtcp(SDES_3_CHUNKS) == [
        SourceDescription(
            RTCPMessageType.source_description,
            [
                SourceDescriptionChunk(0x800000FF, {1: b"q", 2: b""}),
                SourceDescriptionChunk(0x12345678, {1: b"x@y.z"}),
                SourceDescriptionChunk(0xABCD, {2: b"Ali"}),
            ],
        )
    ]


def test_source_description_in_a_compound_after_a_receiver_report() -> None:
    rr = h("80 C9 0001 87654321")
    empty_sdes = h("80 CA 0000")  # SC=0: "valid but useless" (RFC 3550 6.5); a 4-byte packet
    packets = parse_rtcp(rr + SDES_3_CHUNKS + empty_sdes)
    assert packets[0] == ReceiverReport(RTCPMessageType.receiver_report, 0x87654321)
    assert packets[1] == parse_rtcp(SDES_3_CHUNKS)[0]
    assert packets[2] == SourceDescription(RTCPMessageType.source_description, [])
    assert len(packets) == 3


def test_source_description_length_rules() -> None:
    # SC=2, the second chunk's SSRC one byte short (12-byte body, 1 padding byte)
    rejects(h("A2 CA 0003 0000000A 01 01 71 00 000000 01"), "RTCP SDES chunk truncated")
    # SSRC present but no item list at all (nor its end)
    rejects(h("81 CA 0001 0000000A"), "RTCP SDES items run past the packet")
    # two empty items fill the packet exactly: no room left for the end-of-list octet
    rejects(h("81 CA 0002 0000000A 01 00 02 00"), "RTCP SDES items run past the packet")
    # the item's text is one byte longer than what is left (9-byte body, 3 padding bytes)
    rejects(h("A1 CA 0003 0000000A 01 04 61 62 63 000003"), "RTCP SDES item runs past the packet")
    # an item type in the very last byte of the datagram: no length octet
    rejects(h("81 CA 0002 0000000A 02 01 78 01"), "RTCP SDES item runs past the packet")
    # one byte more than that: the same item ends the list properly
    assert parse_rtcp(h("81 CA 0002 0000000A 01 01 71 00")) == [
        SourceDescription(RTCPMessageType.source_description, [SourceDescriptionChunk(10, {1: b"q"})])
    ]


# -- BYE (RFC 3550 6.6): SC sources, then optionally a length-prefixed reason ----------------

BYE_WITH_REASON = h("82 CB 0004 11223344 8899AABB 04 676F6E65 000000")  # reason "gone", 3 pad


def test_goodbye_with_reason_parses_exactly_and_builder_matches() -> None:
    assert parse_rtcp(BYE_WITH_REASON) == [Goodbye(RTCPMessageType.goodbye, [0x11223344, 0x8899AABB], b"gone")]
    assert build_goodbye([0x11223344, 0x8899AABB], b"gone") == BYE_WITH_REASON


def test_goodbye_without_reason() -> None:
    bye = h("81 CB 0001 11223344")
    assert build_goodbye([0x11223344]) == bye
    (parsed,) = parse_rtcp(bye)
    assert parsed == Goodbye(RTCPMessageType.goodbye, [0x11223344], b"")
    assert isinstance(parsed, Goodbye) and parsed.reason == b"" and parsed.type is RTCPMessageType.goodbye
    # followed by another packet: the next header is not read as a reason
    assert parse_rtcp(bye + h("80 C9 0001 87654321"))[0] == parsed


def test_goodbye_length_rules() -> None:
    # SC=2 with 7 bytes of sources (1 padding byte)
    rejects(h("A2 CB 0002 11223344 8899AA 01"), "RTCP BYE source list runs past the packet")
    assert parse_rtcp(h("82 CB 0002 11223344 8899AABB")) == [Goodbye(RTCPMessageType.goodbye, [0x11223344, 0x8899AABB])]
    # reason claims 5 bytes, 4 present (9-byte body, 3 padding bytes)
    rejects(h("A1 CB 0003 11223344 05 676F6E65 000003"), "RTCP BYE reason runs past the packet")
    assert parse_rtcp(h("A1 CB 0003 11223344 04 676F6E65 000003")) == [
        Goodbye(RTCPMessageType.goodbye, [0x11223344], b"gone")
    ]


def test_goodbye_builder_limits() -> None:
    assert build_goodbye(list(range(1, 32)))[:4] == h("9F CB 001F")
    assert build_goodbye([1], b"r" * 255) == h("81 CB 0041 00000001 FF") + b"r" * 255  # 264 bytes
    for ssrcs, reason, why in [
        ([], b"", "an RTCP BYE names 1..31 sources"),
        (list(range(32)), b"", "an RTCP BYE names 1..31 sources"),
        ([1], b"r" * 256, "an RTCP BYE reason is at most 255 bytes"),
    ]:
        with pytest.raises(ValueError) as info:
            build_goodbye(ssrcs, reason)
        assert str(info.value) == why


# -- APP (RFC 3550 6.7) and feedback (RFC 4585 6.1) ----------------------------------------


def test_application_defined_parses_exactly() -> None:
    app = h("85 CC 0004 9ABCDEF0 44534344 0102030405060708")  # subtype 5, name "DSCD"
    assert parse_rtcp(app) == [
        ApplicationDefined(RTCPMessageType.application_defined, 5, 0x9ABCDEF0, b"DSCD", h("0102030405060708"))
    ]
    rejects(h("A5 CC 0003 9ABCDEF0 444353 0000000005"), "RTCP APP packet truncated")
    assert parse_rtcp(h("A5 CC 0003 9ABCDEF0 44534344 00000004")) == [
        ApplicationDefined(RTCPMessageType.application_defined, 5, 0x9ABCDEF0, b"DSCD", b"")
    ]


def test_feedback_parses_exactly() -> None:
    nack = h("81 CD 0003 F0000001 E0000002 1234 0005")  # generic NACK: PID 0x1234, BLP 0b101
    assert parse_rtcp(nack) == [Feedback(RTCPMessageType.transport_feedback, 1, 0xF0000001, 0xE0000002, h("12340005"))]
    pli = h("81 CE 0002 F0000001 E0000002")  # picture loss indication: no FCI
    (fb,) = parse_rtcp(pli)
    assert fb == Feedback(RTCPMessageType.payload_feedback, 1, 0xF0000001, 0xE0000002, b"")
    assert fb.type is RTCPMessageType.payload_feedback
    rejects(h("A1 CE 0003 F0000001 E00000 0000000005"), "RTCP feedback packet truncated")


def test_unknown_packet_types_are_kept_whole() -> None:
    xr = h("80 CF 0002 87654321 0A0B0C0D")  # extended report (RFC 3611), not interpreted
    assert parse_rtcp(h("80 C9 0001 11223344") + xr)[1] == UnknownRTCP(207, xr)
    assert parse_rtcp(xr) == [UnknownRTCP(207, xr)]


# -- the compound walk: header, version, length, padding ------------------------------------


def test_compound_walk_rejects_bad_headers_with_the_reason() -> None:
    rr = h("80 C9 0001 87654321")
    rejects(rr + h("80 C9 00"), "RTCP header truncated")
    rejects(h("40 C9 0001 87654321"), "RTCP version 1, expected 2")
    rejects(h("C0 C9 0001 87654321"), "RTCP version 3, expected 2")
    rejects(rr + h("80 C9 0001 876543"), "RTCP length field claims 8 bytes, 7 remain")
    assert parse_rtcp(rr + rr) == [ReceiverReport(RTCPMessageType.receiver_report, 0x87654321)] * 2


def test_rtcp_padding_is_stripped_and_its_count_checked() -> None:
    padded_rr = h("A0 C9 0002 87654321 00000004")
    expected = ReceiverReport(RTCPMessageType.receiver_report, 0x87654321, [], b"")
    assert parse_rtcp(padded_rr) == [expected]
    assert parse_rtcp(padded_rr + h("80 C9 0001 11223344"))[0] == expected
    # padding may fill the whole body of an (empty) SDES, not one byte more; never 0
    assert parse_rtcp(h("A0 CA 0001 00000004")) == [SourceDescription(RTCPMessageType.source_description, [])]
    rejects(h("A0 CA 0001 00000005"), "RTCP padding count out of range")
    rejects(h("A0 C9 0002 87654321 00000000"), "RTCP padding count out of range")
    # the same rule for a packet further into a compound
    rejects(h("80 C9 0001 87654321 A0 CA 0001 00000005"), "RTCP padding count out of range")


def test_unix_to_ntp_keeps_sub_microsecond_fraction_of_a_current_time() -> None:
    # 2**-22 s is 1024 in units of 2**-32 s; exact in a double next to 1.7e9
    assert unix_to_ntp(1_700_000_000 + 2**-22) == (3_908_988_800 << 32) | 1024
    assert unix_to_ntp(0.5) == (2_208_988_800 << 32) | 0x80000000


# -- SSRC map: video SSRCs, leaving, clearing ----------------------------------------------


def test_video_ssrcs_are_recorded_within_the_32_bit_range_and_never_over_audio() -> None:
    m = SSRCMap()
    m.set_audio(111, 10)
    v = m.version
    for ssrc in (0, 111, 1 << 32):
        m.set_video(ssrc, 20)  # "no stream", already audio, out of range: ignored
    assert m.version == v
    assert not m.is_video(0) and not m.is_video(111) and not m.is_video(1 << 32)
    assert m.user_for(111) == 10
    for ssrc in (1, 0xFFFFFFFF):
        m.set_video(ssrc, 20)
        v += 1
        assert m.is_video(ssrc) and m.version == v


def test_audio_ssrcs_are_recorded_within_the_32_bit_range_and_repeats_change_nothing() -> None:
    m = SSRCMap()
    for ssrc in (0, 1 << 32):
        m.set_audio(ssrc, 10)
    assert m.version == 0 and m.ssrc_for(10) is None
    m.set_audio(0xFFFFFFFF, 10)
    assert m.user_for(0xFFFFFFFF) == 10 and m.version == 1
    m.set_audio(0xFFFFFFFF, 10)  # SPEAKING again for the same stream: no change
    assert m.version == 1


def test_audio_map_is_bounded_but_known_ssrcs_can_change_owner() -> None:
    m = SSRCMap()
    for ssrc in range(1, MAX_ENTRIES + 1):
        m.set_audio(ssrc, ssrc)
    m.set_audio(MAX_ENTRIES + 1, 1)
    assert m.user_for(MAX_ENTRIES + 1) is None and m.user_for(1) == 1
    m.set_audio(2, 999_999)  # a full map still follows an SSRC handed to someone else
    assert m.user_for(2) == 999_999


def test_client_connect_lists_move_users_to_newest_and_bump_the_version() -> None:
    m = SSRCMap()
    m.update_from_gateway(11, {"user_ids": ["10", "20", "30"]})
    assert m.version == 1
    m.set_audio(300, 30)
    m.update_from_gateway(11, {"user_ids": ["10"]})  # 10 (re)joined last: the likeliest owner
    assert m.version == 3
    assert m.unmapped_users() == [10, 20]


def test_client_connect_zero_ssrcs_mean_no_stream() -> None:
    m = SSRCMap()
    m.update_from_gateway(12, {"user_id": "10", "audio_ssrc": 0, "video_ssrc": 0})
    assert m.ssrc_for(10) is None and m.user_for(1) is None and not m.is_video(1)
    assert m.connected_users == {10}


def test_a_leaving_user_takes_their_stream_ssrcs_along() -> None:
    m = SSRCMap()
    m.update_from_gateway(12, {"user_id": "10", "audio_ssrc": 111, "streams": [{"ssrc": 113, "rtx_ssrc": 114}]})
    assert m.is_video(113) and m.is_video(114)
    m.update_from_gateway(13, {"user_id": "10"})
    assert not m.is_video(113) and not m.is_video(114) and m.user_for(111) is None


def test_video_map_is_bounded() -> None:
    m = SSRCMap()
    for ssrc in range(1, MAX_ENTRIES + 1):
        m.set_video(ssrc, 7)
    v = m.version
    assert v == MAX_ENTRIES
    m.set_video(MAX_ENTRIES + 1, 7)
    assert not m.is_video(MAX_ENTRIES + 1) and m.version == v


def test_removing_and_clearing_bump_the_version_once() -> None:
    m = SSRCMap()
    m.set_audio(111, 10)
    m.set_video(112, 10)
    assert m.remove_user(99) == []  # never connected: nothing to forget, no error
    v = m.version
    assert m.remove_user(10) == [111]
    assert m.version == v + 1 and not m.is_video(112) and m.connected_users == frozenset()
    m.set_audio(222, 20)
    m.set_video(223, 20)
    m.update_from_gateway(11, {"user_ids": ["30"]})
    v = m.version
    m.clear()
    assert m.version == v + 1
    assert m.user_for(222) is None and not m.is_video(223) and m.connected_users == frozenset()


# -- transport: the key never shows, the previous key's grace, parked packets --------------

KEY_OLD = bytes(range(32))
KEY_NEW = bytes(range(32, 64))


@pytest.mark.parametrize("mode", [AES_GCM, XCHACHA20])
def test_cipher_layout_counter_and_minimum_length(mode: str) -> None:
    aad = build_rtp_header(1, 960, 0x1234)
    cipher = transport_cipher(mode, KEY_OLD)
    sealed = cipher.encrypt(aad, b"", (1 << 32) + 5)  # the counter is 32 bits on the wire
    assert sealed[:12] == aad and sealed[-4:] == h("00000005") and len(sealed) == 12 + 16 + 4
    assert cipher.decrypt(sealed, 12) == b""  # header + tag + nonce, nothing else: fits
    with pytest.raises(DecryptionFailed) as info:
        cipher.decrypt(sealed[:-1], 12)
    assert str(info.value) == "31-byte packet cannot hold a 12-byte header, tag and nonce"
    with pytest.raises(ValueError) as error:
        transport_cipher(mode, KEY_OLD[:31])
    assert str(error.value) == "a transport secret key is 32 bytes, got 31"


def test_unsupported_mode_names_the_supported_ones() -> None:
    with pytest.raises(ValueError) as info:
        transport_cipher("xsalsa20_poly1305_lite", KEY_OLD)
    assert str(info.value) == (
        "unsupported voice encryption mode 'xsalsa20_poly1305_lite'; "
        "supported: aead_aes256_gcm_rtpsize, aead_xchacha20_poly1305_rtpsize"
    )


def test_key_ring_tells_changes_from_repeats() -> None:
    ring = TransportKeyRing()
    assert ring.changed is False and ring.cipher is None
    assert ring.set(None, None) is False  # no key, as before
    assert ring.set(AES_GCM, KEY_OLD) is True and ring.changed is True
    assert repr(ring.cipher) == "<AESGCMCipher mode=aead_aes256_gcm_rtpsize>"
    assert ring.take_parked(1.0) == [] and ring.changed is False
    assert ring.set(AES_GCM, list(KEY_OLD)) is False and ring.changed is False  # SESSION_DESCRIPTION again
    assert ring.set(AES_GCM, None) is True and ring.cipher is None  # forgotten
    assert ring.set("xsalsa20_poly1305_lite", KEY_NEW) is True and ring.cipher is None  # unsupported


def test_previous_key_grace_starts_only_when_the_change_is_handled() -> None:
    aad = build_rtp_header(1, 960, 0x1234)
    sealed_old = transport_cipher(AES_GCM, KEY_OLD).encrypt(aad, b"opus", 7)
    ring = TransportKeyRing()
    ring.set(AES_GCM, KEY_OLD)
    ring.set(AES_GCM, KEY_NEW)
    assert ring.open_previous(sealed_old, len(aad), 0.5) is None
    ring.take_parked(0.5)
    assert ring.open_previous(sealed_old, len(aad), 0.5) == b"opus"


def test_cipher_repr_names_the_mode_not_the_key() -> None:
    assert repr(AESGCMCipher(KEY_OLD)) == "<AESGCMCipher mode=aead_aes256_gcm_rtpsize>"
    assert repr(XChaCha20Cipher(KEY_OLD)) == "<XChaCha20Cipher mode=aead_xchacha20_poly1305_rtpsize>"


@pytest.mark.parametrize(
    ("mode", "reason"),
    [(AES_GCM, "AES-GCM tag did not verify"), (XCHACHA20, "XChaCha20-Poly1305 tag did not verify")],
)
def test_a_packet_sealed_with_another_key_fails_with_the_algorithm_named(mode: str, reason: str) -> None:
    aad = build_rtp_header(1, 960, 0x1234)
    sealed = transport_cipher(mode, KEY_OLD).encrypt(aad, b"opus", 7)
    with pytest.raises(DecryptionFailed) as info:
        transport_cipher(mode, KEY_NEW).decrypt(sealed, len(aad))
    assert str(info.value) == reason


@pytest.mark.parametrize("mode", [AES_GCM, XCHACHA20])
def test_previous_key_opens_packets_only_during_its_grace_second(mode: str) -> None:
    aad = build_rtp_header(1, 960, 0x1234)
    sealed_old = transport_cipher(mode, KEY_OLD).encrypt(aad, b"opus", 7)
    ring = TransportKeyRing()
    assert ring.set(mode, KEY_OLD)
    ring.take_parked(0.0)
    assert ring.open_previous(sealed_old, len(aad), 0.5) is None  # no previous key yet
    assert ring.set(mode, KEY_NEW)
    ring.take_parked(10.0)  # the change is handled at t=10: the old key is good until t=11
    assert ring.open_previous(sealed_old, len(aad), 10.0) == b"opus"
    assert ring.open_previous(sealed_old, len(aad), 10.999) == b"opus"
    assert ring.open_previous(sealed_old, len(aad), 11.0) is None
    forged = sealed_old[:-5] + bytes([sealed_old[-5] ^ 1]) + sealed_old[-4:]
    assert ring.open_previous(forged, len(aad), 10.5) is None


def test_parked_packets_expire_by_age_after_one_second() -> None:
    ring = TransportKeyRing()
    assert ring.park(b"a", 10.0) == 0
    assert ring.park(b"b", 10.5) == 0
    assert ring.park(b"c", 11.0) == 0  # "a" is exactly KEY_GRACE old: still kept
    assert ring.parked == 3
    assert ring.park(b"d", 11.75) == 2  # "a" and "b" are now older than a second
    assert ring.take_parked(12.0) == [(b"c", 11.0), (b"d", 11.75)]


def test_parked_packets_are_bounded_in_count() -> None:
    ring = TransportKeyRing()
    for i in range(MAX_PARKED):
        assert ring.park(bytes([i]), 5.0) == 0
    assert ring.parked == MAX_PARKED
    assert ring.park(b"new", 5.0) == 1  # the oldest makes room
    parked = ring.take_parked(5.0)
    assert len(parked) == MAX_PARKED and parked[0] == (b"\x01", 5.0) and parked[-1] == (b"new", 5.0)


# -- padding-only probes between audio packets ---------------------------------------------


def rel(seq: int, ts: int, lost_before: int = 0, new_stream: bool = False) -> Released:
    return Released(seq, ts, b"x", 0.0, lost_before, new_stream)


def test_probes_count_their_packets_and_missing_sequence_numbers() -> None:
    run = PaddingRun(last_timestamp=1000)
    run.absorb(rel(11, 1000, lost_before=0, new_stream=True))
    run.absorb(rel(14, 1000, lost_before=2))
    run.absorb(rel(16, 1000, lost_before=1))
    assert (run.count, run.missing, run.new_stream) == (3, 3, True)


def test_audio_after_probes_counts_only_the_audio_frames_the_timestamps_miss() -> None:
    run = PaddingRun(last_timestamp=1000)
    run.absorb(rel(11, 1000, lost_before=3))
    # three frames later, one more sequence number missing: 4 missing, 2 of them audio
    out = run.audio_after(rel(16, 1000 + 3 * 960, lost_before=1))
    assert out == rel(16, 1000 + 3 * 960, lost_before=2, new_stream=False)
    assert (run.count, run.missing, run.new_stream) == (0, 0, False)


def test_audio_after_a_probe_that_started_the_stream_starts_it_without_losses() -> None:
    run = PaddingRun(last_timestamp=1000)
    run.absorb(rel(11, 1000, lost_before=0, new_stream=True))
    run.absorb(rel(13, 1000, lost_before=1))
    out = run.audio_after(rel(14, 1000 + 5 * 960, lost_before=0, new_stream=False))
    assert out == rel(14, 1000 + 5 * 960, lost_before=0, new_stream=True)
    assert out.new_stream is True and out.lost_before == 0
    assert (run.count, run.missing, run.new_stream) == (0, 0, False)
    # the next burst starts afresh
    run.absorb(rel(15, 1000 + 5 * 960))
    assert (run.count, run.missing, run.new_stream) == (1, 0, False)
