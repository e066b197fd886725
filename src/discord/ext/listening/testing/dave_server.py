"""Sans-I/O DAVE coordination for the local Discord voice server emulator.

Discord's voice gateway is the MLS *delivery service* and *external sender* of each
voice channel's DAVE group (DAVE protocol version 1): it never knows a group secret, but
it decides who is in the group, signs Add/Remove proposals, picks the winning commit of
every epoch, hands welcomes to joiners and paces the media key switch with transitions.
This module is that role as plain objects over bytes:

- :class:`DaveGroupServer`: one voice channel's group as the server sees it. Every
  event method (a participant joined / left, sent op 23, 26, 28 or 31, a transition
  timed out) returns the list of :class:`DaveMessage` the server must send.
- :class:`LocalDaveMember`: a simulated member living inside the emulator; it owns a
  real :class:`davey.DaveSession` and reacts to the server's messages exactly as
  discord.py 2.7.1 does, so the emulator treats in-process members and a real bot alike.
- :func:`deliver` / :func:`connect_local_member`: route messages between the server and
  in-process members until nothing is left to do.

No sockets, threads or asyncio here: an I/O shell (the websocket server) turns frames
into :class:`DaveMessage` objects (:func:`message_from_frame`), feeds them to
:meth:`DaveGroupServer.handle` and writes the returned messages back out
(:meth:`DaveJsonMessage.to_frame` / :meth:`DaveBinaryMessage.to_frame`).

What the shell must do around this module
-----------------------------------------
1. On IDENTIFY (op 0): ``out = server.add_participant(user_id, max_dave_protocol_version)``
   (catch :class:`E2EERequired` and close with its ``close_code``).
2. Send SESSION_DESCRIPTION (op 4) with ``dave_protocol_version=server.protocol_version``
   *before* delivering ``out`` (discord.py creates its DAVE session on op 4 and drops
   binary DAVE frames that arrive earlier).
3. Hand every client DAVE frame (ops 23, 26, 28, 31) to :meth:`DaveGroupServer.handle`;
   on disconnect call :meth:`DaveGroupServer.remove_participant`.
4. Start a timer (:data:`TRANSITION_TIMEOUT`) for every id that appears in
   :attr:`DaveGroupServer.pending_transitions` and call
   :meth:`DaveGroupServer.execute_transition` when it fires (a no-op if it already ran).
5. A :class:`DaveProtocolError` from any method means the client sent something
   invalid; the server state is unchanged. Log it (and close the connection if you want
   to be strict, Discord does for garbage); never let it kill the server.
"""

from __future__ import annotations

import itertools
import logging
import struct
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import davey

from . import mls
from .mls import ExternalSender, KeyPackage, MLSDecodeError, Welcome

__all__ = (
    "E2EE_REQUIRED_CLOSE_CODE",
    "OP_ANNOUNCE_COMMIT",
    "OP_COMMIT_WELCOME",
    "OP_EXECUTE_TRANSITION",
    "OP_EXTERNAL_SENDER",
    "OP_INVALID_COMMIT_WELCOME",
    "OP_KEY_PACKAGE",
    "OP_PREPARE_EPOCH",
    "OP_PREPARE_TRANSITION",
    "OP_PROPOSALS",
    "OP_TRANSITION_READY",
    "OP_WELCOME",
    "TRANSITION_TIMEOUT",
    "DaveBinaryMessage",
    "DaveGroupServer",
    "DaveJsonMessage",
    "DaveMessage",
    "DaveProtocolError",
    "E2EERequired",
    "LocalDaveMember",
    "PendingTransition",
    "connect_local_member",
    "deliver",
    "message_from_frame",
    "stale_epoch_member",
)

_log = logging.getLogger(__name__)

# --- opcodes (voice gateway v8) -----------------------------------------------------------

OP_PREPARE_TRANSITION = 21  # server -> client, JSON {transition_id, protocol_version}
OP_EXECUTE_TRANSITION = 22  # server -> client, JSON {transition_id}
OP_TRANSITION_READY = 23  # client -> server, JSON {transition_id}
OP_PREPARE_EPOCH = 24  # server -> client, JSON {epoch, protocol_version}
OP_EXTERNAL_SENDER = 25  # server -> client, binary ExternalSender
OP_KEY_PACKAGE = 26  # client -> server, binary KeyPackage
OP_PROPOSALS = 27  # server -> client, binary optype + VL(proposals | refs)
OP_COMMIT_WELCOME = 28  # client -> server, binary commit [+ welcome]
OP_ANNOUNCE_COMMIT = 29  # server -> client, binary >H transition_id + commit
OP_WELCOME = 30  # server -> client, binary >H transition_id + welcome
OP_INVALID_COMMIT_WELCOME = 31  # client -> server, JSON {transition_id}

_SERVER_OPS = frozenset(
    {
        OP_PREPARE_TRANSITION,
        OP_EXECUTE_TRANSITION,
        OP_PREPARE_EPOCH,
        OP_EXTERNAL_SENDER,
        OP_PROPOSALS,
        OP_ANNOUNCE_COMMIT,
        OP_WELCOME,
    }
)
_CLIENT_OPS = frozenset({OP_TRANSITION_READY, OP_KEY_PACKAGE, OP_COMMIT_WELCOME, OP_INVALID_COMMIT_WELCOME})
_JSON_OPS = frozenset(
    {OP_PREPARE_TRANSITION, OP_EXECUTE_TRANSITION, OP_TRANSITION_READY, OP_PREPARE_EPOCH, OP_INVALID_COMMIT_WELCOME}
)
_BINARY_OPS = frozenset(
    {OP_EXTERNAL_SENDER, OP_KEY_PACKAGE, OP_PROPOSALS, OP_COMMIT_WELCOME, OP_ANNOUNCE_COMMIT, OP_WELCOME}
)

#: Close code Discord uses for a connection that cannot do E2EE (since 2026-03-02).
E2EE_REQUIRED_CLOSE_CODE = 4017

#: Seconds after which a shell should force a pending transition
#: (:meth:`DaveGroupServer.execute_transition`). Discord's value is not published; the
#: whitepaper says removed members keep decrypting for "roughly two seconds" because of
#: it, so 2 s is the honest guess.
TRANSITION_TIMEOUT = 2.0

#: Transition id 0 means "(re)initialisation, execute immediately" (whitepaper op 21).
_INIT_TRANSITION_ID = 0


class DaveProtocolError(ValueError):
    """A client (or the caller) broke the DAVE protocol; the server state is unchanged."""


class E2EERequired(DaveProtocolError):
    """A participant without DAVE support tried to join a server that requires E2EE.

    Attributes
    ----------
    close_code : int
        The websocket close code Discord sends (4017).
    """

    close_code = E2EE_REQUIRED_CLOSE_CODE


# --- messages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DaveMessage:
    """One DAVE voice gateway message, in either direction.

    The direction follows from the opcode (server and client opcodes do not overlap):
    for a server message ``user_id`` is the recipient, for a client message the sender.

    Attributes
    ----------
    user_id : int
        The participant on the other end of the websocket.
    op : int
        The voice gateway opcode (21..31).
    """

    user_id: int
    op: int

    @property
    def from_client(self) -> bool:
        """``True`` for ops 23, 26, 28, 31 (client -> server)."""
        return self.op in _CLIENT_OPS


