"""What Discord really does, end to end (docs/discord-behaviours.md): a real discord.py
connection through the emulator at its Discord-like defaults, each test about one behaviour
other receivers were broken by."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from discord.ext import listening
from discord.ext.listening.stats import DropReason
from discord.ext.listening.testing import VoiceServerEmulator, speechlike
from helpers import Collect, connect_and_listen, settle, stop_listening

pytestmark = pytest.mark.timeout(90)


class FastKeepalive(listening.VoiceClient):
    # The emulator's media timeout is scaled down to seconds for the test; so is this.
    keepalive_interval = 0.25


class NoKeepalive(listening.VoiceClient):
    keepalive_interval = 3600.0  # the first one goes out at connect, then never again


async def _after_silence(vc_cls: type, pool: object) -> tuple[Collect, VoiceServerEmulator, listening.ListenStats]:
    """A listen-only bot sits through 3x the media timeout, then a member speaks."""
    async with VoiceServerEmulator(seed=31, media_timeout=1.0) as server:
        alice = await server.add_member(3100, "alice")
        vc, sink, done = await connect_and_listen(server, pool, cls=vc_cls)
        await asyncio.sleep(3.0)  # the scenario itself: nobody talks for three timeouts
        spurt = await alice.speak(speechlike(1.0, seed=1))
        await server.drain()
        # (after drain() every packet of the spurt has been sent or withheld)
        await server.wait_until(
            lambda: (
                len(sink.by_user()[alice.user_id]) >= len(spurt.frames) or server.media_withheld >= len(spurt.frames)
            ),
            timeout=5,
            what="audio or withheld media",
        )
        await stop_listening(vc, done)
        sink.spurt = spurt  # type: ignore[attr-defined]
        return sink, server, vc.listen_stats


async def test_a_listen_only_bot_still_hears_after_three_media_timeouts(pool) -> None:
    sink, server, stats = await _after_silence(FastKeepalive, pool)
    assert server.media_withheld == 0
    assert len(server.keepalives_received) >= 8  # one every 0.25 s for 3 s and more
    assert all(len(data) == 8 for _, data in server.keepalives_received)
    heard = [f.sequence for f in sink.by_user()[3100]]
    assert heard == [f.sequence for f in sink.spurt.frames]  # type: ignore[attr-defined]
    assert stats.total.dropped == {}


async def test_without_keepalives_the_emulator_goes_deaf_like_discord(pool) -> None:
    # The control: proves the test above can fail (the emulator is not kinder than Discord).
    sink, server, _ = await _after_silence(NoKeepalive, pool)
    assert server.media_withheld > 0
    assert not sink.by_user().get(3100)


async def test_keepalives_follow_the_connection_and_echoes_are_not_drops(pool) -> None:
    async with VoiceServerEmulator(seed=32, echo_keepalive=True) as server:
        vc, _sink, done = await connect_and_listen(server, pool, cls=FastKeepalive)
        await server.wait_until(lambda: vc.listen_stats.keepalive_echoes >= 3, timeout=5, what="echoes")
        await stop_listening(vc, done)
        # not listening any more: still connected, still kept alive
        sent = len(server.keepalives_received)
        await server.wait_until(lambda: len(server.keepalives_received) >= sent + 2, timeout=5, what="keepalives")
        assert vc.listen_stats.total.dropped == {}
        await vc.disconnect()
        assert not vc._keepalive.running  # no timer outlives the connection
        sent = len(server.keepalives_received)
        await asyncio.sleep(0.6)  # the scenario: over two keepalive intervals, in which none may come
        assert len(server.keepalives_received) == sent


async def test_a_padding_burst_mid_spurt_costs_no_frame_and_no_time(pool) -> None:
    async with VoiceServerEmulator(seed=33) as server:
        alice = await server.add_member(3300, "alice")
        vc, sink, done = await connect_and_listen(server, pool)
        spurt = await alice.speak(speechlike(1.5, seed=2), padding_burst_at=25, padding_burst_size=50)
        await server.drain()
        await server.wait_until(lambda: len(sink.by_user()[3300]) >= len(spurt.frames), timeout=5, what="spurt")
        await stop_listening(vc, done)
    (burst,) = spurt.padding_bursts
    assert burst.count == 50
    got = sink.by_user()[3300]
    assert [f.sequence for f in got] == [f.sequence for f in spurt.frames]  # the burst's numbers are no frames
    assert not [f for f in got if f.concealed]
    # positions: 960 samples apart across the burst, the spurt exactly its length
    steps = {b.position - a.position for a, b in itertools.pairwise(got)}
    assert steps == {960}
    assert got[-1].position + 960 - got[0].position == 960 * len(spurt.frames)
    stats = vc.listen_stats.user(3300)
    assert stats.padding == 50 and stats.lost == 0 and stats.concealed == 0


@pytest.mark.parametrize("how", ["move_to", 4006, 4009, 4015])
async def test_moves_and_reconnects_while_listening_resume_audio_within_seconds(pool, how: object) -> None:
    async with VoiceServerEmulator(seed=34) as server:
        here = await server.add_member(3400, "here")
        there = await server.add_member(3401, "there", channel=server.other_channel)
        vc, sink, done = await connect_and_listen(server, pool, cls=FastKeepalive)
        first = await here.speak(speechlike(0.4, seed=3))
        await server.drain()
        await settle(server, vc, (here, [first]))
        # the reader is back in discord.py's select() on this socket
        await server.wait_until(lambda: not vc._listening._reading, timeout=5, what="the reader handed back")
        started = time.monotonic()
        if how == "move_to":
            speaker, channel_id = there, server.other_channel_id
            await vc.move_to(server.other_channel, timeout=10)
        else:
            speaker, channel_id = here, server.channel_id
            await server.close_voice(how)  # type: ignore[arg-type]
        await server.wait_until(
            lambda: (
                vc.is_connected()
                and vc.channel.id == channel_id
                and server.session is not None
                and server.session.established
            ),
            timeout=15,
            what=f"back after {how}",
        )
        await server.wait_dave_ready(timeout=15)
        spurt = await speaker.speak(speechlike(0.6, seed=4))
        await server.drain()
        await server.wait_until(
            lambda: {f.sequence for f in spurt.frames} <= {f.sequence for f in sink.frames}, timeout=15, what="audio"
        )
        took = time.monotonic() - started
        back = time.monotonic()
        # the keepalive followed the connection to its new socket (and address)
        await server.wait_until(
            lambda: any(t > back for t, _ in server.keepalives_received),
            timeout=5,
            what="a keepalive after the reconnect",
        )
        assert server.bot_last_heard is not None and server.bot_last_heard > back
        assert vc.is_listening()
        await stop_listening(vc, done)
    # Without a BYE, discord.py's reader could sit ~30 s in select() on a socket nobody sends to.
    assert took < 5.0, f"{how}: back and first audio heard after {took:.1f} s"
    heard = [f.sequence for f in sink.by_user()[speaker.user_id] if f.sequence in {g.sequence for g in spurt.frames}]
    assert heard == [f.sequence for f in spurt.frames]


@pytest.mark.parametrize("speaking_event", ["after", "none"])
async def test_a_member_heard_from_the_first_word_before_or_without_op_5(pool, speaking_event: str) -> None:
    async with VoiceServerEmulator(seed=35) as server:
        vc, sink, done = await connect_and_listen(server, pool)
        bob = await server.add_member(3500, "bob")
        await server.wait_dave_ready()
        assert vc.ssrc_map.user_for(bob.ssrc) is None  # nothing named bob's SSRC yet (no op 12)
        spurt = await bob.speak(speechlike(1.0, seed=5), speaking_event=speaking_event)
        await server.drain()
        await server.wait_until(lambda: len(sink.by_user()[3500]) >= len(spurt.frames), timeout=8, what="bob")
        await stop_listening(vc, done)
    got = sink.by_user()[3500]
    assert [f.sequence for f in got] == [f.sequence for f in spurt.frames]
    assert got[0].kind is listening.FrameKind.decoded
    assert None not in sink.by_user()
    stats = vc.listen_stats
    assert stats.total.dropped == {}
    if speaking_event == "none":
        assert stats.ssrcs_inferred == 1  # found by its DAVE key, said in the stats


async def test_op_12_mapping_is_a_switch_only(pool) -> None:
    # The old emulator behaviour, for this test alone: op 12 names every member's SSRC.
    async with VoiceServerEmulator(seed=36, ssrc_in_client_connect=True) as server:
        bob = await server.add_member(3600, "bob")
        vc = await server.connect(cls=listening.VoiceClient)
        await server.wait_until(lambda: vc.ssrc_map.user_for(bob.ssrc) == 3600, timeout=5, what="op 12")
    async with VoiceServerEmulator(seed=36) as server:
        bob = await server.add_member(3600, "bob")
        vc = await server.connect(cls=listening.VoiceClient)
        # Op 11 and an op 12 (if any) come before the DAVE messages, which connect() waited for.
        await server.wait_dave_ready()
        assert vc.ssrc_map.user_for(bob.ssrc) is None
        assert 3600 in vc.ssrc_map.connected_users  # op 11 still names who is there


async def test_rtcp_feedback_and_sfu_reports_reach_on_rtcp(pool) -> None:
    async with VoiceServerEmulator(seed=37, sfu_report_interval=0.2) as server:
        vc, sink, done = await connect_and_listen(server, pool)
        await server.send_feedback("nack", sequences=[7, 9])
        await server.send_feedback("pli")
        await server.wait_until(
            lambda: {type(p) for p in sink.rtcp} >= {listening.ReceiverReport, listening.Feedback},
            timeout=5,
            what="RTCP",
        )
        await stop_listening(vc, done)
    kinds = {(p.type, p.fmt) for p in sink.rtcp if isinstance(p, listening.Feedback)}
    assert kinds == {(205, 1), (206, 1)}
    assert vc.listen_stats.total.dropped.get(DropReason.not_audio, 0) == 0


class Timed(Collect):
    """Also notes when each frame reached the sink."""

    def __init__(self) -> None:
        super().__init__()
        self.reached: dict[int, float] = {}

    def on_audio(self, frame: listening.AudioFrame) -> None:
        self.reached.setdefault(frame.sequence, time.monotonic())
        super().on_audio(frame)


async def test_a_burst_of_dead_epoch_frames_costs_no_waiting(pool) -> None:
    async with VoiceServerEmulator(seed=38) as server:
        alice = await server.add_member(3800, "alice")
        vc, sink, done = await connect_and_listen(server, pool, Timed())
        alice.seal_with_dead_epoch(20)
        spurt = await alice.speak(speechlike(1.2, seed=6))
        await server.drain()
        await server.wait_until(lambda: spurt.frames[-1].sequence in sink.reached, timeout=10, what="the spurt")
        await stop_listening(vc, done)
    got = sink.by_user()[3800]
    dead = {f.sequence for f in spurt.audio_frames[:20]}
    stats = vc.listen_stats.user(3800)
    assert stats.dropped[DropReason.undecryptable] == 20
    assert [f.sequence for f in got if f.kind is listening.FrameKind.decoded] == [
        f.sequence for f in spurt.frames if f.sequence not in dead
    ]
    # The frames behind the dead ones did not wait for a key that never comes (the hold is 5 s).
    delays = [sink.reached[f.sequence] - f.arrival for f in got if f.sequence not in dead]
    assert max(delays) < 1.0, f"frames behind dead-epoch frames waited {max(delays):.2f} s"
    assert vc.listen_stats.dave_recoveries == 0  # 20 in a row is no broken state


async def test_a_sender_whose_frames_keep_failing_triggers_one_dave_recovery(pool) -> None:
    async with VoiceServerEmulator(seed=39) as server:
        alice = await server.add_member(3900, "alice")
        vc, sink, done = await connect_and_listen(server, pool)
        epoch = vc._connection.dave_session.epoch
        alice.seal_with_dead_epoch(60)
        await alice.speak(speechlike(1.4, seed=7))
        await server.drain()
        await server.wait_for_op(31, timeout=10)  # INVALID_COMMIT_WELCOME, then a new key package
        await server.wait_until(lambda: (vc._connection.dave_session.epoch or 0) > epoch, timeout=10, what="re-key")
        await server.wait_dave_ready()
        after = await alice.speak(speechlike(0.6, seed=8))
        await server.drain()
        await server.wait_until(
            lambda: {f.sequence for f in after.frames} <= {f.sequence for f in sink.frames},
            timeout=10,
            what="audio after the recovery",
        )
        await stop_listening(vc, done)
    stats = vc.listen_stats
    assert stats.dave_recoveries == 1
    assert len(server.ops_received(31)) == 1
    heard = [f.sequence for f in sink.by_user()[3900] if f.kind is listening.FrameKind.decoded]
    assert heard[-len(after.audio_frames) - 5 :] == [f.sequence for f in after.frames]
