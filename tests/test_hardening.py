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
import os
import random
import signal
import socket
import struct
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from discord.ext import listening
from discord.ext.listening import rtp, transport
from discord.ext.listening.files import WaveAudioFile
from discord.ext.listening.opus import SILENCE_FRAME, OpusDecoder, OpusEncoder
from discord.ext.listening.receive import PacketReceiver
from discord.ext.listening.reorder import seq_diff
from discord.ext.listening.ssrc import SSRCMap
from discord.ext.listening.stats import DropReason, ListenStats
from discord.ext.listening.testing import VoiceServerEmulator, speechlike
from discord.ext.listening.testing.dave_server import DaveGroupServer, LocalDaveMember, connect_local_member, deliver

pytestmark = pytest.mark.timeout(120)

RATE = 48000


# -- helpers ------------------------------------------------------------------------------------


class Collect(listening.AudioSink):
    def __init__(self) -> None:
        super().__init__()
        self.frames: list[listening.AudioFrame] = []
        self.stopped_at: int | None = None

    def on_audio(self, frame: listening.AudioFrame) -> None:
        self.frames.append(frame)

    def on_stop(self, position: int) -> None:
        self.stopped_at = position

    def by_user(self) -> dict[int | None, list[listening.AudioFrame]]:
        out: dict[int | None, list[listening.AudioFrame]] = defaultdict(list)
        for f in self.frames:
            out[f.user_id].append(f)
        return out


def reference(spurts) -> dict[int, bytes]:
    """What a lossless receiver decodes for each sequence number of a member's spurts."""
    dec = OpusDecoder()
    return {f.sequence: dec.decode(f.opus) for s in spurts for f in s.frames}


async def start_listening(vc, sink, pool, **kw):
    done = asyncio.Event()
    results: list = []

    async def after(s, exc, **extra):
        results.append((s, exc, extra))
        done.set()

    vc.listen(sink, pool, after=after, **kw)
    done.results = results  # type: ignore[attr-defined]
    return done


def assert_heard_exactly(sink: Collect, member, spurts) -> None:
    """Every frame the member sent came out decoded, bit for bit, in order, once."""
    ref = reference(spurts)
    got = [f for f in sink.by_user()[member.user_id] if f.sequence in ref]
    assert [f.sequence for f in got] == list(ref), f"{member.name}: frames missing, repeated or out of order"
    assert all(f.kind is listening.FrameKind.decoded for f in got), f"{member.name}: concealed frames"
    bad = [f.sequence for f in got if f.audio != ref[f.sequence]]
    assert not bad, f"{member.name}: {len(bad)} frames differ from what was sent"


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
        done = await start_listening(vc, sink, pool)
        spurts = [await alice.speak(speechlike(1.0, seed=1), realtime=False)]
        await server.drain()
        await asyncio.sleep(0.2)
        authentic = list(captured)
        assert len(authentic) >= 50
        receiver = vc._listening.receiver
        stats = vc.listen_stats

        # 1. From another local socket straight at the bot's address: discord.py's UDP
        # socket is connect()ed to the voice server, so the kernel never hands these over.
        bot_addr = vc._connection.socket.getsockname()
        before = sum(stats.total.dropped.values())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as foreign:
            foreign.bind(("127.0.0.1", 0))
            for pkt in authentic[:100]:
                foreign.sendto(pkt, bot_addr)  # replays
                foreign.sendto(rng.randbytes(rng.randrange(1, 1500)), bot_addr)
        await asyncio.sleep(0.3)
        assert sum(stats.total.dropped.values()) == before, "datagrams from a foreign address reached the receiver"

        # 2. The same and worse from the voice server's own address (an on-path attacker who
        # can spoof it, or a broken server): every one dropped and counted, none heard.
        link = server._links[server.session]
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
        flood = await server.inject("unknown_ssrc", count=600)  # authentic audio from 600 fresh SSRCs
        talk = asyncio.create_task(alice.speak(speechlike(2.0, seed=2)))
        for chunk in range(0, len(bad), 20):
            for p in bad[chunk : chunk + 20]:
                await server.inject("raw", payload=p)
            await asyncio.sleep(0.02)
        for p in replays:
            await server.inject("raw", payload=p)
            await asyncio.sleep(0.005)
        spurts.append(await talk)
        assert len(receiver.ssrcs) <= receiver.max_streams, "a flood of SSRCs grew the per-SSRC table past its bound"

        # 3. A member who joins and talks right after the flood is heard in full.
        bob = await server.add_member(1101, "bob")
        await server.wait_dave_ready()
        bob_spurt = await bob.speak(speechlike(1.0, seed=3))
        await server.drain()
        await asyncio.sleep(0.3)
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
    assert counted == len(bad) + len(replays) + len(flood), (counted, len(bad), len(replays), len(flood), total.dropped)
    assert total.dropped[DropReason.malformed] >= 30  # the lying RTCP at least
    assert total.dropped[DropReason.overflow] + total.dropped[DropReason.unknown_ssrc] == len(flood)


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
    receiver = PacketReceiver(_conn(), m, stats, origin=0.0)
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
    receiver = PacketReceiver(_BotConnection(bot), m, stats, origin=0.0)
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