@dataclass(frozen=True)
class DaveJsonMessage(DaveMessage):
    """A JSON DAVE message (ops 21, 22, 23, 24, 31).

    Attributes
    ----------
    data : dict
        The ``d`` object, e.g. ``{"transition_id": 3, "protocol_version": 1}``.
    """

    data: dict[str, Any] = field(default_factory=dict)

    def to_frame(self, seq: int | None = None) -> dict[str, Any]:
        """The websocket JSON object: ``{"op": op, "d": data}`` plus ``"seq"`` if given.

        Server frames carry ``seq`` (discord.py echoes the last one as ``seq_ack``);
        client frames do not.
        """
        frame: dict[str, Any] = {"op": self.op, "d": dict(self.data)}
        if seq is not None:
            frame["seq"] = seq
        return frame


@dataclass(frozen=True)
class DaveBinaryMessage(DaveMessage):
    """A binary DAVE message (ops 25, 26, 27, 28, 29, 30).

    Attributes
    ----------
    payload : bytes
        Everything after the opcode byte, i.e. *without* the server's ``>H seq`` and
        ``u8 op`` prefix (or the client's ``u8 op``):

        - 25: ``ExternalSender`` (:meth:`ExternalSender.package`)
        - 26: bare ``KeyPackage``
        - 27: ``u8 optype`` (0 append / 1 revoke) + ``VL(proposals or refs)``
        - 28: commit ``MLSMessage`` [+ ``Welcome``], concatenated
        - 29: ``>H transition_id`` + commit ``MLSMessage``
        - 30: ``>H transition_id`` + ``Welcome`` (only the recipient's secrets)
    """

    payload: bytes = b""

    def to_frame(self, seq: int = 0) -> bytes:
        """The websocket binary frame.

        Server messages: ``>H seq | u8 op | payload``; client messages: ``u8 op |
        payload`` (``seq`` is ignored).
        """
        if self.from_client:
            return bytes((self.op,)) + self.payload
        return struct.pack(">HB", seq & 0xFFFF, self.op) + self.payload


def message_from_frame(
    user_id: int, frame: bytes | bytearray | memoryview | Mapping[str, Any], *, from_server: bool = False
) -> DaveMessage:
    """Decode a websocket frame into a :class:`DaveMessage`.

    Parameters
    ----------
    user_id : int
        The participant on the other end.
    frame : bytes or mapping
        A binary frame (client: ``u8 op | payload``; server: ``>H seq | u8 op |
        payload``) or a decoded JSON object ``{"op": ..., "d": {...}}``.
    from_server : bool
        Whether the frame was sent by the server (only changes binary framing).

    Raises
    ------
    DaveProtocolError
        Not a DAVE opcode, wrong direction, or malformed.
    """
    if isinstance(frame, Mapping):
        op = frame.get("op")
        data = frame.get("d")
        if op not in _JSON_OPS:
            raise DaveProtocolError(f"not a JSON DAVE opcode: {op!r}")
        if not isinstance(data, Mapping):
            raise DaveProtocolError(f"op {op}: 'd' must be an object")
        message: DaveMessage = DaveJsonMessage(user_id, op, dict(data))
    else:
        raw = bytes(frame)
        header = 3 if from_server else 1
        if len(raw) < header:
            raise DaveProtocolError("binary frame too short")
        op = raw[header - 1]
        if op not in _BINARY_OPS:
            raise DaveProtocolError(f"not a binary DAVE opcode: {op}")
        message = DaveBinaryMessage(user_id, op, raw[header:])
    if message.from_client == from_server:
        raise DaveProtocolError(f"op {message.op} cannot be sent by the {'server' if from_server else 'client'}")
    return message


def _json(user_id: int, op: int, **data: Any) -> DaveJsonMessage:
    return DaveJsonMessage(user_id, op, data)


def _binary(user_id: int, op: int, payload: bytes) -> DaveBinaryMessage:
    return DaveBinaryMessage(user_id, op, payload)


# --- server state ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingTransition:
    """A transition the server announced and has not executed yet.

    Attributes
    ----------
    transition_id : int
        1..65535 (0 is never pending: it executes at once).
    protocol_version : int
        The protocol version in effect after the transition.
    epoch : int or None
        The MLS epoch the transition moves to (``None`` for a downgrade).
    awaiting : frozenset[int]
        Users whose op 23 (ready) is still missing.
    recipients : frozenset[int]
        Users that get op 22 (execute).
    """

    transition_id: int
    protocol_version: int
    epoch: int | None
    awaiting: frozenset
    recipients: frozenset


@dataclass(eq=False)
class _Participant:
    user_id: int
    version: int  # effective max protocol version (0 = no DAVE support)
    key_package: KeyPackage | None = None  # newest key package not welcomed yet
    leaf: int | None = None  # leaf index in the established group
    sent_external_sender: bool = False


@dataclass(eq=False)
class _Leaf:
    user_id: int
    signature_key: bytes
    remove: bool = False  # the next commit must remove this leaf


@dataclass(eq=False)
class _Proposal:
    ref: bytes
    message: bytes
    user_id: int  # add: the joiner; remove: the leaf's owner
    key_package: KeyPackage | None = None  # add proposals
    leaf: int | None = None  # remove proposals
    delivered: set = field(default_factory=set)  # users whose MLS state holds it

    @property
    def is_add(self) -> bool:
        return self.key_package is not None


