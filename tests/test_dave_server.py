"""DAVE server emulation: MLS encoding, the group coordinator and in-process members.

Real davey sessions everywhere (no mocks): the server's proposals must be accepted by
davey, and the members must end up decrypting each other's frames.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Iterable, Mapping
from types import SimpleNamespace

import davey
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from discord.gateway import DiscordVoiceWebSocket
from discord.voice_state import VoiceConnectionState
from hypothesis import given
from hypothesis import strategies as st

from discord.ext.listening.testing import mls, mls_wire
from discord.ext.listening.testing.dave_member import LocalDaveMember, connect_local_member, deliver
from discord.ext.listening.testing.dave_messages import (
    OP_ANNOUNCE_COMMIT,
    OP_COMMIT_WELCOME,
    OP_EXECUTE_TRANSITION,
    OP_EXTERNAL_SENDER,
    OP_KEY_PACKAGE,
    OP_PREPARE_EPOCH,
    OP_PREPARE_TRANSITION,
    OP_PROPOSALS,
    OP_TRANSITION_READY,
    OP_WELCOME,
    PROPOSALS_APPEND,
    PROPOSALS_REVOKE,
    DaveBinaryMessage,
    DaveJsonMessage,
    DaveMessage,
    DaveProtocolError,
    E2EERequired,
    decode_proposals_payload,
    encode_proposals_payload,
    message_from_frame,
)
from discord.ext.listening.testing.dave_server import DaveGroupServer
from discord.ext.listening.testing.external_sender import ExternalSender

CHANNEL = 1_234_567_890_123_456_789
BOT, ALICE, BOB, CAROL, ERIN = (
    900_000_000_000_000_001,
    900_000_000_000_000_002,
    900_000_000_000_000_003,
    900_000_000_000_000_004,
    900_000_000_000_000_006,
)


# --- helpers --------------------------------------------------------------------------------


def opus(user_id: int, n: int = 0) -> bytes:
    """A fake but distinct opus payload per user and frame."""
    return b"\xfc" + struct.pack(">QI", user_id, n) + bytes(range(40))


def assert_all_decrypt(members: Mapping[int, LocalDaveMember], n: int = 0) -> None:
    frames = {uid: m.encrypt_opus(opus(uid, n)) for uid, m in members.items()}
    for uid, frame in frames.items():
        assert frame != opus(uid, n), f"{uid} did not encrypt"
        assert frame.endswith(b"\xfa\xfa")  # DAVE magic marker
    for receiver, member in members.items():
        for sender, frame in frames.items():
            if sender != receiver:
                assert member.decrypt(sender, frame) == opus(sender, n)


def make_group(users: Iterable[int], **server_kwargs) -> tuple[DaveGroupServer, dict[int, LocalDaveMember]]:
    """A server and an established group of in-process members (rejection counters cleared)."""
    server = DaveGroupServer(CHANNEL, **server_kwargs)
    members: dict[int, LocalDaveMember] = {}
    for uid in users:
        member = LocalDaveMember(uid, CHANNEL)
        members[uid] = member
        assert connect_local_member(server, member, members) == []
    server.commit_rejections.clear()  # the losers of the races while forming the group
    return server, members


def join_without_delivery(server: DaveGroupServer, member: LocalDaveMember) -> DaveMessage:
    """Op 0, op 4 and op 25 for ``member``; returns its key package (op 26), not delivered."""
    to_member = server.add_participant(member.user_id, member.max_protocol_version)
    (key_package,) = member.session_description(server.protocol_version)  # op 4 comes first
    for message in to_member:
        assert member.handle(message) == []  # op 25
    return key_package


def ops(messages: Iterable[DaveMessage]) -> list[tuple[int, int]]:
    return [(m.user_id, m.op) for m in messages]


def by_op(messages: Iterable[DaveMessage], op: int) -> list[DaveMessage]:
    return [m for m in messages if m.op == op]


# --- mls.py -----------------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=2**30 - 1))
def test_varint_round_trip(value):
    encoded = mls_wire.encode_varint(value)
    assert len(encoded) == (1 if value < 64 else 2 if value < 16384 else 4)
    assert mls_wire.decode_varint(encoded + b"tail") == (value, len(encoded))


def test_varint_boundaries_and_errors():
    assert mls_wire.encode_varint(63) == b"\x3f"
    assert mls_wire.encode_varint(64) == b"\x40\x40"
    assert mls_wire.encode_varint(16383) == b"\x7f\xff"
    assert mls_wire.encode_varint(16384) == b"\x80\x00\x40\x00"
    for bad in (-1, 2**30):
        with pytest.raises(ValueError):
            mls_wire.encode_varint(bad)
    with pytest.raises(TypeError):
        mls_wire.encode_varint(1.5)  # type: ignore[arg-type]
    for data in (b"", b"\x40", b"\xc0\x00\x00\x00", b"\x40\x05", b"\x80\x00\x00\x05"):
        with pytest.raises(mls_wire.MLSDecodeError):
            mls_wire.decode_varint(data)
    assert mls_wire.encode_vl(b"abc") == b"\x03abc"


def test_external_sender_package_layout():
    sender = ExternalSender(identity=b"gateway")
    package = sender.package()
    assert package[:2] == b"\x40\x41"  # VL(65)
    assert package[2] == 0x04  # uncompressed P-256 point
    assert package[2:67] == sender.signature_public_key
    assert package[67:] == b"\x00\x01" + b"\x07gateway"  # basic credential + VL(identity)
    with pytest.raises(ValueError):
        ExternalSender(ec.generate_private_key(ec.SECP384R1()))


def test_add_and_remove_proposal_layout_and_signature():
    sender = ExternalSender()
    session = davey.DaveSession(1, ALICE, CHANNEL)
    key_package = session.get_serialized_key_package()
    gid = mls.group_id_for_channel(CHANNEL)
    assert gid == struct.pack(">Q", CHANNEL)

    for message, tail in (
        (sender.add_proposal(gid, 7, key_package), b"\x00\x01" + key_package),
        (sender.remove_proposal(gid, 7, 3), struct.pack(">HI", 3, 3)),
    ):
        head = b"\x00\x01\x00\x01" + b"\x08" + gid + struct.pack(">Q", 7) + b"\x02" + b"\x00" * 4 + b"\x00" + b"\x02"
        assert message.startswith(head + tail)
        parsed, end = mls.parse_public_message(message)
        assert end == len(message)
        assert (parsed.epoch, parsed.sender_type, parsed.sender_index) == (7, mls.SENDER_EXTERNAL, 0)
        assert parsed.membership_tag is None and parsed.confirmation_tag is None
        tbs = message[: len(head) + len(tail)]
        signed = mls_wire.encode_vl(b"MLS 1.0 FramedContentTBS") + mls_wire.encode_vl(tbs)
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sender.signature_public_key)
        public.verify(parsed.signature, signed, ec.ECDSA(hashes.SHA256()))  # raises if wrong
        assert len(mls.proposal_ref(message)) == 32

    with pytest.raises(mls_wire.MLSDecodeError):
        sender.add_proposal(gid, 0, key_package[:-1])
    with pytest.raises(ValueError):
        sender.add_proposal(gid, -1, key_package)
    with pytest.raises(ValueError):
        sender.remove_proposal(gid, 0, 2**32)
    with pytest.raises(ValueError):
        sender.add_proposal(b"", 0, key_package)


def test_proposals_payload_round_trip():
    sender = ExternalSender()
    gid = mls.group_id_for_channel(CHANNEL)
    messages = [sender.remove_proposal(gid, 1, i) for i in range(3)]
    payload = encode_proposals_payload(PROPOSALS_APPEND, messages)
    assert payload[0] == 0
    assert decode_proposals_payload(payload) == (0, tuple(messages))
    refs = [mls.proposal_ref(m) for m in messages]
    payload = encode_proposals_payload(PROPOSALS_REVOKE, refs)
    assert payload[0] == 1
    assert decode_proposals_payload(payload) == (1, tuple(refs))
    for bad in ((2, messages), (0, []), (0, [b""])):
        with pytest.raises(ValueError):
            encode_proposals_payload(*bad)
    with pytest.raises(mls_wire.MLSDecodeError):
        decode_proposals_payload(b"\x00\x05abc")


def test_key_package_parse_and_validate():
    raw = davey.DaveSession(1, ALICE, CHANNEL).get_serialized_key_package()
    kp = mls.KeyPackage.parse(raw)
    assert kp.user_id == ALICE
    assert kp.leaf_node.lifetime == (0, 2**64 - 1)
    kp.validate(ALICE)
    with pytest.raises(mls_wire.MLSDecodeError, match="names user"):
        kp.validate(BOB)
    tampered = bytearray(raw)
    tampered[-5] ^= 0x01  # inside the key package signature
    with pytest.raises(mls_wire.MLSDecodeError):
        mls.KeyPackage.parse(bytes(tampered)).validate(ALICE)
    with pytest.raises(mls_wire.MLSDecodeError, match="trailing"):
        mls.KeyPackage.parse(raw + b"\x00")
    with pytest.raises(mls_wire.MLSDecodeError):
        mls.KeyPackage.parse(raw[:100])


def test_commit_welcome_split_and_welcome_subset():
    sender = ExternalSender()
    gid = mls.group_id_for_channel(CHANNEL)
    sessions = {}
    kps = {}
    for uid in (ALICE, BOB, CAROL):
        s = davey.DaveSession(1, uid, CHANNEL)
        kps[uid] = s.get_serialized_key_package()
        s.set_external_sender(sender.package())
        sessions[uid] = s
    proposals = [sender.add_proposal(gid, 0, kps[uid]) for uid in (BOB, CAROL)]
    cw = sessions[ALICE].process_proposals(
        davey.ProposalsOperationType.append, encode_proposals_payload(0, proposals)[1:]
    )
    commit, welcome = mls.split_commit_welcome(cw.commit + cw.welcome)
    assert (commit, welcome) == (cw.commit, cw.welcome)
    parsed, _ = mls.parse_public_message(commit)
    assert [p.reference for p in parsed.commit.proposals] == [mls.proposal_ref(p) for p in proposals]
    full = mls.Welcome.parse(welcome)
    assert not full.wrapped  # davey's welcome is a bare Welcome
    assert set(full.recipients()) == {mls.key_package_ref(kps[BOB]), mls.key_package_ref(kps[CAROL])}
    sessions[ALICE].process_commit(commit)
    for uid in (BOB, CAROL):
        only_mine = full.for_recipient(mls.key_package_ref(kps[uid]))
        assert len(mls.Welcome.parse(only_mine).secrets) == 1
        sessions[uid].process_welcome(only_mine)
        assert sessions[uid].epoch == 1
    with pytest.raises(ValueError):
        full.for_recipient(b"\x00" * 32)
    # a remove commit has an update path and no welcome
    remove = sender.remove_proposal(gid, 1, 2)
    cw = sessions[ALICE].process_proposals(
        davey.ProposalsOperationType.append, encode_proposals_payload(0, [remove])[1:]
    )
    assert cw.welcome is None
    assert mls.split_commit_welcome(cw.commit) == (cw.commit, None)
    assert mls.parse_public_message(cw.commit)[0].commit.path_leaf_node is not None
    with pytest.raises(mls_wire.MLSDecodeError):
        mls.split_commit_welcome(cw.commit + b"junk")


# --- (a) forming a group --------------------------------------------------------------------------


def test_four_members_form_one_group_and_decrypt_each_other():
    server = DaveGroupServer(CHANNEL)
    members: dict[int, LocalDaveMember] = {}
    for i, uid in enumerate((BOT, ALICE, BOB, CAROL)):
        member = LocalDaveMember(uid, CHANNEL)
        members[uid] = member
        trace: list[DaveMessage] = []
        out = server.add_participant(uid, member.max_protocol_version)
        assert ops(out) == [(uid, OP_EXTERNAL_SENDER)]
        assert deliver(server, members, out + member.session_description(server.protocol_version), trace=trace) == []
        if i >= 2:
            # established group: every member gets the very same op 27 bytes
            proposals = by_op(trace, OP_PROPOSALS)
            assert {m.user_id for m in proposals} == set(members) - {uid}
            assert len({m.payload for m in proposals}) == 1
        if i == 0:
            assert not member.ready and not server.established  # alone: no group yet
            assert member.epoch == 0  # davey's local pending group
        else:
            assert server.epoch == i
            assert all(m.epoch == i and m.ready for m in members.values())
        assert server.pending_transitions == {}
    assert server.members == {BOT: 0, ALICE: 1, BOB: 2, CAROL: 3}
    assert_all_decrypt(members)
    assert sorted(int(u) for u in members[BOT].session.get_user_ids()) == sorted(members)


class _FakeAiohttpSocket:
    """Collects what discord.py's DiscordVoiceWebSocket sends."""

    def __init__(self) -> None:
        self.sent: list = []

    async def send_str(self, data: str) -> None:
        self.sent.append(json.loads(data))

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(bytes(data))


