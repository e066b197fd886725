"""The voice server emulator against unmodified discord.py 2.7.1, on 127.0.0.1 with real DAVE.

Every test connects a real ``discord.VoiceClient`` (or a subclass that only adds AES-GCM
*sending*, which discord.py lacks) through ``VoiceChannel.connect()``; nothing of discord.py
is patched except the voice websocket's ``wss://`` -> ``ws://`` dial (see harness.py).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import struct
import sys
import threading
import time
from collections import Counter
from typing import Any

import aiohttp
import davey
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import discord
from discord.ext.listening.opus import SILENCE_FRAME, OpusDecoder
from discord.ext.listening.rtp import (
    Goodbye,
    ReceiverReport,
    SenderReport,
    is_rtcp,
    parse_audio_level,
    parse_rtcp,
    parse_rtp_header,
    split_plaintext,
)
from discord.ext.listening.testing import (
    EmulatorError,
    Impairment,
    Op,
    SimulatedMember,
    VoiceServerEmulator,
    speechlike,
    tone,
)
from discord.ext.listening.testing.sfu import SERVER_SSRC
from discord.ext.listening.transport import AES_GCM, XCHACHA20, DecryptionFailed, transport_cipher

pytestmark = pytest.mark.timeout(60)

ALICE, BOB, CAROL, DAVE_ = 1001, 1002, 1003, 1004


class AESGCMVoiceClient(discord.VoiceClient):
    """discord.py's VoiceClient plus AES-256-GCM sending (PyNaCl 1.5 has no AES-GCM)."""

    supported_modes = ("aead_aes256_gcm_rtpsize", *discord.VoiceClient.supported_modes)  # type: ignore[assignment]

    def _encrypt_aead_aes256_gcm_rtpsize(self, header: bytes, data: Any) -> bytes:
        # Same layout as discord.py's xchacha method, with a 12-byte nonce.
        nonce = bytearray(12)
        nonce[:4] = struct.pack(">I", self._incr_nonce)
        self.checked_add("_incr_nonce", 1, 4294967295)
        return header + AESGCM(bytes(self.secret_key)).encrypt(bytes(nonce), bytes(data), bytes(header)) + nonce[:4]


