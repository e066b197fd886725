"""Exact contracts of the decode and receive paths, with real libopus and real transport crypto.

DecoderSet: which lost frames are concealed how (FEC from the next packet's LBRR, PLC up to the
limit, then silence), at which sequence/timestamp, with which PCM (an independent
:class:`OpusDecoder` fed the same calls is the reference), and what is counted.
PacketReceiver: when a tracked SSRC is dropped to make room for a new one and what that
counts; which RTCP packets come back and are counted; what :meth:`reset_streams` releases.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from typing import Any

import pytest

from discord.ext.listening import rtp, transport
from discord.ext.listening.dave import FAILURE_LIMIT as DAVE_FAILURE_LIMIT
from discord.ext.listening.dave import INFER_INTERVAL, MAGIC, DaveReceiver, SenderState, is_dave_frame
from discord.ext.listening.decoding import KIND_DECODED, KIND_FEC, KIND_PLC, KIND_SILENCE, DecoderSet
from discord.ext.listening.frames import SpeakingChange
from discord.ext.listening.opus import SILENCE_FRAME, OpusDecoder, OpusEncoder, OpusError, packet_has_fec
from discord.ext.listening.receive import RETRY_INTERVAL, PacketReceiver
from discord.ext.listening.reorder import JitterBuffer, PushResult
from discord.ext.listening.ssrc import SSRCMap
from discord.ext.listening.stats import DropReason, ListenStats
from discord.ext.listening.testing.audio import speechlike
from discord.ext.listening.testing.dave_member import (
    LocalDaveMember,
    connect_local_member,
    deliver,
    stale_epoch_member,
)
from discord.ext.listening.testing.dave_server import DaveGroupServer

_PCM = speechlike(0.5, seed=4)


def _encode(fec: bool) -> list[bytes]:
    enc = OpusEncoder(fec=fec, expected_loss=10 if fec else 0)
    return [enc.encode(_PCM[i * 3840 : (i + 1) * 3840]) for i in range(24)]


FEC_FRAMES = _encode(True)
PLAIN = _encode(False)  # no LBRR anywhere: every lost frame is PLC (or silence)
#: A packet whose predecessor is recoverable from its LBRR data.
WITH_FEC = next(f for f in FEC_FRAMES[1:] if packet_has_fec(f))
REFUSED = b"\xff"  # code-3 TOC without its frame-count byte: libopus says "corrupted stream"
TS_WRAP = 1 << 32


def _run(ds: DecoderSet, items: list[Any], refused: list[Any] | None = None) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    ds.decode_items(items, out, refused)
    return out


def test_plain_frames_libopus_accepts_and_refuses_are_what_the_tests_assume() -> None:
    assert not any(packet_has_fec(f) for f in PLAIN)
    assert packet_has_fec(WITH_FEC)
    with pytest.raises(OpusError):
        OpusDecoder().decode(REFUSED)


# -- DecoderSet: gaps ---------------------------------------------------------------------------


def test_gap_before_an_fec_packet_is_plc_then_fec_for_the_last_frame_across_the_wrap() -> None:
    ds = DecoderSet()
    p0 = FEC_FRAMES[0]
    items = [
        (7, 65534, TS_WRAP - 1920, p0, 0, "x", False),
        (7, 2, 1920, WITH_FEC, 3, "x", False),  # 65535, 0, 1 lost
    ]
    out = _run(ds, items)
    ref, alt = OpusDecoder(), OpusDecoder()
    pcm0 = ref.decode(p0)
    alt.decode(p0)
    plc1, plc2 = ref.conceal(), ref.conceal()
    alt.conceal(), alt.conceal()
    fec = ref.decode_fec(WITH_FEC)
    assert fec != alt.conceal()  # FEC audio is the sender's copy, not a guess
    pcm = ref.decode(WITH_FEC)
    assert out == [
        (7, 65534, TS_WRAP - 1920, pcm0, KIND_DECODED, "x"),
        (7, 65535, TS_WRAP - 960, plc1, KIND_PLC, "x"),
        (7, 0, 0, plc2, KIND_PLC, "x"),
        (7, 1, 960, fec, KIND_FEC, "x"),
        (7, 2, 1920, pcm, KIND_DECODED, "x"),
    ]
    assert ds.counts.take() == (2, 1, 2, 0, 0)
    assert ds.counts.take() == (0, 0, 0, 0, 0)


def test_without_lbrr_every_lost_frame_is_plc_up_to_the_limit_then_silence() -> None:
    ds = DecoderSet(conceal_limit=2)
    p = PLAIN
    items = [
        (5, 100, 9600, p[0], 0, None, False),
        (5, 105, 14400, p[1], 4, None, False),  # 101..104 lost: PLC, PLC, silence, silence
        (5, 107, 16320, p[2], 1, None, False),  # 106 lost: the decoded 105 restarted the run
    ]
    out = _run(ds, items)
    ref = OpusDecoder()
    d0 = ref.decode(p[0])
    c1, c2 = ref.conceal(), ref.conceal()
    d1 = ref.decode(p[1])
    c3 = ref.conceal()
    d2 = ref.decode(p[2])
    assert out == [
        (5, 100, 9600, d0, KIND_DECODED, None),
        (5, 101, 10560, c1, KIND_PLC, None),
        (5, 102, 11520, c2, KIND_PLC, None),
        (5, 103, 12480, b"", KIND_SILENCE, None),
        (5, 104, 13440, b"", KIND_SILENCE, None),
        (5, 105, 14400, d1, KIND_DECODED, None),
        (5, 106, 15360, c3, KIND_PLC, None),
        (5, 107, 16320, d2, KIND_DECODED, None),
    ]
    assert ds.counts.take() == (3, 0, 3, 2, 0)


def test_conceal_limit_zero_reports_silence_but_still_recovers_fec() -> None:
    ds = DecoderSet(conceal_limit=0)
    out = _run(ds, [(1, 50, 48000, WITH_FEC, 2, "e", False)])
    ref = OpusDecoder()
    fec = ref.decode_fec(WITH_FEC)
    pcm = ref.decode(WITH_FEC)
    assert out == [
        (1, 48, 46080, b"", KIND_SILENCE, "e"),
        (1, 49, 47040, fec, KIND_FEC, "e"),
        (1, 50, 48000, pcm, KIND_DECODED, "e"),
    ]
    assert ds.counts.take() == (1, 1, 0, 1, 0)
    _run(ds, [(1, 52, 49920, WITH_FEC, 1, "e", False), (1, 54, 51840, WITH_FEC, 1, "e", False)])
    assert ds.counts.take() == (2, 2, 0, 0, 0)  # each recovery counted


def test_a_gap_before_a_streams_first_packet_is_concealed_on_a_fresh_decoder() -> None:
    ds = DecoderSet(conceal_limit=1)
    out = _run(ds, [(9, 10, 0, PLAIN[3], 1, 0, True)])
    ref = OpusDecoder()
    plc = ref.conceal()
    pcm = ref.decode(PLAIN[3])
    assert out == [(9, 9, TS_WRAP - 960, plc, KIND_PLC, 0), (9, 10, 0, pcm, KIND_DECODED, 0)]


def test_known_lost_positions_none_or_empty_are_plc_at_their_own_place_and_the_batch_goes_on() -> None:
    ds = DecoderSet()
    p = PLAIN
    items = [
        (3, 10, 960, p[0], 0, "a", False),
        (3, 11, 1920, None, 0, "b", False),
        (3, 12, 2880, b"", 0, "c", False),
        (3, 14, 4800, None, 1, "d", False),  # 13 lost before a lost position
        (3, 15, 5760, p[1], 0, "e", False),
    ]
    out = _run(ds, items)
    ref = OpusDecoder()
    d0 = ref.decode(p[0])
    c = [ref.conceal() for _ in range(4)]
    d1 = ref.decode(p[1])
    assert out == [
        (3, 10, 960, d0, KIND_DECODED, "a"),
        (3, 11, 1920, c[0], KIND_PLC, "b"),
        (3, 12, 2880, c[1], KIND_PLC, "c"),
        (3, 13, 3840, c[2], KIND_PLC, "d"),
        (3, 14, 4800, c[3], KIND_PLC, "d"),
        (3, 15, 5760, d1, KIND_DECODED, "e"),
    ]
    assert ds.counts.take() == (2, 0, 4, 0, 0)


def test_bytearray_and_memoryview_payloads_decode_like_bytes() -> None:
    ds = DecoderSet()
    items = [
        (4, 1, 0, bytearray(PLAIN[0]), 0, None, False),
        (4, 2, 960, memoryview(PLAIN[1]), 0, None, False),
    ]
    out = _run(ds, items)
    ref = OpusDecoder()
    assert out == [
        (4, 1, 0, ref.decode(PLAIN[0]), KIND_DECODED, None),
        (4, 2, 960, ref.decode(PLAIN[1]), KIND_DECODED, None),
    ]
    assert ds.counts.take() == (2, 0, 0, 0, 0)


def test_a_refused_payload_is_counted_listed_and_concealed_in_place() -> None:
    ds = DecoderSet()
    bad = (6, 21, 2000, REFUSED, 0, "r", False)
    refused: list[Any] = []
    out = _run(ds, [(6, 20, 1040, PLAIN[0], 0, "r", False), bad, (6, 22, 2960, PLAIN[1], 0, "r", False)], refused)
    ref = OpusDecoder()
    d0 = ref.decode(PLAIN[0])
    plc = ref.conceal()
    d1 = ref.decode(PLAIN[1])
    assert out == [
        (6, 20, 1040, d0, KIND_DECODED, "r"),
        (6, 21, 2000, plc, KIND_PLC, "r"),
        (6, 22, 2960, d1, KIND_DECODED, "r"),
    ]
    assert refused == [bad]
    assert ds.counts.take() == (2, 0, 1, 0, 1)
    # Without a ``refused`` list: still counted, one error per refused payload.
    out = _run(ds, [(6, 23, 3920, REFUSED, 0, "r", False), (6, 24, 4880, REFUSED, 0, "r", False)])
    assert [(o[1], o[4]) for o in out] == [(23, KIND_PLC), (24, KIND_PLC)]
    assert ds.counts.take() == (0, 0, 2, 0, 2)


def test_malformed_items_are_counted_and_skipped() -> None:
    ds = DecoderSet()
    out = _run(ds, [(1, 2, 3, 4, 5), 17, (8, 1, 0, PLAIN[0], 0, None)])
    assert out == [(8, 1, 0, OpusDecoder().decode(PLAIN[0]), KIND_DECODED, None)]
    assert ds.counts.take() == (1, 0, 0, 0, 2)


def test_six_field_items_keep_one_decoder_and_new_stream_restarts_it() -> None:
    ds = DecoderSet()
    out = _run(ds, [(2, 1, 0, PLAIN[1], 0, None), (2, 2, 960, PLAIN[2], 0, None)])
    ref = OpusDecoder()
    assert [o[3] for o in out] == [ref.decode(PLAIN[1]), ref.decode(PLAIN[2])]
    assert out[1][3] != OpusDecoder().decode(PLAIN[2])  # (a fresh decoder would differ)
    # new_stream: the packet meets a fresh decoder, not one that heard PLAIN[1..2]
    out = _run(ds, [(2, 3, 1920, PLAIN[3], 0, None, True)])
    assert out == [(2, 3, 1920, OpusDecoder().decode(PLAIN[3]), KIND_DECODED, None)]
    assert out[0][3] != ref.decode(PLAIN[3])


# -- DecoderSet: decode(), reset(), the decoder table --------------------------------------------


def test_decode_is_stateful_per_ssrc_and_counts_refusals() -> None:
    ds = DecoderSet()
    ref = OpusDecoder()
    assert ds.decode(1, PLAIN[0]) == ref.decode(PLAIN[0])
    assert ds.decode(1, PLAIN[1]) == ref.decode(PLAIN[1])
    assert 1 in ds and len(ds) == 1
    assert ds.decode(1, REFUSED) is None
    assert ds.decode(1, REFUSED) is None
    assert ds.counts.take() == (2, 0, 0, 0, 2)


def test_decode_restarts_the_concealment_run() -> None:
    ds = DecoderSet(conceal_limit=1)
    ds.decode(1, PLAIN[0])
    assert [o[4] for o in _run(ds, [(1, 3, 2880, PLAIN[2], 1, None, False)])] == [KIND_PLC, KIND_DECODED]
    ds.decode(1, PLAIN[3])  # real audio between two gaps
    assert [o[4] for o in _run(ds, [(1, 6, 5760, None, 1, None, False)])] == [KIND_PLC, KIND_SILENCE]


def test_the_least_recently_used_decoder_goes_first() -> None:
    ds = DecoderSet(max_ssrcs=2)
    ds.decode(1, PLAIN[0])
    ds.decode(2, PLAIN[0])
    ds.decode(1, PLAIN[1])  # 2 is now the least recently used
    ds.decode(3, PLAIN[0])
    assert (1 in ds, 2 in ds, 3 in ds, len(ds)) == (True, False, True, 2)
    ds = DecoderSet(max_ssrcs=2)
    for ssrc in (1, 2, 1, 3):
        _run(ds, [(ssrc, 1, 0, PLAIN[0], 0, None, False)])
    assert (1 in ds, 2 in ds, 3 in ds, len(ds)) == (True, False, True, 2)


def test_reset_forgets_one_decoder_or_all() -> None:
    ds = DecoderSet()
    ds.decode(1, PLAIN[0])
    ds.decode(2, PLAIN[0])
    ds.reset(99)  # unknown: nothing happens
    ds.reset(1)
    assert (1 in ds, 2 in ds) == (False, True)
    assert ds.decode(1, PLAIN[1]) == OpusDecoder().decode(PLAIN[1])  # fresh decoder
    ds.reset()
    assert len(ds) == 0


# -- PacketReceiver ------------------------------------------------------------------------------

KEY = os.urandom(32)
ALICE, BOB, CAROL = 100, 200, 300


class _Sender:
    def __init__(self, ssrc: int, seq: int = 1000, ts: int = 48000) -> None:
        self.ssrc, self.seq, self.ts = ssrc, seq, ts
        self.cipher = transport.transport_cipher(transport.AES_GCM, KEY)
        self.counter = 0

    def packet(self, payload: bytes) -> bytes:
        header = rtp.build_rtp_header(self.seq, self.ts, self.ssrc, payload_type=120, extension_length=4)
        self.counter += 1
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + 960) & 0xFFFFFFFF
        return self.cipher.encrypt(header, rtp.audio_level_extension(20) + payload, self.counter)

    def padding(self, size: int = 200) -> bytes:
        """A libwebrtc bandwidth probe: P bit, the payload nothing but padding; uses up a sequence number."""
        header = rtp.build_rtp_header(self.seq, self.ts, self.ssrc, extension_length=4, padding=True)
        self.counter += 1
        self.seq = (self.seq + 1) & 0xFFFF
        body = rtp.audio_level_extension(127, voice=False) + bytes(size - 1) + bytes([size])
        return self.cipher.encrypt(header, body, self.counter)


def _receiver(m: SSRCMap, **kw: Any) -> tuple[PacketReceiver, ListenStats]:
    stats = ListenStats()
    receiver = PacketReceiver(m, stats, origin=0.0, **kw)
    receiver.set_transport(transport.AES_GCM, KEY)
    return receiver, stats


def _alices_receiver(**kw: Any) -> tuple[PacketReceiver, ListenStats]:
    """:func:`_receiver` with SSRC 11 named as Alice's."""
    m = SSRCMap()
    m.set_audio(11, ALICE)
    return _receiver(m, **kw)


