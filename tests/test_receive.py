"""The sans-I/O receive path: real transport ciphers, real davey MLS groups, real libopus packets."""

from __future__ import annotations

import itertools
import os
import random
from types import SimpleNamespace

import pytest

from discord.ext.listening import rtp, transport
from discord.ext.listening.dave import FAILURE_LIMIT as DAVE_FAILURE_LIMIT
from discord.ext.listening.opus import SILENCE_FRAME, OpusEncoder, packet_has_fec
from discord.ext.listening.receive import PacketReceiver
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
from helpers import receiver_for

CHANNEL = 4242
BOT, ALICE, BOB = 1, 100, 200
KEY = os.urandom(32)


def _opus_frames(n: int, seed: int) -> list[bytes]:
    pcm = speechlike(n * 0.02 + 0.02, seed=seed)
    enc = OpusEncoder()
    return [enc.encode(pcm[i * 3840 : (i + 1) * 3840]) for i in range(n)]


class Sender:
    """Builds the datagrams an SFU forwards for one member."""

    def __init__(self, ssrc: int, mode: str = transport.AES_GCM, seq: int = 1000, ts: int = 5000) -> None:
        self.ssrc, self.seq, self.ts = ssrc, seq, ts
        self.cipher = transport.transport_cipher(mode, KEY)
        self.counter = 0

    def packet(self, payload: bytes, *, seq: int | None = None, ts: int | None = None, pt: int = 120) -> bytes:
        ext = rtp.audio_level_extension(20)
        header = rtp.build_rtp_header(
            self.seq if seq is None else seq,
            self.ts if ts is None else ts,
            self.ssrc,
            payload_type=pt,
            extension_length=4,
        )
        self.counter += 1
        if seq is None:
            self.seq = (self.seq + 1) & 0xFFFF
            self.ts = (self.ts + 960) & 0xFFFFFFFF
        return self.cipher.encrypt(header, ext + payload, self.counter)


def _receiver(conn: SimpleNamespace, ssrc_map: SSRCMap, **kw: object) -> tuple[PacketReceiver, ListenStats]:
    stats = ListenStats()
    return receiver_for(conn, ssrc_map, stats, **kw), stats


def _clear_conn() -> SimpleNamespace:
    return SimpleNamespace(mode=transport.AES_GCM, secret_key=list(KEY), dave_session=None, dave_protocol_version=0)


def _run(receiver: PacketReceiver, deliveries: list[tuple[float, bytes]], until: float) -> list:
    out = []
    t = 0.0
    deliveries = sorted(deliveries, key=lambda d: d[0])
    i = 0
    while t <= until:
        while i < len(deliveries) and deliveries[i][0] <= t:
            receiver.datagram(deliveries[i][1], deliveries[i][0])
            i += 1
        out += receiver.poll(t)[0]
        t = round(t + 0.01, 6)
    return out + receiver.flush(t)


def test_reordered_duplicated_and_lost_packets_come_out_once_in_order() -> None:
    m = SSRCMap()
    m.set_audio(11, ALICE)
    receiver, stats = _receiver(_clear_conn(), m)
    frames = _opus_frames(200, seed=1)
    sender = Sender(11, seq=65400)  # crosses the 16-bit wrap
    rng = random.Random(5)
    deliveries = []
    lost = {17, 18, 90}
    for i, f in enumerate(frames):
        pkt = sender.packet(f)
        if i in lost:
            continue
        t = i * 0.02 + rng.uniform(0, 0.03)  # up to 30 ms jitter: reorders neighbours
        deliveries.append((t, pkt))
        if i % 25 == 0:
            deliveries.append((t + 0.005, pkt))  # duplicate
    out = _run(receiver, deliveries, 5.0)
    assert [p.opus for p in out] == [f for i, f in enumerate(frames) if i not in lost]
    assert [p.user_id for p in out] == [ALICE] * len(out)
    assert sum(p.lost_before for p in out) == 3
    # Contiguous frames are exactly 960 samples apart on the timeline, whatever the jitter.
    positions = [p.position for p in out]
    seqs = [p.sequence for p in out]
    for a, b, sa, sb in zip(positions, positions[1:], seqs, seqs[1:]):
        assert b - a == 960 * ((sb - sa) & 0xFFFF)
    s = stats.user(ALICE)
    assert s.dropped[DropReason.duplicate] == 8
    assert s.received == len(out) + 8 and s.lost == 3