class DiscordPyBot:
    """discord.py 2.7.1's own DAVE code (gateway + voice_state), fed websocket frames."""

    def __init__(self, user_id: int, channel_id: int) -> None:
        self.user_id = user_id
        self.socket = _FakeAiohttpSocket()
        self.ws = DiscordVoiceWebSocket(self.socket, asyncio.get_running_loop())  # type: ignore[arg-type]
        state = VoiceConnectionState.__new__(VoiceConnectionState)  # no voice client, no socket thread
        state.dave_session = None
        state.dave_protocol_version = 0
        state.dave_pending_transitions = {}
        state.dave_downgraded = False
        state.ssrc = 4242
        state.voice_client = SimpleNamespace(
            user=SimpleNamespace(id=user_id), channel=SimpleNamespace(id=channel_id), ws=self.ws
        )
        self.ws._connection = state
        self.state = state
        self.seq = 0

    def _drain(self) -> list[DaveMessage]:
        out = []
        for frame in self.socket.sent:
            if isinstance(frame, dict) and frame["op"] == 5:  # SPEAKING after op 4
                continue
            out.append(message_from_frame(self.user_id, frame))
        self.socket.sent.clear()
        return out

    async def session_description(self, dave_protocol_version: int) -> list[DaveMessage]:
        self.seq += 1
        data = {
            "mode": "aead_xchacha20_poly1305_rtpsize",
            "secret_key": [0] * 32,
            "dave_protocol_version": dave_protocol_version,
        }
        await self.ws.received_message({"op": 4, "d": data, "seq": self.seq})
        return self._drain()

    async def feed(self, message: DaveMessage) -> list[DaveMessage]:
        self.seq += 1
        frame = message.to_frame(self.seq)
        if isinstance(frame, dict):
            await self.ws.received_message(json.loads(json.dumps(frame)))
        else:
            await self.ws.received_binary_message(frame)
        return self._drain()