def test_an_ssrc_idle_over_5_seconds_makes_room_oldest_first_then_the_stalest_unclaimed() -> None:
    m = SSRCMap()
    m.set_audio(11, ALICE)
    m.set_audio(12, BOB)
    m.set_audio(13, CAROL)
    receiver, stats = _receiver(m, max_streams=3)
    s11, s12, s13, s14 = _Sender(11), _Sender(12), _Sender(13), _Sender(14)
    receiver.datagram(s11.packet(PLAIN[0]), 0.0)
    receiver.datagram(s12.packet(PLAIN[0]), 1.0)
    receiver.datagram(s11.packet(PLAIN[1]), 1.5)  # 11 is first in the table, 12 idle longer
    receiver.datagram(s13.packet(PLAIN[0]), 4.0)
    assert len(receiver.poll(4.5)[0]) == 4  # every buffer and queue empty
    # 14 is new: 12 (6.0 s idle) goes, not 11 (5.5 s) nor 13 (3.0 s)
    receiver.datagram(s14.packet(PLAIN[0]), 7.0)
    assert sorted(receiver.ssrcs) == [11, 13, 14]
    # 12 again: 11 (5.6 s, empty) goes; 14 is not idle and holds a packet
    receiver.datagram(s12.packet(PLAIN[1]), 7.1)
    assert sorted(receiver.ssrcs) == [12, 13, 14]
    # 11 again: none idle over 5 s (13: 3.2 s), so the unclaimed 14 goes with what it holds
    receiver.datagram(s11.packet(PLAIN[2]), 7.2)
    assert sorted(receiver.ssrcs) == [11, 12, 13]
    assert stats.user(None).received == 1
    assert stats.user(None).dropped == Counter({DropReason.overflow: 1})
    out = receiver.poll(8.0)[0]
    assert [(p.ssrc, p.opus, p.new_stream) for p in out] == [(12, PLAIN[1], True), (11, PLAIN[2], True)]
    assert stats.unattributed == Counter()