@pytest.mark.parametrize("first_lost", [True, False])
def test_a_lost_first_packet_is_recovered_from_the_next_ones_fec(first_lost: bool) -> None:
    # Speech starts with the stream; the first packet may vanish on the way. Only the FEC
    # (LBRR) data in the first arrival says it existed, and the decoder can rebuild it.
    m = SSRCMap()
    m.set_audio(11, ALICE)
    receiver, stats = _receiver(_clear_conn(), m)
    pcm = speechlike(1.0, seed=4)
    enc = OpusEncoder(fec=True, expected_loss=10)
    frames = [enc.encode(pcm[i * 3840 : (i + 1) * 3840]) for i in range(40)]
    start = next(i for i in range(1, 40) if packet_has_fec(frames[i]) and not packet_has_fec(frames[i - 1]))
    sender = Sender(11, seq=3000, ts=90000)
    first = start if first_lost else start - 1  # the first packet to arrive
    deliveries = []
    for i in range(start - 1, start + 10):
        pkt = sender.packet(frames[i])
        if i >= first:
            deliveries.append((1.0 + i * 0.02, pkt))
    out = _run(receiver, deliveries, 2.0)
    assert [p.opus for p in out] == frames[first : start + 10]
    assert all(not p.lost_positions for p in out[1:])
    if first_lost:
        # one frame, placed right before the first arrival, for the decoder to fill with FEC
        assert out[0].lost_positions == (out[0].position - 960,)
        assert stats.user(ALICE).lost == 1
    else:
        # the first packet had no predecessor: its FEC-less start declares nothing lost
        assert out[0].lost_positions == () and stats.user(ALICE).lost == 0


def test_unmapped_ssrc_waits_for_speaking_then_is_attributed() -> None:
    m = SSRCMap()
    receiver, _ = _receiver(_clear_conn(), m)
    frames = _opus_frames(10, seed=2)
    sender = Sender(22)
    for i, f in enumerate(frames):
        receiver.datagram(sender.packet(f), i * 0.02)
    assert receiver.poll(0.5)[0] == []  # held: whose audio is it?
    m.set_audio(22, BOB)  # SPEAKING arrives late
    out = receiver.poll(0.51)[0]
    assert [p.opus for p in out] == frames and {p.user_id for p in out} == {BOB}
    assert out[0].position == 0  # placed where it arrived, not where SPEAKING came


def test_unmapped_ssrc_without_e2ee_is_delivered_after_hold_time_not_lost() -> None:
    receiver, _stats = _receiver(_clear_conn(), SSRCMap(), hold_time=0.3)
    sender = Sender(33)
    frames = _opus_frames(5, seed=3)
    for i, f in enumerate(frames):
        receiver.datagram(sender.packet(f), i * 0.02)
    assert receiver.poll(0.2)[0] == []
    out = receiver.poll(0.5)[0]
    assert [p.opus for p in out] == frames and {p.user_id for p in out} == {None}


