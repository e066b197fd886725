"""What the receive path holds back or makes up, end to end through the voice server: FEC
for an isolated lost packet, frames held until their owner is named or their DAVE key
arrives, packets a dead decode worker took with it counted exactly, and the first packet
after a network stall held for the burst behind it. Each test was seen to fail with its
behaviour removed: the FEC branch of decoding.DecoderSet._gap, the no-owner wait of
receive.PacketReceiver._decrypt_pending, the retryable DAVE errors of dave.RETRYABLE, the
in-flight report of pool.processes._retire, the quiet-stretch hold of
reorder.JitterBuffer.pop_ready."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import numpy as np
import pytest

from discord.ext import listening
from discord.ext.listening.opus import OpusDecoder, packet_has_fec
from discord.ext.listening.rtp import parse_rtp_header
from discord.ext.listening.stats import DropReason
from discord.ext.listening.testing import VoiceServerEmulator, speechlike
from discord.ext.listening.testing.impairment import Impairment
from helpers import (
    WireTap,
    as_array,
    connect_and_listen,
    decode_worker,
    reference,
    settle,
    stop_listening,
    wait_for_sink,
    wait_or_fail,
)

pytestmark = pytest.mark.timeout(90)


class RecordedLoss:
    """A member's own :class:`Impairment`, remembering which RTP sequence numbers it dropped."""

    def __init__(self, impairment: Impairment) -> None:
        self.impairment = impairment
        self.dropped: set[int] = set()

    def apply(self, packet: bytes, send_time: float) -> list[tuple[float, bytes]]:
        out = self.impairment.apply(packet, send_time)
        if not out:
            self.dropped.add(parse_rtp_header(packet).sequence)
        return out


def correlation(a: Any, b: Any) -> float:
    x, y = as_array(a).ravel(), as_array(b).ravel()
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


async def test_an_isolated_lost_packet_is_rebuilt_from_the_next_packets_fec(pool) -> None:
    # One member on a lossy path (random loss: mostly isolated packets); the emulator's encoder
    # embeds FEC (LBRR) in every packet, as Discord's clients do.
    path = RecordedLoss(Impairment(loss=0.08, seed=2024))
    async with VoiceServerEmulator(seed=51) as server:
        alice = await server.add_member(5100, "alice", impairment=path)
        vc, sink, done = await connect_and_listen(server, pool)
        wire = WireTap(server)
        spurt = await alice.speak(speechlike(3.0, seed=21))
        await server.drain()
        received = [f for f in spurt.frames if f.sequence not in path.dropped]
        await settle(server, vc, (alice, [spurt]), wire=wire)
        await wait_or_fail(
            server,
            lambda: {f.sequence for f in spurt.frames} <= {f.sequence for f in sink.frames},
            10,
            lambda: "not every slot of the spurt reached the sink",
        )
        await stop_listening(vc, done)
    assert len(received) < len(spurt.frames)
    sent = {f.sequence: f for f in spurt.frames}
    seqs = [f.sequence for f in spurt.frames]
    # Isolated losses inside the audio: both neighbours arrived, the next one carries FEC.
    isolated = [
        q
        for i, q in enumerate(seqs[1:-1], 1)
        if q in path.dropped
        and seqs[i - 1] not in path.dropped
        and seqs[i + 1] not in path.dropped
        and not sent[q].silence
        and packet_has_fec(sent[seqs[i + 1]].opus)
    ]
    assert len(isolated) >= 5, f"the seed gave only {len(isolated)} isolated losses"
    got = {f.sequence: f for f in sink.by_user()[5100]}
    ref = reference([spurt])  # a lossless receiver's decode of every frame
    kinds = {q: got[q].kind for q in isolated}
    assert set(kinds.values()) == {listening.FrameKind.fec}, kinds
    # What PLC alone would have made of the same slots (the same decoder history, then conceal).
    plc: dict[int, bytes] = {}
    dec = OpusDecoder()
    for f in spurt.frames:
        if f.sequence in isolated:
            plc[f.sequence] = dec.conceal()
        elif f.sequence not in path.dropped:
            dec.decode(f.opus)
        else:
            dec.conceal()
    fec_corr = {q: correlation(got[q].audio, ref[q]) for q in isolated}
    plc_corr = {q: correlation(plc[q], ref[q]) for q in isolated}
    print(f"\nFEC correlation {sorted(round(c, 3) for c in fec_corr.values())}")
    print(f"PLC correlation {sorted(round(c, 3) for c in plc_corr.values())}")
    assert min(fec_corr.values()) > 0.8, fec_corr
    assert np.mean(list(fec_corr.values())) > np.mean(list(plc_corr.values()))