def test_idle_means_more_than_5_seconds_and_members_are_never_evicted_for_a_newcomer() -> None:
    m = SSRCMap()
    m.set_audio(11, ALICE)
    m.set_audio(12, BOB)
    receiver, stats = _receiver(m, max_streams=2)
    receiver.datagram(_Sender(11).packet(PLAIN[0]), 1.0)
    receiver.datagram(_Sender(12).packet(PLAIN[0]), 1.0)
    receiver.poll(2.0)
    receiver.datagram(_Sender(14).packet(PLAIN[0]), 6.0)  # exactly 5 s idle: not idle
    assert sorted(receiver.ssrcs) == [11, 12]
    assert stats.user(None).received == 1
    assert stats.user(None).dropped == Counter({DropReason.overflow: 1})
    receiver.datagram(_Sender(15).packet(PLAIN[0]), 6.25)  # 5.25 s: the first of the two goes
    assert sorted(receiver.ssrcs) == [12, 15]
    assert stats.user(None).received == 1


def test_an_evicted_unclaimed_ssrc_counts_its_buffered_and_queued_packets() -> None:
    receiver, stats = _alices_receiver(max_streams=2, hold_time=10.0)
    receiver.datagram(_Sender(11).packet(PLAIN[0]), 0.0)
    s14 = _Sender(14)
    receiver.datagram(s14.packet(PLAIN[0]), 0.0)
    assert [p.ssrc for p in receiver.poll(0.5)[0]] == [11]  # 14's packet waits for its owner
    receiver.datagram(s14.packet(PLAIN[1]), 0.6)  # and this one sits in the jitter buffer
    receiver.datagram(_Sender(15).packet(PLAIN[0]), 0.7)
    assert sorted(receiver.ssrcs) == [11, 15]
    assert stats.user(None).received == 2
    assert stats.user(None).dropped == Counter({DropReason.overflow: 2})


def test_padding_is_counted_for_the_ssrcs_owner_and_a_full_buffer_counts_the_packet_it_pushes_out() -> None:
    receiver, stats = _alices_receiver()
    s11 = _Sender(11)
    receiver.datagram(s11.padding(), 0.0)  # a probe before any audio: nothing to keep in order
    assert receiver.ssrcs == [] and stats.user(ALICE).padding == 1
    for i in range(256):  # nobody polls: the jitter buffer (256 packets) fills up
        receiver.datagram(s11.packet(PLAIN[i % len(PLAIN)]), 0.001 * i)
    assert stats.user(ALICE).received == 0
    receiver.datagram(s11.padding(), 0.3)  # takes its place; the oldest audio packet goes
    assert stats.user(ALICE).received == 1
    assert stats.user(ALICE).dropped == Counter({DropReason.overflow: 1})
    assert stats.user(None) == stats.user(12345)  # nothing under no one
    assert stats.unattributed == Counter()
    receiver.datagram(s11.packet(PLAIN[0]), 0.35)  # audio pushes out the next oldest
    assert stats.user(ALICE).received == 2
    assert stats.user(ALICE).dropped == Counter({DropReason.overflow: 2})
    receiver.paused = True
    receiver.datagram(s11.padding(), 0.4)
    assert stats.user(ALICE).padding == 2


def test_a_first_packet_with_lbrr_one_frame_after_the_origin_reports_the_frame_at_0_lost() -> None:
    receiver, _ = _alices_receiver()
    receiver.datagram(_Sender(11).packet(WITH_FEC), 0.02)  # placed at sample 960
    (p,) = receiver.poll(0.5)[0]
    assert (p.position, p.lost_positions, p.new_stream) == (960, (0,), True)


def test_each_refused_audio_packet_is_counted_received_and_dropped_under_its_owner() -> None:
    m = SSRCMap()
    m.set_audio(11, ALICE)
    m.set_audio(12, BOB)
    m.set_video(13, BOB)
    receiver, stats = _receiver(m, max_streams=2)
    s11, s12 = _Sender(11), _Sender(12)
    first = s11.packet(PLAIN[0])
    receiver.datagram(first, 0.0)
    receiver.datagram(s12.packet(PLAIN[0]), 0.0)
    receiver.datagram(first, 0.01)  # the same packet again: held already
    assert len(receiver.poll(0.5)[0]) == 2
    receiver.datagram(first, 0.6)  # released already: still a duplicate
    s11.seq, s11.ts = s11.seq - 3, s11.ts - 3 * 960
    receiver.datagram(s11.packet(PLAIN[1]), 0.7)  # seq 998: its place was passed, never seen
    carol = _Sender(14)
    m.set_audio(14, CAROL)
    receiver.datagram(carol.packet(PLAIN[0]), 0.8)  # no room: both tracked SSRCs are members
    receiver.datagram(_Sender(13).packet(PLAIN[0]), 0.9)  # Bob's video SSRC (payload type 120 too)
    receiver.datagram(_Sender(12).packet(PLAIN[0]), 0.9)  # fine so far...
    header = rtp.build_rtp_header(s12.seq, s12.ts, 12, payload_type=111, extension_length=4)
    receiver.datagram(s12.cipher.encrypt(header, rtp.audio_level_extension(20) + PLAIN[0], 99), 0.95)  # not Opus
    receiver.paused = True
    receiver.datagram(s12.packet(PLAIN[2]), 1.0)
    alice, bob, carol_stats = stats.user(ALICE), stats.user(BOB), stats.user(CAROL)
    assert alice.dropped == Counter({DropReason.duplicate: 2, DropReason.late: 1})
    assert alice.received == 1 + 3
    assert carol_stats.dropped == Counter({DropReason.overflow: 1}) and carol_stats.received == 1
    assert bob.dropped == Counter({DropReason.not_audio: 1, DropReason.duplicate: 1, DropReason.paused: 1})
    assert bob.received == 1 + 1 + 1  # the first, the duplicate, the one while paused
    # a video SSRC has no audio owner: its packets are counted under no one
    assert stats.user(None).dropped == Counter({DropReason.not_audio: 1}) and stats.user(None).received == 0
    assert stats.unattributed == Counter()


def test_only_an_ssrcs_first_packet_reports_a_frame_lost_before_it_from_its_lbrr() -> None:
    receiver, _ = _alices_receiver()
    s11 = _Sender(11)
    receiver.datagram(s11.packet(PLAIN[0]), 0.5)
    assert [p.lost_positions for p in receiver.poll(1.0)[0]] == [()]
    s11.seq, s11.ts = 30000, 10**7  # the sender restarted its RTP session
    receiver.datagram(s11.packet(WITH_FEC), 2.0)
    (p,) = receiver.poll(3.0)[0]
    assert (p.new_stream, p.lost_positions) == (True, ())


def test_an_ip_discovery_reply_is_ignored_but_other_payload_type_2_packets_are_counted() -> None:
    receiver, stats = _alices_receiver()
    reply = struct.pack(">HHI64sH", 2, 70, 11, b"203.0.113.7", 50000)  # 74 bytes, type 2
    assert receiver.datagram(reply, 0.0) is None
    assert stats.total.dropped == Counter() and stats.users == {}
    # A plain RTP header (no extension) with payload type 2 from Alice's SSRC: not audio.
    receiver.datagram(rtp.build_rtp_header(7, 0, 11, payload_type=2) + bytes(40), 0.1)
    assert stats.user(ALICE).dropped == Counter({DropReason.not_audio: 1})