def test_bad_traffic_is_counted_and_does_not_disturb_a_speaker() -> None:
    m = SSRCMap()
    m.set_audio(11, ALICE)
    m.set_video(12, ALICE)
    receiver, stats = _receiver(_clear_conn(), m, max_streams=8)
    good = Sender(11)
    frames = _opus_frames(50, seed=4)
    rng = random.Random(1)
    forger = Sender(11)
    forger.cipher = transport.transport_cipher(transport.AES_GCM, os.urandom(32))
    t = 0.0
    for f in frames:
        receiver.datagram(good.packet(f), t)
        receiver.datagram(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80))), t)  # garbage
        receiver.datagram(forger.packet(b"evil"), t)  # wrong key
        receiver.datagram(Sender(12).packet(b"\x00" * 500, pt=103), t)  # video
        receiver.datagram(Sender(rng.randrange(1 << 32)).packet(b"\xfc\xff\xfe"), t)  # flood of fresh SSRCs
        t += 0.02
    out = receiver.poll(t + 1)[0] + receiver.flush(t + 2)
    assert [p.opus for p in out if p.user_id == ALICE] == frames
    assert len(receiver.ssrcs) <= 8
    total = stats.total
    # Random garbage is mostly malformed; the odd datagram that parses as RTP fails auth.
    assert total.dropped[DropReason.auth_failed] >= 50
    assert total.dropped[DropReason.not_audio] >= 50
    bad = (DropReason.malformed, DropReason.auth_failed, DropReason.not_audio)
    assert sum(total.dropped[r] for r in bad) == 150  # every bad datagram counted exactly once


@pytest.fixture
def dave_group() -> tuple[DaveGroupServer, dict[int, LocalDaveMember]]:
    server = DaveGroupServer(CHANNEL)
    members: dict[int, LocalDaveMember] = {}
    for uid in (BOT, ALICE):
        members[uid] = LocalDaveMember(uid, CHANNEL)
        connect_local_member(server, members[uid], members)
    assert members[BOT].ready and members[ALICE].ready
    return server, members


def _dave_conn(bot: LocalDaveMember) -> SimpleNamespace:
    return SimpleNamespace(
        mode=transport.XCHACHA20, secret_key=list(KEY), dave_session=bot.session, dave_protocol_version=1
    )


def test_dave_frames_decrypt_in_order_even_when_the_first_ones_arrive_reordered(dave_group) -> None:
    _, members = dave_group
    m = SSRCMap()
    m.set_audio(11, ALICE)
    receiver, stats = _receiver(_dave_conn(members[BOT]), m)
    frames = _opus_frames(30, seed=5)
    sender = Sender(11, mode=transport.XCHACHA20)
    packets = [sender.packet(members[ALICE].encrypt_opus(f)) for f in frames]
    packets[0], packets[1] = packets[1], packets[0]  # davey refuses frames older than the first it saw
    for i, pkt in enumerate(packets):
        receiver.datagram(pkt, i * 0.02)
    out = receiver.poll(1.0)[0]
    assert [p.opus for p in out] == frames
    assert stats.total.dropped == {}


def test_a_new_members_first_words_wait_for_their_key(dave_group) -> None:
    server, members = dave_group
    m = SSRCMap()
    receiver, stats = _receiver(_dave_conn(members[BOT]), m)
    # Bob's client already has a group of its own (it encrypts before the bot can decrypt).
    bob = LocalDaveMember(BOB, CHANNEL)
    early_server = DaveGroupServer(CHANNEL)
    other = LocalDaveMember(999, CHANNEL)
    connect_local_member(early_server, bob, {BOB: bob, 999: other})
    connect_local_member(early_server, other, {BOB: bob, 999: other})
    assert bob.ready
    frames = _opus_frames(20, seed=6)
    sender = Sender(44, mode=transport.XCHACHA20)
    for i, f in enumerate(frames[:10]):
        receiver.datagram(sender.packet(bob.encrypt_opus(f)), i * 0.02)
    assert receiver.poll(0.3)[0] == []  # unknown SSRC, unknown key: held, not dropped
    m.set_audio(44, BOB)
    assert receiver.poll(0.31)[0] == []  # user known now, key still missing
    # Bob joins the bot's group for real; his frames from now on use the bot's group keys.
    bob2 = LocalDaveMember(BOB, CHANNEL)
    connect_local_member(server, bob2, {**members, BOB: bob2})
    for i, f in enumerate(frames[10:], start=10):
        receiver.datagram(sender.packet(bob2.encrypt_opus(f)), i * 0.02)
    out = receiver.poll(1.0)[0] + receiver.flush(10.0)
    # The frames sealed with the other group's keys can never be decrypted: counted, and
    # their slots reported as lost so the decoder conceals them; the rest is heard.
    assert [p.opus for p in out] == frames[10:]
    assert out[0].lost_before == 10
    assert stats.user(BOB).dropped[DropReason.undecryptable] == 10


