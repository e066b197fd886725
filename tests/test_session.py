"""The listening session's glue between receiver, decode pool and sink, end to end."""

from __future__ import annotations

import pytest

from discord.ext import listening
from discord.ext.listening.stats import DropReason
from discord.ext.listening.testing import VoiceServerEmulator, speechlike
from discord.ext.listening.testing.speech import build_rtp_packet
from helpers import connect_and_listen, stop_listening

pytestmark = pytest.mark.timeout(60)


async def test_a_packet_libopus_refuses_is_counted_and_its_slot_concealed(pool) -> None:
    async with VoiceServerEmulator(seed=41, dave=False) as server:
        alice = await server.add_member(4100, "alice")
        vc, sink, done = await connect_and_listen(server, pool)
        spurt = await alice.speak(speechlike(0.4, seed=1), realtime=False)
        await server.drain()
        last = spurt.frames[-1]
        # Authentic (transport-sealed) but not Opus that libopus accepts: a member's broken
        # client, or a bug; right after the spurt, in sequence.
        link = server._media.links[server.session]
        bad = build_rtp_packet(
            link.cipher, link.next_counter(), ssrc=alice.ssrc, sequence=(last.sequence + 1) & 0xFFFF,
            timestamp=(last.timestamp + 960) & 0xFFFFFFFF, payload=b"\x03\x00", audio_level=30,
        )  # fmt: skip
        await server.inject("raw", payload=bad)
        bad_seq = (last.sequence + 1) & 0xFFFF
        await server.wait_until(lambda: bad_seq in {f.sequence for f in sink.frames}, timeout=10, what="its slot")
        await stop_listening(vc, done)
    stats = vc.listen_stats.user(4100)
    assert stats.dropped == {DropReason.decode_error: 1}
    got = sink.by_user()[4100]
    assert [f.sequence for f in got] == [f.sequence for f in spurt.frames] + [bad_seq]
    slot = got[-1]
    assert slot.kind is listening.FrameKind.plc  # concealed in place: the timeline stays whole
    assert slot.position == got[-2].position + 960