def test_packets_before_a_key_are_parked_and_the_previous_key_still_opens_after_a_change() -> None:
    m = SSRCMap()
    m.set_audio(11, ALICE)
    stats = ListenStats()
    receiver = PacketReceiver(m, stats, origin=0.0)
    s11 = _Sender(11)
    receiver.datagram(s11.packet(PLAIN[0]), 0.0)  # no key yet: kept for the key
    assert receiver.parked_packets == 1 and stats.user(ALICE).padding == 0
    receiver.set_transport(transport.AES_GCM, KEY)
    receiver.datagram(s11.packet(PLAIN[1]), 0.1)  # opens, and so does the parked one
    assert [p.sequence for p in receiver.poll(0.5)[0]] == [1000, 1001]
    receiver.set_transport(transport.AES_GCM, os.urandom(32))  # a new session key
    receiver.datagram(s11.packet(PLAIN[2]), 0.6)  # still sealed with the previous key: opens
    assert [p.sequence for p in receiver.poll(1.0)[0]] == [1002]
    assert receiver.parked_packets == 0 and stats.unattributed == Counter()
    forged = _Sender(11)
    forged.cipher = transport.transport_cipher(transport.AES_GCM, os.urandom(32))
    receiver.datagram(forged.packet(PLAIN[3]), 1.1)  # no key opens it: parked for the next key
    assert receiver.parked_packets == 1
    new_key = os.urandom(32)
    receiver.set_transport(transport.AES_GCM, new_key)
    s11.cipher = transport.transport_cipher(transport.AES_GCM, new_key)
    receiver.datagram(s11.packet(PLAIN[4]), 1.2)  # the next packet: the parked one is retried, fails for good
    assert stats.unattributed == Counter({DropReason.auth_failed: 1})


def test_speaking_starts_with_a_packet_and_stops_250_ms_after_the_last() -> None:
    receiver, _ = _alices_receiver()
    receiver.datagram(_Sender(11).packet(PLAIN[0]), 1.0)
    assert receiver.poll(1.1)[1] == [SpeakingChange(11, ALICE, True)]
    assert receiver.poll(1.2)[1] == []
    assert receiver.poll(1.2499)[1] == []
    assert receiver.poll(1.25)[1] == [SpeakingChange(11, ALICE, False)]  # 250 ms exactly: stopped


def test_the_next_deadline_is_what_poll_would_do_next_and_none_when_all_is_quiet() -> None:
    receiver, _ = _alices_receiver(jitter_depth=0.06)
    assert receiver.next_deadline(0.5) is None  # nothing heard: nothing to time
    s11 = _Sender(11)
    receiver.datagram(s11.packet(PLAIN[0]), 1.0)
    assert receiver.next_deadline(1.0) == 1.0 + RETRY_INTERVAL  # a speaking start to announce
    assert receiver.poll(1.0) == ([], [SpeakingChange(11, ALICE, True)])
    assert receiver.next_deadline(1.0) == 1.06  # a stream's first packet waits the depth
    assert [p.sequence for p in receiver.poll(1.06)[0]] == [1000]
    assert receiver.next_deadline(1.06) == 1.25  # then only the speaking timeout
    s11.seq, s11.ts = s11.seq + 1, s11.ts + 960  # 1001 lost: 1002 waits for it
    receiver.datagram(s11.packet(PLAIN[1]), 1.1)
    due = receiver.next_deadline(1.1)
    assert due == pytest.approx(1.16)
    assert receiver.poll(due - 0.001)[0] == []
    assert [(p.sequence, len(p.lost_positions)) for p in receiver.poll(due)[0]] == [(1002, 1)]
    assert receiver.next_deadline(due) == pytest.approx(1.35)
    assert receiver.poll(1.35)[1] == [SpeakingChange(11, ALICE, False)]
    assert receiver.next_deadline(1.35) is None  # a silent connection: nothing until a packet


def test_the_next_deadline_of_one_talker_among_silent_ones_is_that_talkers() -> None:
    m = SSRCMap()
    m.set_audio(11, ALICE)
    m.set_audio(12, BOB)
    receiver, _ = _receiver(m)
    alice, bob = _Sender(11), _Sender(12)
    receiver.datagram(alice.packet(PLAIN[0]), 1.0)
    receiver.datagram(bob.packet(PLAIN[0]), 1.0)
    receiver.poll(1.06)
    assert len(receiver.poll(1.25)[1]) == 2  # both stopped
    receiver.datagram(alice.packet(PLAIN[1]), 2.0)  # Alice again; Bob stays silent
    assert receiver.poll(2.0)[1] == [SpeakingChange(11, ALICE, True)]
    assert receiver.next_deadline(2.0) == 2.06
    receiver.poll(2.06)
    assert receiver.next_deadline(2.06) == 2.25


def test_packets_waiting_for_their_owner_are_looked_at_again_soon() -> None:
    receiver, _ = _receiver(SSRCMap())  # nobody named SSRC 11 yet
    receiver.datagram(_Sender(11).packet(PLAIN[0]), 1.0)
    assert receiver.poll(1.06)[0] == []  # no E2EE, but whose audio? held for SPEAKING
    assert receiver.next_deadline(1.06) == pytest.approx(1.06 + RETRY_INTERVAL)


def test_a_long_gap_is_concealed_up_to_the_50_frame_budget_and_all_of_it_counted_lost() -> None:
    receiver, stats = _alices_receiver()
    s11 = _Sender(11)
    receiver.datagram(s11.packet(PLAIN[0]), 1.0)
    s11.seq, s11.ts = s11.seq + 99, s11.ts + 99 * 960  # 99 packets skipped
    receiver.datagram(s11.packet(PLAIN[1]), 1.02)
    _first, second = receiver.poll(2.0)[0]
    assert (second.sequence, len(second.lost_positions)) == (1100, 50)
    assert second.lost_positions[-1] == second.position - 960
    assert stats.user(ALICE).lost == 99


def _rtcp_datagram(clear: bytes, counter: int) -> bytes:
    return transport.transport_cipher(transport.AES_GCM, KEY).encrypt(clear[:8], clear[8:], counter)


def test_rtcp_packets_are_returned_in_order_and_counted() -> None:
    receiver, stats = _receiver(SSRCMap())
    sr = rtp.build_sender_report(7, rtp.unix_to_ntp(1_700_000_000.5), 4800, 10, 1000)
    compound = _rtcp_datagram(sr + rtp.build_goodbye([7]), 1)
    rr = _rtcp_datagram(rtp.build_receiver_report(8), 2)
    out = receiver.datagrams([compound, rr], [0.0, 0.01])
    sr_in, bye, rr_in = out
    assert isinstance(sr_in, rtp.SenderReport) and (sr_in.ssrc, sr_in.rtp_timestamp) == (7, 4800)
    assert isinstance(bye, rtp.Goodbye) and bye.ssrcs == [7]
    assert isinstance(rr_in, rtp.ReceiverReport) and rr_in.ssrc == 8
    assert stats.rtcp_packets == 3
    assert receiver.datagram(rr, 0.02) is not None
    assert stats.rtcp_packets == 4


def test_rtcp_that_authenticates_but_does_not_parse_is_counted_malformed() -> None:
    receiver, stats = _receiver(SSRCMap())
    clear = bytearray(rtp.build_receiver_report(1))
    clear[0] |= 3  # claims 3 report blocks that are not there
    assert receiver.datagram(_rtcp_datagram(bytes(clear), 1), 0.0) is None
    assert stats.unattributed == Counter({DropReason.malformed: 1})
    assert stats.rtcp_packets == 0


def test_reset_streams_releases_what_is_buffered_and_forgets_the_order() -> None:
    m = SSRCMap()
    m.set_audio(11, ALICE)
    receiver, stats = _receiver(m, hold_time=10.0)
    s11, s14, s15 = _Sender(11, seq=500), _Sender(14), _Sender(15)
    receiver.datagram(s14.packet(PLAIN[0]), 0.0)
    receiver.datagram(s15.packet(PLAIN[1]), 0.0)
    assert receiver.poll(0.5)[0] == []  # 14's and 15's packets wait for their owners
    m.set_audio(14, BOB)  # 14's owner is known now, 15's not
    s11.packet(PLAIN[0])  # sent, lost
    receiver.datagram(s11.packet(PLAIN[1]), 0.55)
    receiver.datagram(s11.packet(PLAIN[2]), 0.56)
    out = receiver.reset_streams(0.57)
    assert [(p.ssrc, p.user_id, p.sequence, p.opus) for p in out] == [
        (14, BOB, 1000, PLAIN[0]),
        (11, ALICE, 501, PLAIN[1]),
        (11, ALICE, 502, PLAIN[2]),
    ]
    assert (stats.user(ALICE).received, stats.user(ALICE).decrypted) == (2, 2)
    assert (stats.user(BOB).received, stats.user(BOB).decrypted) == (1, 1)
    assert stats.user(None).received == 0  # 15 still waits: its hold time is not over
    m.set_audio(15, CAROL)
    assert [(p.ssrc, p.user_id) for p in receiver.poll(0.6)[0]] == [(15, CAROL)]
    # After the reset a jump in sequence numbers is a new start, not 97 lost frames.
    s11.seq = 600
    receiver.datagram(s11.packet(PLAIN[3]), 1.0)
    out = receiver.poll(1.5)[0]
    assert [(p.sequence, p.lost_before) for p in out] == [(600, 0)]