async def _run_with_bot(server, members, bot: DiscordPyBot, messages) -> None:
    pending = deliver(server, members, messages)
    while pending:
        following: list[DaveMessage] = []
        for message in pending:
            assert message.user_id == bot.user_id
            following += deliver(server, members, await bot.feed(message))
        pending = following


async def test_real_discord_py_code_joins_the_group():
    server = DaveGroupServer(CHANNEL)
    members: dict[int, LocalDaveMember] = {}
    bot = DiscordPyBot(BOT, CHANNEL)
    # the bot joins first: it creates the group with the first member that joins
    out = server.add_participant(BOT, bot.state.max_dave_protocol_version)
    await _run_with_bot(server, members, bot, (await bot.session_description(server.protocol_version)) + out)
    for uid in (ALICE, BOB, CAROL):
        member = LocalDaveMember(uid, CHANNEL)
        members[uid] = member
        await _run_with_bot(server, members, bot, connect_local_member(server, member, members))
    assert server.epoch == 3 and server.pending_transitions == {}
    assert bot.state.dave_session.epoch == 3 and bot.state.can_encrypt
    assert bot.state.dave_pending_transitions == {}

    frames = {uid: m.encrypt_opus(opus(uid)) for uid, m in members.items()}
    bot_frame = bot.state.dave_session.encrypt_opus(opus(BOT))
    for uid, frame in frames.items():
        assert bot.state.dave_session.decrypt(uid, davey.MediaType.audio, frame) == opus(uid)
        assert members[uid].decrypt(BOT, bot_frame) == opus(BOT)
    assert_all_decrypt(members, n=1)

    # a member leaves: the bot takes part in the removal commit
    await _run_with_bot(server, members, bot, server.remove_participant(BOB))
    del members[BOB]
    assert bot.state.dave_session.epoch == 4 and set(server.members) == {BOT, ALICE, CAROL}
    frame = members[ALICE].encrypt_opus(opus(ALICE, 2))
    assert bot.state.dave_session.decrypt(ALICE, davey.MediaType.audio, frame) == opus(ALICE, 2)