class MiniReceiver:
    """The smallest possible receive loop, written against discord.py's public-ish hooks.

    The socket listener runs on discord.py's SocketReader thread and only hands datagrams
    to the event loop; all decryption happens on the loop (the DAVE session is not shared
    across threads).
    """

    def __init__(self, vc: discord.VoiceClient) -> None:
        self.vc = vc
        self.loop = asyncio.get_running_loop()
        self.raw: list[bytes] = []
        self._event = asyncio.Event()
        vc._connection.add_socket_listener(self._on_datagram)

    def _on_datagram(self, data: bytes) -> None:  # SocketReader thread
        self.loop.call_soon_threadsafe(self._append, data)

    def _append(self, data: bytes) -> None:
        self.raw.append(data)
        self._event.set()

    def close(self) -> None:
        self.vc._connection.remove_socket_listener(self._on_datagram)

    async def wait_count(self, n: int, timeout: float = 10.0, *, every: bool = False) -> None:
        """Wait for ``n`` datagrams that are not RTCP (the SFU's reports come any time), or any ``every``."""
        async with asyncio.timeout(timeout):
            while (len(self.raw) if every else self.rtp_count()) < n:
                self._event.clear()
                await self._event.wait()

    def rtp_count(self) -> int:
        """Datagrams received that are not RTCP (RTP, keepalive echoes, faults)."""
        return sum(1 for data in self.raw if not is_rtcp(data))

    async def settle(self, quiet: float = 0.15, timeout: float = 10.0) -> None:
        """Wait until no datagram arrived for ``quiet`` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                before = len(self.raw)
                await asyncio.sleep(quiet)
                if len(self.raw) == before:
                    return

    def rtp(self, ssrc_to_user: dict[int, int]) -> tuple[dict[int, list[tuple[int, bytes, int | None]]], Counter[str]]:
        """Decrypt everything received: ``user -> [(sequence, opus, audio level)]`` + drop reasons."""
        state = self.vc._connection
        cipher = transport_cipher(state.mode, bytes(state.secret_key))
        out: dict[int, list[tuple[int, bytes, int | None]]] = {}
        dropped: Counter[str] = Counter()
        for data in self.raw:
            if is_rtcp(data):  # sender reports, the SFU's receiver reports: not audio, not a drop
                continue
            try:
                header = parse_rtp_header(data)
                ext, payload = split_plaintext(cipher.decrypt(data, header.aad_length), header)
            except (ValueError, DecryptionFailed):
                dropped["undecryptable"] += 1
                continue
            if header.payload_type != 120:
                dropped["not_audio"] += 1
                continue
            if not payload:  # a padding-only packet (bandwidth probing): no frame, not a drop
                continue
            user = ssrc_to_user.get(header.ssrc)
            if user is None:
                dropped["unknown_ssrc"] += 1
                continue
            if payload != SILENCE_FRAME and state.dave_session is not None:
                payload = state.dave_session.decrypt(user, davey.MediaType.audio, payload)
            out.setdefault(user, []).append((header.sequence, bytes(payload), parse_audio_level(ext)))
        return out, dropped


class _WireTap:
    """Every datagram the emulator's UDP socket sends, with its destination (the loop's thread)."""

    def __init__(self, server: VoiceServerEmulator) -> None:
        self.sent: list[tuple[bytes, Any]] = []
        self.times: list[float] = []  # time.monotonic() of each
        transport = server.media._transport
        real_sendto = transport.sendto

        def sendto(data: bytes, addr: Any = None) -> None:
            self.times.append(time.monotonic())
            self.sent.append((bytes(data), addr))
            real_sendto(data, addr)

        transport.sendto = sendto  # type: ignore[method-assign]

    def to(self, address: Any) -> list[bytes]:
        return [data for data, addr in self.sent if addr == address]


async def _assert_member_audio_roundtrip(
    server: VoiceServerEmulator, vc: discord.VoiceClient, members: list[SimulatedMember]
) -> None:
    receiver = MiniReceiver(vc)
    try:
        records = [await m.speak(speechlike(0.3, seed=i), realtime=False) for i, m in enumerate(members)]
        await server.drain()
        expected = sum(len(r.frames) for r in records)
        await receiver.wait_count(expected)
        got, dropped = receiver.rtp({m.ssrc: m.user_id for m in members})
        assert not dropped
        for member, record in zip(members, records):
            assert [(f.sequence, f.opus) for f in record.frames] == [(s, o) for s, o, _ in got[member.user_id]]
            assert [f.audio_level for f in record.frames] == [lvl for _, _, lvl in got[member.user_id]]
    finally:
        receiver.close()


async def _assert_bot_audio_roundtrip(server: VoiceServerEmulator, vc: discord.VoiceClient, *, dave: bool) -> None:
    frames = [bytes([0xFC]) + bytes([i]) * (20 + i) for i in range(10)]
    start = len(server.received_from_bot)
    for frame in frames:
        vc.send_audio_packet(frame, encode=False)
    await server.wait_until(lambda: len(server.received_from_bot) >= start + len(frames), what="the bot's packets")
    got = server.received_from_bot[start:]
    assert [p.opus for p in got] == frames
    assert all(p.decrypted and p.ssrc == vc.ssrc and p.dave == dave for p in got)


# -- connecting ------------------------------------------------------------------------------


@pytest.mark.parametrize("dave", [True, False], ids=["dave", "no-dave"])
@pytest.mark.parametrize("mode", [AES_GCM, XCHACHA20])
async def test_unmodified_client_connects_both_modes(dave: bool, mode: str) -> None:
    cls = AESGCMVoiceClient if mode == AES_GCM else discord.VoiceClient
    async with VoiceServerEmulator(dave=dave, seed=11) as server:
        alice = await server.add_member(ALICE, "alice")
        vc = await server.connect(cls=cls)
        assert vc.is_connected()
        assert vc._connection.mode == mode
        assert vc._connection.dave_protocol_version == (1 if dave else 0)
        assert (vc._connection.dave_session is not None) == dave
        if dave:
            assert vc._connection.dave_session.ready
        assert server.session is not None and server.session.ssrc == vc.ssrc
        # The handshake, in order, as discord.py drives it.
        recv_ops = [e.op for e in server.events if e.direction == "recv" and e.op in (0, 1)]
        assert recv_ops == [Op.IDENTIFY, Op.SELECT_PROTOCOL]
        assert server.events[0].op == Op.HELLO
        # CLIENTS_CONNECT announced the member that was already there (op 12 only comes for video).
        assert any(e.data["user_ids"] == [str(ALICE)] for e in server.ops_sent(Op.CLIENTS_CONNECT))
        assert not server.ops_sent(Op.CLIENT_CONNECT)
        await _assert_member_audio_roundtrip(server, vc, [alice])
        await _assert_bot_audio_roundtrip(server, vc, dave=dave)


async def test_stock_voice_client_picks_xchacha_from_aes_first_list() -> None:
    async with VoiceServerEmulator(dave=False, seed=1) as server:
        vc = await server.connect()
        ready = server.ops_sent(Op.READY)[0].data
        assert ready["modes"][0] == AES_GCM and ready["ip"] == "127.0.0.1" and ready["port"] == server.media.port
        assert vc._connection.mode == XCHACHA20
        assert server.harness.dialled[0].startswith("wss://127.0.0.1:") and server.harness.dialled[0].endswith("/?v=8")


async def test_client_and_guild_state_are_real() -> None:
    async with VoiceServerEmulator(dave=False, seed=2) as server:
        alice = await server.add_member(ALICE, "alice")
        assert server.client.user is not None and server.client.user.id == server.bot_user_id
        assert alice.member in server.channel.members
        vc = await server.connect()
        assert server.guild.voice_client is vc
        assert server.guild.me.voice is not None and server.guild.me.voice.channel == server.channel
        assert {m.id for m in server.channel.members} == {server.bot_user_id, ALICE}
        await alice.leave()
        await asyncio.sleep(0)
        assert alice.member not in server.channel.members
        op4 = server.harness.gateway.voice_state_requests
        assert op4[0]["channel_id"] == server.channel_id
    # Closing the emulator disconnected the bot through the real op 4 path.
    assert op4[-1]["channel_id"] is None


# -- DAVE ----------------------------------------------------------------------------------------


async def test_dave_group_of_bot_and_three_members_survives_leave_and_join() -> None:
    async with VoiceServerEmulator(seed=3) as server:
        members = [await server.add_member(uid, name) for uid, name in ((ALICE, "alice"), (BOB, "bob"))]
        vc = await server.connect()
        members.append(await server.add_member(CAROL, "carol"))
        await server.wait_dave_ready()
        session = vc._connection.dave_session
        assert session.ready
        group = server._calls[server.channel_id].dave
        assert set(group.members) == {server.bot_user_id, ALICE, BOB, CAROL}
        assert set(map(int, session.get_user_ids())) == {server.bot_user_id, ALICE, BOB, CAROL}
        epoch = session.epoch
        await _assert_member_audio_roundtrip(server, vc, members)

        await members[0].leave()
        await server.wait_dave_ready()
        assert session.epoch > epoch
        assert set(group.members) == {server.bot_user_id, BOB, CAROL}
        assert set(map(int, session.get_user_ids())) == {server.bot_user_id, BOB, CAROL}
        assert [e.data for e in server.ops_sent(Op.CLIENT_DISCONNECT)] == [{"user_id": str(ALICE)}]

        dave = await server.add_member(DAVE_, "dave")
        await server.wait_dave_ready()
        assert set(group.members) == {server.bot_user_id, BOB, CAROL, DAVE_}
        assert vc._connection.dave_session.ready
        await _assert_member_audio_roundtrip(server, vc, [members[1], dave])
        await _assert_bot_audio_roundtrip(server, vc, dave=True)
        # The DAVE ops really went over the websocket, binary and JSON.
        assert server.ops_received(Op.MLS_KEY_PACKAGE) and server.ops_sent(Op.MLS_PROPOSALS)
        assert server.ops_sent(Op.MLS_WELCOME) or server.ops_sent(Op.MLS_ANNOUNCE_COMMIT_TRANSITION)
        assert all(e.binary for e in server.ops_sent(Op.MLS_PROPOSALS))
        assert server.ops_sent(Op.MLS_EXTERNAL_SENDER) and server.ops_received(Op.DAVE_TRANSITION_READY)
        assert not server.dave_errors


async def test_bot_alone_then_members_join() -> None:
    async with VoiceServerEmulator(seed=4) as server:
        vc = await server.connect()
        # Alone, the bot has a key package but no group: it cannot encrypt and sends plain Opus.
        assert not vc._connection.dave_session.ready and not vc._connection.can_encrypt
        await _assert_bot_audio_roundtrip(server, vc, dave=False)
        alice = await server.add_member(ALICE, "alice")
        await server.wait_dave_ready()
        assert vc._connection.dave_session.ready
        await _assert_member_audio_roundtrip(server, vc, [alice])
        await _assert_bot_audio_roundtrip(server, vc, dave=True)
        # The last member leaving puts the bot back in the sole-member state.
        await alice.leave()
        await server.wait_dave_ready()
        assert not vc._connection.can_encrypt


async def test_member_receive_loop_recovers_exact_frames_with_wraps() -> None:
    async with VoiceServerEmulator(seed=5) as server:
        alice = await server.add_member(ALICE, "alice", sequence=65530, timestamp=2**32 - 2000)
        bob = await server.add_member(BOB, "bob", clock="discordpy")
        vc = await server.connect()
        receiver = MiniReceiver(vc)
        try:
            ra = await alice.speak(tone(440, 0.2), realtime=False, padding=7)
            rb = await bob.speak(speechlike(0.2, seed=9), realtime=False)
            await server.drain()
            await receiver.wait_count(len(ra.frames) + len(rb.frames))
            got, dropped = receiver.rtp({alice.ssrc: ALICE, bob.ssrc: BOB})
            assert not dropped
            assert [o for _, o, _ in got[ALICE]] == [f.opus for f in ra.frames]
            assert [s for s, _, _ in got[ALICE]][:8] == [65530, 65531, 65532, 65533, 65534, 65535, 0, 1]
            assert [o for _, o, _ in got[BOB]] == [f.opus for f in rb.frames]
            assert all(level is None for _, _, level in got[BOB])  # discord.py senders: no extension
            assert ra.frames[-5:] == ra.silence_frames and all(f.opus == SILENCE_FRAME for f in ra.silence_frames)
            # And it is real Opus of the audio that was sent.
            pcm = OpusDecoder().decode(got[ALICE][0][1])
            assert len(pcm) == 3840
        finally:
            receiver.close()


# -- gateway behaviour -----------------------------------------------------------------------


async def test_4015_close_is_resumed_with_same_session() -> None:
    async with VoiceServerEmulator(seed=6) as server:
        alice = await server.add_member(ALICE, "alice")
        vc = await server.connect()
        ssrc, key, session = vc.ssrc, bytes(vc._connection.secret_key), server.session
        mark = len(server.events)
        await server.close_voice(4015)
        resume = await server.wait_for_op(Op.RESUME, after=mark)
        assert resume.data["session_id"] == session.session_id and resume.data["token"] == session.token
        assert resume.data["seq_ack"] == session.seq_ack or resume.data["seq_ack"] > 0
        await server.wait_for_op(Op.RESUMED, direction="send", after=mark)
        await server.wait_until(lambda: vc.is_connected() and session.connection is not None, what="the resume")
        await server.wait_dave_ready()
        assert server.session is session and session.resumes == 1
        assert vc.ssrc == ssrc and bytes(vc._connection.secret_key) == key
        assert not [e for e in server.events[mark:] if e.direction == "recv" and e.op == Op.IDENTIFY]
        await _assert_member_audio_roundtrip(server, vc, [alice])
        await _assert_bot_audio_roundtrip(server, vc, dave=True)


async def test_heartbeats_are_acked_and_seq_acked() -> None:
    async with VoiceServerEmulator(dave=False, seed=7, heartbeat_interval=0.2) as server:
        await server.connect()
        beat = await server.wait_for_op(Op.HEARTBEAT, timeout=5)
        ack = await server.wait_for_op(Op.HEARTBEAT_ACK, direction="send", timeout=5)
        assert ack.data == {"t": beat.data["t"]}
        beat2 = await server.wait_for_op(Op.HEARTBEAT, after=server.events.index(ack) + 1, timeout=5)
        assert beat2.data["seq_ack"] == server.session.seq  # discord.py echoes our last seq


async def test_move_bot_to_other_channel() -> None:
    async with VoiceServerEmulator(seed=8) as server:
        await server.add_member(ALICE, "alice")
        bob = await server.add_member(BOB, "bob", channel=server.other_channel)
        vc = await server.connect()
        first = server.session
        await server.move_bot(server.other_channel)
        await server.wait_until(
            lambda: vc.is_connected() and server.session is not None and server.session.established, what="the move"
        )
        await server.wait_dave_ready()
        assert vc.channel == server.other_channel and server.session is not first
        assert vc._connection.dave_session.channel_id == server.other_channel_id
        await _assert_member_audio_roundtrip(server, vc, [bob])


def _reader_parked(vc: discord.VoiceClient) -> bool:
    """Whether discord.py's SocketReader waits on its pause event (not in select() on a socket)."""
    reader = vc._connection._socket_reader
    frame = sys._current_frames().get(reader.ident) if reader.ident is not None else None
    # select() is C code: in it, the thread's top Python frame is the reader's own loop.
    return frame is not None and frame.f_code.co_name == "wait"