def test_silence_frames_pass_in_the_clear_under_dave(dave_group) -> None:
    _, members = dave_group
    m = SSRCMap()
    m.set_audio(11, ALICE)
    receiver, stats = _receiver(_dave_conn(members[BOT]), m)
    sender = Sender(11, mode=transport.XCHACHA20)
    frame = _opus_frames(1, seed=7)[0]
    receiver.datagram(sender.packet(members[ALICE].encrypt_opus(frame)), 0.0)
    receiver.datagram(sender.packet(SILENCE_FRAME), 0.02)
    receiver.datagram(sender.packet(frame), 0.04)  # clear audio under DAVE: refused
    out = receiver.poll(1.0)[0]
    assert [p.opus for p in out] == [frame, SILENCE_FRAME]
    assert stats.user(ALICE).dropped[DropReason.unencrypted] == 1


# -- what Discord really sends (docs/discord-behaviours.md) ---------------------------------


def _padding_packet(sender: Sender, *, seq: int, ts: int, size: int = 200) -> bytes:
    """A libwebrtc bandwidth probe: P bit, the payload nothing but padding."""
    header = bytearray(rtp.build_rtp_header(seq, ts, sender.ssrc, extension_length=4, padding=True))
    sender.counter += 1
    body = rtp.audio_level_extension(127, voice=False) + bytes(size - 1) + bytes([size])
    return sender.cipher.encrypt(bytes(header), body, sender.counter)


@pytest.mark.parametrize("lose", ["nothing", "padding", "audio"])
def test_a_padding_burst_is_no_media_no_loss_and_no_time(lose: str) -> None:
    m = SSRCMap()
    m.set_audio(11, ALICE)
    receiver, stats = _receiver(_clear_conn(), m)
    frames = _opus_frames(40, seed=8)
    sender = Sender(11, seq=65500)  # the burst crosses the sequence wrap
    deliveries = []
    t = 0.0
    for i, f in enumerate(frames):
        if i == 20:  # 50 probes in ~100 ms, the last audio timestamp repeated
            last_ts = (sender.ts - 960) & 0xFFFFFFFF
            for k in range(50):
                pkt = _padding_packet(sender, seq=sender.seq, ts=last_ts)
                sender.seq = (sender.seq + 1) & 0xFFFF
                if not (lose == "padding" and k in (0, 10, 49)):
                    deliveries.append((t + k * 0.002, pkt))
        pkt = sender.packet(f)
        if not (lose == "audio" and i == 19):
            deliveries.append((t, pkt))
        t += 0.02
    out = _run(receiver, deliveries, until=2.0)
    kept = [f for i, f in enumerate(frames) if not (lose == "audio" and i == 19)]
    assert [p.opus for p in out] == kept
    # every frame at its RTP place: 960 samples apart, the burst took no time
    positions = [p.position for p in out]
    expected_lost = 1 if lose == "audio" else 0
    assert sum(p.lost_before for p in out) == expected_lost
    for p, q in itertools.pairwise(out):
        assert q.position - p.position == 960 * (1 + q.lost_before)
    assert positions[-1] - positions[0] == 960 * 39
    user = stats.user(ALICE)
    assert user.padding == (47 if lose == "padding" else 50)
    assert user.lost == expected_lost
    assert user.received == len(kept)