# --- (b) leave and join -----------------------------------------------------------------------------


def test_leave_then_join_new_epoch_and_removed_member_is_locked_out():
    server, members = make_group((BOT, ALICE, BOB, CAROL))
    assert server.epoch == 3
    old_frame = members[BOB].encrypt_opus(opus(BOB, 1))
    bob = members.pop(BOB)
    bob_leaf = server.leaf_index(BOB)

    trace: list[DaveMessage] = []
    assert deliver(server, members, server.remove_participant(BOB), trace=trace) == []
    removal = by_op(trace, OP_PROPOSALS)
    assert {m.user_id for m in removal} == set(members) and len({m.payload for m in removal}) == 1
    assert server.epoch == 4 and BOB not in server.members
    assert all(m.epoch == 4 for m in members.values())
    assert_all_decrypt(members, n=2)

    # davey drops a removed sender's decryptor when the commit is processed: even its
    # frames from the old epoch (in flight during the transition) no longer decrypt.
    for member in members.values():
        with pytest.raises(ValueError, match="NoDecryptorForUser"):
            member.decrypt(BOB, old_frame)
        with pytest.raises(ValueError, match="NoDecryptorForUser"):
            member.decrypt(BOB, bob.encrypt_opus(opus(BOB, 3)))
    # and Bob, still on epoch 3, cannot read the new epoch's media
    with pytest.raises(ValueError, match="DecryptionFailed"):
        bob.decrypt(ALICE, members[ALICE].encrypt_opus(opus(ALICE, 4)))

    erin = LocalDaveMember(ERIN, CHANNEL)
    members[ERIN] = erin
    assert connect_local_member(server, erin, members) == []
    assert server.epoch == 5
    assert server.leaf_index(ERIN) == bob_leaf  # MLS reuses the leftmost blank leaf
    assert erin.epoch == 5 and all(m.epoch == 5 for m in members.values())
    assert_all_decrypt(members, n=5)