async def _wake_socket_reader(server: VoiceServerEmulator, vc: discord.VoiceClient, member: SimulatedMember) -> None:
    """Let a member talk, so that discord.py's SocketReader leaves the socket it discovered on.

    After IP discovery the reader stays in ``select(socket, 30 s)`` until a datagram comes.
    A move or reconnect replaces the socket, and Discord sends no BYE to wake the reader: the
    new connection's IP discovery then waits up to 30 s. In a real call somebody's audio has
    woken it long before; a test of reconnects must let that happen too.
    """
    await member.speak(tone(440, 0.04), realtime=False)
    await server.wait_until(lambda: _reader_parked(vc), timeout=5, what="discord.py's SocketReader to park")


async def test_client_initiated_move_to() -> None:
    async with VoiceServerEmulator(seed=14) as server:
        alice = await server.add_member(ALICE, "alice")
        bob = await server.add_member(BOB, "bob", channel=server.other_channel)
        vc = await server.connect()
        # discord.py replaces its UDP socket here (see _wake_socket_reader).
        await _wake_socket_reader(server, vc, alice)
        await asyncio.wait_for(vc.move_to(server.other_channel, timeout=10), 10)
        assert vc.is_connected() and vc.channel == server.other_channel
        await server.wait_dave_ready()
        await _assert_member_audio_roundtrip(server, vc, [bob])


async def test_close_4006_makes_discord_py_reconnect_from_scratch() -> None:
    async with VoiceServerEmulator(seed=15) as server:
        alice = await server.add_member(ALICE, "alice")
        vc = await server.connect()
        await _wake_socket_reader(server, vc, alice)
        first = server.session
        mark = len(server.events)
        await server.close_voice(4006)
        await server.wait_until(
            lambda: server.session not in (None, first) and server.session.established and vc.is_connected(),
            timeout=15,
            what="the reconnect",
        )
        await server.wait_dave_ready()
        assert server.ops_received(Op.IDENTIFY)[-1].time > server.events[mark].time
        assert not [e for e in server.events[mark:] if e.direction == "recv" and e.op == Op.RESUME]
        assert vc.ssrc == server.session.ssrc != first.ssrc
        await _assert_member_audio_roundtrip(server, vc, [alice])