def test_flush_releases_the_buffered_and_the_waiting_and_counts_them() -> None:
    receiver, stats = _alices_receiver(hold_time=10.0)
    s11, s14 = _Sender(11, seq=500), _Sender(14)
    receiver.datagram(s11.packet(PLAIN[0]), 0.0)
    receiver.datagram(s14.packet(PLAIN[1]), 0.0)
    s11.packet(PLAIN[1])  # lost
    receiver.datagram(s11.packet(PLAIN[2]), 0.04)
    s11.packet(PLAIN[3])  # lost
    receiver.datagram(s11.packet(PLAIN[4]), 0.08)
    out = receiver.poll(0.5)[0]
    assert [(p.sequence, p.lost_before, p.arrival, p.audio_level) for p in out] == [
        (500, 0, 0.0, 20),
        (502, 1, 0.04, 20),
        (504, 1, 0.08, 20),
    ]
    assert (stats.user(ALICE).received, stats.user(ALICE).lost) == (3, 2)  # counted per release
    s11.packet(PLAIN[5])  # lost
    receiver.datagram(s11.packet(PLAIN[6]), 0.55)  # waits for 505 in the jitter buffer
    out = receiver.flush(0.56)
    # Listening ends: everything goes, the unnamed SSRC's packet under no one (not lost).
    assert [(p.ssrc, p.user_id, p.sequence, p.lost_before) for p in out] == [(11, ALICE, 506, 1), (14, None, 1000, 0)]
    assert (stats.user(ALICE).received, stats.user(ALICE).lost) == (4, 3)
    assert (stats.user(None).received, stats.user(None).decrypted) == (1, 1)


# -- JitterBuffer: reset, next_deadline -------------------------------------------------------


def test_after_reset_an_old_looking_packet_is_judged_only_against_the_new_stream() -> None:
    jb = JitterBuffer(depth=0.05)
    assert jb.push(100, 1000, "a", 0.0) is PushResult.ACCEPTED
    assert jb.push(20000, 500000, "b", 0.01) is PushResult.RESTART  # the sender restarted
    # Outside every window and behind in time: an old packet (or the first of a restart on probation).
    assert jb.push(5000, 40, "old", 0.015) is PushResult.LATE
    assert [r.payload for r in jb.reset()] == ["a", "b"]
    assert len(jb) == 0
    # A fresh start: no stream before it to have stragglers, no probation run to continue.
    assert jb.push(20010, 510000, "c", 1.0) is PushResult.ACCEPTED
    assert [(r.payload, r.new_stream, r.lost_before) for r in jb.pop_ready(1.1)] == [("c", True, 0)]
    assert jb.push(101, 2000, "d", 1.2) is PushResult.LATE
    assert jb.stats.late == 2 and jb.stats.restarts == 1


def test_next_deadline_is_now_for_the_next_packet_of_the_stream_being_finished() -> None:
    jb = JitterBuffer(depth=0.05)
    assert jb.next_deadline() is None
    jb.push(100, 1000, "a", 0.05)
    assert jb.next_deadline() == 0.1  # a stream's first packet waits depth
    assert [r.payload for r in jb.pop_ready(0.1)] == ["a"]
    jb.push(102, 2920, "c", 0.1)  # 101 missing (and "c" comes within depth of "a": no quiet stretch)
    assert jb.next_deadline() == 0.1 + 0.05
    assert jb.push(30000, 900000, "new", 0.11) is PushResult.RESTART
    assert jb.next_deadline() == 0.1 + 0.05
    assert jb.push(101, 1960, "b", 0.12) is PushResult.ACCEPTED  # the old stream's straggler
    # 101 is the next expected packet of the stream still being released: ready at once.
    assert jb.next_deadline() == 0.12
    assert [(r.payload, r.new_stream) for r in jb.pop_ready(0.12)] == [("b", False), ("c", False)]
    assert jb.next_deadline() == 0.11 + 0.05


def test_the_windows_edges_a_dropout_of_max_dropout_and_a_repeated_sequence_number() -> None:
    assert JitterBuffer(restart_probation=1).restart_probation == 1  # the smallest allowed
    jb = JitterBuffer()
    jb.push(100, 96000, "a", 0.0)
    # exactly max_dropout ahead but back in time: a restart (only beyond max_dropout is it "old")
    assert jb.push(1100, 0, "b", 0.01) is PushResult.RESTART
    jb = JitterBuffer()
    jb.push(100, 96000, "a", 0.0)
    # the same sequence number with a later timestamp: a duplicate, not a restart
    assert jb.push(100, 97000, "a2", 0.01) is PushResult.DUPLICATE


# -- DaveReceiver: owner inference, recoveries ----------------------------------------------------

CHANNEL = 4242
BOT = 1


@pytest.fixture(scope="module")
def group() -> dict[int, LocalDaveMember]:
    """The bot, Alice and Bob in one DAVE group, every transition executed."""
    server = DaveGroupServer(CHANNEL)
    members: dict[int, LocalDaveMember] = {}
    for uid in (BOT, ALICE, BOB):
        members[uid] = LocalDaveMember(uid, CHANNEL)
        connect_local_member(server, members[uid], members)
        for transition_id in list(server.pending_transitions):
            deliver(server, members, server.execute_transition(transition_id))
    assert all(m.ready for m in members.values())
    return members


def _dave(members: dict[int, LocalDaveMember], m: SSRCMap) -> tuple[DaveReceiver, ListenStats]:
    stats = ListenStats()
    receiver = DaveReceiver(m, stats)
    receiver.set_session(members[BOT].session, 1)
    return receiver, stats


def test_an_unnamed_ssrc_is_tried_against_every_unmapped_member_once_per_interval(group) -> None:
    m = SSRCMap()
    m.update_from_gateway(11, {"user_ids": [str(ALICE)]})  # Bob not in the call yet
    dr, stats = _dave(group, m)
    state = SenderState()
    frame = group[BOB].encrypt_opus(PLAIN[0])
    assert dr.open(state, 77, None, frame, 0.0, True) is None  # only Alice to try: not hers
    m.update_from_gateway(11, {"user_ids": [str(BOB)]})
    assert dr.open(state, 77, None, frame, 0.05, True) is None  # within INFER_INTERVAL: no new try
    # Exactly INFER_INTERVAL later: tried again, and Bob's key opens it.
    assert dr.open(state, 77, None, frame, INFER_INTERVAL, True) == (BOB, PLAIN[0])
    assert m.user_for(77) == BOB and stats.ssrcs_inferred == 1
    # A second SSRC of Alice's found the same way: counted too.
    assert dr.open(SenderState(), 78, None, group[ALICE].encrypt_opus(PLAIN[1]), 2.0, True) == (ALICE, PLAIN[1])
    assert stats.ssrcs_inferred == 2


def test_the_wrong_candidate_first_does_not_stop_the_search(group) -> None:
    m = SSRCMap()
    m.update_from_gateway(11, {"user_ids": [str(BOB), str(ALICE)]})
    dr, _ = _dave(group, m)
    assert m.unmapped_users() == [ALICE, BOB]  # newest first: Alice is tried first
    assert dr.open(SenderState(), 77, None, group[BOB].encrypt_opus(PLAIN[2]), 0.0, True) == (BOB, PLAIN[2])


def test_dave_frames_before_the_session_wait_for_it() -> None:
    m = SSRCMap()
    m.update_from_gateway(11, {"user_ids": [str(ALICE)]})
    dr = DaveReceiver(m, ListenStats())
    frame = b"\x00" * 12 + bytes([12]) + MAGIC  # shaped like a DAVE frame
    assert is_dave_frame(frame)
    assert not is_dave_frame(b"\x00\x00\x00\x0c" + bytes(8) + b"\xff" + MAGIC)  # size byte 255 > 15 bytes
    assert dr.open(SenderState(), 77, None, frame, 0.0, True) is None
    assert dr.open(SenderState(), 77, None, frame, 0.0, False) is DropReason.unknown_ssrc
    # Its owner known, but no session ever came: it cannot be opened.
    assert dr.open(SenderState(), 77, ALICE, frame, 0.0, False) is DropReason.undecryptable