def test_leave_and_join_in_the_same_epoch_share_one_commit():
    server, members = make_group((ALICE, BOB, CAROL))
    carol_leaf = server.leaf_index(CAROL)
    members.pop(CAROL)
    removal = server.remove_participant(CAROL)
    erin = LocalDaveMember(ERIN, CHANNEL)
    addition = server.handle(join_without_delivery(server, erin))
    for batch in (removal, addition):
        assert {m.user_id for m in batch} == {ALICE, BOB} and len({m.payload for m in batch}) == 1
    members[ERIN] = erin
    assert deliver(server, members, removal + addition) == []
    # the commits made before the Add arrived do not cover it and are ignored
    assert server.commit_rejections["proposals_mismatch"] == 2
    assert server.epoch == 3 and server.leaf_index(ERIN) == carol_leaf
    assert all(m.epoch == 3 for m in members.values())
    assert_all_decrypt(members)


def test_message_frames_round_trip():
    binary = DaveBinaryMessage(ALICE, OP_PROPOSALS, b"\x00\x01x")
    frame = binary.to_frame(0x1_0005)
    assert frame == b"\x00\x05\x1b\x00\x01x"  # >H seq (wrapped) + op 27 + payload
    assert message_from_frame(ALICE, frame, from_server=True) == binary
    client = DaveBinaryMessage(ALICE, OP_KEY_PACKAGE, b"kp")
    assert client.to_frame() == b"\x1akp" and message_from_frame(ALICE, b"\x1akp") == client
    ready = DaveJsonMessage(ALICE, OP_TRANSITION_READY, {"transition_id": 3})
    assert ready.to_frame() == {"op": 23, "d": {"transition_id": 3}}
    assert message_from_frame(ALICE, ready.to_frame()) == ready
    execute = DaveJsonMessage(ALICE, OP_EXECUTE_TRANSITION, {"transition_id": 3})
    assert execute.to_frame(9) == {"op": 22, "d": {"transition_id": 3}, "seq": 9}
    assert message_from_frame(ALICE, execute.to_frame(9), from_server=True) == execute
    assert not execute.from_client and ready.from_client


def test_sole_member_reset_and_new_group():
    server, members = make_group((ALICE, BOB))
    trace: list[DaveMessage] = []
    members.pop(BOB)
    assert deliver(server, members, server.remove_participant(BOB), trace=trace) == []
    # op 24 epoch 1 then op 21 transition 0 to the last member, which answers with a key package
    assert [(m.op, getattr(m, "data", None)) for m in trace[:2]] == [
        (OP_PREPARE_EPOCH, {"epoch": 1, "protocol_version": 1}),
        (OP_PREPARE_TRANSITION, {"transition_id": 0, "protocol_version": 1}),
    ]
    assert by_op(trace, OP_KEY_PACKAGE)
    assert not server.established and server.epoch == 0 and server.members == {}
    alice = members[ALICE]
    assert alice.epoch == 0 and not alice.ready and alice.executed_transitions[-1] == 0

    carol = LocalDaveMember(CAROL, CHANNEL)
    members[CAROL] = carol
    assert connect_local_member(server, carol, members) == []
    assert server.epoch == 1 and set(server.members) == {ALICE, CAROL}
    assert_all_decrypt(members)


# --- (c) commit races --------------------------------------------------------------------------


@pytest.mark.parametrize("winner", [ALICE, BOB])
def test_commit_race_in_established_group(winner):
    server, members = make_group((ALICE, BOB))
    loser = BOB if winner == ALICE else ALICE
    carol = LocalDaveMember(CAROL, CHANNEL)
    members[CAROL] = carol
    key_package = join_without_delivery(server, carol)
    proposals = server.handle(key_package)
    assert ops(proposals) == [(ALICE, OP_PROPOSALS), (BOB, OP_PROPOSALS)]
    assert proposals[0].payload == proposals[1].payload
    commits = {m.user_id: members[m.user_id].handle(m) for m in proposals}
    assert all(ops(c) == [(uid, OP_COMMIT_WELCOME)] for uid, c in commits.items())

    announced = server.handle(commits[winner][0])
    assert server.handle(commits[loser][0]) == []  # the loser's commit is ignored
    assert server.commit_rejections == {"stale_epoch": 1}
    assert ops(announced) == [(ALICE, OP_ANNOUNCE_COMMIT), (BOB, OP_ANNOUNCE_COMMIT), (CAROL, OP_WELCOME)]
    (transition_id,) = server.pending_transitions
    winner_commit, _ = mls.split_commit_welcome(commits[winner][0].payload)
    for m in announced[:2]:
        assert m.payload == struct.pack(">H", transition_id) + winner_commit
    assert deliver(server, members, announced) == []
    assert server.pending_transitions == {} and server.epoch == 2
    assert all(m.executed_transitions[-1] == transition_id for m in members.values())
    assert_all_decrypt(members)