async def test_bot_plays_audio_through_discord_py_encoder() -> None:
    async with VoiceServerEmulator(seed=16) as server:
        await server.add_member(ALICE, "alice")
        vc = await server.connect()
        vc.play(discord.PCMAudio(io.BytesIO(tone(440, 0.2))))
        await server.wait_until(lambda: not vc.is_playing() and len(server.received_from_bot) >= 15, what="playback")
        got = server.received_from_bot
        audio = [p for p in got if p.opus != SILENCE_FRAME]
        assert len(audio) == 10 and all(p.dave and p.decrypted for p in audio)
        assert [p.opus for p in got[-5:]] == [SILENCE_FRAME] * 5  # discord.py's trailing silence
        assert len(OpusDecoder().decode(audio[0].opus)) == 3840


async def test_kick_disconnects_the_bot() -> None:
    async with VoiceServerEmulator(dave=False, seed=9) as server:
        vc = await server.connect()
        await server.kick_bot()
        await server.wait_until(
            lambda: not vc.is_connected() and server.guild.voice_client is None, what="the disconnect"
        )


async def test_new_session_key_rotates_transport_key() -> None:
    async with VoiceServerEmulator(seed=10) as server:
        alice = await server.add_member(ALICE, "alice")
        vc = await server.connect()
        old = bytes(vc._connection.secret_key)
        new = await server.new_session_key()
        await server.wait_until(lambda: bytes(vc._connection.secret_key) == new, what="the new key")
        await server.wait_dave_ready()
        assert new != old
        await _assert_member_audio_roundtrip(server, vc, [alice])
        await _assert_bot_audio_roundtrip(server, vc, dave=True)


async def test_speaking_event_before_and_after_first_packet() -> None:
    async with VoiceServerEmulator(dave=False, seed=12) as server:
        alice = await server.add_member(ALICE, "alice")
        vc = await server.connect()
        wire = _WireTap(server).times  # when did each datagram leave the emulator?
        await alice.speak(tone(300, 0.04), realtime=False, speaking_event="before")
        await server.drain()
        speaking = server.ops_sent(Op.SPEAKING)
        assert speaking[-1].data == {"user_id": str(ALICE), "ssrc": alice.ssrc, "speaking": 1}
        assert speaking[-1].time < wire[0]
        mark = len(server.events)
        await alice.speak(tone(300, 0.04), realtime=False, speaking_event="none")
        assert not [e for e in server.events[mark:] if e.op == Op.SPEAKING and e.direction == "send"]
        await server.drain()
        first = len(wire)
        await alice.speak(tone(300, 0.04), realtime=False, speaking_event="after")
        assert server.ops_sent(Op.SPEAKING)[-1].time > wire[first]
        # discord.py's own SPEAKING (speaking 0 after SESSION_DESCRIPTION) reached the server.
        assert server.bot_speaking and server.bot_speaking[0]["ssrc"] == vc.ssrc


async def test_realtime_pacing_and_sender_report() -> None:
    # No SFU reports: they would interleave with the arrivals measured here.
    async with VoiceServerEmulator(dave=False, seed=13, sfu_report_interval=None) as server:
        alice = await server.add_member(ALICE, "alice")
        vc = await server.connect()
        receiver = MiniReceiver(vc)
        arrivals: list[float] = []
        loop = asyncio.get_running_loop()
        original = receiver._append

        def stamp(data: bytes) -> None:
            arrivals.append(loop.time())
            original(data)

        receiver._append = stamp  # type: ignore[method-assign]
        try:
            record = await alice.speak(tone(440, 0.2), realtime=True)
            await receiver.wait_count(len(record.frames))
            # Paced (a flood would take a few ms); generous bounds: CI machines are busy.
            nominal = 0.02 * (len(record.frames) - 1)
            span = arrivals[len(record.frames) - 1] - arrivals[0]
            assert 0.5 * nominal <= span <= nominal + 0.5
            clear = await alice.send_sender_report()
            await receiver.wait_count(len(record.frames) + 1, every=True)
            rtcp = receiver.raw[-1]
            cipher = transport_cipher(vc._connection.mode, bytes(vc._connection.secret_key))
            (report,) = parse_rtcp(cipher.decrypt_rtcp(rtcp))
            assert isinstance(report, SenderReport) and report.ssrc == alice.ssrc
            assert report.packet_count == len(record.frames)
            assert cipher.decrypt_rtcp(rtcp) == clear
        finally:
            receiver.close()


async def test_gateway_rejects_bad_clients_with_voice_close_codes() -> None:
    async with VoiceServerEmulator(seed=17) as server:
        # A real op 4 from discord.py's Guild API makes the server allocate a session.
        await server.guild.change_voice_state(channel=server.channel)
        await server.wait_until(lambda: server.session is not None, what="a session")
        session = server.session
        url = f"ws://{server.gateway.endpoint}/?v=8"

        async def close_code(*frames: Any) -> int:
            async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
                hello = await ws.receive_json(timeout=5)
                assert hello["op"] == Op.HELLO and "seq" not in hello
                for frame in frames:
                    if isinstance(frame, bytes):
                        await ws.send_bytes(frame)
                    elif isinstance(frame, str):
                        await ws.send_str(frame)
                    else:
                        await ws.send_json(frame)
                while True:
                    msg = await ws.receive(timeout=5)
                    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                        return ws.close_code

        identify = {
            "server_id": str(server.guild_id),
            "user_id": str(server.bot_user_id),
            "session_id": session.session_id,
            "token": session.token,
        }
        assert await close_code("{not json") == 4002
        assert await close_code({"op": 1, "d": {}}) == 4003
        assert await close_code(b"\x1a") == 4003  # DAVE key package before IDENTIFY
        assert await close_code({"op": 99, "d": {}}) == 4001
        assert await close_code({"op": 0, "d": {**identify, "token": "nope", "max_dave_protocol_version": 1}}) == 4004
        assert await close_code({"op": 0, "d": {**identify, "server_id": "1", "max_dave_protocol_version": 1}}) == 4011
        assert await close_code({"op": 0, "d": {**identify, "max_dave_protocol_version": 0}}) == 4017
        assert await close_code({"op": 7, "d": {**identify, "seq_ack": -1}}) == 4006  # never identified
        ok = {"op": 0, "d": {**identify, "max_dave_protocol_version": 1}}
        assert (
            await close_code(
                ok,
                {
                    "op": 1,
                    "d": {"protocol": "udp", "data": {"address": "127.0.0.1", "port": 1, "mode": "xsalsa20_poly1305"}},
                },
            )
            == 4016
        )
        assert await close_code(ok, ok) == 4005


# -- impairment and faults --------------------------------------------------------------------