async def test_frames_of_an_unmapped_ssrc_wait_for_op_5_without_dave(pool) -> None:
    # Without DAVE no key names the sender: only op 5. The emulator's speaking_event="after"
    # sends it within a millisecond of the first packet, before the receiver's next 10 ms poll,
    # so nothing would wait; here it comes ten packets (~200 ms) late, as it may on Discord.
    async with VoiceServerEmulator(seed=52, dave=False) as server:
        vc, sink, done = await connect_and_listen(server, pool)
        bob = await server.add_member(5200, "bob")
        wire = WireTap(server)
        talk = asyncio.create_task(bob.speak(speechlike(1.0, seed=22), speaking_event="none"))
        await server.wait_until(
            lambda: sum(ssrc == bob.ssrc for ssrc, _ in wire.sent) >= 10, timeout=5, what="bob's first packets"
        )
        assert vc.ssrc_map.user_for(bob.ssrc) is None
        await bob.start_speaking()
        spurt = await talk
        await server.drain()
        await settle(server, vc, (bob, [spurt]))
        await wait_for_sink(server, vc, (bob, [spurt]))
        await stop_listening(vc, done)
    by_user = sink.by_user()
    assert None not in by_user, f"{len(by_user[None])} frames went out without their speaker"
    got = by_user[5200]
    assert [f.sequence for f in got] == [f.sequence for f in spurt.frames]  # the first word included
    assert got[0].kind is listening.FrameKind.decoded
    ref = reference([spurt])
    assert all(f.audio == ref[f.sequence] for f in got)
    assert vc.listen_stats.total.dropped == {}


async def test_packets_in_flight_in_a_killed_worker_are_counted_exactly(pool) -> None:
    async with VoiceServerEmulator(seed=53, dave=False) as server:
        carol = await server.add_member(5300, "carol")
        vc, sink, done = await connect_and_listen(server, pool)
        stats = vc.listen_stats
        talk = asyncio.create_task(carol.speak(speechlike(2.5, seed=23)))
        await server.wait_until(lambda: len(sink.frames) >= 25, timeout=10, what="half a second of speech")
        victim = pool.worker_pids()[decode_worker(vc)]
        assert victim is not None
        # Freeze the worker so packets are surely in flight in it, then kill it.
        os.kill(victim, signal.SIGSTOP)
        try:

            def stuck() -> int:
                user = stats.user(5300)  # (a snapshot)
                return user.received - user.frames

            await server.wait_until(lambda: stuck() >= 10, timeout=5, what="packets in flight")
        finally:
            os.kill(victim, signal.SIGKILL)
        spurt = await talk
        await server.drain()
        await settle(server, vc, (carol, [spurt]))
        sent = len(spurt.frames)

        def accounted() -> tuple[int, int]:
            return len(sink.by_user()[5300]), stats.user(5300).dropped[DropReason.worker_lost]

        # While listening goes on, not only at the end: every frame heard or counted lost.
        await wait_or_fail(
            server,
            lambda: sum(accounted()) >= sent and not vc._listening._queued,
            10,
            lambda: f"{sent} frames sent, (in the sink, counted worker_lost) = {accounted()}",
        )
        in_sink, lost = accounted()
        await stop_listening(vc, done)
    assert lost >= 10
    assert in_sink + lost == sent
    got = [f.sequence for f in sink.by_user()[5300]]
    assert len(set(got)) == len(got) and set(got) <= {f.sequence for f in spurt.frames}
    assert got[-1] == spurt.frames[-1].sequence, "listening did not go on after the worker died"
    after = stats.user(5300)
    assert len(got) + after.dropped[DropReason.worker_lost] == sent  # stopping counted nothing twice
    assert sum(after.dropped.values()) == after.dropped[DropReason.worker_lost]