class DaveGroupServer:
    """The voice server's view of one voice channel's DAVE group (protocol version 1).

    The group goes through two states:

    - *not established* (``epoch == 0``): every DAVE participant that sent a key package
      holds a local one-member group at epoch 0; the server gives each one the Add
      proposals of all the others. The first valid commit establishes the group
      (epoch 1): its author gets op 29, everybody it added gets op 30.
    - *established*: joins and leaves become Add / Remove proposals broadcast (same
      bytes to every member) at the current epoch; the first valid commit of the epoch
      wins, later ones are ignored.

    Each accepted commit opens a transition (ids 1..65535); op 22 goes out when every
    member reported op 23 or when the shell calls :meth:`execute_transition`. When only
    one member would remain in an established group, the server performs Discord's *sole
    member reset* (op 24 epoch 1 + op 21 transition 0) instead.

    Parameters
    ----------
    channel_id : int
        The voice channel id; the MLS group id is its 8 big-endian bytes.
    external_sender : ExternalSender, optional
        The server's signing identity (a fresh P-256 key by default).
    require_e2ee : bool
        Refuse participants without DAVE support (:class:`E2EERequired`, close code
        4017), as Discord does since 2026-03-02. With ``False`` such a participant
        downgrades the call to protocol version 0 and its departure upgrades it again.
    max_protocol_version : int
        The highest DAVE version the server speaks: 1, or 0 for a server without DAVE.

    Notes
    -----
    Methods return lists of :class:`DaveMessage`; send them in order. Methods raise
    :class:`DaveProtocolError` (a :class:`ValueError`) on invalid input and then leave
    the state untouched. Commits that are well formed but not acceptable (a lost race,
    a stale epoch, not covering the pending proposals...) are ignored as Discord
    ignores them: the method returns ``[]`` and :attr:`commit_rejections` counts the
    reason.
    """

    def __init__(
        self,
        channel_id: int,
        *,
        external_sender: ExternalSender | None = None,
        require_e2ee: bool = True,
        max_protocol_version: int = 1,
    ) -> None:
        self.group_id: bytes = mls.group_id_for_channel(channel_id)
        if max_protocol_version not in (0, 1):
            raise ValueError(f"max_protocol_version must be 0 or 1, not {max_protocol_version!r}")
        if max_protocol_version == 0 and require_e2ee:
            raise ValueError("a server without DAVE (max_protocol_version=0) cannot require E2EE")
        self.channel_id: int = channel_id
        self.external_sender: ExternalSender = external_sender or ExternalSender()
        self.require_e2ee: bool = require_e2ee
        self.max_protocol_version: int = max_protocol_version
        #: Why commits were ignored, by reason (``"stale_epoch"``, ``"proposals_mismatch"``...).
        self.commit_rejections: Counter = Counter()

        self._external_sender_package = self.external_sender.package()
        self._participants: dict[int, _Participant] = {}
        self._protocol_version = max_protocol_version
        self._established = False
        self._epoch = 0
        self._leaves: dict[int, _Leaf] = {}
        self._proposals: dict[bytes, _Proposal] = {}  # insertion order = creation order
        self._transitions: dict[int, PendingTransition] = {}
        self._transition_counter = itertools.count(1)

    # --- read-only views -----------------------------------------------------------------

    @property
    def protocol_version(self) -> int:
        """The call's DAVE protocol version now: put it in op 4 for a joiner."""
        return self._protocol_version

    @property
    def established(self) -> bool:
        """Whether an MLS group exists (a first commit was accepted)."""
        return self._established

    @property
    def epoch(self) -> int:
        """The group's current MLS epoch (0 while not established)."""
        return self._epoch

    @property
    def participants(self) -> dict[int, int]:
        """Connected users and their effective max protocol version, in join order."""
        return {uid: p.version for uid, p in self._participants.items()}

    @property
    def members(self) -> dict[int, int]:
        """Members of the established group: ``user_id -> leaf index``."""
        return {
            leaf.user_id: index
            for index, leaf in sorted(self._leaves.items())
            if not leaf.remove and leaf.user_id in self._participants
        }

    @property
    def pending_members(self) -> tuple[int, ...]:
        """DAVE participants not in the group yet (waiting for a key package or a commit)."""
        return tuple(p.user_id for p in self._participants.values() if p.version > 0 and p.leaf is None)

    @property
    def pending_transitions(self) -> dict[int, PendingTransition]:
        """Announced transitions that were not executed yet, by id."""
        return dict(self._transitions)

    @property
    def pending_proposals(self) -> tuple[bytes, ...]:
        """The unrevoked proposal messages of the current epoch, in creation order."""
        return tuple(p.message for p in self._proposals.values())

    def leaf_index(self, user_id: int) -> int | None:
        """The user's leaf index in the established group, or ``None``."""
        p = self._participants.get(user_id)
        return None if p is None else p.leaf

    # --- events ------------------------------------------------------------------------------

    def handle(self, message: DaveMessage) -> list[DaveMessage]:
        """Dispatch a client message (op 23, 26, 28 or 31) to its event method.

        Raises
        ------
        DaveProtocolError
            A server opcode, a malformed payload, or an unknown user.
        """
        op = message.op
        if op == OP_KEY_PACKAGE and isinstance(message, DaveBinaryMessage):
            return self.key_package(message.user_id, message.payload)
        if op == OP_COMMIT_WELCOME and isinstance(message, DaveBinaryMessage):
            return self.commit_welcome(message.user_id, message.payload)
        if op in (OP_TRANSITION_READY, OP_INVALID_COMMIT_WELCOME) and isinstance(message, DaveJsonMessage):
            transition_id = message.data.get("transition_id")
            if op == OP_TRANSITION_READY:
                return self.transition_ready(message.user_id, transition_id)  # type: ignore[arg-type]
            return self.invalid_commit_welcome(message.user_id, transition_id)  # type: ignore[arg-type]
        raise DaveProtocolError(f"op {op} ({type(message).__name__}) is not a client DAVE message")

    def add_participant(self, user_id: int, max_protocol_version: int = 1) -> list[DaveMessage]:
        """A user identified (op 0) with ``max_dave_protocol_version``.

        Returns
        -------
        list[DaveMessage]
            For a DAVE participant in a DAVE call: op 25 to the joiner (its key package
            follows, and proposals once it arrives). For a participant without DAVE in
            a DAVE call (``require_e2ee=False``): op 21 ``{protocol_version: 0}`` to
            every DAVE participant (the downgrade). Send op 4 with
            :attr:`protocol_version` to the joiner first.

        Raises
        ------
        E2EERequired
            ``max_protocol_version == 0`` and ``require_e2ee`` is set.
        DaveProtocolError
            Already connected, or bad arguments.
        """
        _check_user_id(user_id)
        if (
            not isinstance(max_protocol_version, int)
            or isinstance(max_protocol_version, bool)
            or max_protocol_version < 0
        ):
            raise DaveProtocolError(f"max_protocol_version must be an int >= 0, not {max_protocol_version!r}")
        if user_id in self._participants:
            raise DaveProtocolError(f"user {user_id} is already connected")
        version = min(max_protocol_version, self.max_protocol_version)
        if version == 0 and self.require_e2ee:
            raise E2EERequired(f"user {user_id} does not support DAVE and this server requires E2EE")

        participant = _Participant(user_id, version)
        self._participants[user_id] = participant
        _log.debug("user %s joined channel %s (max DAVE version %s)", user_id, self.channel_id, version)

        if version == 0:
            if self._protocol_version > 0:
                return self._downgrade()
            return []
        if self._protocol_version == 0:
            # The joiner gets dave_protocol_version 0 in op 4 and (as discord.py) creates
            # no DAVE session; the upgrade's op 24 is its way in.
            return []
        participant.sent_external_sender = True
        return [_binary(user_id, OP_EXTERNAL_SENDER, self._external_sender_package)]

    def remove_participant(self, user_id: int) -> list[DaveMessage]:
        """A user disconnected (or was disconnected).

        Returns
        -------
        list[DaveMessage]
            Revocations of its in-flight Add proposal, a Remove proposal for its leaf,
            a sole member reset (op 24 + op 21 id 0) for the last member, op 22 for
            transitions that were only waiting for it, or the upgrade (op 24 epoch 1 to
            every DAVE participant) when the last participant without DAVE left.
        """
        participant = self._require_participant(user_id)
        del self._participants[user_id]
        _log.debug("user %s left channel %s", user_id, self.channel_id)
        out = self._forget_in_transitions(user_id)
        for proposal in self._proposals.values():
            proposal.delivered.discard(user_id)
        if participant.leaf is not None and participant.leaf in self._leaves:
            self._leaves[participant.leaf].remove = True

        if not self._participants:
            # Nobody left: the next joiner starts a fresh call.
            self._reset_group()
            self._protocol_version = self.max_protocol_version
            return out
        if participant.version == 0 and self._protocol_version == 0 and self.max_protocol_version > 0:
            if all(p.version > 0 for p in self._participants.values()):
                return out + self._upgrade()
            return out
        return out + self._sync()

    def key_package(self, user_id: int, payload: bytes) -> list[DaveMessage]:
        """Op 26: a participant's (new) KeyPackage.

        The key package is validated as the voice gateway does: parses completely, MLS
        1.0 / ciphersuite 2, basic credential naming ``user_id`` (8 bytes big-endian),
        lifetime ``[0, 2**64-1]``, valid leaf node and key package signatures.

        Returns
        -------
        list[DaveMessage]
            Op 27 messages: the Add proposal (to the group members, or to the other
            pending members while no group is established), the in-flight proposals of
            the others (to this member, while no group is established), a revocation of
            its previous key package's proposal, and a Remove proposal of its old leaf if
            it was a member (it reset its MLS state).

        Raises
        ------
        DaveProtocolError
            Unknown user, a participant without DAVE, or an invalid key package.
        """
        participant = self._require_participant(user_id)
        if participant.version == 0:
            raise DaveProtocolError(f"user {user_id} joined without DAVE support and cannot send a key package")
        try:
            key_package = KeyPackage.parse(payload)
            key_package.validate(user_id)
        except (MLSDecodeError, TypeError) as exc:
            raise DaveProtocolError(f"invalid key package from user {user_id}: {exc}") from None
        if self._protocol_version == 0:
            # A downgraded call has no group; the upgrade asks for fresh key packages.
            _log.debug("ignoring key package of user %s: the call is downgraded", user_id)
            return []

        out: list[DaveMessage] = []
        if not participant.sent_external_sender:
            # A member must know the external sender before it can take proposals.
            participant.sent_external_sender = True
            out.append(_binary(user_id, OP_EXTERNAL_SENDER, self._external_sender_package))
        # A key package means the client (re)started its MLS state: whatever it held
        # before is gone, including a leaf it had in the group.
        self._drop_mls_state(participant)
        participant.key_package = key_package
        return out + self._sync()

    def commit_welcome(self, user_id: int, payload: bytes) -> list[DaveMessage]:
        """Op 28: a commit (plus a welcome when it adds members).

        The first valid commit for the current epoch wins. A valid commit is a
        ``PublicMessage`` from the sender's own leaf (leaf 0 of its local group while
        no group is established) at the current epoch, that references exactly the
        pending proposals (all of them, minus the sender's own Add before the group
        exists), does not change the sender's credential or signature key, and comes
        with a welcome for every added key package.

        Returns
        -------
        list[DaveMessage]
            For the winning commit: op 29 ``>H transition_id + commit`` to every member
            that stays in the group (the committer included), op 30 ``>H transition_id +
            welcome`` (only the recipient's group secrets) to every added member, then
            whatever the new epoch needs (new proposals, a sole member reset). ``[]``
            for an ignored commit (see :attr:`commit_rejections`).

        Raises
        ------
        DaveProtocolError
            Unknown user, or bytes that are not a commit (+ welcome).
        """
        participant = self._require_participant(user_id)
        if participant.version == 0:
            raise DaveProtocolError(f"user {user_id} joined without DAVE support and cannot commit")
        try:
            commit_raw, welcome_raw = mls.split_commit_welcome(bytes(payload))
            message, _ = mls.parse_public_message(commit_raw)
            welcome = Welcome.parse(welcome_raw) if welcome_raw is not None else None
        except (MLSDecodeError, TypeError) as exc:
            raise DaveProtocolError(f"invalid commit/welcome from user {user_id}: {exc}") from None

        problem, removes, adds = self._check_commit(participant, message, welcome)
        if problem is not None:
            self.commit_rejections[problem] += 1
            _log.info("ignoring commit of user %s for epoch %s: %s", user_id, message.epoch, problem)
            return []
        return self._apply_commit(participant, commit_raw, welcome, removes, adds)

    def transition_ready(self, user_id: int, transition_id: int) -> list[DaveMessage]:
        """Op 23: the user is ready for ``transition_id``.

        Returns
        -------
        list[DaveMessage]
            Op 22 to the transition's recipients when this was the last missing ready;
            ``[]`` otherwise (also for an unknown or already executed transition, which
            happens normally after a timeout).
        """
        self._require_participant(user_id)
        _check_transition_id(transition_id)
        transition = self._transitions.get(transition_id)
        if transition is None or user_id not in transition.awaiting:
            _log.debug("user %s ready for transition %s that does not wait for it", user_id, transition_id)
            return []
        return self._mark_ready(transition, user_id)

    def invalid_commit_welcome(self, user_id: int, transition_id: int) -> list[DaveMessage]:
        """Op 31: the user could not process a commit / welcome and reset its MLS state.

        The user goes back to the pending state (its leaf is proposed for removal) and
        is re-added when its next key package (sent right after op 31 by discord.py)
        arrives; both can land in the same commit.

        Returns
        -------
        list[DaveMessage]
            A Remove proposal for its leaf (or a sole member reset), op 22 if the
            transition only waited for it.
        """
        participant = self._require_participant(user_id)
        _check_transition_id(transition_id)
        if participant.version == 0:
            raise DaveProtocolError(f"user {user_id} joined without DAVE support")
        _log.info("user %s reported an invalid commit/welcome for transition %s", user_id, transition_id)
        out: list[DaveMessage] = []
        transition = self._transitions.get(transition_id)
        if transition is not None and user_id in transition.awaiting:
            # It will never be ready for this one: do not make the others wait for it.
            out += self._mark_ready(transition, user_id, executes_for_it=False)
        self._drop_mls_state(participant)
        participant.key_package = None
        # A client that cannot take a welcome may never have received op 25 (it came
        # before its session existed): send it again before the next proposals rather
        # than loop on invalid welcomes. Harmless for a client that has it: its state
        # is a fresh pending group now, which accepts a new external sender.
        participant.sent_external_sender = False
        return out + self._sync()

    def execute_transition(self, transition_id: int) -> list[DaveMessage]:
        """Execute a pending transition now (the shell's timeout).

        Returns
        -------
        list[DaveMessage]
            Op 22 to its recipients; ``[]`` if it is not pending (already executed).
        """
        _check_transition_id(transition_id)
        transition = self._transitions.pop(transition_id, None)
        if transition is None:
            return []
        _log.info("executing transition %s (timeout, still waiting for %s)", transition_id, sorted(transition.awaiting))
        return self._execute(transition)

    # --- internals: proposals ------------------------------------------------------------

    def _sync(self) -> list[DaveMessage]:
        """Bring the in-flight proposals in line with who should be in the group.

        Called after every change of participants or epoch: revokes Add proposals that
        no longer apply, creates the Add / Remove proposals the current epoch needs, and
        sends every proposal holder the proposals it lacks.
        """
        if self._protocol_version == 0:
            return []
        out: list[DaveMessage] = []
        if self._established:
            if self._needs_reset():
                return self._sole_member_reset()
            if not self.members:
                # Every member left or reset while others wait to join: nobody can
                # commit in this group any more. Start over from the pending members'
                # local groups (their key packages stay valid).
                _log.info("group of channel %s has no member left; re-creating it", self.channel_id)
                self._reset_group(keep_key_packages=True)

        # 1. Revoke Add proposals whose key package is no longer the user's current one
        #    (left, replaced it, reset its state) so commits stop covering them.
        revokes: dict[int, list[bytes]] = {}
        for ref, proposal in list(self._proposals.items()):
            if not proposal.is_add:
                continue
            owner = self._participants.get(proposal.user_id)
            if owner is not None and owner.key_package is proposal.key_package and owner.leaf is None:
                continue
            del self._proposals[ref]
            for holder in proposal.delivered:
                if holder in self._participants:
                    revokes.setdefault(holder, []).append(ref)
        for holder in self._participants:  # join order: deterministic output
            if holder in revokes:
                out.append(
                    _binary(holder, OP_PROPOSALS, mls.encode_proposals_payload(mls.PROPOSALS_REVOKE, revokes[holder]))
                )

        # 2. Create the proposals the current epoch needs.
        if self._established:
            removing = {p.leaf for p in self._proposals.values() if not p.is_add}
            for index, leaf in sorted(self._leaves.items()):
                if leaf.remove and index not in removing:
                    self._new_proposal(
                        self.external_sender.remove_proposal(self.group_id, self._epoch, index),
                        leaf.user_id,
                        leaf=index,
                    )
        adding = {p.user_id for p in self._proposals.values() if p.is_add}
        for participant in self._participants.values():
            if participant.key_package is not None and participant.leaf is None and participant.user_id not in adding:
                self._new_proposal(
                    self.external_sender.add_proposal(self.group_id, self._epoch, participant.key_package.raw),
                    participant.user_id,
                    key_package=participant.key_package,
                )

        # 3. Deliver. Established: all members get the same batch (they all hold the
        #    same proposals). Not established: each pending member's local group needs
        #    everybody's Add but its own.
        for holder in self._proposal_holders():
            missing = [
                p
                for p in self._proposals.values()
                if holder not in p.delivered and not (p.is_add and p.user_id == holder and not self._established)
            ]
            if not missing:
                continue
            for p in missing:
                p.delivered.add(holder)
            out.append(
                _binary(
                    holder,
                    OP_PROPOSALS,
                    mls.encode_proposals_payload(mls.PROPOSALS_APPEND, [p.message for p in missing]),
                )
            )
        return out

    def _new_proposal(
        self, message: bytes, user_id: int, *, key_package: KeyPackage | None = None, leaf: int | None = None
    ) -> None:
        # Sign once and keep the bytes: ECDSA signatures are randomised, and every
        # member must commit to the very same proposal reference.
        ref = mls.proposal_ref(message)
        self._proposals[ref] = _Proposal(ref, message, user_id, key_package=key_package, leaf=leaf)
        kind = "add" if key_package is not None else f"remove leaf {leaf}"
        _log.debug("proposal %s for user %s at epoch %s", kind, user_id, self._epoch)

    def _proposal_holders(self) -> list[int]:
        """Users whose MLS state takes the current proposals, in join order."""
        if self._established:
            members = self.members
            return [uid for uid in self._participants if uid in members]
        return [
            p.user_id
            for p in self._participants.values()
            if p.version > 0 and p.key_package is not None and p.leaf is None
        ]

    def _expected_refs(self, committer: int) -> set:
        if self._established:
            return set(self._proposals)
        return {ref for ref, p in self._proposals.items() if not (p.is_add and p.user_id == committer)}

    def _drop_mls_state(self, participant: _Participant) -> None:
        """The participant's client reset its MLS state (new key package, op 31)."""
        if participant.leaf is not None and participant.leaf in self._leaves:
            self._leaves[participant.leaf].remove = True
        participant.leaf = None
        for proposal in self._proposals.values():
            proposal.delivered.discard(participant.user_id)

    # --- internals: commits ----------------------------------------------------------------

    def _check_commit(
        self, participant: _Participant, message: mls.PublicMessage, welcome: Welcome | None
    ) -> tuple[str | None, list[_Proposal], list[_Proposal]]:
        """Why the commit cannot be accepted (``None`` if it can), and its proposals."""
        user_id = participant.user_id
        if self._protocol_version == 0:
            return "downgraded", [], []
        if message.content_type != mls.CONTENT_TYPE_COMMIT or message.commit is None:
            return "not_a_commit", [], []
        if message.group_id != self.group_id:
            return "wrong_group", [], []
        if message.epoch != self._epoch:
            # The usual loser of a commit race, or a commit for an epoch the client
            # has not caught up with: Discord only broadcasts commits for the current epoch.
            return "stale_epoch", [], []
        if message.sender_type != mls.SENDER_MEMBER:
            return "not_a_member_sender", [], []
        if self._established:
            if participant.leaf is None or self._leaves[participant.leaf].remove:
                return "not_a_member", [], []
            expected_leaf = participant.leaf
            signature_key = self._leaves[participant.leaf].signature_key
        else:
            if participant.key_package is None:
                return "no_local_group", [], []
            expected_leaf = 0  # the creator's leaf of its local group
            signature_key = participant.key_package.leaf_node.signature_key
        if message.sender_index != expected_leaf:
            return "wrong_sender_leaf", [], []

        refs = []
        for item in message.commit.proposals:
            if item.reference is None:
                return "inline_proposal", [], []
            refs.append(item.reference)
        if not refs:
            return "no_proposals", [], []
        if len(set(refs)) != len(refs) or set(refs) != self._expected_refs(user_id):
            return "proposals_mismatch", [], []

        leaf = message.commit.path_leaf_node
        if leaf is not None and (leaf.signature_key != signature_key or leaf.credential.user_id != user_id):
            return "leaf_identity_changed", [], []

        proposals = [self._proposals[ref] for ref in refs]
        removes = [p for p in proposals if not p.is_add]
        adds = [p for p in proposals if p.is_add]
        if adds:
            if welcome is None:
                return "missing_welcome", [], []
            recipients = set(welcome.recipients())
            if any(p.key_package.ref() not in recipients for p in adds):  # type: ignore[union-attr]
                return "welcome_misses_joiner", [], []
        elif welcome is not None:
            return "unexpected_welcome", [], []
        return None, removes, adds

    def _apply_commit(
        self,
        committer: _Participant,
        commit: bytes,
        welcome: Welcome | None,
        removes: list[_Proposal],
        adds: list[_Proposal],
    ) -> list[DaveMessage]:
        if not self._established:
            # The committer's local group becomes the group; it is leaf 0 there.
            assert committer.key_package is not None
            self._leaves = {0: _Leaf(committer.user_id, committer.key_package.leaf_node.signature_key)}
            committer.leaf = 0
            committer.key_package = None
            self._established = True
        # RFC 9420 12.3: removes are applied before adds, and each add takes the
        # leftmost blank leaf (a removed leaf is blank), in the order of the commit.
        for proposal in removes:
            self._leaves.pop(proposal.leaf, None)  # type: ignore[arg-type]
        staying = self.members  # after the removes, before the adds: who gets op 29
        announce_to = [uid for uid in self._participants if uid in staying]
        welcomes: list[tuple[int, bytes]] = []
        for proposal in adds:
            index = next(i for i in itertools.count() if i not in self._leaves)
            kp = proposal.key_package
            assert kp is not None and welcome is not None
            self._leaves[index] = _Leaf(proposal.user_id, kp.leaf_node.signature_key)
            joiner = self._participants[proposal.user_id]
            joiner.leaf = index
            # The gateway drops a cached key package once it has a welcome for it.
            joiner.key_package = None
            welcomes.append((proposal.user_id, welcome.for_recipient(kp.ref())))
        self._epoch += 1
        self._proposals.clear()

        transition_id = self._new_transition_id()
        members = frozenset(announce_to) | frozenset(uid for uid, _ in welcomes)
        self._transitions[transition_id] = PendingTransition(
            transition_id, self._protocol_version, self._epoch, members, members
        )
        _log.info(
            "accepted commit of user %s: epoch %s, transition %s, members %s",
            committer.user_id,
            self._epoch,
            transition_id,
            self.members,
        )
        head = struct.pack(">H", transition_id)
        out: list[DaveMessage] = [_binary(uid, OP_ANNOUNCE_COMMIT, head + commit) for uid in announce_to]
        out += [_binary(uid, OP_WELCOME, head + data) for uid, data in welcomes]
        return out + self._sync()

    # --- internals: group lifecycle ---------------------------------------------------------

    def _needs_reset(self) -> bool:
        """Discord's sole member reset: one (or no) member left and nobody to add."""
        live = self.members
        others = [p for p in self._participants.values() if p.version > 0 and p.user_id not in live]
        return len(live) <= 1 and not others

    def _sole_member_reset(self) -> list[DaveMessage]:
        # No single member keeps control of an established group: the last one is told
        # to start over (op 24 epoch 1 makes it send a new key package) and to switch at
        # once (op 21 with transition id 0).
        survivors = list(self.members)
        self._reset_group()
        out: list[DaveMessage] = []
        for user_id in survivors:
            _log.info("sole member reset for user %s", user_id)
            out.append(_json(user_id, OP_PREPARE_EPOCH, epoch=1, protocol_version=self._protocol_version))
            out.append(
                _json(
                    user_id,
                    OP_PREPARE_TRANSITION,
                    transition_id=_INIT_TRANSITION_ID,
                    protocol_version=self._protocol_version,
                )
            )
        return out

    def _reset_group(self, *, keep_key_packages: bool = False) -> None:
        """Forget the group: back to 'not established', every participant pending.

        Key packages are dropped unless ``keep_key_packages``: after op 24 (epoch 1) or
        a downgrade the clients reinitialise and send new ones anyway.
        """
        self._established = False
        self._epoch = 0
        self._leaves = {}
        self._proposals = {}
        for participant in self._participants.values():
            participant.leaf = None
            if not keep_key_packages:
                participant.key_package = None

    def _downgrade(self) -> list[DaveMessage]:
        dave_users = [p.user_id for p in self._participants.values() if p.version > 0]
        self._protocol_version = 0
        self._reset_group()
        if not dave_users:
            return []
        transition_id = self._new_transition_id()
        users = frozenset(dave_users)
        self._transitions[transition_id] = PendingTransition(transition_id, 0, None, users, users)
        _log.info("downgrading channel %s to transport-only encryption (transition %s)", self.channel_id, transition_id)
        return [
            _json(uid, OP_PREPARE_TRANSITION, transition_id=transition_id, protocol_version=0) for uid in dave_users
        ]

    def _upgrade(self) -> list[DaveMessage]:
        # A new group is created from scratch: op 24 with epoch 1 makes every member
        # reset and send a key package; the first commit then carries a transition id.
        self._protocol_version = self.max_protocol_version
        self._reset_group()
        _log.info("upgrading channel %s to DAVE protocol version %s", self.channel_id, self._protocol_version)
        return [
            _json(p.user_id, OP_PREPARE_EPOCH, epoch=1, protocol_version=self._protocol_version)
            for p in self._participants.values()
            if p.version > 0
        ]

    # --- internals: transitions -------------------------------------------------------------

    def _new_transition_id(self) -> int:
        for _ in range(0xFFFF):
            candidate = (next(self._transition_counter) - 1) % 0xFFFF + 1  # 1..65535, never 0
            if candidate not in self._transitions:
                return candidate
        raise RuntimeError("65535 transitions pending")  # pragma: no cover - needs a broken shell

    def _mark_ready(
        self, transition: PendingTransition, user_id: int, *, executes_for_it: bool = True
    ) -> list[DaveMessage]:
        recipients = transition.recipients if executes_for_it else transition.recipients - {user_id}
        transition = PendingTransition(
            transition.transition_id,
            transition.protocol_version,
            transition.epoch,
            transition.awaiting - {user_id},
            recipients,
        )
        if transition.awaiting:
            self._transitions[transition.transition_id] = transition
            return []
        del self._transitions[transition.transition_id]
        return self._execute(transition)

    def _forget_in_transitions(self, user_id: int) -> list[DaveMessage]:
        out: list[DaveMessage] = []
        for transition in list(self._transitions.values()):
            if user_id in transition.recipients or user_id in transition.awaiting:
                if user_id in transition.awaiting:
                    out += self._mark_ready(transition, user_id, executes_for_it=False)
                else:
                    self._transitions[transition.transition_id] = PendingTransition(
                        transition.transition_id,
                        transition.protocol_version,
                        transition.epoch,
                        transition.awaiting,
                        transition.recipients - {user_id},
                    )
        return out

    def _execute(self, transition: PendingTransition) -> list[DaveMessage]:
        _log.debug("transition %s executes", transition.transition_id)
        return [
            _json(uid, OP_EXECUTE_TRANSITION, transition_id=transition.transition_id)
            for uid in self._participants
            if uid in transition.recipients
        ]

    def _require_participant(self, user_id: int) -> _Participant:
        _check_user_id(user_id)
        participant = self._participants.get(user_id)
        if participant is None:
            raise DaveProtocolError(f"user {user_id} is not connected to channel {self.channel_id}")
        return participant


