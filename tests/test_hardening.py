"""Hardening: forged and foreign traffic, faults, DAVE under churn and transitions.

Everything real but Discord's side: real discord.py voice connections to the emulator over
UDP on 127.0.0.1, real ciphers, real davey MLS groups, real libopus, real decode workers.
The only other fake is the OS for a full disk (a file object whose writes raise ENOSPC).
Each test checks both halves of the contract: the bad input is dropped *and counted*, and
the real speakers' audio is exactly what they sent.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import random
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from discord.ext import listening
from discord.ext.listening import rtp, transport
from discord.ext.listening.files import WaveAudioFile
from discord.ext.listening.opus import OpusEncoder
from discord.ext.listening.seqmath import seq_diff
from discord.ext.listening.ssrc import SSRCMap
from discord.ext.listening.stats import DropReason, ListenStats
from discord.ext.listening.testing import VoiceServerEmulator, speechlike
from discord.ext.listening.testing.dave_member import LocalDaveMember, connect_local_member, deliver
from discord.ext.listening.testing.dave_server import DaveGroupServer
from helpers import (
    Collect,
    decode_worker,
    listen_until_done,
    receiver_for,
    reference,
    settle,
    sync_keys,
)

pytestmark = pytest.mark.timeout(120)

RATE = 48000


# -- helpers ------------------------------------------------------------------------------------


def assert_heard_exactly(sink: Collect, member, spurts) -> None:
    """Every frame the member sent came out decoded, bit for bit, in order, once."""
    ref = reference(spurts)
    got = [f for f in sink.by_user()[member.user_id] if f.sequence in ref]
    assert [f.sequence for f in got] == list(ref), f"{member.name}: frames missing, repeated or out of order"
    assert all(f.kind is listening.FrameKind.decoded for f in got), f"{member.name}: concealed frames"
    bad = [f.sequence for f in got if f.audio != ref[f.sequence]]
    assert not bad, f"{member.name}: {len(bad)} frames differ from what was sent"


def _corr(a: bytes, b: bytes) -> float:
    x = np.frombuffer(a, np.int16).astype(float)
    y = np.frombuffer(b, np.int16).astype(float)
    d = np.linalg.norm(x) * np.linalg.norm(y)
    return float(np.dot(x, y) / d) if d else 1.0


def tap_outgoing(server: VoiceServerEmulator) -> list[bytes]:
    """Record every datagram the emulator schedules for the bot (authentic traffic to replay)."""
    captured: list[bytes] = []
    schedule = server.media.schedule

    def tap(data, addr, deliver_at, on_sent=None):
        captured.append(data)
        return schedule(data, addr, deliver_at, on_sent)

    server.media.schedule = tap  # type: ignore[method-assign]
    return captured


# -- forged and foreign traffic -----------------------------------------------------------------


async def test_forged_replayed_flooding_and_malformed_traffic_is_dropped_counted_and_harmless(pool) -> None:
    rng = random.Random(1234)
    async with VoiceServerEmulator(seed=21) as server:
        alice = await server.add_member(1100, "alice")
        vc = await server.connect(cls=listening.VoiceClient)
        captured = tap_outgoing(server)
        sink = Collect()
        done = await listen_until_done(vc, sink, pool)
        spurts = [await alice.speak(speechlike(1.0, seed=1), realtime=False)]
        await server.drain()
        await settle(server, vc, (alice, spurts))
        authentic = list(captured)
        assert len(authentic) >= 50
        receiver = vc._listening.receiver
        stats = vc.listen_stats

        # 1. From another local socket straight at the bot's address: discord.py's UDP
        # socket is connect()ed to the voice server, so the kernel never hands these over.
        bot_addr = vc._connection.socket.getsockname()
        before = sum(stats.total.dropped.values())
        reports = stats.rtcp_packets
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as foreign:
            foreign.bind(("127.0.0.1", 0))
            for pkt in authentic[:100]:
                foreign.sendto(pkt, bot_addr)  # replays
                foreign.sendto(rng.randbytes(rng.randrange(1, 1500)), bot_addr)
        # A sender report from the voice server after them: once the bot has read it, it has
        # read anything the kernel let in before it.
        await alice.send_sender_report()
        await server.wait_until(lambda: stats.rtcp_packets > reports, timeout=5, what="the report after them")
        assert sum(stats.total.dropped.values()) == before, "datagrams from a foreign address reached the receiver"

        # 2. The same and worse from the voice server's own address (an on-path attacker who
        # can spoof it, or a broken server): every one dropped and counted, none heard.
        link = server._media.links[server.session]
        bad: list[bytes] = []
        bad += [bytes(p[:-20]) + bytes(a ^ 0x5A for a in p[-20:-4]) + p[-4:] for p in authentic[:40]]  # wrong tag
        bad += [p[: rng.randrange(0, len(p))] for p in authentic[:60]]  # truncated
        bad += [rng.randbytes(rng.randrange(1, 1400)) for _ in range(60)]  # garbage
        bad += [p + rng.randbytes(60000) for p in authentic[:3]]  # oversized (discord.py reads 2048)
        bad += [rng.randbytes(65000)]
        replays = [authentic[i] for i in rng.sample(range(len(authentic) - 1), 40)]  # authentic, old
        for i in range(30):  # authentic RTCP whose length fields lie
            clear = bytearray(rtp.build_sender_report(alice.ssrc, rtp.unix_to_ntp(time.time()), 960 * i, i, 100 * i))
            clear[2:4] = struct.pack(">H", rng.choice([0, 1, 5, 7, 200, 65535]))
            if i % 3 == 0:
                clear += rtp.build_goodbye([alice.ssrc], b"x" * 10)[:-4]  # a truncated second packet
            bad.append(link.seal_rtcp(bytes(clear)))
        bad = [p for p in bad if not (len(p) == 74 and p[1] == 2)]  # (IP discovery replies are discord.py's)
        flood = []
        for _ in range(12):  # authentic audio from 600 fresh SSRCs
            flood += await server.inject("unknown_ssrc", count=50)
            await asyncio.sleep(0.01)  # the scenario: a flood spread over time, not one burst
        talk = asyncio.create_task(alice.speak(speechlike(2.0, seed=2)))
        for chunk in range(0, len(bad), 20):
            for p in bad[chunk : chunk + 20]:
                await server.inject("raw", payload=p)
            await asyncio.sleep(0.02)  # the scenario: hostile traffic interleaved with speech
        for p in replays:
            await server.inject("raw", payload=p)
            await asyncio.sleep(0.005)  # (the same)
        spurts.append(await talk)
        assert len(receiver.ssrcs) <= receiver.max_streams, "a flood of SSRCs grew the per-SSRC table past its bound"

        # 3. A member who joins and talks right after the flood is heard in full.
        bob = await server.add_member(1101, "bob")
        await server.wait_dave_ready()
        bob_spurt = await bob.speak(speechlike(1.0, seed=3))
        await server.drain()
        await settle(server, vc, (alice, spurts), (bob, [bob_spurt]), allow_socket_drops=True)
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 20)

    assert_heard_exactly(sink, alice, spurts)
    assert_heard_exactly(sink, bob, [bob_spurt])
    assert {f.user_id for f in sink.frames} <= {1100, 1101}, "forged or unknown audio reached the sink"
    total = stats.total
    assert stats.user(1100).dropped == {DropReason.late: len(replays)} or (
        sum(stats.user(1100).dropped.values()) == len(replays)
        and set(stats.user(1100).dropped) <= {DropReason.late, DropReason.duplicate}
    ), stats.user(1100).dropped
    assert stats.user(1101).dropped == {}
    counted = sum(total.dropped.values())
    injected = len(bad) + len(replays) + len(flood)
    lost_in_kernel = stats.socket_drops  # (dropped on the bot's socket: a starved receive thread's loss)
    assert counted <= injected and counted + lost_in_kernel >= injected, (
        counted,
        lost_in_kernel,
        len(bad),
        len(replays),
        len(flood),
        total.dropped,
    )
    assert total.dropped[DropReason.malformed] >= 30  # the lying RTCP at least
    flood_counted = total.dropped[DropReason.overflow] + total.dropped[DropReason.unknown_ssrc]
    assert flood_counted <= len(flood) and flood_counted + lost_in_kernel >= len(flood)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_RXQ_OVFL is Linux's")
async def test_socket_drops_counts_exactly_what_the_kernel_dropped_on_the_bots_socket(pool) -> None:
    """Bursts far larger than the bot's (shrunk) receive buffer: every datagram sent is either
    seen by the receiver or counted in ``listen_stats.socket_drops``, never both, never neither."""
    # Exact accounting needs the junk to be the only traffic to the bot during the bursts:
    # the SFU's receiver reports and padding bursts are turned off for that (not Discord-like).
    async with VoiceServerEmulator(seed=41, sfu_report_interval=None, padding_bursts=None) as server:
        alice = await server.add_member(1100, "alice")
        vc = await server.connect(cls=listening.VoiceClient)
        done = await listen_until_done(vc, Collect(), pool)
        spurt = await alice.speak(speechlike(0.3, seed=1))  # the session has sized its socket
        await server.drain()
        await settle(server, vc, (alice, [spurt]))
        stats = vc.listen_stats
        assert stats is not None and stats.socket_drops == 0
        vc._connection.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a few datagrams
        junk = bytes(100)  # RTP version 0: each one the receiver sees is counted as malformed
        before = stats.unattributed[DropReason.malformed]
        sent = 0
        for _ in range(5):
            sent += len(await server.inject("raw", payload=junk, count=1000))
            await asyncio.sleep(0)
        for _ in range(50):  # a drop shows on the datagrams queued after it: a few, one at a time
            sent += len(await server.inject("raw", payload=junk))
            await asyncio.sleep(0.005)

        def seen() -> int:
            return stats.unattributed[DropReason.malformed] - before + stats.socket_drops

        await server.wait_until(lambda: seen() >= sent, timeout=10, what="every datagram seen or counted dropped")
        assert stats.socket_drops > 0, "the bursts never overflowed the receive buffer"
        assert seen() == sent, (seen(), sent, stats.socket_drops)
        assert stats.as_dict()["socket_drops"] == stats.socket_drops
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 20)


# -- the receive path's own bounds (sans-I/O) ----------------------------------------------------

KEY = bytes(range(32))


def _conn() -> SimpleNamespace:
    return SimpleNamespace(mode=transport.AES_GCM, secret_key=list(KEY), dave_session=None, dave_protocol_version=0)


def _opus(n: int, seed: int) -> list[bytes]:
    pcm = speechlike(n * 0.02 + 0.02, seed=seed)
    enc = OpusEncoder()
    return [enc.encode(pcm[i * 3840 : (i + 1) * 3840]) for i in range(n)]


def test_a_stalled_pump_overflows_the_jitter_buffer_with_every_packet_counted() -> None:
    """Nobody polls for 10 s (a stalled pump): the jitter buffer holds at most its bound and
    every packet it had to let go is counted, not silently forgotten."""
    m = SSRCMap()
    m.set_audio(7, 1)
    stats = ListenStats()
    receiver = receiver_for(_conn(), m, stats)
    cipher = transport.transport_cipher(transport.AES_GCM, KEY)
    frames = _opus(500, seed=4)
    for i, f in enumerate(frames):
        header = rtp.build_rtp_header(100 + i, 960 * i, 7, extension_length=4)
        receiver.datagram(cipher.encrypt(header, rtp.audio_level_extension(5) + f, i), i * 0.02)
    held = len(receiver._streams[7].buffer)
    assert held <= receiver._streams[7].buffer.max_packets
    out = receiver.poll(11.0)[0] + receiver.flush(12.0)
    s = stats.user(1)
    assert len(out) == held
    assert s.received == len(frames) and s.decrypted == len(out)
    assert s.dropped == {DropReason.overflow: len(frames) - held}


# -- DAVE protocol transitions (sans-I/O, real davey groups) -----------------------------------


class _BotConnection:
    """discord.py's connection state as the receiver reads it, backed by a LocalDaveMember
    that reacts to the group server exactly as discord.py does."""

    def __init__(self, bot: LocalDaveMember) -> None:
        self.bot = bot
        self.mode = transport.XCHACHA20
        self.secret_key = list(KEY)

    @property
    def dave_session(self):
        return self.bot.session

    @property
    def dave_protocol_version(self) -> int:
        return self.bot.protocol_version


def test_dave_downgrade_and_upgrade_lose_no_audio_of_members_with_keys() -> None:
    """A member without DAVE joins (the call downgrades to protocol 0, clear audio) and leaves
    (it upgrades again, new MLS group): a member talking through both transitions is heard
    completely, every frame decrypted or clear as the phase requires."""
    channel, bot_id, alice_id, legacy_id = 77, 1, 100, 300
    server = DaveGroupServer(channel, require_e2ee=False)
    members: dict[int, LocalDaveMember] = {}
    for uid in (bot_id, alice_id):
        members[uid] = LocalDaveMember(uid, channel)
        connect_local_member(server, members[uid], members)
    bot, alice = members[bot_id], members[alice_id]
    assert bot.ready and alice.ready and server.protocol_version == 1
    m = SSRCMap()
    m.set_audio(11, alice_id)
    stats = ListenStats()
    conn = _BotConnection(bot)
    receiver = receiver_for(conn, m, stats)
    cipher = transport.transport_cipher(transport.XCHACHA20, KEY)
    frames = _opus(300, seed=8)
    out: list = []
    t = 0.0
    phases: list[tuple[int, int]] = []

    def talk(start: int, stop: int) -> None:
        nonlocal t
        for i in range(start, stop):
            header = rtp.build_rtp_header(5000 + i, 960 * i, 11, extension_length=4)
            payload = alice.encrypt_opus(frames[i])  # DAVE frame when alice's session is ready, else clear
            receiver.datagram(cipher.encrypt(header, rtp.audio_level_extension(5) + payload, i), t)
            t += 0.02
            out.extend(receiver.poll(t)[0])
        phases.append((server.protocol_version, alice.protocol_version))

    def run(messages) -> None:
        errors: list = []
        deliver(server, members, messages, on_error=lambda msg, exc: errors.append((msg, exc)))
        assert not errors, errors
        sync_keys(receiver, conn)  # what the voice client's gateway hook does after each message

    talk(0, 60)  # E2EE
    legacy = LocalDaveMember(legacy_id, channel, max_protocol_version=0)
    members[legacy_id] = legacy
    run(list(server.add_participant(legacy_id, 0)) + legacy.session_description(server.protocol_version))
    talk(60, 120)  # downgrade prepared: passthrough
    for tid in list(server.pending_transitions):
        run(server.execute_transition(tid))
    assert bot.protocol_version == 0 and alice.protocol_version == 0
    talk(120, 180)  # protocol 0: clear audio
    run(server.remove_participant(legacy_id))
    del members[legacy_id]
    for tid in list(server.pending_transitions):
        run(server.execute_transition(tid))
    assert bot.ready and alice.ready and bot.protocol_version == 1
    talk(180, 300)  # upgraded: E2EE in a new group
    out += receiver.poll(t + 1)[0] + receiver.flush(t + 2)
    assert [p.opus for p in out] == frames, "audio lost or changed across a protocol transition"
    assert stats.user(alice_id).dropped == {}
    assert phases[0] == (1, 1) and phases[2] == (0, 0) and phases[-1] == (1, 1)


# -- faults ---------------------------------------------------------------------------------------


class _FullDisk:
    """Stands in for the OS file: every write fails with ENOSPC (a fake of the OS only)."""

    def __init__(self, real: object) -> None:
        self.real = real

    def write(self, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


def read_wav(path: Path) -> np.ndarray:
    data, rate = sf.read(str(path), dtype="int16", always_2d=True)
    assert rate == RATE and data.shape[1] == 2
    return data


async def test_workers_killed_at_random_moments_and_a_full_disk(pool, tmp_path: Path) -> None:
    """Decode workers are SIGKILLed three times at random moments while two members talk, and
    one member's file hits a full disk: listening goes on, every frame is decoded, concealed
    or counted as lost in a worker, ``after`` gets the disk error, and both files are valid
    WAVs (the healthy one exactly as long as the recording)."""
    rng = random.Random(77)
    async with VoiceServerEmulator(seed=31) as server:
        a = await server.add_member(1200, "steady")
        b = await server.add_member(1201, "unlucky-disk")
        vc = await server.connect(cls=listening.VoiceClient)
        files = listening.AudioFileSink(WaveAudioFile, tmp_path)
        collect = Collect()
        sink = listening.FanOutSink(collect, files)
        done = await listen_until_done(vc, sink, pool)
        talk = asyncio.gather(a.speak(speechlike(3.0, seed=11)), b.speak(speechlike(3.0, seed=12)))
        slot = decode_worker(vc)
        killed: list[int] = []
        for _ in range(3):
            await asyncio.sleep(rng.uniform(0.2, 0.7))  # the scenario: a kill at a random moment
            # (the restarted worker must be up before it can be killed again)
            await server.wait_until(lambda: pool.worker_pids()[slot] not in (None, *killed), timeout=5, what="restart")
            pid = pool.worker_pids()[slot]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            if b.user_id in files.output_files and not isinstance(files.output_files[b.user_id]._out.fh, _FullDisk):
                out = files.output_files[b.user_id]._out
                out.fh = _FullDisk(out.fh)
        spurts = await talk
        await server.drain()
        await settle(server, vc, *zip((a, b), ([s] for s in spurts)))
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 20)
    assert len(killed) == 3
    ((_, error, _),) = done.results  # type: ignore[attr-defined]
    assert isinstance(error, listening.RecordingError) and error.errno == errno.ENOSPC, error
    # where every file ends: where listening stopped, or the end of a frame reaching past it
    end = max(collect.stopped_at, max(f.position + len(f.audio) // 4 for f in collect.frames))
    stats = vc.listen_stats
    for member, spurt in zip((a, b), spurts):
        s = stats.user(member.user_id)
        sent = len(spurt.frames)
        assert s.frames + s.dropped[DropReason.worker_lost] >= sent, (member.name, s)
        got = [f for f in collect.by_user()[member.user_id]]
        seqs = [f.sequence for f in got]
        assert all(seq_diff(y, x) > 0 for x, y in itertools.pairwise(seqs)), "frames out of order after a restart"
        assert any(f.sequence == spurt.frames[-1].sequence for f in got), "listening stopped after a kill"
    # The healthy file: valid, as long as the recording, every frame where it was placed.
    healthy = read_wav(files.output_files[a.user_id].path)
    assert len(healthy) == end
    for f in collect.by_user()[a.user_id]:
        if f.kind is not listening.FrameKind.silence:
            assert healthy[f.position : f.position + 960].tobytes() == f.audio
    # The file that hit the full disk: a valid WAV of what reached the disk.
    broken = files.output_files[b.user_id]
    assert broken.error is error
    partial = read_wav(broken.path)
    assert 0 < len(partial) < end


async def test_blocked_loop_and_a_sink_that_blocks_and_raises(pool) -> None:
    """The event loop is blocked for a second mid-speech, and the sink blocks for 1.5 s and
    raises from every callback: the receiver never stalls (every packet is received), what
    the sink could not take is counted, ``after`` still runs, and a second listen() works."""

    class Hostile(listening.AudioSink):
        def __init__(self) -> None:
            super().__init__()
            self.frames = 0
            self.blocked = False

        def on_audio(self, frame):
            self.frames += 1
            if not self.blocked:
                self.blocked = True
                time.sleep(1.5)  # the scenario: a sink that blocks
            raise RuntimeError("sink bug")

        def on_tick(self, position):
            raise RuntimeError("tick bug")

        def on_stop(self, position):
            raise RuntimeError("stop bug")

        def cleanup(self):
            raise RuntimeError("cleanup bug")

    async with VoiceServerEmulator(seed=32) as server:
        m = await server.add_member(1300, "talker")
        vc = await server.connect(cls=listening.VoiceClient)
        hostile = Hostile()
        done = await listen_until_done(vc, hostile, pool, sink_queue_size=20)
        talk = asyncio.create_task(m.speak(speechlike(3.0, seed=13)))
        # mid-speech: 0.8 s of it received
        await server.wait_until(lambda: vc.listen_stats.user(1300).received >= 40, timeout=10, what="speech")
        time.sleep(1.0)  # the event loop blocked (a bot doing blocking work in a coroutine)
        spurt = await talk
        await server.drain()
        await settle(server, vc, (m, [spurt]))
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 20)
        s = vc.listen_stats.user(1300)
        assert s.received == len(spurt.frames) and s.decrypted == len(spurt.frames), s
        assert s.dropped[DropReason.sink_overflow] > 0
        assert hostile.frames == s.frames and s.frames + s.dropped[DropReason.sink_overflow] == len(spurt.frames)
        assert done.results[0][1] is None  # type: ignore[attr-defined]
        # The connection is fine: listen again and hear everything.
        await vc.wait_for_listen_ready(timeout=10)
        sink = Collect()
        done = await listen_until_done(vc, sink, pool)
        again = await m.speak(speechlike(0.6, seed=14), realtime=False)
        await server.drain()
        await settle(server, vc, (m, [again]))
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 10)
    assert_heard_exactly(sink, m, [again])


@pytest.mark.parametrize("codes", [(4015, "new key", 4006, 4009, 4014), ("move", 4022, 4021, 1000)])
async def test_voice_websocket_close_codes_moves_and_new_keys(pool, tmp_path: Path, codes: tuple) -> None:
    """Every close code discord.py handles: 4015 resumes, 4006/4009 reconnect (listening goes
    on with the same sink), 4014/4022 without a move, 4021 and 1000 disconnect (listening ends
    through ``after``); a new session key and a move to another channel keep listening. The
    files stay valid WAVs as long as the recording either way."""
    async with VoiceServerEmulator(seed=33, dave=False) as server:
        here = await server.add_member(1400, "talker")
        there = await server.add_member(1401, "over-there", channel=server.other_channel)
        speaker = {server.channel_id: here, server.other_channel_id: there}
        for code in codes:
            vc = server.voice_client or await server.connect(cls=listening.VoiceClient, timeout=3.0)
            files = listening.AudioFileSink(WaveAudioFile, tmp_path / str(code))
            collect = Collect()
            done = await listen_until_done(vc, listening.FanOutSink(collect, files), pool)
            first = speaker[vc.channel.id]
            before = await first.speak(speechlike(0.4, seed=len(str(code))))
            await server.drain()
            await settle(server, vc, (first, [before]))
            if code == "new key":
                key = await server.new_session_key()
                await server.wait_until(lambda vc=vc, key=key: bytes(vc._connection.secret_key) == key, what="new key")
            elif code == "move":
                await server.move_bot(server.other_channel)
                await server.wait_until(
                    lambda vc=vc: vc.is_connected() and vc.channel.id == server.other_channel_id,
                    timeout=15,
                    what="moved",
                )
            else:
                await server.close_voice(code)
            if code in (4015, 4006, 4009, "new key", "move"):  # resumed, reconnected or re-keyed: listening goes on
                if code == 4015:
                    await server.wait_for_op(7)
                await server.wait_until(
                    lambda vc=vc: vc.is_connected() and server.session is not None and server.session.established,
                    timeout=15,
                    what=f"reconnect after {code}",
                )
                assert vc.is_listening() and not done.is_set()
                second = speaker[vc.channel.id]
                after_event = await second.speak(speechlike(0.4, seed=7))
                await server.drain()
                await settle(server, vc, (second, [after_event] if second is not first else [before, after_event]))
                vc.stop_listening()
                await asyncio.wait_for(done.wait(), 15)
                if second is first:
                    assert_heard_exactly(collect, first, [before, after_event])
                else:
                    assert_heard_exactly(collect, first, [before])
                    assert_heard_exactly(collect, second, [after_event])
            else:  # disconnected for good: after() says so
                await asyncio.wait_for(done.wait(), 15)
                assert not vc.is_listening()
                assert_heard_exactly(collect, first, [before])
                # (the client must have seen its own VOICE_STATE_UPDATE leaving before it joins again)
                await server.wait_until(
                    lambda: server.voice_client is None and server.guild.me.voice is None, timeout=10, what="disconnect"
                )
            ((_, error, _),) = done.results  # type: ignore[attr-defined]
            assert error is None
            # Every file ends on one sample: where listening stopped, or where the last frame
            # ends if one reaches past that (AudioFileSink.on_stop: no audio is cut).
            last_end = max((fr.position + len(fr.audio) // 4 for fr in collect.frames), default=0)
            for f in files.output_files.values():
                assert len(read_wav(f.path)) == max(collect.stopped_at, last_end)
        if server.voice_client is not None:
            await server.voice_client.disconnect()


# -- DAVE under churn ----------------------------------------------------------------------------


async def test_dave_churn_and_an_invalid_commit_lose_no_audio_the_bot_has_keys_for(pool) -> None:
    """Two members talk for six seconds while others join and leave about every second (each
    one a new MLS epoch) and the bot is sent an invalid commit (it recovers by re-joining):
    every frame of the steady members that the bot could decrypt is heard, bit for bit; the
    only frames not heard are counted per user as undecryptable, and only around the
    invalid commit, when the bot has no keys by design."""
    rng = random.Random(5)
    async with VoiceServerEmulator(seed=34) as server:
        steady = [await server.add_member(1500 + i, f"steady{i}") for i in range(2)]
        vc = await server.connect(cls=listening.VoiceClient)
        sink = Collect()
        done = await listen_until_done(vc, sink, pool)
        talk = asyncio.gather(*(s.speak(speechlike(6.0, seed=20 + i)) for i, s in enumerate(steady)))
        churners: list = []
        chatter: list[asyncio.Future] = []  # churners' speech, running while they churn
        events = 0
        invalid_window = None
        for step in range(6):
            await asyncio.sleep(0.6 + rng.uniform(0, 0.4))  # the scenario: churn about every second
            if churners and (step % 2 or len(churners) > 2):
                await churners.pop(0).leave()
            else:
                c = await server.add_member(1600 + step, f"churn{step}")
                churners.append(c)
                chatter.append(asyncio.ensure_future(c.speak(speechlike(0.4, seed=40 + step))))
            events += 1
            if step == 3:  # an invalid commit (garbage op 29) to the bot
                t_lo = server.sender_now()
                await server.session.connection.send_binary(29, struct.pack(">H", 4242) + os.urandom(64))
                await server.wait_for_op(31, timeout=5)  # discord.py reports it and re-joins
                await server.wait_dave_ready(timeout=10)
                invalid_window = (t_lo - 0.1, server.sender_now() + 0.1)
        spurts = await talk
        await server.drain()
        await settle(server, vc, *((m, [s]) for m, s in zip(steady, spurts)), allow_socket_drops=True)
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 20)
    assert events == 6 and invalid_window is not None
    stats = vc.listen_stats
    lost_in_kernel = stats.socket_drops  # (dropped on the bot's socket: a starved receive thread's loss, the network's)
    for member, spurt in zip(steady, spurts):
        ref = reference([spurt])
        heard = {f.sequence: f for f in sink.by_user()[member.user_id] if f.kind is listening.FrameKind.decoded}
        missing = [q for q in ref if q not in heard]
        sent_at = {f.sequence: f.send_time for f in spurt.frames}
        lo, hi = invalid_window
        outside = [q for q in missing if not lo <= sent_at[q] <= hi]
        kinds = {f.sequence: f.kind.value for f in sink.by_user()[member.user_id]}
        assert len(outside) <= lost_in_kernel, (
            f"{member.name}: {len(outside)} frames lost away from the invalid commit "
            f"{[(q, round(sent_at[q] - lo, 3), kinds.get(q)) for q in outside]}; window {hi - lo:.3f}s; "
            f"dropped {dict(stats.user(member.user_id).dropped)}; kernel drops {lost_in_kernel}"
        )
        # Bit for bit up to the first loss; after a concealment the decoder's state differs
        # from a lossless decoder's for a while, so from there on: the same signal.
        first_loss = sent_at[missing[0]] if missing else float("inf")
        assert all(heard[q].audio == ref[q] for q in heard if q in ref and sent_at[q] < first_loss)
        scores = [_corr(heard[q].audio, ref[q]) for q in heard if q in ref and ref[q].count(0) < 3800]
        assert np.median(scores) > 0.99 and np.mean(scores) > 0.95, (np.median(scores), np.mean(scores))
        dropped = stats.user(member.user_id).dropped
        assert set(dropped) <= {DropReason.undecryptable}, dropped
        assert dropped[DropReason.undecryptable] >= len(missing) - 2 * 5  # silence frames are clear, not counted


# -- secrets stay out of logs ----------------------------------------------------------------------


async def test_transport_keys_never_reach_our_logs(pool, caplog) -> None:
    """Everything this library logs, at every level, through a connection, a re-key and a
    listening session: no form of a transport key appears (discord.py's own DEBUG logging
    of voice websocket frames does print it: see SECURITY.md)."""
    import logging

    caplog.set_level(logging.DEBUG, logger="discord.ext.listening")
    async with VoiceServerEmulator(seed=35, dave=False) as server:
        m = await server.add_member(1700, "talker")
        vc = await server.connect(cls=listening.VoiceClient)
        keys = [bytes(vc._connection.secret_key)]
        sink = Collect()
        done = await listen_until_done(vc, sink, pool)
        spurts = [await m.speak(speechlike(0.3, seed=1), realtime=False)]
        keys.append(await server.new_session_key())
        await server.wait_until(lambda: bytes(vc._connection.secret_key) == keys[-1], what="new key")
        spurts.append(await m.speak(speechlike(0.3, seed=2), realtime=False))
        await server.drain()
        await settle(server, vc, (m, spurts))
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 10)
        cipher = vc._listening.receiver._keys.cipher if vc._listening else None
    ours = [
        r
        for r in caplog.records
        if r.name.startswith("discord.ext.listening") and not r.name.startswith("discord.ext.listening.testing")
    ]
    assert ours, "nothing was logged: the check would prove nothing"
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in ours)
    for key in keys:
        for form in (key.hex(), repr(key), str(list(key)), ", ".join(map(str, key[:8]))):
            assert form not in text
    assert cipher is None or "key" not in repr(cipher).lower().replace("mode", "")


def test_claimed_losses_cannot_amplify_into_a_flood_of_concealed_frames() -> None:
    """A sender (a call member picks its own RTP numbers) that skips 999 sequence numbers
    with every packet claims 999 lost frames each time: each would become a concealed frame
    for the decoder, the timeline and every sink (50 000 frames a second from one member,
    enough to overflow the sink queue that all members share). What the receiver asks to
    conceal stays within real time: about one frame per 20 ms of arrival, plus a 1 s burst.
    A real burst of loss is still concealed in full."""
    m = SSRCMap()
    m.set_audio(7, 1)
    m.set_audio(8, 2)
    stats = ListenStats()
    receiver = receiver_for(_conn(), m, stats)
    cipher = transport.transport_cipher(transport.AES_GCM, KEY)
    frames = _opus(20, seed=5)
    out = []
    t = 0.0
    for i in range(250):  # 5 s of packets
        seq, ts = (1000 + 999 * i) & 0xFFFF, (960 * 999 * i) & 0xFFFFFFFF
        header = rtp.build_rtp_header(seq, ts, 7, extension_length=4)
        receiver.datagram(cipher.encrypt(header, rtp.audio_level_extension(5) + frames[i % 20], i), t)
        if i not in range(100, 140):  # an honest member loses 40 packets in a row
            header = rtp.build_rtp_header(500 + i, 960 * i, 8, extension_length=4)
            receiver.datagram(cipher.encrypt(header, rtp.audio_level_extension(5) + frames[i % 20], 10**6 + i), t)
        t += 0.02
        out += receiver.poll(t)[0]
    out += receiver.flush(t + 1)
    claimed = [p for p in out if p.ssrc == 7]
    honest = [p for p in out if p.ssrc == 8]
    concealed = sum(len(p.lost_positions) for p in claimed)
    assert len(claimed) == 250 and concealed <= 250 + 50, concealed
    assert sum(len(p.lost_positions) for p in honest) == 40  # a real loss burst, concealed in full
    assert stats.user(1).lost == 249 * 998  # still counted as lost: nothing hidden