@pytest.mark.parametrize("winner", [ALICE, BOB])
def test_commit_race_when_creating_the_group(winner):
    server = DaveGroupServer(CHANNEL)
    members = {uid: LocalDaveMember(uid, CHANNEL) for uid in (ALICE, BOB)}
    inbox: list[DaveMessage] = []
    for _uid, member in members.items():
        inbox += server.handle(join_without_delivery(server, member))
    # each pending member got the other's Add proposal for its own local group
    assert ops(inbox) == [(ALICE, OP_PROPOSALS), (BOB, OP_PROPOSALS)]
    commits = {m.user_id: members[m.user_id].handle(m)[0] for m in inbox}
    loser = BOB if winner == ALICE else ALICE

    announced = server.handle(commits[winner])
    assert server.handle(commits[loser]) == []
    assert server.commit_rejections == {"stale_epoch": 1}
    assert ops(announced) == [(winner, OP_ANNOUNCE_COMMIT), (loser, OP_WELCOME)]
    assert server.members == {winner: 0, loser: 1}
    assert deliver(server, members, announced) == []
    assert all(m.epoch == 1 and m.ready for m in members.values())
    assert_all_decrypt(members)


def test_commit_that_misses_a_newer_proposal_is_ignored():
    server, members = make_group((ALICE, BOB))
    newcomers = {uid: LocalDaveMember(uid, CHANNEL) for uid in (CAROL, ERIN)}
    proposals = []
    for _uid, member in newcomers.items():
        proposals.append(server.handle(join_without_delivery(server, member)))
    # Alice commits after seeing only Carol's proposal; Bob after seeing both
    alice_commit = members[ALICE].handle(proposals[0][0])[0]
    members[BOB].handle(proposals[0][1])
    bob_commit = members[BOB].handle(proposals[1][1])[0]
    assert server.handle(alice_commit) == []
    assert server.commit_rejections == {"proposals_mismatch": 1}
    announced = server.handle(bob_commit)
    assert {m.user_id for m in by_op(announced, OP_WELCOME)} == {CAROL, ERIN}
    members.update(newcomers)
    # Alice still has Erin's proposal queued: it gets it before the commit, like on a socket
    assert deliver(server, members, proposals[1][:1] + announced) == []
    assert server.epoch == 2 and all(m.epoch == 2 for m in members.values())
    assert_all_decrypt(members)


# --- (d) bad input ------------------------------------------------------------------------------


def test_unknown_users_and_bad_arguments_raise_value_errors():
    server, members = make_group((ALICE, BOB))
    kp = LocalDaveMember(CAROL, CHANNEL).session_description(1)[0]
    for call in (
        lambda: server.key_package(CAROL, kp.payload),
        lambda: server.commit_welcome(CAROL, b"x"),
        lambda: server.transition_ready(CAROL, 1),
        lambda: server.invalid_commit_welcome(CAROL, 1),
        lambda: server.remove_participant(CAROL),
        lambda: server.add_participant(ALICE, 1),  # already connected
        lambda: server.add_participant(-5, 1),
        lambda: server.add_participant(CAROL, -1),
        lambda: server.transition_ready(ALICE, 70000),
        lambda: server.transition_ready(ALICE, "1"),  # type: ignore[arg-type]
        lambda: server.handle(DaveBinaryMessage(ALICE, OP_PROPOSALS, b"\x00\x00")),  # a server op
        lambda: server.handle(DaveJsonMessage(ALICE, OP_TRANSITION_READY, {})),
        lambda: message_from_frame(ALICE, b"\x05"),
        lambda: message_from_frame(ALICE, {"op": 23, "d": None}),
        lambda: message_from_frame(ALICE, {"op": 22, "d": {"transition_id": 1}}),  # wrong direction
    ):
        with pytest.raises(DaveProtocolError) as info:
            call()
        assert isinstance(info.value, ValueError)
    assert server.members == {ALICE: 0, BOB: 1} and server.participants == {ALICE: 1, BOB: 1}
    # nothing is waiting: late or unknown readies are ignored, not errors
    assert server.transition_ready(ALICE, 99) == []
    assert server.execute_transition(99) == []
    assert_all_decrypt(members)