def _check_user_id(user_id: Any) -> None:
    if not isinstance(user_id, int) or isinstance(user_id, bool) or not 0 < user_id < 2**64:
        raise DaveProtocolError(f"user id must be a positive 64-bit int, not {user_id!r}")


def _check_transition_id(transition_id: Any) -> None:
    if not isinstance(transition_id, int) or isinstance(transition_id, bool) or not 0 <= transition_id <= 0xFFFF:
        raise DaveProtocolError(f"transition_id must be an int in [0, 65535], not {transition_id!r}")


# --- an in-process member ---------------------------------------------------------------------


class LocalDaveMember:
    """A simulated voice member that lives inside the emulator, DAVE-wise.

    It owns a real :class:`davey.DaveSession` and reacts to server messages exactly as
    discord.py 2.7.1 does (``DiscordVoiceWebSocket.received_message`` /
    ``received_binary_message`` and ``VoiceConnectionState.reinit_dave_session`` /
    ``_execute_transition`` / ``_recover_from_invalid_commit``), including its quirks:
    JSON DAVE ops are ignored while it has no session, transition 0 executes at once,
    op 23 is not sent for transition 0, and exceptions of ``set_external_sender`` /
    ``process_proposals`` propagate (in discord.py they end the websocket).

    Media keys switch like a libdave client's (Discord's own apps), not like discord.py's:
    a commit of a transition other than 0 is answered with op 23 at once but applied only
    when op 22 (execute) arrives, so the member keeps sealing with the old epoch's key until
    then, and a receiver meets new-epoch frames only after it reported ready itself (davey
    switches keys as soon as it processes a commit). A welcome is applied on arrival: a
    joiner has no older key to keep using.

    Parameters
    ----------
    user_id : int
        The member's Discord user id.
    channel_id : int
        The voice channel id (the MLS group id).
    max_protocol_version : int
        What it announces in op 0 (``davey.DAVE_PROTOCOL_VERSION`` like discord.py; 0
        for a member without DAVE support).
    switch_at_execute : bool
        Apply commits at op 22, as libdave clients do (default); ``False`` applies them on
        arrival, as discord.py does.
    """

    def __init__(
        self,
        user_id: int,
        channel_id: int,
        *,
        max_protocol_version: int | None = None,
        switch_at_execute: bool = True,
    ) -> None:
        _check_user_id(user_id)
        self.user_id: int = user_id
        self.channel_id: int = channel_id
        self.max_protocol_version: int = (
            davey.DAVE_PROTOCOL_VERSION if max_protocol_version is None else max_protocol_version
        )
        self.session: davey.DaveSession | None = None
        #: discord.py's ``dave_protocol_version``.
        self.protocol_version: int = 0
        #: discord.py's ``dave_pending_transitions``: transition id -> protocol version.
        self.pending_transitions: dict[int, int] = {}
        #: discord.py's ``dave_downgraded``.
        self.downgraded: bool = False
        #: Ids of the transitions it executed, in order (for tests and diagnostics).
        self.executed_transitions: list[int] = []
        self.switch_at_execute = switch_at_execute
        # A commit (op 29) answered with op 23 but not applied yet.
        self._deferred: tuple[int, int, bytes] | None = None

    def __repr__(self) -> str:
        return f"<LocalDaveMember user_id={self.user_id} protocol_version={self.protocol_version} ready={self.ready}>"

    @property
    def ready(self) -> bool:
        """discord.py's ``can_encrypt``: protocol version > 0 and the session is ready."""
        return self.protocol_version != 0 and self.session is not None and self.session.ready

    @property
    def epoch(self) -> int | None:
        """The session's MLS epoch (``None`` without a session or group)."""
        return None if self.session is None else self.session.epoch

    # --- what discord.py does ---------------------------------------------------------------

    def session_description(self, dave_protocol_version: int) -> list[DaveMessage]:
        """Op 4 (SESSION_DESCRIPTION) arrived with ``dave_protocol_version``.

        Returns
        -------
        list[DaveMessage]
            Op 26 (a fresh key package) when the version is > 0.
        """
        self.protocol_version = dave_protocol_version
        if dave_protocol_version > 0:
            return self._reinit_session()
        return []

    def handle(self, message: DaveMessage) -> list[DaveMessage]:
        """React to one server message addressed to this member.

        Returns
        -------
        list[DaveMessage]
            What discord.py would send back: op 23, 26, 28 and/or 31.
        """
        if message.user_id != self.user_id:
            raise ValueError(f"message for user {message.user_id} delivered to member {self.user_id}")
        if isinstance(message, DaveJsonMessage):
            if message.op == OP_EXECUTE_TRANSITION:
                out = self._apply_deferred(message.data.get("transition_id"))
                return out + self._handle_json(message.op, message.data)
            return self._apply_deferred() + self._handle_json(message.op, message.data)
        if isinstance(message, DaveBinaryMessage):
            # Anything binary belongs to the epoch after a deferred commit: apply that first.
            return self._apply_deferred() + self._handle_binary(message.op, message.payload)
        raise TypeError(f"not a DAVE message: {message!r}")

    def _apply_deferred(self, transition_id: Any = None) -> list[DaveMessage]:
        """Apply a commit held for op 22 (``transition_id``: only that one's)."""
        deferred = self._deferred
        if deferred is None or (transition_id is not None and deferred[1] != transition_id):
            return []
        self._deferred = None
        op, held_id, message = deferred
        if self.session is None:
            return []
        try:
            self.session.process_commit(message)
        except Exception:
            _log.debug("member %s cannot apply op %s of transition %s", self.user_id, op, held_id)
            return self._recover_from_invalid_commit(held_id)
        return []

    def _handle_json(self, op: int, data: Mapping[str, Any]) -> list[DaveMessage]:
        if self.session is None:  # discord.py: `elif self._connection.dave_session:`
            return []
        if op == OP_PREPARE_TRANSITION:
            transition_id = data["transition_id"]
            self.pending_transitions[transition_id] = data["protocol_version"]
            if transition_id == _INIT_TRANSITION_ID:
                self._execute_transition(transition_id)
                return []
            if data["protocol_version"] == 0 and self.session is not None:
                self.session.set_passthrough_mode(True, 120)
            return [_json(self.user_id, OP_TRANSITION_READY, transition_id=transition_id)]
        if op == OP_EXECUTE_TRANSITION:
            self._execute_transition(data["transition_id"])
            return []
        if op == OP_PREPARE_EPOCH:
            if data["epoch"] == 1:
                self.protocol_version = data["protocol_version"]
                return self._reinit_session()
            return []
        return []

    def _handle_binary(self, op: int, payload: bytes) -> list[DaveMessage]:
        session = self.session
        if session is None:
            return []
        if op == OP_EXTERNAL_SENDER:
            session.set_external_sender(payload)
            return []
        if op == OP_PROPOSALS:
            optype = davey.ProposalsOperationType.append if payload[0] == 0 else davey.ProposalsOperationType.revoke
            result = session.process_proposals(optype, payload[1:])
            if isinstance(result, davey.CommitWelcome):
                data = result.commit + result.welcome if result.welcome else result.commit
                return [_binary(self.user_id, OP_COMMIT_WELCOME, data)]
            return []
        if op in (OP_ANNOUNCE_COMMIT, OP_WELCOME):
            (transition_id,) = struct.unpack_from(">H", payload, 0)
            if self.switch_at_execute and op == OP_ANNOUNCE_COMMIT and transition_id != _INIT_TRANSITION_ID:
                self._deferred = (op, transition_id, payload[2:])
                self.pending_transitions[transition_id] = self.protocol_version
                return [_json(self.user_id, OP_TRANSITION_READY, transition_id=transition_id)]
            try:
                if op == OP_ANNOUNCE_COMMIT:
                    session.process_commit(payload[2:])
                else:
                    session.process_welcome(payload[2:])
            except Exception:  # discord.py catches everything here too
                _log.debug("member %s cannot process op %s of transition %s", self.user_id, op, transition_id)
                return self._recover_from_invalid_commit(transition_id)
            if transition_id != _INIT_TRANSITION_ID:
                self.pending_transitions[transition_id] = self.protocol_version
                return [_json(self.user_id, OP_TRANSITION_READY, transition_id=transition_id)]
            return []
        return []

    def _reinit_session(self) -> list[DaveMessage]:
        if self.protocol_version > 0:
            if self.session is not None:
                self.session.reinit(self.protocol_version, self.user_id, self.channel_id)
            else:
                self.session = davey.DaveSession(self.protocol_version, self.user_id, self.channel_id)
            return [_binary(self.user_id, OP_KEY_PACKAGE, self.session.get_serialized_key_package())]
        if self.session is not None:
            self.session.reset()
            self.session.set_passthrough_mode(True, 10)
        return []

    def _recover_from_invalid_commit(self, transition_id: int) -> list[DaveMessage]:
        out: list[DaveMessage] = [_json(self.user_id, OP_INVALID_COMMIT_WELCOME, transition_id=transition_id)]
        return out + self._reinit_session()

    def _execute_transition(self, transition_id: int) -> None:
        if transition_id not in self.pending_transitions:
            _log.warning("member %s: execute for unknown transition %s", self.user_id, transition_id)
            return
        old_version = self.protocol_version
        self.protocol_version = self.pending_transitions.pop(transition_id)
        if old_version != self.protocol_version and self.protocol_version == 0:
            self.downgraded = True
        elif transition_id > 0 and self.downgraded:
            self.downgraded = False
            if self.session is not None:
                self.session.set_passthrough_mode(True, 10)
        self.executed_transitions.append(transition_id)

    # --- media ---------------------------------------------------------------------------------

    def encrypt_opus(self, frame: bytes) -> bytes:
        """What discord.py puts in the RTP payload for this Opus frame.

        A DAVE frame when :attr:`ready`, else the frame unchanged (discord.py's
        ``VoiceClient._get_voice_packet``).
        """
        if self.session is not None and self.ready:
            return self.session.encrypt_opus(frame)
        return bytes(frame)

    def decrypt(self, sender_id: int, frame: bytes) -> bytes:
        """Decrypt another member's audio frame with this member's session.

        Raises
        ------
        ValueError
            From davey (``NoDecryptorForUser``, ``DecryptionFailed(...)``,
            ``UnencryptedWhenPassthroughDisabled``), or when there is no session.
        """
        if self.session is None:
            raise ValueError(f"member {self.user_id} has no DAVE session")
        return self.session.decrypt(sender_id, davey.MediaType.audio, frame)


