"""RTP/RTCP wire formats and transport ciphers: round trips, and rejection of bad input."""

from __future__ import annotations

import os
import struct

import nacl.secret
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discord.ext.listening import rtp, transport
from discord.ext.listening.rtp import MalformedPacket
from discord.ext.listening.transport import DecryptionFailed

KEY = bytes(range(32))


@pytest.mark.parametrize("mode", transport.SUPPORTED_MODES)
@pytest.mark.parametrize("padding", [0, 1, 7])
def test_rtp_round_trip_with_extension_and_padding(mode: str, padding: int) -> None:
    cipher = transport.transport_cipher(mode, KEY)
    payload = os.urandom(97)
    ext = rtp.audio_level_extension(42)
    header = rtp.build_rtp_header(
        65535, 2**32 - 960, 0xDEADBEEF, marker=True, padding=bool(padding), extension_length=len(ext)
    )
    body = ext + payload + (bytes(padding - 1) + bytes([padding]) if padding else b"")
    packet = cipher.encrypt(header, body, 12345)
    parsed = rtp.parse_rtp_header(packet)
    assert (parsed.sequence, parsed.timestamp, parsed.ssrc, parsed.marker) == (65535, 2**32 - 960, 0xDEADBEEF, True)
    assert parsed.payload_type == rtp.OPUS_PAYLOAD_TYPE and parsed.aad_length == 16
    got_ext, got_payload = rtp.split_plaintext(cipher.decrypt(packet, parsed.aad_length), parsed)
    assert got_payload == payload
    assert rtp.parse_audio_level(got_ext) == 42


def test_discordpy_xchacha_packets_decrypt_with_our_cipher() -> None:
    # The exact construction discord.py 2.7.1 uses for aead_xchacha20_poly1305_rtpsize.
    header = bytearray(12)
    header[0], header[1] = 0x80, 0x78
    struct.pack_into(">HII", header, 2, 7, 960 * 7, 99)
    nonce = bytearray(24)
    nonce[:4] = struct.pack(">I", 5)
    sealed = nacl.secret.Aead(KEY).encrypt(b"opus!", bytes(header), bytes(nonce)).ciphertext
    packet = bytes(header) + sealed + nonce[:4]
    parsed = rtp.parse_rtp_header(packet)
    cipher = transport.transport_cipher(transport.XCHACHA20, KEY)
    assert rtp.split_plaintext(cipher.decrypt(packet, parsed.aad_length), parsed) == (b"", b"opus!")


@pytest.mark.parametrize("mode", transport.SUPPORTED_MODES)
def test_forged_and_foreign_packets_fail_authentication(mode: str) -> None:
    cipher = transport.transport_cipher(mode, KEY)
    packet = bytearray(cipher.encrypt(rtp.build_rtp_header(1, 2, 3), b"hello", 1))
    for i in (3, 12, len(packet) - 5, len(packet) - 1):  # header (AAD), body, tag, nonce
        forged = bytearray(packet)
        forged[i] ^= 0x01
        with pytest.raises(DecryptionFailed):
            cipher.decrypt(bytes(forged), 12)
    other = transport.transport_cipher(mode, bytes(32))
    with pytest.raises(DecryptionFailed):
        other.decrypt(bytes(packet), 12)
    with pytest.raises(DecryptionFailed):
        cipher.decrypt(bytes(packet[:20]), 12)


def test_rtcp_round_trip_encrypted() -> None:
    cipher = transport.transport_cipher(transport.AES_GCM, KEY)
    block = rtp.ReportBlock(5, 12, -3, 70000, 44, 1, 2)
    clear = rtp.build_sender_report(7, rtp.unix_to_ntp(1_700_000_000.25), 4800, 10, 1000, [block])
    clear += rtp.build_goodbye([7, 8], b"leaving")
    packet = cipher.encrypt(clear[:8], clear[8:], 3)
    assert rtp.is_rtcp(packet)
    parts = rtp.parse_rtcp(cipher.decrypt_rtcp(packet))
    sr, bye = parts
    assert isinstance(sr, rtp.SenderReport) and sr.ssrc == 7 and sr.rtp_timestamp == 4800
    assert sr.reports == [block]
    assert abs(sr.wall_time - 1_700_000_000.25) < 1e-6
    assert isinstance(bye, rtp.Goodbye) and bye.ssrcs == [7, 8] and bye.reason == b"leaving"


def test_rtcp_lying_length_is_rejected() -> None:
    clear = bytearray(rtp.build_receiver_report(1, [rtp.ReportBlock(1, 0, 0, 0, 0, 0, 0)]))
    clear[2:4] = struct.pack(">H", 200)  # claims 804 bytes
    with pytest.raises(MalformedPacket):
        rtp.parse_rtcp(bytes(clear))
    clear = bytearray(rtp.build_receiver_report(1))
    clear[0] |= 3  # claims 3 report blocks that are not there
    with pytest.raises(MalformedPacket):
        rtp.parse_rtcp(bytes(clear))


def test_unsupported_mode_and_bad_key_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unsupported voice encryption mode"):
        transport.transport_cipher("xsalsa20_poly1305", KEY)
    with pytest.raises(ValueError, match="32 bytes"):
        transport.transport_cipher(transport.AES_GCM, b"short")
    assert "0123" not in repr(transport.transport_cipher(transport.AES_GCM, KEY))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_parsers_never_raise_anything_but_malformed(data: bytes) -> None:
    for parse in (rtp.parse_rtp_header, rtp.parse_rtcp):
        try:
            parse(data)
        except MalformedPacket:
            pass
    try:
        header = rtp.parse_rtp_header(data)
        rtp.split_plaintext(data[header.aad_length :], header)
    except MalformedPacket:
        pass
    rtp.parse_audio_level(data)


@pytest.mark.parametrize("pt, fmt", [(205, 1), (205, 15), (206, 1), (206, 15)])
def test_rtcp_feedback_is_rtcp_and_parses(pt: int, fmt: int) -> None:
    # What Discord's SFU sends besides receiver reports (NACK, transport-cc, PLI, REMB).
    fci = bytes(range(8))
    packet = struct.pack(">BBHII", 0x80 | fmt, pt, 4, 0x11111111, 0x22222222) + fci
    rr = rtp.build_receiver_report(0x33333333)
    assert rtp.is_rtcp(packet)
    parsed = rtp.parse_rtcp(rr + packet)
    assert isinstance(parsed[1], rtp.Feedback)
    assert (parsed[1].type, parsed[1].fmt, parsed[1].sender_ssrc, parsed[1].media_ssrc, parsed[1].fci) == (
        pt,
        fmt,
        0x11111111,
        0x22222222,
        fci,
    )
    with pytest.raises(rtp.MalformedPacket):
        rtp.parse_rtcp(struct.pack(">BBHI", 0x80 | fmt, pt, 1, 1))  # no media SSRC