async def test_loss_rate_for_fixed_seed() -> None:
    async with VoiceServerEmulator(dave=False, seed=21, loss=0.2) as server:
        alice = await server.add_member(ALICE, "alice")
        vc = await server.connect()
        receiver = MiniReceiver(vc)
        try:
            record = await alice.speak(speechlike(6.0, seed=1), realtime=False)
            await server.drain()
            await receiver.settle()
            got, _ = receiver.rtp({alice.ssrc: ALICE})
            sent = len(record.frames)
            stats = server.impairment.stats
            assert stats.sent == sent and len(got[ALICE]) == sent - stats.dropped
            assert 0.13 <= stats.dropped / sent <= 0.27
            # Lost packets are gone; the rest arrive exactly as sent.
            by_seq = {f.sequence: f.opus for f in record.frames}
            assert all(by_seq[s] == o for s, o, _ in got[ALICE])
        finally:
            receiver.close()


async def test_reorder_duplicate_and_per_member_impairment() -> None:
    async with VoiceServerEmulator(dave=False, seed=22, duplicate=0.1) as server:
        alice = await server.add_member(ALICE, "alice", impairment=Impairment(reorder=0.2, seed=5))
        bob = await server.add_member(BOB, "bob")
        vc = await server.connect()
        receiver = MiniReceiver(vc)
        try:
            ra = await alice.speak(speechlike(1.5, seed=2), realtime=False)
            rb = await bob.speak(speechlike(1.5, seed=3), realtime=False)
            await server.drain()
            await receiver.settle()
            got, _ = receiver.rtp({alice.ssrc: ALICE, bob.ssrc: BOB})
            a_seq = [s for s, _, _ in got[ALICE]]
            b_seq = [s for s, _, _ in got[BOB]]
            assert a_seq != sorted(a_seq, key=lambda s: (s - ra.first_sequence) % 65536)  # reordered
            assert b_seq == sorted(b_seq, key=lambda s: (s - rb.first_sequence) % 65536)  # bob: no reorder
            assert len(a_seq) > len(set(a_seq)) and len(b_seq) > len(set(b_seq))  # global duplicates
            assert set(a_seq) == {f.sequence for f in ra.frames}  # nothing lost
            assert alice.impairment.stats.reordered > 0
        finally:
            receiver.close()


async def test_delay_is_applied() -> None:
    async with VoiceServerEmulator(dave=False, seed=23, delay=0.3) as server:
        alice = await server.add_member(ALICE, "alice")
        vc = await server.connect()
        receiver = MiniReceiver(vc)
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            record = await alice.speak(tone(440, 0.06), realtime=False)
            await asyncio.sleep(0.15)
            assert not receiver.rtp_count()
            await receiver.wait_count(len(record.frames))
            assert loop.time() - t0 >= 0.3
        finally:
            receiver.close()


async def test_injected_faults_reach_the_bot_and_do_no_harm() -> None:
    async with VoiceServerEmulator(seed=24, sfu_report_interval=None) as server:  # exactly what was injected
        alice = await server.add_member(ALICE, "alice")
        vc = await server.connect()
        receiver = MiniReceiver(vc)
        try:
            sent = []
            sent += await server.inject("garbage", count=3, size=40)
            sent += await server.inject("wrong_tag", member=alice)
            sent += await server.inject("unknown_ssrc", ssrc=424242)
            sent += await server.inject("video", member=alice, count=2)
            sent += await server.inject("raw", payload=b"\x00")
            await receiver.wait_count(len(sent), every=True)
            assert receiver.raw == sent
            _got, dropped = receiver.rtp({alice.ssrc: ALICE})
            assert dropped["undecryptable"] >= 1 and dropped["unknown_ssrc"] == 1 and dropped["not_audio"] == 2
            assert vc.is_connected()
        finally:
            receiver.close()
        await _assert_member_audio_roundtrip(server, vc, [alice])


# -- misuse and teardown ----------------------------------------------------------------------


async def test_misuse_raises_clear_errors() -> None:
    with pytest.raises(ValueError, match="unsupported mode"):
        VoiceServerEmulator(modes=("xsalsa20_poly1305",))
    with pytest.raises(ValueError, match="loss"):
        VoiceServerEmulator(loss=1.5)
    async with VoiceServerEmulator(dave=False, seed=25) as server:
        alice = await server.add_member(ALICE, "alice")
        with pytest.raises(EmulatorError, match="connect"):
            await alice.speak(tone(440, 0.04), realtime=False)
        with pytest.raises(EmulatorError, match="already exists"):
            await server.add_member(ALICE)
        with pytest.raises(EmulatorError, match="bot's own id"):
            await server.add_member(server.bot_user_id)
        with pytest.raises(EmulatorError, match="no simulated member"):
            server.member(99)
        with pytest.raises(ValueError, match="clock"):
            await server.add_member(BOB, clock="sundial")
        with pytest.raises(EmulatorError, match="no open voice websocket"):
            await server.close_voice(4015)
        vc = await server.connect()
        with pytest.raises(EmulatorError, match="already connected"):
            await server.connect()
        with pytest.raises(ValueError, match="speaking_event"):
            await alice.speak(tone(440, 0.04), speaking_event="during")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="fault kind"):
            await server.inject("meteor")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="close code"):
            await server.close_voice(1)
        await alice.leave()
        with pytest.raises(EmulatorError, match="not in a call"):
            await alice.speak(tone(440, 0.04))
        with pytest.raises(EmulatorError, match="not in a call"):
            await alice.leave()
        bob = await server.add_member(BOB, "bob", join=False)
        assert not bob.in_call and bob.member not in server.channel.members
        await bob.join()
        with pytest.raises(EmulatorError, match="already in channel"):
            await bob.join()
        await bob.speak(tone(440, 0.04), realtime=False)
        assert vc.is_connected()
    with pytest.raises(EmulatorError, match="not running"):
        await server.add_member(CAROL)


async def test_teardown_leaves_no_emulator_threads_or_tasks() -> None:
    before = set(threading.enumerate())
    async with VoiceServerEmulator(seed=26) as server:
        alice = await server.add_member(ALICE, "alice")
        vc = await server.connect()
        await alice.speak(tone(440, 0.1), realtime=False)
    assert not vc.is_connected()
    assert server.gateway._runner is None and server.media._transport is None and not server._hooks.tasks
    # discord.py's SocketReader and keep-alive threads end shortly after the disconnect (the
    # reader never left its pause: no listener registered, so no select() to wake from).
    for _ in range(100):
        left = [t for t in set(threading.enumerate()) - before if t.is_alive()]
        if not left:
            break
        await asyncio.sleep(0.02)
    assert not left, left
    current = asyncio.current_task()
    assert not [
        t for t in asyncio.all_tasks() if t is not current and not t.done() and "voice-emulator" in t.get_name()
    ]