# --- routing helpers -------------------------------------------------------------------------


def deliver(
    server: DaveGroupServer,
    members: Mapping[int, LocalDaveMember],
    messages: Iterable[DaveMessage],
    *,
    max_messages: int = 10_000,
    trace: list[DaveMessage] | None = None,
    on_error: Callable[[DaveMessage, Exception], None] | None = None,
) -> list[DaveMessage]:
    """Route messages between the server and in-process members until none are left.

    Client messages go to ``server.handle``; server messages go to the addressed member
    in ``members``. Messages are processed first in, first out, so every connection
    sees its messages in order, as on a websocket.

    Parameters
    ----------
    server : DaveGroupServer
    members : mapping of user id to LocalDaveMember
    messages : iterable of DaveMessage
        The messages to start from (e.g. the result of a server event method).
    max_messages : int
        Safety bound against a protocol loop.
    trace : list, optional
        Every routed message is appended to it, in processing order (diagnostics).
    on_error : callable, optional
        ``on_error(message, exc)`` is called when the server or a member raises while
        handling ``message`` (a :class:`DaveProtocolError`, a davey ``ValueError``...);
        routing then goes on with the other messages. Without it the exception
        propagates and the remaining messages are not routed.

    Returns
    -------
    list[DaveMessage]
        Server messages for users not in ``members`` (e.g. a real bot behind a
        websocket), in order.
    """
    queue: deque[DaveMessage] = deque(messages)
    external: list[DaveMessage] = []
    handled = 0
    while queue:
        handled += 1
        if handled > max_messages:
            raise RuntimeError(f"more than {max_messages} DAVE messages: protocol loop?")
        message = queue.popleft()
        if trace is not None:
            trace.append(message)
        if not message.from_client and message.user_id not in members:
            external.append(message)
            continue
        try:
            if message.from_client:
                queue.extend(server.handle(message))
            else:
                queue.extend(members[message.user_id].handle(message))
        except Exception as exc:
            if on_error is None:
                raise
            on_error(message, exc)
    return external