def test_under_dave_everything_but_the_silence_frame_goes_through_davey(group) -> None:
    dr, _ = _dave(group, SSRCMap())
    assert dr.needs_opening(group[ALICE].encrypt_opus(PLAIN[0]))
    assert dr.needs_opening(PLAIN[0])  # clear audio: only davey knows whether passthrough is on
    assert not dr.needs_opening(SILENCE_FRAME)
    dr.set_session(None, 0)
    assert not dr.needs_opening(PLAIN[0]) and not dr.needs_opening(SILENCE_FRAME)


def test_a_frame_on_a_named_ssrc_is_opened_with_its_owners_key_only(group) -> None:
    m = SSRCMap()
    m.update_from_gateway(11, {"user_ids": [str(BOB)]})
    m.set_audio(11, ALICE)  # 11 named as Alice's, but this frame is Bob's (unmapped)
    dr, stats = _dave(group, m)
    assert dr.open(SenderState(), 11, ALICE, group[BOB].encrypt_opus(PLAIN[0]), 0.0, False) is (
        DropReason.undecryptable
    )
    assert m.user_for(11) == ALICE and stats.ssrcs_inferred == 0


def test_a_recovery_is_asked_at_the_36th_failure_in_a_row_and_not_again_within_10_s(group) -> None:
    m = SSRCMap()
    m.set_audio(11, ALICE)
    dr, stats = _dave(group, m)
    state = SenderState()
    frame = stale_epoch_member(ALICE, CHANNEL).encrypt_opus(PLAIN[0])  # keys the bot never held
    group_frame = group[ALICE].encrypt_opus(PLAIN[1])

    def fail(n: int, now: float) -> list[int]:
        for _ in range(n):
            assert dr.open(state, 11, ALICE, frame, now, False) is DropReason.undecryptable
        return dr.take_recoveries()

    assert fail(DAVE_FAILURE_LIMIT - 1, 1.0) == []
    assert fail(1, 1.0) == [ALICE]
    assert stats.dave_recoveries == 1
    assert fail(DAVE_FAILURE_LIMIT - 1, 20.0) == []  # the count starts again from 0
    assert fail(1, 20.0) == [ALICE]
    assert fail(DAVE_FAILURE_LIMIT + 5, 30.0 - 1e-9) == []  # within the 10 s cooldown
    assert fail(1, 30.0) == [ALICE]  # exactly RECOVERY_COOLDOWN after the last: asked
    assert stats.dave_recoveries == 3
    # A frame that opens ends the run: 35 failures, one success, 35 failures ask for nothing.
    good = SenderState()
    for t in (40.0, 41.0):
        for _ in range(DAVE_FAILURE_LIMIT - 1):
            dr.open(good, 11, ALICE, frame, t, False)
        if t == 40.0:
            assert dr.open(good, 11, ALICE, group_frame, t, False) == (ALICE, PLAIN[1])
    assert dr.take_recoveries() == []


# -- JitterBuffer: stragglers of the stream before a restart, restarts on probation ---------------


def _released(jb: JitterBuffer, now: float) -> list[tuple[Any, ...]]:
    return [(r.sequence, r.timestamp, r.payload, r.arrival, r.lost_before, r.new_stream) for r in jb.pop_ready(now)]


def test_a_straggler_of_a_finished_stream_is_duplicate_only_if_its_place_was_released() -> None:
    jb = JitterBuffer(depth=0.05)
    for seq in range(4, 105):  # 101 packets, 102 lost: the history covers max_misorder back
        if seq != 102:
            jb.push(seq, seq * 960, seq, seq * 0.001)
    assert [r.lost_before for r in jb.pop_ready(1.0)][-2:] == [1, 0]
    assert jb.push(4, 4 * 960, "x", 1.05) is PushResult.DUPLICATE  # released, max_misorder back
    assert jb.push(20000, 10**7, "B", 1.1) is PushResult.RESTART  # nothing held: A is finished
    assert jb.push(103, 103 * 960, "x", 1.2) is PushResult.DUPLICATE  # released
    assert jb.push(102, 102 * 960, "x", 1.2) is PushResult.LATE  # declared lost
    assert jb.push(4, 4 * 960, "x", 1.2) is PushResult.DUPLICATE  # released, max_misorder back
    assert jb.push(105, 105 * 960, "x", 1.2) is PushResult.LATE  # after A's end: never its place
    assert (jb.stats.duplicates, jb.stats.late, jb.stats.restarts) == (3, 2, 1)
    # max_misorder ahead of A's newest, timestamp ahead of B's: still A's straggler, not a restart
    assert jb.push(204, 10**8, "x", 1.2) is PushResult.LATE
    assert (jb.stats.duplicates, jb.stats.late, jb.stats.restarts) == (3, 3, 1)


# The new stream far ahead in sequence and time, or just ahead in sequence but behind in time.
@pytest.mark.parametrize(("new_seq", "new_ts"), [(30000, 10**7), (110, 0)])
def test_a_straggler_of_the_stream_still_being_released_fills_its_place(new_seq: int, new_ts: int) -> None:
    jb = JitterBuffer(depth=0.05)
    for seq in (100, 101):
        jb.push(seq, seq * 960, seq, 0.05)
    assert [r.payload for r in jb.pop_ready(0.1)] == [100, 101]
    jb.push(103, 103 * 960, 103, 0.1)  # 102 missing: 103 waits (within depth of 101: no quiet stretch)
    assert jb.push(new_seq, new_ts, "B", 0.11) is PushResult.RESTART
    assert jb.push(101, 101 * 960, "dup", 0.12) is PushResult.DUPLICATE  # released already
    assert jb.push(103, 103 * 960, "dup", 0.12) is PushResult.DUPLICATE  # held already
    assert jb.push(102, 102 * 960, 102, 0.13) is PushResult.ACCEPTED
    assert jb.stats.duplicates == 2
    assert _released(jb, 0.13) == [
        (102, 102 * 960, 102, 0.13, 0, False),
        (103, 103 * 960, 103, 0.1, 0, False),
    ]
    assert _released(jb, 0.2) == [(new_seq, new_ts, "B", 0.11, 0, True)]
    # The old stream is finished now; its end is remembered for later stragglers.
    assert jb.push(103, 103 * 960, "dup", 0.3) is PushResult.DUPLICATE
    assert jb.push(104, 104 * 960, "late", 0.3) is PushResult.LATE
    assert (jb.stats.duplicates, jb.stats.late) == (3, 1)


def test_old_looking_packets_restart_the_stream_only_after_a_consecutive_run() -> None:
    jb = JitterBuffer(depth=0.05, restart_probation=3)
    jb.push(20000, 10**7, "A", 0.0)
    assert _released(jb, 0.1) == [(20000, 10**7, "A", 0.0, 0, True)]
    late = PushResult.LATE
    assert jb.push(5000, 40, 1, 1.0) is late  # run of 1
    assert jb.push(20001, 10**7 + 960, "A2", 1.0) is PushResult.ACCEPTED  # live, same instant
    assert jb.push(5001, 1000, 2, 1.1) is late  # the live packet broke the run: 1 again
    assert jb.push(5002, 1960, 3, 1.2) is late  # 2
    assert jb.push(5003, 1960, 4, 1.3) is late  # same timestamp: not a next frame, 1 again
    assert jb.push(5004, 1900, 5, 1.4) is late  # behind: 1 again
    assert jb.push(5005, 2860, 6, 1.5) is late  # 2
    assert jb.push(5006, 2861, 7, 1.6) is PushResult.RESTART  # 3 (one sample ahead is ahead): restarted
    assert jb.stats.late == 6 and jb.stats.restarts == 1
    assert _released(jb, 2.0) == [
        (20001, 10**7 + 960, "A2", 1.0, 0, False),
        (5006, 2861, 7, 1.6, 0, True),
    ]
    assert jb.push(100, 0, 9, 2.1) is late  # old-looking again: a fresh run


def test_an_undecryptable_dave_frame_is_counted_received_and_dropped_under_its_sender(group) -> None:
    receiver, stats = _alices_receiver()
    receiver.set_dave(group[BOT].session, 1)
    stale = stale_epoch_member(ALICE, CHANNEL)
    s11 = _Sender(11)
    for i in range(3):
        receiver.datagram(s11.packet(stale.encrypt_opus(PLAIN[i])), i * 0.02)
    receiver.datagram(s11.packet(group[ALICE].encrypt_opus(PLAIN[3])), 0.06)
    out = receiver.poll(0.5)[0]
    assert [(p.opus, p.lost_before) for p in out] == [(PLAIN[3], 3)]
    assert stats.user(ALICE).received == 4
    assert stats.user(ALICE).dropped == Counter({DropReason.undecryptable: 3})
    assert stats.user(None).received == 0