# -- Discord's behaviours, on by default (docs/discord-behaviours.md) ---------------------------


def _cipher(vc: discord.VoiceClient) -> Any:
    return transport_cipher(vc._connection.mode, bytes(vc._connection.secret_key))


async def test_media_is_withheld_after_media_timeout_until_the_bot_sends() -> None:
    async with VoiceServerEmulator(dave=False, seed=31, media_timeout=1.0) as server:
        assert VoiceServerEmulator().media_timeout == 30.0
        alice = await server.add_member(ALICE, "alice")
        vc = await server.connect()
        receiver = MiniReceiver(vc)
        try:
            heard = server.bot_last_heard
            assert heard is not None  # IP discovery counts as hearing from the bot
            first = await alice.speak(tone(440, 0.06), realtime=False)
            await server.drain()
            await receiver.wait_count(len(first.frames))
            assert server.media_withheld == 0
            await server.wait_until(lambda: time.monotonic() - heard > 1.05, timeout=5, what="the media timeout")
            withheld = await alice.speak(tone(440, 0.06), realtime=False)
            await server.drain()
            assert server.media_withheld == len(withheld.frames)
            await server.send_feedback("pli")  # the SFU's own RTCP is withheld too
            await server.drain()
            assert server.media_withheld == len(withheld.frames) + 1
            await receiver.settle()
            assert receiver.rtp_count() == len(first.frames)
            # Any datagram from the bot revives its address at once.
            vc._connection.send_packet(struct.pack(">Q", 1))
            await server.wait_until(lambda: server.bot_last_heard != heard, what="the bot's datagram")
            again = await alice.speak(tone(440, 0.06), realtime=False)
            await server.drain()
            await receiver.wait_count(len(first.frames) + len(again.frames))
            got, dropped = receiver.rtp({alice.ssrc: ALICE})
            assert not dropped and server.media_withheld == len(withheld.frames) + 1
            assert [s for s, _, _ in got[ALICE]] == [f.sequence for f in first.frames + again.frames]
        finally:
            receiver.close()


@pytest.mark.parametrize("echo", [False, True], ids=["no-echo", "echo"])
async def test_keepalives_are_counted_and_echoed_only_when_asked(echo: bool) -> None:
    async with VoiceServerEmulator(dave=False, seed=32, echo_keepalive=echo) as server:
        vc = await server.connect()
        receiver = MiniReceiver(vc)
        try:
            keepalives = [struct.pack("<Q", n) for n in (1, 2)]
            for keepalive in keepalives:
                vc._connection.send_packet(keepalive)
            await server.wait_until(lambda: len(server.keepalives_received) == 2, what="the keepalives")
            assert [data for _, data in server.keepalives_received] == keepalives
            assert not server.bot_packet_errors and not server.received_from_bot
            if echo:
                await receiver.wait_count(2)
                assert [data for data in receiver.raw if not is_rtcp(data)] == keepalives
            else:
                await receiver.settle()
                assert not [data for data in receiver.raw if len(data) == 8]
        finally:
            receiver.close()


async def test_padding_burst_mid_spurt_is_padding_only_and_uses_up_sequence_numbers() -> None:
    # DAVE on: the burst must be transport-encrypted only (it is not a media frame).
    async with VoiceServerEmulator(seed=33, padding_bursts=None) as server:
        alice = await server.add_member(ALICE, "alice")
        vc = await server.connect()
        receiver = MiniReceiver(vc)
        try:
            record = await alice.speak(
                speechlike(1.0, seed=4), realtime=False, padding_burst_at=25, padding_burst_size=60
            )
            (burst,) = record.padding_bursts
            before, after = record.frames[24], record.frames[25]
            assert burst.before_frame == 25 and burst.count == 60 and burst.ssrc == alice.ssrc
            assert burst.sequences == [(before.sequence + 1 + k) % 65536 for k in range(60)]
            assert after.sequence == (burst.first_sequence + 60) % 65536  # the burst used them up
            assert burst.timestamp == before.timestamp
            await server.drain()
            await receiver.wait_count(len(record.frames) + 60)
            cipher = _cipher(vc)
            wire: list[tuple[Any, bytes]] = []
            for data in receiver.raw:
                if not is_rtcp(data):
                    header = parse_rtp_header(data)
                    wire.append((header, cipher.decrypt(data, header.aad_length)))
            seqs = [h.sequence for h, _ in wire]
            # In order on the wire: frame 24, the whole burst, frame 25.
            start = seqs.index(before.sequence)
            assert seqs[start : start + 62] == [before.sequence, *burst.sequences, after.sequence]
            padding_only = wire[start + 1 : start + 61]
            for header, plain in padding_only:
                assert header.payload_type == 120 and header.has_padding and not header.marker
                assert header.timestamp == before.timestamp and header.ssrc == alice.ssrc
                ext, payload = split_plaintext(plain, header)
                assert payload == b"" and parse_audio_level(ext) == 127
                # After the extension body: padding and nothing else, its count in the last byte.
                assert plain[header.extension_length :] == bytes(burst.padding - 1) + bytes([burst.padding])
            assert all(not h.has_padding for h, _ in wire if h.sequence not in record.padding_sequences)
            assert alice.sent.packet_count == len(record.frames) + 60
            got, dropped = receiver.rtp({alice.ssrc: ALICE})
            assert not dropped and [o for _, o, _ in got[ALICE]] == [f.opus for f in record.frames]
        finally:
            receiver.close()


async def test_padding_bursts_by_default_rate() -> None:
    async with VoiceServerEmulator(dave=False, seed=34, padding_bursts=0.3, padding_burst_size=55) as server:
        assert VoiceServerEmulator().padding_bursts == 20.0
        alice = await server.add_member(ALICE, "alice")
        bot_like = await server.add_member(BOB, "bob", clock="discordpy")  # discord.py does not probe
        await server.connect()
        records = [await alice.speak(tone(440, 0.5), realtime=False) for _ in range(3)]
        await bot_like.speak(tone(440, 1.0), realtime=False)
        bursts = alice.sent.padding_bursts
        assert 3 <= len(bursts) <= 10 and not bot_like.sent.padding_bursts
        assert all(b.count == 55 and b.before_frame >= 1 for b in bursts)
        # Frames and padding packets together number one contiguous run: nothing else is missing.
        first = records[0].first_sequence
        used = sorted(
            (s - first) % 65536 for s in [f.sequence for f in alice.sent.frames] + sorted(alice.sent.padding_sequences)
        )
        assert used == list(range(len(used)))
        assert alice.sent.packet_count == len(used)