def test_keepalive_echoes_are_recognised_not_malformed() -> None:
    receiver, stats = _receiver(_clear_conn(), SSRCMap())
    receiver.datagrams([bytes(8), b"\x01\x00\x00\x00\x00\x00\x00\x00"], [0.0, 0.01])
    assert stats.keepalive_echoes == 2
    assert stats.total.dropped == {}


def _alice_with_a_dead_epoch(
    members: dict[int, LocalDaveMember],
) -> tuple[PacketReceiver, ListenStats, LocalDaveMember]:
    """A receiver that knows Alice's SSRC 11, and an Alice sealing under keys it never held."""
    m = SSRCMap()
    m.set_audio(11, ALICE)
    receiver, stats = _receiver(_dave_conn(members[BOT]), m)
    return receiver, stats, stale_epoch_member(ALICE, CHANNEL)


def test_frames_of_a_dead_epoch_are_dropped_at_once_not_held(dave_group) -> None:
    _, members = dave_group
    receiver, stats, stale = _alice_with_a_dead_epoch(members)
    frames = _opus_frames(30, seed=9)
    sender = Sender(11, mode=transport.XCHACHA20)
    for i, f in enumerate(frames):
        sealer = stale if i < 10 else members[ALICE]
        receiver.datagram(sender.packet(sealer.encrypt_opus(f)), i * 0.02)
    # Polled right after the last arrival: nothing may wait for a key that never comes.
    out = receiver.poll(29 * 0.02 + 0.001)[0]
    assert [p.opus for p in out] == frames[10:]
    assert out[0].lost_before == 10  # their slots are concealed, the timeline stays whole
    assert stats.user(ALICE).dropped[DropReason.undecryptable] == 10
    assert receiver.take_dave_recoveries() == []  # 10 failures are no broken state


def test_a_sender_whose_frames_keep_failing_asks_for_one_recovery(dave_group) -> None:
    _, members = dave_group
    receiver, stats, stale = _alice_with_a_dead_epoch(members)
    frames = _opus_frames(2 * DAVE_FAILURE_LIMIT + 5, seed=10)
    sender = Sender(11, mode=transport.XCHACHA20)
    asked = []
    for i, f in enumerate(frames):
        receiver.datagram(sender.packet(stale.encrypt_opus(f)), i * 0.02)
        receiver.poll(i * 0.02 + 0.001)
        asked += receiver.take_dave_recoveries()
    assert asked == [ALICE]  # once, not once per frame, not again within the cooldown
    assert stats.dave_recoveries == 1
    assert stats.user(ALICE).dropped[DropReason.undecryptable] == len(frames)


def test_an_ssrc_no_speaking_names_is_attributed_by_its_dave_key(dave_group) -> None:
    server, members = dave_group
    bob = LocalDaveMember(BOB, CHANNEL)
    members[BOB] = bob
    connect_local_member(server, bob, members)
    for transition_id in list(server.pending_transitions):
        deliver(server, members, server.execute_transition(transition_id))
    assert bob.ready and members[BOT].session.epoch == bob.epoch
    m = SSRCMap()
    m.update_from_gateway(11, {"user_ids": [str(ALICE), str(BOB)]})  # who is in the call, no SSRCs
    m.set_audio(11, ALICE)
    receiver, stats = _receiver(_dave_conn(members[BOT]), m)
    frames = _opus_frames(20, seed=11)
    sender = Sender(77, mode=transport.XCHACHA20)
    for i, f in enumerate(frames):
        receiver.datagram(sender.packet(bob.encrypt_opus(f)), i * 0.02)
    out = receiver.poll(1.0)[0]
    assert [p.opus for p in out] == frames  # every word, the first one included
    assert {p.user_id for p in out} == {BOB}
    assert m.user_for(77) == BOB and stats.ssrcs_inferred == 1
    assert stats.user(BOB).received == 20 and stats.user(None).received == 0