async def test_first_words_wait_for_a_dave_key_that_arrives_after_them(pool) -> None:
    """A member who joins and speaks at once: its frames, sealed under the group's new epoch,
    reach the bot before the bot's commit does (the DAVE messages to it are slow). They wait
    for the key, bounded, and are all heard; none is dropped as undecryptable."""
    async with VoiceServerEmulator(seed=43) as server:
        await server.add_member(4300, "alice")
        vc, sink, done = await connect_and_listen(server, pool)
        server.delay_dave_to_bot(0.6)  # the bot's share of the next epoch change arrives late
        dan = await server.add_member(4301, "dan")
        epoch = vc.dave_epoch
        talk = asyncio.create_task(dan.speak(speechlike(1.0, seed=9)))  # op 5 names dan at once
        await server.wait_until(lambda: dan.packets_sent >= 10, timeout=5, what="dan's first words")
        assert vc.dave_epoch == epoch, "the key arrived before the words: this test would prove nothing"
        spurt = await talk
        await server.drain()
        server.delay_dave_to_bot(0)
        await settle(server, vc, (dan, [spurt]))
        await stop_listening(vc, done)
    stats = vc.listen_stats.user(4301)
    assert stats.dropped == {}, stats.dropped
    got = [f for f in sink.by_user()[4301] if f.kind is listening.FrameKind.decoded]
    assert [f.sequence for f in got] == [f.sequence for f in spurt.frames], "first words lost while the key was late"
    ref = reference([spurt])
    assert all(f.audio == ref[f.sequence] for f in got)


@pytest.mark.parametrize("clock", ["webrtc", "discordpy"])
async def test_a_network_stall_mid_speech_leaves_the_rest_of_the_speech_where_it_was_spoken(
    pool: Any, clock: str
) -> None:
    """The link to the bot stalls for 250 ms while a member talks on, then delivers the
    backlog, 2 ms apart. Every frame is heard, each exactly its RTP distance after the first
    (the speech after the stall is not pushed 250 ms late, nor is the rest of the spurt); the
    audio is a lossless decode of what was sent. It failed while the jitter buffer let the
    first packet of the burst out alone: placed by its late arrival after more than the
    timeline's 0.2 s gap, it moved everything after it by the stall."""
    async with VoiceServerEmulator(seed=54) as server:
        dora = await server.add_member(5400, "dora", clock=clock)
        vc, sink, done = await connect_and_listen(server, pool)
        wire = WireTap(server)
        talk = asyncio.create_task(dora.speak(speechlike(2.0, seed=24)))
        await server.wait_until(
            lambda: sum(ssrc == dora.ssrc for ssrc, _ in wire.sent) >= 30, timeout=5, what="dora's first packets"
        )
        server.stall_media_to_bot(0.25, spacing=0.002)  # the backlog drains at 10x real time
        spurt = await talk
        await server.drain()
        await settle(server, vc, (dora, [spurt]))
        await wait_for_sink(server, vc, (dora, [spurt]))
        await stop_listening(vc, done)
    late = [wire.sent[(dora.ssrc, f.sequence)] - server._to_loop_time(f.send_time) for f in spurt.frames]
    assert max(late) >= 0.2, f"the stall held nothing up: {max(late):.3f} s late at most"
    got = sink.by_user()[5400]
    assert [f.sequence for f in got] == [f.sequence for f in spurt.frames]
    offsets = {f.position - 960 * k for k, f in enumerate(got)}
    assert len(offsets) == 1, sorted(offsets)
    ref = reference([spurt])
    assert all(f.audio == ref[f.sequence] for f in got)
    assert vc.listen_stats.total.dropped == {}
