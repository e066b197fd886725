"""VoiceClient.listen end to end: the emulator speaks real DAVE + transport-encrypted Opus over
UDP on 127.0.0.1 to a real discord.py voice connection; the frames that come out of the sink
must be what each member said, in order, for the right user."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from typing import Any

import numpy as np
import pytest

import discord
from discord.ext import listening
from discord.ext.listening.opus import packet_has_fec
from discord.ext.listening.seqmath import seq_diff
from discord.ext.listening.stats import DropReason
from discord.ext.listening.testing import VoiceServerEmulator, speechlike
from helpers import Collect, WireTap, decode_worker, listen_until_done, reference, settle

pytestmark = pytest.mark.timeout(90)


def corr(a: bytes, b: bytes) -> float:
    x = np.frombuffer(a, np.int16).astype(float)
    y = np.frombuffer(b, np.int16).astype(float)
    d = np.linalg.norm(x) * np.linalg.norm(y)
    return float(np.dot(x, y) / d) if d else (1.0 if not x.any() and not y.any() else 0.0)


async def test_three_members_under_dave_with_loss_reorder_and_jitter(pool) -> None:
    async with VoiceServerEmulator(seed=11, loss=0.05, reorder=0.05, jitter=0.008) as server:
        members = [await server.add_member(100 + i, f"m{i}") for i in range(3)]
        vc = await server.connect(cls=listening.VoiceClient)
        assert vc._connection.dave_protocol_version == 1 and vc._connection.dave_session.ready
        assert vc.mode == "aead_aes256_gcm_rtpsize"
        sink = Collect()
        wire = WireTap(server)  # what the lossy network let through
        done = await listen_until_done(vc, sink, pool)
        spurts = await asyncio.gather(*(m.speak(speechlike(2.0, seed=7 + i)) for i, m in enumerate(members)))
        await server.drain()
        await settle(server, vc, *((m, [s]) for m, s in zip(members, spurts)), wire=wire)
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 15)

    frames = sink.by_user()
    assert set(frames) == {100, 101, 102}, "frames for an unknown or wrong user"
    refs = {m.user_id: reference([s]) for m, s in zip(members, spurts)}
    concealed_total = 0
    for m, spurt in zip(members, spurts):
        got = frames[m.user_id]
        seqs = [f.sequence for f in got]
        assert all(seq_diff(b, a) == 1 for a, b in itertools.pairwise(seqs)), "frames out of order or repeated"
        audio_seqs = [f.sequence for f in spurt.audio_frames]
        missing = [q for q in audio_seqs if q not in set(seqs)]
        # Only frames lost before the first one that arrived may be missing: nothing says they
        # existed, unless the first arrival carries their FEC (LBRR), which must then be used.
        assert missing == audio_seqs[: len(missing)] and len(missing) <= 3, (
            f"audio frames {missing} neither decoded nor concealed"
        )
        if missing:
            first = next(f for f in spurt.audio_frames if f.sequence == seqs[0])
            assert not packet_has_fec(first.opus), "the first arrival had FEC for the frame before it, unused"
        decoded = [
            f for f in got if f.kind is listening.FrameKind.decoded and refs[m.user_id][f.sequence].count(0) < 3800
        ]
        scores = [corr(f.audio, refs[m.user_id][f.sequence]) for f in decoded]
        assert np.median(scores) > 0.99 and np.mean(scores) > 0.9
        # the same stretch of another member's speech does not match: attribution is right
        mine = b"".join(f.audio for f in got[20:70])
        for other, ref in refs.items():
            if other != m.user_id:
                theirs = b"".join(list(ref.values())[20:70])
                assert abs(corr(mine, theirs)) < 0.3, "another member's audio in this user's frames"
        concealed = [f for f in got if f.concealed]
        assert all(f.kind in (listening.FrameKind.fec, listening.FrameKind.plc) for f in concealed)
        concealed_total += len(concealed)
        # within a spurt frames sit exactly 960 samples apart on the recording timeline
        pos = [f.position for f in got]
        assert all(b - a == 960 for a, b in itertools.pairwise(pos)), [
            (f.sequence, f.kind.value, f.position) for f in got if True
        ][:0] or [
            (a.sequence, a.kind.value, a.position, b.sequence, b.kind.value, b.position)
            for a, b in itertools.pairwise(got)
            if b.position - a.position != 960
        ]
        assert all(isinstance(f.user, discord.Member) and f.user.id == m.user_id for f in got)
    assert concealed_total > 5, "5% loss but nothing concealed: the impairment did not happen?"
    stats = vc.listen_stats
    assert stats is not None and stats.total.concealed == concealed_total
    assert sink.cleaned == 1 and sink.stopped_at is not None
    assert done.results[0][1] is None  # type: ignore[attr-defined]


async def test_first_words_of_a_member_who_speaks_right_after_joining(pool) -> None:
    async with VoiceServerEmulator(seed=5) as server:
        await server.add_member(300, "early-bird-friend")
        vc = await server.connect(cls=listening.VoiceClient)
        sink = Collect()
        done = await listen_until_done(vc, sink, pool)
        # Joins and talks at once: SPEAKING comes after the first packet, the DAVE commit
        # that gives the bot this member's key is still in flight.
        member = await server.add_member(301, "early-bird")
        spurt = await member.speak(speechlike(1.0, seed=3), speaking_event="after")
        await server.drain()
        await settle(server, vc, (member, [spurt]))
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 15)
    got = sink.by_user()[301]
    assert got, "nothing heard from the early speaker"
    assert got[0].sequence == spurt.frames[0].sequence and got[0].kind is listening.FrameKind.decoded
    ref = reference([spurt])
    assert corr(got[0].audio, ref[got[0].sequence]) > 0.99
    assert vc.listen_stats.user(301).dropped == {}


async def test_listen_position_marks_where_speech_lands_on_the_timeline(pool) -> None:
    async with VoiceServerEmulator(seed=6, dave=False) as server:
        member = await server.add_member(310, "marked")
        vc = await server.connect(cls=listening.VoiceClient)
        assert vc.listen_position is None
        sink = Collect()
        done = await listen_until_done(vc, sink, pool)
        await asyncio.sleep(0.5)  # the scenario: the mark is set half a second into listening
        mark = vc.listen_position  # e.g. a chat message "starting now"
        spurt = await member.speak(speechlike(0.5, seed=4))
        await server.drain()
        await settle(server, vc, (member, [spurt]))
        later = vc.listen_position
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 15)
        assert vc.listen_position is None
    assert mark is not None and later is not None
    assert 0.45 * 48000 <= mark <= 2.0 * 48000  # sample 0 is when listen started
    first = sink.by_user()[310][0]
    # the speech starts at the mark, give or take a frame and the loop's scheduling
    assert -960 <= first.position - mark <= 0.1 * 48000, first.position - mark
    assert later >= sink.frames[-1].position


async def test_sequence_and_timestamp_wrap_mid_speech_loses_nothing(pool) -> None:
    async with VoiceServerEmulator(seed=2, dave=False) as server:
        m = await server.add_member(400, "wrapper", sequence=65500, timestamp=2**32 - 960 * 40)
        vc = await server.connect(cls=listening.VoiceClient)
        sink = Collect()
        done = await listen_until_done(vc, sink, pool)
        spurt = await m.speak(speechlike(2.0, seed=9), realtime=False)
        await server.drain()
        await settle(server, vc, (m, [spurt]))
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 15)
    got = sink.by_user()[400]
    assert [f.sequence for f in got] == [f.sequence for f in spurt.frames]
    assert all(f.kind is listening.FrameKind.decoded for f in got)
    ref = reference([spurt])
    assert all(f.audio == ref[f.sequence] for f in got)  # lossless and in order: bit exact
    assert got[0].sequence > 65000 and got[-1].sequence < 100
    pos = [f.position for f in got]
    assert all(b - a == 960 for a, b in itertools.pairwise(pos))


async def test_garbage_forged_unknown_and_video_packets_are_counted_and_ignored(pool) -> None:
    async with VoiceServerEmulator(seed=8) as server:
        m = await server.add_member(500, "speaker")
        vc = await server.connect(cls=listening.VoiceClient)
        sink = Collect()
        done = await listen_until_done(vc, sink, pool)
        talk = asyncio.create_task(m.speak(speechlike(1.5, seed=4)))
        for kind in ("garbage", "wrong_tag", "unknown_ssrc", "video"):
            await server.inject(kind, member=m, count=20)
            await asyncio.sleep(0.1)  # the scenario: each kind at another moment of the speech
        spurt = await talk
        await server.drain()
        await settle(server, vc, (m, [spurt]))
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 15)
    got = sink.by_user()
    assert [f.sequence for f in got[500]] == [f.sequence for f in spurt.frames]
    ref = reference([spurt])
    assert all(f.audio == ref[f.sequence] for f in got[500])
    dropped = vc.listen_stats.total.dropped
    assert dropped[DropReason.auth_failed] >= 20
    assert dropped[DropReason.not_audio] >= 20
    assert dropped[DropReason.malformed] + dropped[DropReason.auth_failed] + dropped[DropReason.not_audio] >= 60
    # unknown-SSRC audio is authentic (the server sent it) but nobody owns it: delivered as
    # user None after the hold time, or counted; never attributed to the speaker
    assert all(f.user_id in (500, None) for f in sink.frames)


async def test_killing_a_decode_worker_mid_speech_keeps_listening(pool) -> None:
    async with VoiceServerEmulator(seed=9, dave=False) as server:
        m = await server.add_member(600, "survivor")
        vc = await server.connect(cls=listening.VoiceClient)
        sink = Collect()
        done = await listen_until_done(vc, sink, pool)
        talk = asyncio.create_task(m.speak(speechlike(3.0, seed=5)))
        # mid-speech: a second of it heard
        await server.wait_until(lambda: len(sink.frames) >= 50, timeout=10, what="a second of speech")
        victim = pool.worker_pids()[decode_worker(vc)]
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        spurt = await talk
        await server.drain()
        await settle(server, vc, (m, [spurt]))
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 15)
    got = sink.by_user()[600]
    seqs = [f.sequence for f in got]
    late = [f for f in got if f.sequence in {x.sequence for x in spurt.frames[-40:]}]
    assert len(late) >= 35, "listening did not go on after the worker died"
    assert all(seq_diff(b, a) > 0 for a, b in itertools.pairwise(seqs))
    stats = vc.listen_stats.user(600)
    sent = len(spurt.frames)
    assert stats.frames + stats.dropped[DropReason.worker_lost] >= sent - 1  # every frame accounted for


async def test_stop_pause_resume_and_listen_again(pool) -> None:
    async with VoiceServerEmulator(seed=4, dave=False) as server:
        m = await server.add_member(700, "talker")
        vc = await server.connect(cls=listening.VoiceClient)
        assert not vc.is_listening()
        with pytest.raises(TypeError):
            vc.listen(object(), pool)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            vc.listen(Collect(), pool, after=lambda *a: None)  # type: ignore[arg-type]
        sink = Collect()
        done = await listen_until_done(vc, sink, pool, marker="first")
        assert vc.is_listening() and not vc.is_listening_paused()
        with pytest.raises(discord.ClientException):
            vc.listen(Collect(), pool)
        spurts = [await m.speak(speechlike(0.5, seed=1))]
        await server.drain()
        await settle(server, vc, (m, spurts))
        vc.pause_listening()
        assert vc.is_listening_paused()
        spurts.append(await m.speak(speechlike(0.5, seed=2)))  # unheard
        await server.drain()
        await settle(server, vc, (m, spurts))
        # the scenario: the pause outlasts the unheard speech, so that the paused span's length
        # checked below (1.2 s) stands clear of the speech alone (1.2 s too)
        await asyncio.sleep(0.2)
        vc.resume_listening()
        third = await m.speak(speechlike(0.5, seed=3))
        await server.drain()
        await settle(server, vc, (m, [*spurts, third]))
        vc.stop_listening()
        vc.stop_listening()  # idempotent
        await vc.wait_for_listen_ready(timeout=10)
        assert done.is_set() and done.results == [(sink, None, {"marker": "first"})]  # type: ignore[attr-defined]
        assert sink.cleaned == 1
        heard = {f.sequence for f in sink.frames}
        assert {f.sequence for f in third.frames} <= heard
        assert vc.listen_stats.user(700).dropped[DropReason.paused] >= 25
        # the paused span is silence on the timeline: the third spurt sits after it
        first_pos = min(f.position for f in sink.frames)
        third_pos = min(f.position for f in sink.frames if f.sequence == third.frames[0].sequence)
        assert (third_pos - first_pos) / 48000 > 1.2

        # listen again on the same connection
        sink2 = Collect()
        done2 = await listen_until_done(vc, sink2, pool)
        again = await m.speak(speechlike(0.4, seed=6))
        await server.drain()
        await settle(server, vc, (m, [again]))
        # a disconnect while listening ends listening through after()
        await vc.disconnect()
        await asyncio.wait_for(done2.wait(), 10)
        assert {f.sequence for f in again.frames} <= {f.sequence for f in sink2.frames}
        assert not vc.is_listening()


async def test_member_leaves_and_another_joins_mid_recording(pool) -> None:
    async with VoiceServerEmulator(seed=6) as server:
        a = await server.add_member(800, "leaver")
        b = await server.add_member(801, "stayer")
        vc = await server.connect(cls=listening.VoiceClient)
        sink = Collect()
        done = await listen_until_done(vc, sink, pool)
        s1 = await asyncio.gather(a.speak(speechlike(0.6, seed=1)), b.speak(speechlike(0.6, seed=2)))
        await a.leave()
        c = await server.add_member(802, "joiner")
        await server.wait_dave_ready()
        s2 = await asyncio.gather(b.speak(speechlike(0.6, seed=3)), c.speak(speechlike(0.6, seed=4)))
        await server.drain()
        await settle(server, vc, (a, [s1[0]]), (b, [s1[1], s2[0]]), (c, [s2[1]]))
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 15)
    got = sink.by_user()
    for member, spurt in [(a, s1[0]), (b, s1[1]), (b, s2[0]), (c, s2[1])]:
        ref = reference([spurt])
        heard = {f.sequence: f for f in got[member.user_id]}
        assert set(ref) <= set(heard), f"lost audio of {member.name}"
        assert all(heard[s].kind is listening.FrameKind.decoded for s in ref)
    assert vc.listen_stats.total.dropped == {}


async def test_reconnects_keep_the_same_sink_and_users(pool) -> None:
    async with VoiceServerEmulator(seed=12) as server:
        m = await server.add_member(900, "steady")
        vc = await server.connect(cls=listening.VoiceClient)
        sink = Collect()
        done = await listen_until_done(vc, sink, pool)
        spurts = [await m.speak(speechlike(0.5, seed=1))]
        await server.drain()
        await settle(server, vc, (m, spurts))

        # discord.py rebuilds its DAVE session on every SESSION_DESCRIPTION, so each of these
        # costs one MLS epoch; speech resumes once the bot is back in the group.
        async def rejoined(epoch: int) -> None:
            session = vc._connection.dave_session
            await server.wait_until(lambda: session.ready and (session.epoch or 0) > epoch, what="DAVE re-join")

        epoch = vc._connection.dave_session.epoch
        await server.close_voice(4015)  # voice server crashed: discord.py resumes
        await server.wait_for_op(7)  # RESUME
        await server.wait_until(vc.is_connected, what="resumed")
        await rejoined(epoch)
        spurts.append(await m.speak(speechlike(0.5, seed=2)))
        await server.drain()
        await settle(server, vc, (m, spurts))

        epoch = vc._connection.dave_session.epoch
        await server.new_session_key()  # a new SESSION_DESCRIPTION key mid-call
        await rejoined(epoch)
        spurts.append(await m.speak(speechlike(0.5, seed=3)))
        await server.drain()
        await settle(server, vc, (m, spurts))

        # moved to another channel: new voice session, new SSRCs, same listen()
        other = await server.add_member(901, "over-there", channel=server.other_channel)
        await server.move_bot(server.other_channel)
        await server.wait_until(lambda: vc.is_connected() and vc.channel.id == server.other_channel.id, what="moved")
        await server.wait_dave_ready()
        moved = await other.speak(speechlike(0.5, seed=4))
        await server.drain()
        await settle(server, vc, (m, spurts), (other, [moved]))
        assert vc.is_listening()
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 15)
    got = sink.by_user()
    heard = {f.sequence for f in got[900] if f.kind is listening.FrameKind.decoded}
    for spurt in spurts:
        assert {f.sequence for f in spurt.audio_frames} <= heard
    assert {f.sequence for f in moved.audio_frames} <= {f.sequence for f in got[901]}
    assert set(got) == {900, 901}
    assert sink.cleaned == 1


async def test_speaking_events_slow_and_failing_sinks(pool) -> None:
    class Slow(listening.AudioSink):
        def __init__(self) -> None:
            super().__init__()
            self.frames = self.rtcp = 0

        def on_audio(self, frame: listening.AudioFrame) -> None:
            import time

            time.sleep(0.03)  # the scenario, a slow sink: 20 ms of audio takes 30 ms
            self.frames += 1

        def on_rtcp(self, packet: listening.RTCPPacket) -> None:
            self.rtcp += 1

    class Broken(Collect):
        def on_audio(self, frame: listening.AudioFrame) -> None:
            super().on_audio(frame)
            raise RuntimeError("user code bug")

    async with VoiceServerEmulator(seed=13, dave=False) as server:
        m = await server.add_member(950, "chatty")
        vc = await server.connect(cls=listening.VoiceClient)
        started = asyncio.ensure_future(server.client.wait_for("voice_member_speaking_start", timeout=10))
        stopped = asyncio.ensure_future(server.client.wait_for("voice_member_speaking_stop", timeout=10))
        slow = Slow()
        done = await listen_until_done(vc, slow, pool, sink_queue_size=10)
        spurt = await m.speak(speechlike(1.0, seed=8))
        for _ in range(20):  # RTCP while the sink is still behind
            await m.send_sender_report()
        assert (await started).id == 950
        assert (await stopped).id == 950
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 20)
        stats = vc.listen_stats.user(950)
        # a slow sink costs counted drops, never a blocked receiver or lost accounting
        assert stats.dropped[DropReason.sink_overflow] > 0
        assert slow.frames == stats.frames
        assert stats.frames + stats.dropped[DropReason.sink_overflow] == len(spurt.frames)
        total = vc.listen_stats
        assert total.rtcp_packets >= 20 and total.rtcp_dropped > 0
        assert slow.rtcp + total.rtcp_dropped == total.rtcp_packets  # RTCP the sink missed is counted too

        await vc.wait_for_listen_ready(timeout=10)
        broken = Broken()
        done = await listen_until_done(vc, broken, pool)
        spurt = await m.speak(speechlike(0.5, seed=9))
        last = spurt.frames[-1].sequence
        await server.wait_until(lambda: any(f.sequence == last for f in broken.frames), timeout=10, what="frames")
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 10)
        got = broken.frames
        if got and got[0].kind is listening.FrameKind.fec and got[0].sequence == spurt.frames[0].sequence - 1:
            # The member's encoder ran on from its last spurt: the first packet carries LBRR of
            # the frame before it, which lost_before_first rebuilds when that packet lands
            # 20 ms or more after listening began (timing, not the failing sink).
            got = got[1:]
        assert [f.sequence for f in got] == [f.sequence for f in spurt.frames]
        assert broken.cleaned == 1 and done.results[0][1] is None  # type: ignore[attr-defined]
        assert vc.listen_stats.sink_errors == len(broken.frames)  # every raise counted (and logged)


async def test_playing_while_listening_in_aes_gcm(pool) -> None:
    async with VoiceServerEmulator(seed=14) as server:
        m = await server.add_member(960, "listener-friend")
        vc = await server.connect(cls=listening.VoiceClient)
        assert vc.mode == "aead_aes256_gcm_rtpsize"
        sink = Collect()
        done = await listen_until_done(vc, sink, pool)
        frames = [bytes([0xFC]) + bytes([i]) * 40 for i in range(1, 11)]
        talk = asyncio.create_task(m.speak(speechlike(0.6, seed=10)))
        for f in frames:
            vc.send_audio_packet(f, encode=False)
            await asyncio.sleep(0.02)  # the scenario: a sender paced like real audio
        spurt = await talk
        await server.wait_until(lambda: len(server.received_from_bot) >= len(frames), what="bot audio")
        await server.drain()
        await settle(server, vc, (m, [spurt]))
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 10)
    assert [p.opus for p in server.received_from_bot[-len(frames) :]] == frames
    assert {f.sequence for f in spurt.frames} <= {f.sequence for f in sink.by_user()[960]}


async def _guild_speaks_at_once(pool, seed: int, speakers: int, seconds: float) -> tuple[Any, ...]:
    """``speakers`` members of one guild speak at once; returns the voice client, what the sink
    got per user, what each member sent, and the session's streams and speaker placement as
    they were before it stopped."""
    async with VoiceServerEmulator(seed=seed, dave=False) as server:
        members = [await server.add_member(seed * 100 + i, f"s{i}") for i in range(speakers)]
        vc = await server.connect(cls=listening.VoiceClient)
        sink = Collect()
        done = await listen_until_done(vc, sink, pool)
        spurts = await asyncio.gather(*(m.speak(speechlike(seconds, seed=seed + i)) for i, m in enumerate(members)))
        await server.drain()
        await settle(server, vc, *((m, [s]) for m, s in zip(members, spurts)))
        session = vc._listening
        streams = {w: s.submitted for w, s in session._streams.items()}
        placed = dict(session._worker_of)
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 15)
    return vc, sink.by_user(), list(zip(members, spurts)), streams, placed


async def test_a_large_guild_spreads_over_every_worker_and_each_speaker_keeps_its_order(
    pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``SPEAKERS_PER_WORKER`` speakers a worker is full and the next one takes the rest
    (one guild would otherwise be held to one core of decoding); each speaker stays on its
    worker, so its frames arrive whole and in order; the pool forgets them when listening ends."""
    from discord.ext.listening.pool import processes

    monkeypatch.setattr(processes, "SPEAKERS_PER_WORKER", 8)  # 12 speakers, not 36
    assert pool.speakers == [0, 0]
    _, frames, said, used, placed = await _guild_speaks_at_once(pool, 61, 12, 0.4)
    assert sorted(used) == [0, 1] and all(n > 0 for n in used.values()), used
    assert sorted(placed.values()) == [0] * 8 + [1] * 4, placed
    for m, spurt in said:
        assert [f.sequence for f in frames[m.user_id]] == [f.sequence for f in spurt.frames], m.name
    assert pool.speakers == [0, 0]