def test_receiver_defaults_and_each_bad_argument_named() -> None:
    r = PacketReceiver(SSRCMap(), ListenStats(), origin=0.0)
    assert (r.jitter_depth, r.hold_time, r.max_held, r.max_streams, r.origin) == (0.06, 5.0, 500, 256, 0.0)
    for kwargs in (
        {"jitter_depth": 0.0},
        {"jitter_depth": 2.0},
        {"hold_time": 1e-9},
        {"max_held": 1},
        {"max_streams": 1},
    ):
        made = PacketReceiver(SSRCMap(), ListenStats(), origin=1.5, **kwargs)  # type: ignore[arg-type]
        ((name, value),) = kwargs.items()
        assert getattr(made, name) == value and made.origin == 1.5
    bad = [
        ({"jitter_depth": -1e-9}, "jitter_depth must be within 0..2 seconds, got -1e-09"),
        ({"jitter_depth": 2.001}, "jitter_depth must be within 0..2 seconds, got 2.001"),
        ({"hold_time": 0.0}, "hold_time must be positive, got 0.0"),
        ({"max_held": 0}, "max_held and max_streams must be at least 1"),
        ({"max_streams": 0}, "max_held and max_streams must be at least 1"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError) as caught:
            PacketReceiver(SSRCMap(), ListenStats(), origin=0.0, **kwargs)  # type: ignore[arg-type]
        assert str(caught.value) == message


def test_the_receivers_jitter_depth_is_its_buffers_depth() -> None:
    receiver, _ = _alices_receiver(jitter_depth=0.1)
    s = _Sender(11)
    receiver.datagram(s.packet(PLAIN[0]), 1.0)
    assert receiver.poll(1.099)[0] == []  # a stream's first packet waits the depth
    assert [p.sequence for p in receiver.poll(1.1)[0]] == [1000]


def test_parked_packets_no_key_opens_are_counted_when_they_expire() -> None:
    receiver, stats = _alices_receiver()
    receiver.datagram(_Sender(11).packet(PLAIN[0]), 0.0)  # the key's first use (no parked packet to retry)
    forged = _Sender(11)
    forged.cipher = transport.transport_cipher(transport.AES_GCM, os.urandom(32))
    for t in (0.0, 0.1, 0.2):
        receiver.datagram(forged.packet(PLAIN[0]), t)
    assert receiver.parked_packets == 3 and stats.unattributed == Counter()
    receiver.datagram(forged.packet(PLAIN[0]), 1.15)  # 0.0 and 0.1 are over a second old now
    assert receiver.parked_packets == 2
    assert stats.unattributed == Counter({DropReason.auth_failed: 2})
    # the bound: the 65th parked packet pushes the oldest out, whatever its age
    for k in range(62):
        receiver.datagram(forged.packet(PLAIN[0]), 1.16 + k * 1e-4)
    assert receiver.parked_packets == 64 and stats.unattributed == Counter({DropReason.auth_failed: 2})
    receiver.datagram(forged.packet(PLAIN[0]), 1.17)  # (the oldest, from 0.2, is not 1 s old)
    assert receiver.parked_packets == 64
    assert stats.unattributed == Counter({DropReason.auth_failed: 3})


def test_a_frame_still_unclaimed_when_listening_ends_is_tried_against_the_members_once_more(group) -> None:
    """Flush (listening ends) gives every pending frame one last chance: an SSRC no SPEAKING
    named is tried against the unmapped members' keys, at the flush's time."""
    m = SSRCMap()
    m.update_from_gateway(11, {"user_ids": [str(BOB)]})
    receiver, stats = _receiver(m)
    receiver.set_dave(group[BOT].session, 1)
    s77 = _Sender(77)
    receiver.datagram(s77.packet(group[BOB].encrypt_opus(PLAIN[0])), 10.0)
    out = receiver.flush(10.001)  # never polled: the frame is still in the jitter buffer
    assert [(p.user_id, p.opus) for p in out] == [(BOB, PLAIN[0])]
    assert m.user_for(77) == BOB and stats.ssrcs_inferred == 1


def test_packets_held_for_their_owner_come_out_as_unheld_ones_would() -> None:
    """Frames of an SSRC no SPEAKING named yet wait (no DAVE to name it); once op 5 comes they
    go out with every field as the direct path gives them: sequence, timestamp, position,
    arrival, audio level, the stream start."""
    s = _Sender(11)
    sent = [s.packet(PLAIN[k]) for k in range(4)]
    arrivals = [1.0 + 0.02 * k for k in range(4)]
    named = SSRCMap()
    named.set_audio(11, ALICE)
    direct, _ = _receiver(named)
    held_map = SSRCMap()
    held, _ = _receiver(held_map)
    for data, t in zip(sent, arrivals):
        direct.datagram(data, t)
        held.datagram(data, t)
    want = direct.poll(1.2)[0]
    assert held.poll(1.2)[0] == []  # nobody named 11 yet
    held_map.set_audio(11, ALICE)
    got = held.poll(1.3)[0]
    assert got == want and len(got) == 4
    assert got[0].new_stream and got[0].audio_level == 20 and got[3].arrival == arrivals[3]


def test_frames_nobody_claims_go_out_unattributed_after_exactly_hold_time() -> None:
    receiver, stats = _receiver(SSRCMap(), hold_time=5.0)
    receiver.datagram(_Sender(11).packet(PLAIN[0]), 1.0)
    assert receiver.poll(1.1)[0] == [] and receiver.poll(5.999)[0] == []
    (p,) = receiver.poll(6.0)[0]  # held 5.0 s: out, with no user, not lost
    assert (p.user_id, p.sequence, p.arrival) == (None, 1000, 1.0)
    assert stats.user(None).dropped == Counter()


def test_a_second_undecryptable_frame_after_good_ones_is_concealed_on_its_own(group) -> None:
    receiver, stats = _alices_receiver()
    receiver.set_dave(group[BOT].session, 1)
    stale = stale_epoch_member(ALICE, CHANNEL)
    s11 = _Sender(11)
    frames = [stale, group[ALICE], stale, group[ALICE]]
    for i, member in enumerate(frames):
        receiver.datagram(s11.packet(member.encrypt_opus(PLAIN[i])), 1.0 + i * 0.02)
    out = receiver.poll(1.5)[0]
    # each good frame carries the one dropped right before it, and only that one
    assert [(p.opus, len(p.lost_positions)) for p in out] == [(PLAIN[1], 1), (PLAIN[3], 1)]
    assert out[1].lost_positions == (out[1].position - 960,)
    assert stats.user(ALICE).dropped == Counter({DropReason.undecryptable: 2})


def test_a_stalls_burst_released_together_keeps_the_speech_at_its_rtp_place() -> None:
    """20 ms packets, then a 250 ms network stall, then the held-up packets in one burst:
    released together (the first waits for the burst), each is placed by its successors'
    arrivals, so every frame lies exactly its RTP distance after the first."""
    receiver, _ = _alices_receiver()
    s = _Sender(11)
    out = []
    for k in range(40):
        due = 1.0 + 0.02 * k
        at = due if k < 20 else max(due, 1.0 + 0.02 * 20 + 0.25 + 0.0001 * (k - 20))
        receiver.datagram(s.packet(PLAIN[k % len(PLAIN)]), at)
        out += receiver.poll(at)[0]  # polled after every datagram: nothing waits for a poll
    out += receiver.poll(3.0)[0]
    assert [p.sequence for p in out] == list(range(1000, 1040))
    assert {p.position - 960 * k for k, p in enumerate(out)} == {out[0].position}


def test_a_streams_first_two_packets_read_together_are_placed_by_the_second() -> None:
    receiver, _ = _alices_receiver()
    s = _Sender(11)
    receiver.datagram(s.packet(PLAIN[0]), 1.05)  # held up 30 ms on the way
    receiver.datagram(s.packet(PLAIN[1]), 1.0501)
    first, second = receiver.poll(1.2)[0]
    assert first.position == round((1.0501 - 0.02) * 48000) and second.position == first.position + 960
    assert (first.arrival, second.arrival) == (1.05, 1.0501)  # the true arrivals stay on the packets


def test_a_discordpy_pause_after_silence_frames_keeps_its_length() -> None:
    """discord.py sends five silence frames, pauses (its timestamp stands still), and goes on:
    the pause after silence frames is real time, so the next frame goes where it arrived,
    though the RTP timestamp would put it right after the silence (a pause shorter than the
    0.2 s gap and the 0.25 s drift bound)."""
    receiver, _ = _alices_receiver()
    s = _Sender(11)
    for k in range(5):
        receiver.datagram(s.packet(PLAIN[k]), 1.0 + 0.02 * k)
    for k in range(5):
        receiver.datagram(s.packet(SILENCE_FRAME), 1.1 + 0.02 * k)
    receiver.datagram(s.packet(PLAIN[5]), 1.35)  # 150 ms after the last silence frame
    out = receiver.poll(2.0)[0]
    assert out[-1].position == round(1.35 * 48000)
    assert out[-1].position - out[-2].position == round(0.15 * 48000) + 960


def test_a_restarted_sender_is_placed_where_it_arrived() -> None:
    """A new stream on the same SSRC (its sequence jumps, its timestamp goes on) starts where
    it arrived, not where the old stream's RTP time would put it (100 ms earlier)."""
    receiver, _ = _alices_receiver()
    s = _Sender(11)
    for k in range(5):
        receiver.datagram(s.packet(PLAIN[k]), 1.0 + 0.02 * k)
    s.seq = (s.seq + 20000) & 0xFFFF
    receiver.datagram(s.packet(PLAIN[5]), 1.2)
    out = receiver.poll(2.0)[0]
    assert out[-1].new_stream and out[-1].position == round(1.2 * 48000)


def test_a_clear_frame_under_dave_is_dropped_not_passed_on(group) -> None:
    receiver, stats = _alices_receiver()
    receiver.set_dave(group[BOT].session, 1)
    s11 = _Sender(11)
    receiver.datagram(s11.packet(PLAIN[0]), 1.0)  # audio without DAVE's encryption
    receiver.datagram(s11.packet(group[ALICE].encrypt_opus(PLAIN[1])), 1.02)
    out = receiver.poll(1.5)[0]
    assert [p.opus for p in out] == [PLAIN[1]]
    assert stats.user(ALICE).dropped == Counter({DropReason.unencrypted: 1})


def test_the_concealment_budget_refills_one_frame_per_20_ms_of_real_time() -> None:
    receiver, stats = _alices_receiver()
    s11 = _Sender(11)
    plan = [(0, 1.0), (99, 1.02), (20, 1.23), (3, 1.33), (4, 1.35)]  # (packets skipped, arrival)
    for k, (skipped, at) in enumerate(plan):
        s11.seq, s11.ts = s11.seq + skipped, s11.ts + 960 * skipped
        receiver.datagram(s11.packet(PLAIN[k]), at)
    out = receiver.poll(3.0)[0]
    # 50 at first, spent; 0.21 s later 10.5 (10 used); 0.1 s later 5.5 (3 used); 20 ms later 3.5 (3 used)
    assert [len(p.lost_positions) for p in out] == [0, 50, 10, 3, 3]
    assert stats.user(ALICE).lost == 99 + 20 + 3 + 4


def _raw(seq: int, body: bytes, *, ext_words: int | None, padding: bool = False, counter: int = 1) -> bytes:
    """An RTP packet of SSRC 11 sealed with KEY: the header says ``ext_words`` words of
    extension (None: no X bit), and ``body`` is the whole plaintext after the header."""
    header = rtp.build_rtp_header(
        seq, seq * 960, 11, payload_type=120, padding=padding, extension_length=None if ext_words is None else 0
    )
    if ext_words is not None:  # patch the length word: the body may say otherwise
        header = header[:-2] + struct.pack(">H", ext_words)
    return transport.transport_cipher(transport.AES_GCM, KEY).encrypt(header, body, counter)


def _one(data: bytes) -> tuple[list[Any], ListenStats]:
    receiver, stats = _alices_receiver()
    receiver.datagram(data, 1.0)
    return receiver.poll(2.0)[0], stats


def test_the_audio_level_is_read_wherever_its_element_sits_and_never_from_the_opus() -> None:
    opus = bytes([0x18]) + PLAIN[0][1:]  # a TOC byte whose high nibble is 1, as id 1's would be
    # the level element first (the fast path), after another element, absent, no extension at all
    first, _ = _one(_raw(1, bytes((0x10, 0x80 | 33, 0, 0)) + opus, ext_words=1))
    after, _ = _one(_raw(1, bytes((0x20, 0x17, 0x10, 0x80 | 33)) + opus, ext_words=1))
    absent, _ = _one(_raw(1, bytes((0x20, 0x17, 0, 0)) + opus, ext_words=1))
    bare, _ = _one(_raw(1, opus, ext_words=None))
    assert [p.audio_level for p in first + after + absent + bare] == [33, 33, None, None]
    assert all(p.opus == opus for p in first + after + absent + bare)


def test_an_extension_longer_than_the_packet_is_malformed_and_one_that_fills_it_is_padding() -> None:
    out, stats = _one(_raw(1, bytes((0x10, 0x80 | 33, 0, 0)), ext_words=2))  # says 8 bytes, has 4
    assert out == [] and stats.user(ALICE).dropped == Counter({DropReason.malformed: 1})
    out, stats = _one(_raw(1, bytes((0x10, 0x80 | 33, 0, 0)), ext_words=1))  # exactly fills it: no media
    assert out == [] and stats.user(ALICE).padding == 1 and stats.user(ALICE).dropped == Counter()


def test_a_packet_with_rtp_padding_keeps_its_audio() -> None:
    # P bit: the last byte says how many bytes of padding end the packet (the general parser)
    body = rtp.audio_level_extension(20) + PLAIN[0] + bytes(3) + bytes([4])
    out, _ = _one(_raw(1, body, ext_words=1, padding=True))
    assert [(p.opus, p.audio_level) for p in out] == [(PLAIN[0], 20)]


def test_clear_audio_passes_when_the_connection_has_no_dave_session() -> None:
    receiver, _ = _alices_receiver()
    receiver.set_dave(None, 1)  # a protocol version, but no session: no end-to-end encryption
    receiver.datagram(_Sender(11).packet(PLAIN[0]), 1.0)
    assert [p.opus for p in receiver.poll(2.0)[0]] == [PLAIN[0]]


def test_is_dave_frame_at_its_exact_bounds() -> None:
    smallest = bytes(8) + b"\x00" + bytes([12]) + MAGIC  # tag, nonce, size byte = the whole frame
    assert is_dave_frame(smallest)
    assert is_dave_frame(b"\x01" + smallest[:-3] + bytes([13]) + MAGIC)  # size == n with a byte of data
    assert not is_dave_frame(smallest[1:])  # 11 bytes: shorter than any supplemental block
    assert not is_dave_frame(smallest[:-3] + bytes([13]) + MAGIC)  # size byte beyond the frame
    assert not is_dave_frame(smallest[:-3] + bytes([11]) + MAGIC)  # smaller than its own minimum


def test_frames_waiting_for_their_owner_are_bounded_by_max_held() -> None:
    m = SSRCMap()
    receiver, stats = _receiver(m, max_held=2)
    s = _Sender(11)
    for k in range(3):
        receiver.datagram(s.packet(PLAIN[k]), 1.0 + 0.02 * k)
        receiver.poll(1.0 + 0.02 * k + 0.06)  # each waits for its owner, queued
    assert stats.user(None).dropped == Counter({DropReason.overflow: 1})  # the third pushed the first out
    m.set_audio(11, ALICE)
    out = receiver.poll(2.0)[0]
    assert [p.sequence for p in out] == [1001, 1002]
    assert out[0].lost_positions == (out[0].position - 960,)  # the dropped frame's slot is concealed


def test_a_dave_frame_before_the_session_waits_for_it_not_passed_on_sealed(group) -> None:
    m = SSRCMap()
    m.set_audio(11, ALICE)
    receiver, _ = _receiver(m)  # no DAVE session yet (the welcome is on its way)
    receiver.datagram(_Sender(11).packet(group[ALICE].encrypt_opus(PLAIN[0])), 1.0)
    assert receiver.poll(1.1)[0] == []
    receiver.set_dave(group[BOT].session, 1)
    assert [p.opus for p in receiver.poll(1.2)[0]] == [PLAIN[0]]


def test_a_bug_handling_one_datagram_is_counted_and_the_rest_of_the_batch_goes_on() -> None:
    receiver, stats = _alices_receiver()
    real = receiver._rtp_one
    calls = []

    def flaky(data: bytes, now: float, retry: bool = False) -> None:
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        real(data, now, retry)

    receiver._rtp_one = flaky  # type: ignore[method-assign]
    s = _Sender(11)
    receiver.datagrams([s.packet(PLAIN[0]), s.packet(PLAIN[1])], [1.0, 1.02])
    assert stats.unattributed == Counter({DropReason.malformed: 1})
    assert [p.sequence for p in receiver.poll(2.0)[0]] == [1001]