def test_default_probe_rate_meets_every_half_minute_of_talk() -> None:
    from discord.ext.listening.testing.probing import ProbeSchedule

    for seed in range(200):
        schedule = ProbeSchedule(20.0, rng=seed)
        first = schedule.bursts(1500, 0.02)  # 30 s of talk in one spurt
        assert first and min(first) >= 1
    with pytest.raises(ValueError, match="mean_interval"):
        ProbeSchedule(0)
    with pytest.raises(ValueError, match="padding burst"):
        ProbeSchedule(1.0, size=0)


async def test_audio_ssrcs_come_by_op5_and_op12_only_for_video() -> None:
    async with VoiceServerEmulator(seed=35) as server:
        alice = await server.add_member(ALICE, "alice")
        bob = await server.add_member(BOB, "bob", video=True)
        carol = await server.add_member(CAROL, "carol")
        vc = await server.connect()
        # At connection start: op 11 for everyone, op 12 for bob (video) only, no op 5 (nobody spoke).
        assert server.ops_sent(Op.CLIENTS_CONNECT)[0].data == {"user_ids": [str(ALICE), str(BOB), str(CAROL)]}
        (op12,) = server.ops_sent(Op.CLIENT_CONNECT)
        assert (
            op12.data["user_id"] == str(BOB)
            and op12.data["audio_ssrc"] == bob.ssrc
            and op12.data["video_ssrc"] == bob.video_ssrc
        )
        assert not server.ops_sent(Op.SPEAKING)
        # Starting to speak gives op 5; speaking_event="none" gives none (no speaking state).
        await alice.speak(tone(440, 0.04), realtime=False)
        await carol.speak(tone(440, 0.04), realtime=False, speaking_event="none")
        assert [e.data for e in server.ops_sent(Op.SPEAKING)] == [
            {"user_id": str(ALICE), "ssrc": alice.ssrc, "speaking": 1}
        ]
        # A member with video joining mid-call gets op 11 + op 12, one without video op 11 only.
        dave = await server.add_member(DAVE_, "dave", video=True)
        erin = await server.add_member(1005, "erin")
        assert [e.data["user_id"] for e in server.ops_sent(Op.CLIENT_CONNECT)] == [str(BOB), str(DAVE_)]
        assert [e.data for e in server.ops_sent(Op.CLIENTS_CONNECT)][-2:] == [
            {"user_ids": [str(DAVE_)]},
            {"user_ids": [str(1005)]},
        ]
        await server.wait_dave_ready()
        # On a new connection (a move there and back), op 5 is repeated for members with a
        # speaking state, right after SESSION_DESCRIPTION; leaving clears the state.
        await erin.speak(tone(440, 0.04), realtime=False)
        await erin.leave()
        await erin.join()
        mark = len(server.events)
        await server.move_bot(server.other_channel)
        await server.wait_until(
            lambda: server.session is not None and server.session.established and vc.is_connected(), what="the move"
        )
        await server.move_bot(server.channel)
        await server.wait_until(
            lambda: server.session is not None and server.session.established and vc.is_connected(),
            what="the move back",
        )
        await server.wait_dave_ready()
        sent = [e for e in server.events[mark:] if e.direction == "send"]
        last_description = max(i for i, e in enumerate(sent) if e.op == Op.SESSION_DESCRIPTION)
        after = sent[last_description:]
        assert [e.data for e in after if e.op == Op.SPEAKING] == [
            {"user_id": str(ALICE), "ssrc": alice.ssrc, "speaking": 1}
        ]
        assert [e.data["user_id"] for e in after if e.op == Op.CLIENT_CONNECT] == [str(BOB), str(DAVE_)]
        assert not dave.speaking and alice.speaking and not carol.speaking


async def test_ssrc_in_client_connect_switch_restores_op12_for_everyone() -> None:
    async with VoiceServerEmulator(dave=False, seed=36, ssrc_in_client_connect=True) as server:
        alice = await server.add_member(ALICE, "alice")
        await server.connect()
        bob = await server.add_member(BOB, "bob")
        assert [(e.data["user_id"], e.data["audio_ssrc"]) for e in server.ops_sent(Op.CLIENT_CONNECT)] == [
            (str(ALICE), alice.ssrc),
            (str(BOB), bob.ssrc),
        ]


@pytest.mark.parametrize("goodbye", [False, True], ids=["default", "goodbye_on_close"])
async def test_no_rtcp_bye_on_move_unless_asked(goodbye: bool) -> None:
    async with VoiceServerEmulator(dave=False, seed=37, **({"goodbye_on_close": True} if goodbye else {})) as server:
        assert server.goodbye_on_close is goodbye
        vc = await server.connect()
        old_session, old_key = server.session, bytes(vc._connection.secret_key)
        old_address = server._media.addresses[old_session]
        tap = _WireTap(server)
        await server.move_bot(server.other_channel)
        await server.wait_until(
            lambda: server.session not in (None, old_session) and server.session.established, what="the move"
        )
        to_old = [
            transport_cipher(old_session.mode, old_key).decrypt_rtcp(d) for d in tap.to(old_address) if is_rtcp(d)
        ]
        byes = [p for clear in to_old for p in parse_rtcp(clear) if isinstance(p, Goodbye)]
        if goodbye:
            assert [b.ssrcs for b in byes] == [[old_session.ssrc]]
        else:
            assert not byes


def _sfu_rtcp(receiver: MiniReceiver, payload_type: int, start: int = 0) -> list[bytes]:
    """The clear RTCP packets of ``payload_type`` the bot received from index ``start`` on (205/206 included)."""
    cipher = _cipher(receiver.vc)
    return [cipher.decrypt_rtcp(d) for d in receiver.raw[start:] if len(d) >= 8 and d[1] == payload_type]


async def test_sfu_receiver_reports_describe_the_bots_audio() -> None:
    async with VoiceServerEmulator(dave=False, seed=38, sfu_report_interval=0.2) as server:
        assert VoiceServerEmulator().sfu_report_interval == 5.0 and VoiceServerEmulator().rtcp_interval is None
        vc = await server.connect()
        receiver = MiniReceiver(vc)
        try:
            # Before the bot sends audio: reports with no report block.
            await server.wait_until(lambda: _sfu_rtcp(receiver, 201), what="a receiver report")
            (report,) = parse_rtcp(_sfu_rtcp(receiver, 201)[0])
            assert isinstance(report, ReceiverReport) and report.ssrc == SERVER_SSRC and report.reports == []
            # The bot sends 10 packets with two sequence numbers skipped (lost on the way).
            for i in range(10):
                if i == 5:
                    vc.sequence += 2
                vc.send_audio_packet(b"\xfc\x00\x01", encode=False)
            last = vc.sequence
            seen = len(receiver.raw)  # the loop has not run since: every report with a block comes after

            def blocks() -> list[Any]:
                return [b for clear in _sfu_rtcp(receiver, 201, seen) for rr in parse_rtcp(clear) for b in rr.reports]

            await server.wait_until(
                lambda: any(b.highest_sequence & 0xFFFF == last for b in blocks()),
                what="a report block about all the bot's audio",
            )
            found = blocks()
            assert all(b.ssrc == vc.ssrc for b in found) and found[-1].cumulative_lost == 2
            # Whichever report interval saw the gap says some of its packets were lost.
            assert any(b.fraction_lost > 0 for b in found)
        finally:
            receiver.close()