def connect_local_member(
    server: DaveGroupServer,
    member: LocalDaveMember,
    members: Mapping[int, LocalDaveMember] | None = None,
) -> list[DaveMessage]:
    """Join ``member`` to ``server`` the way a voice connection does, and run DAVE.

    ``server.add_participant`` (op 0), then op 4 (:meth:`LocalDaveMember.session_description`
    with the server's protocol version), then everything that follows via
    :func:`deliver`.

    Parameters
    ----------
    members : mapping, optional
        All in-process members (``member`` is added to the routing if missing).

    Returns
    -------
    list[DaveMessage]
        Server messages for users not in ``members``.
    """
    routing: dict[int, LocalDaveMember] = dict(members or {})
    routing[member.user_id] = member
    to_member = server.add_participant(member.user_id, member.max_protocol_version)
    from_member = member.session_description(server.protocol_version)
    return deliver(server, routing, list(to_member) + from_member)


def stale_epoch_member(user_id: int, channel_id: int) -> LocalDaveMember:
    """A ready member whose frames are sealed under keys no other group ever held.

    What a receiver meets when a sender seals with an epoch the receiver no longer (or
    never) holds: the receiver knows the sender, but no key of its own opens the frame
    (davey: ``NoValidCryptorFound``). Built as the sender's side of a private two-member
    group, so the keys are real DAVE keys for ``user_id``, just not the call's.
    """
    _check_user_id(user_id)
    other_id = user_id + 1 if user_id < (1 << 63) else user_id - 1
    server = DaveGroupServer(channel_id)
    member = LocalDaveMember(user_id, channel_id)
    other = LocalDaveMember(other_id, channel_id)
    routing = {user_id: member, other_id: other}
    connect_local_member(server, member, routing)
    connect_local_member(server, other, routing)
    for transition_id in list(server.pending_transitions):
        deliver(server, routing, server.execute_transition(transition_id))
    if not member.ready:  # pragma: no cover - davey refused a two-member group
        raise RuntimeError("could not build a private DAVE group")
    return member