async def test_small_guilds_share_one_worker(pool) -> None:
    """Guilds of a few speakers fill one worker before the next is used: one wake-up of one
    worker a round for all of them, not one of every worker."""
    assert pool.speakers == [0, 0]
    guilds = (6200, 6301)  # one even, one odd: under guild_id % 2 they would use both workers
    async with (
        VoiceServerEmulator(seed=62, dave=False, guild_id=guilds[0]) as one,
        VoiceServerEmulator(seed=63, dave=False, guild_id=guilds[1]) as two,
    ):
        sessions = []
        for server, base in ((one, 6200), (two, 6300)):
            members = [await server.add_member(base + i, f"m{base + i}") for i in range(3)]
            vc = await server.connect(cls=listening.VoiceClient)
            sink = Collect()
            done = await listen_until_done(vc, sink, pool)
            sessions.append((server, vc, sink, done, members))
        assert [vc.guild.id for _, vc, *_ in sessions] == list(guilds)
        spoken = await asyncio.gather(
            *(m.speak(speechlike(0.3, seed=i)) for i, (*_, members) in enumerate(sessions) for m in members)
        )
        for k, (server, vc, _, _, members) in enumerate(sessions):
            said = list(zip(members, spoken[3 * k : 3 * k + 3]))
            await server.drain()
            await settle(server, vc, *((m, [s]) for m, s in said))
            assert set(vc._listening._worker_of.values()) == {0} and set(vc._listening._streams) == {0}
        assert pool.speakers == [6, 0]
        for _, vc, _, done, _ in sessions:
            vc.stop_listening()
            await asyncio.wait_for(done.wait(), 15)
    assert pool.speakers == [0, 0]
    for k, (_, _, sink, _, members) in enumerate(sessions):
        got = sink.by_user()
        for m, spurt in zip(members, spoken[3 * k : 3 * k + 3]):
            assert [f.sequence for f in got[m.user_id]] == [f.sequence for f in spurt.frames], m.name