def test_deliver_reports_errors_and_keeps_routing():
    server, members = make_group((ALICE, BOB))
    bad = DaveBinaryMessage(ALICE, OP_KEY_PACKAGE, b"garbage")
    with pytest.raises(DaveProtocolError):
        deliver(server, members, [bad])
    errors = []
    carol = LocalDaveMember(CAROL, CHANNEL)
    members[CAROL] = carol
    good = join_without_delivery(server, carol)
    assert deliver(server, members, [bad, good], on_error=lambda m, e: errors.append((m, e))) == []
    assert [(m, type(e)) for m, e in errors] == [(bad, DaveProtocolError)]
    assert server.epoch == 2
    assert_all_decrypt(members)


def test_garbage_key_packages_are_rejected_without_state_change():
    server, members = make_group((ALICE, BOB))
    carol = LocalDaveMember(CAROL, CHANNEL)
    members[CAROL] = carol
    good = join_without_delivery(server, carol)
    alice_kp = davey.DaveSession(1, ALICE, CHANNEL).get_serialized_key_package()
    flipped = bytearray(good.payload)
    flipped[-3] ^= 0xFF
    for bad in (b"", b"\x00" * 10, good.payload[:-1], good.payload + b"\x00", bytes(flipped), alice_kp):
        with pytest.raises(DaveProtocolError, match="invalid key package"):
            server.key_package(CAROL, bad)
    assert server.pending_proposals == () and server.pending_members == (CAROL,)
    assert deliver(server, members, [good]) == []
    assert server.epoch == 2
    assert_all_decrypt(members)


def test_garbage_and_misaddressed_commits_are_ignored_and_the_group_carries_on():
    server, members = make_group((ALICE, BOB))
    for bad in (b"", b"\x00\x01\x00\x01", b"garbage" * 10):
        with pytest.raises(DaveProtocolError, match="invalid commit"):
            server.commit_welcome(ALICE, bad)
    carol = LocalDaveMember(CAROL, CHANNEL)
    proposals = server.handle(join_without_delivery(server, carol))
    alice_commit = members[ALICE].handle(proposals[0])[0]
    bob_commit = members[BOB].handle(proposals[1])[0]
    # Bob's commit sent under Alice's name: it is not from Alice's leaf
    assert server.commit_welcome(ALICE, bob_commit.payload) == []
    assert server.commit_rejections == {"wrong_sender_leaf": 1}
    announced = server.handle(alice_commit)
    assert server.handle(alice_commit) == []  # the same commit again is stale now
    assert server.commit_rejections == {"wrong_sender_leaf": 1, "stale_epoch": 1}
    members[CAROL] = carol
    assert deliver(server, members, announced) == []
    assert server.epoch == 2
    assert_all_decrypt(members)


def test_invalid_welcome_is_recovered_by_remove_and_re_add():
    server, members = make_group((ALICE, BOB))
    carol = LocalDaveMember(CAROL, CHANNEL)
    proposals = server.handle(join_without_delivery(server, carol))
    announced = server.handle(members[ALICE].handle(proposals[0])[0])
    members[BOB].handle(proposals[1])  # Bob's own (losing) commit is never sent
    (welcome,) = by_op(announced, OP_WELCOME)
    corrupted = DaveBinaryMessage(CAROL, OP_WELCOME, welcome.payload[:2] + b"\x00\x02garbage")
    replies = carol.handle(corrupted)
    # discord.py answers op 31 and sends a fresh key package
    assert [m.op for m in replies] == [31, OP_KEY_PACKAGE]
    members[CAROL] = carol
    rest = [m for m in announced if m is not welcome]
    assert deliver(server, members, rest + replies) == []
    assert server.pending_transitions == {}
    assert set(server.members) == {ALICE, BOB, CAROL} and server.epoch == 3
    assert all(m.epoch == 3 for m in members.values())
    assert_all_decrypt(members)


def test_member_that_missed_the_external_sender_recovers():
    server, members = make_group((ALICE, BOB))
    carol = LocalDaveMember(CAROL, CHANNEL)
    members[CAROL] = carol
    early = server.add_participant(CAROL, 1)
    assert carol.handle(early[0]) == []  # op 25 before op 4: discord.py drops it (no session yet)
    trace: list[DaveMessage] = []
    assert deliver(server, members, carol.session_description(1), trace=trace) == []
    # the welcome cannot be checked against an external sender -> op 31; the server
    # sends op 25 again with the re-add, and the second welcome works
    assert [m.op for m in trace if m.user_id == CAROL and m.op in (31, OP_EXTERNAL_SENDER, OP_WELCOME)] == [
        OP_WELCOME,
        31,
        OP_EXTERNAL_SENDER,
        OP_WELCOME,
    ]
    assert set(server.members) == {ALICE, BOB, CAROL} and server.pending_transitions == {}
    assert_all_decrypt(members)