async def test_feedback_packets_reach_the_bot_and_parse() -> None:
    async with VoiceServerEmulator(dave=False, seed=39, sfu_report_interval=None) as server:
        vc = await server.connect()
        receiver = MiniReceiver(vc)
        try:
            nack = await server.send_feedback("nack", sequences=[10, 11, 13, 40])
            pli = await server.send_feedback("pli")
            remb = await server.send_feedback("psfb", fmt=15, fci=b"REMB" + bytes(8), media_ssrc=0)
            await receiver.wait_count(3, every=True)
            assert _sfu_rtcp(receiver, 205) == [nack] and _sfu_rtcp(receiver, 206) == [pli, remb]
            for clear, pt, fmt in ((nack, 205, 1), (pli, 206, 1), (remb, 206, 15)):
                b0, got_pt, words, sender, media = struct.unpack_from(">BBHII", clear)
                assert (b0 >> 6, b0 & 0x1F, got_pt) == (2, fmt, pt) and 4 * (words + 1) == len(clear)
                assert sender == SERVER_SSRC and media == (0 if clear is remb else vc.ssrc)
            # PID 10 with 11 and 13 in its bitmask; 40 on its own.
            assert nack[12:] == struct.pack(">HHHH", 10, 0b101, 40, 0) and len(pli) == 12
            assert [clear for _, clear in server.sfu_rtcp_sent] == [nack, pli, remb]
            with pytest.raises(ValueError, match="feedback kind"):
                await server.send_feedback("fir")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="fmt"):
                await server.send_feedback("rtpfb")
            with pytest.raises(ValueError, match="at least one"):
                await server.send_feedback("nack")
        finally:
            receiver.close()


async def test_padding_burst_in_a_realtime_spurt() -> None:
    async with VoiceServerEmulator(dave=False, seed=40, padding_bursts=None) as server:
        alice = await server.add_member(ALICE, "alice")
        vc = await server.connect()
        receiver = MiniReceiver(vc)
        try:
            record = await alice.speak(tone(440, 0.2), realtime=True, padding_burst_at=5)
            (burst,) = record.padding_bursts
            assert burst.count == server.padding_burst_size == 50
            await receiver.wait_count(len(record.frames) + burst.count)
            seqs = [parse_rtp_header(d).sequence for d in receiver.raw if not is_rtcp(d)]
            frames = [f.sequence for f in record.frames]
            assert seqs == frames[:5] + burst.sequences + frames[5:]
        finally:
            receiver.close()


async def test_discord_behaviour_switches_are_validated() -> None:
    for kwargs, match in (
        ({"media_timeout": 0}, "media_timeout"),
        ({"sfu_report_interval": -1}, "sfu_report_interval"),
        ({"padding_bursts": 0}, "mean_interval"),
        ({"padding_burst_size": 0}, "padding burst"),
        ({"padding_bursts": None, "padding_burst_size": 5000}, "padding burst"),
    ):
        with pytest.raises(ValueError, match=match):
            VoiceServerEmulator(**kwargs)
    async with VoiceServerEmulator(dave=False, seed=41) as server:
        alice = await server.add_member(ALICE, "alice")
        await server.connect()
        with pytest.raises(ValueError, match="before frame"):
            await alice.speak(tone(440, 0.1), realtime=False, padding_burst_at=0)
        with pytest.raises(ValueError, match="before frame"):
            await alice.speak(tone(440, 0.1), realtime=False, padding_burst_at=10)  # 5 audio + 5 silence frames
        with pytest.raises(ValueError, match="needs padding_burst_at"):
            await alice.speak(tone(440, 0.1), realtime=False, padding_burst_size=50)
        assert not alice.sent.spurts  # nothing was sent by a refused call


async def test_delay_dave_to_bot_is_validated_and_needs_dave() -> None:
    async with VoiceServerEmulator(seed=42) as server:
        for bad in (-1, 31, True, "1"):
            with pytest.raises(ValueError, match="seconds"):
                server.delay_dave_to_bot(bad)  # type: ignore[arg-type]
        server.delay_dave_to_bot(0.2)
        server.delay_dave_to_bot(0)
    async with VoiceServerEmulator(seed=42, dave=False) as server:
        with pytest.raises(EmulatorError, match="DAVE is off"):
            server.delay_dave_to_bot(0.2)


async def test_a_stalled_link_holds_everything_then_drains_the_backlog_in_order() -> None:
    from discord.ext.listening.testing.media import MediaServer

    class Quiet:
        def on_ip_discovery(self, ssrc: int, address: tuple[str, int]) -> None:
            pass

        def on_datagram(self, data: bytes, address: tuple[str, int]) -> None:
            pass

    loop = asyncio.get_running_loop()
    got: list[tuple[float, bytes]] = []

    class Bot(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            got.append((loop.time(), data))

    bot, _ = await loop.create_datagram_endpoint(Bot, local_addr=("127.0.0.1", 0))
    media = MediaServer(Quiet())
    await media.start()
    try:
        for bad in (0, -1, 31, True, "1"):
            with pytest.raises(ValueError, match="seconds"):
                media.stall(bad)  # type: ignore[arg-type]
        for bad_spacing in (-0.001, 0.021, True):
            with pytest.raises(ValueError, match="spacing"):
                media.stall(0.1, bad_spacing)  # type: ignore[arg-type]
        addr = bot.get_extra_info("sockname")
        start = loop.time()
        media.stall(0.1, 0.005)
        for k in range(5):
            media.schedule(bytes([k]), addr, start + 0.001 * k)
        media.schedule(b"after", addr, start + 0.3)  # due after the stall: on time, not spaced
        await media.drain(5)
        await asyncio.sleep(0.05)
    finally:
        await media.stop()
        bot.close()
    assert [d for _, d in got] == [bytes([k]) for k in range(5)] + [b"after"]
    times = [t - start for t, _ in got]
    assert min(times) >= 0.1  # nothing got through the stall
    assert all(b - a >= 0.005 for a, b in itertools.pairwise(times[:5]))  # the backlog drains spaced
    assert times[5] >= 0.3