def test_transition_timeout_executes_without_the_slow_member():
    server, members = make_group((ALICE, BOB))
    carol = LocalDaveMember(CAROL, CHANNEL)
    proposals = server.handle(join_without_delivery(server, carol))
    announced = server.handle(members[ALICE].handle(proposals[0])[0])
    members[BOB].handle(proposals[1])
    welcome = by_op(announced, OP_WELCOME)
    # Alice and Bob are ready; Carol's welcome is still "in flight"
    assert deliver(server, members, [m for m in announced if m.op != OP_WELCOME]) == []
    ((transition_id, transition),) = server.pending_transitions.items()
    assert transition.awaiting == {CAROL}
    executed = server.execute_transition(transition_id)
    assert ops(executed) == [
        (ALICE, OP_EXECUTE_TRANSITION),
        (BOB, OP_EXECUTE_TRANSITION),
        (CAROL, OP_EXECUTE_TRANSITION),
    ]
    assert server.execute_transition(transition_id) == []
    members[CAROL] = carol
    assert deliver(server, members, welcome + executed) == []  # Carol's late ready is ignored
    assert server.pending_transitions == {}
    assert_all_decrypt(members)


def test_pending_joiner_leaving_revokes_its_proposal():
    server, members = make_group((ALICE, BOB))
    carol = LocalDaveMember(CAROL, CHANNEL)
    proposals = server.handle(join_without_delivery(server, carol))
    for m in proposals:
        assert ops(members[m.user_id].handle(m)) == [(m.user_id, OP_COMMIT_WELCOME)]
    revokes = server.remove_participant(CAROL)
    assert ops(revokes) == [(ALICE, OP_PROPOSALS), (BOB, OP_PROPOSALS)]
    assert revokes[0].payload == revokes[1].payload and revokes[0].payload[0] == PROPOSALS_REVOKE
    (add_proposal,) = decode_proposals_payload(proposals[0].payload)[1]
    assert decode_proposals_payload(revokes[0].payload) == (PROPOSALS_REVOKE, (mls.proposal_ref(add_proposal),))
    assert deliver(server, members, revokes) == []  # davey: no commit left to send
    assert server.pending_proposals == () and server.epoch == 1
    assert_all_decrypt(members)


# --- protocol version 0 -------------------------------------------------------------------------


def test_e2ee_required_rejects_members_without_dave():
    server, _members = make_group((ALICE,))
    with pytest.raises(E2EERequired) as info:
        server.add_participant(BOB, 0)
    assert info.value.close_code == 4017 and isinstance(info.value, ValueError)
    assert server.participants == {ALICE: 1}


def test_downgrade_and_upgrade():
    server, members = make_group((ALICE, BOB), require_e2ee=False)
    legacy = LocalDaveMember(CAROL, CHANNEL, max_protocol_version=0)
    trace: list[DaveMessage] = []
    out = server.add_participant(CAROL, 0)
    assert [(m.user_id, m.op, m.data) for m in out] == [
        (ALICE, OP_PREPARE_TRANSITION, {"transition_id": 2, "protocol_version": 0}),
        (BOB, OP_PREPARE_TRANSITION, {"transition_id": 2, "protocol_version": 0}),
    ]
    assert server.protocol_version == 0
    assert legacy.session_description(server.protocol_version) == []
    assert deliver(server, members, out, trace=trace) == []
    assert ops(by_op(trace, OP_EXECUTE_TRANSITION)) == [(ALICE, 22), (BOB, 22)]
    for member in members.values():
        assert member.protocol_version == 0 and member.downgraded and not member.ready
        assert member.encrypt_opus(opus(member.user_id)) == opus(member.user_id)  # plain opus
    assert members[BOB].decrypt(ALICE, opus(ALICE)) == opus(ALICE)  # passthrough

    trace.clear()
    assert deliver(server, members, server.remove_participant(CAROL), trace=trace) == []
    assert [(m.op, m.data) for m in trace[:2]] == [(OP_PREPARE_EPOCH, {"epoch": 1, "protocol_version": 1})] * 2
    assert server.protocol_version == 1 and server.epoch == 1
    for member in members.values():
        assert member.protocol_version == 1 and not member.downgraded and member.ready
    assert_all_decrypt(members)
