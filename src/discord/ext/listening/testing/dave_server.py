"""Sans-I/O DAVE coordination for the local Discord voice server emulator.

Discord's voice gateway is the MLS *delivery service* and *external sender* of each
voice channel's DAVE group (DAVE protocol version 1): it never knows a group secret, but
it decides who is in the group, signs Add/Remove proposals, picks the winning commit of
every epoch, hands welcomes to joiners and paces the media key switch with transitions.
This module is that role as plain objects over bytes:

- :class:`DaveGroupServer`: one voice channel's group as the server sees it. Every
  event method (a participant joined / left, sent op 23, 26, 28 or 31, a transition
  timed out) returns the list of :class:`DaveMessage` the server must send.
- Its records, its proposals and the commit rules are :mod:`.dave_state`; the messages and their
  framing :mod:`.dave_messages`; members that live in-process (a real
  :class:`davey.DaveSession` each) and the routing to them :mod:`.dave_member`.

No sockets, threads or asyncio here: an I/O shell (the websocket server) turns frames
into :class:`DaveMessage` objects (:func:`.dave_messages.message_from_frame`), feeds them to
:meth:`DaveGroupServer.handle` and writes the returned messages back out
(``to_frame()``).

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

import logging
from collections import Counter

from . import mls
from .dave_commits import (
    commit_messages,
    downgrade_messages,
    execute_messages,
    group_members,
    place_commit,
    sole_member_reset_messages,
    upgrade_messages,
)
from .dave_messages import (
    OP_COMMIT_WELCOME,
    OP_EXTERNAL_SENDER,
    OP_INVALID_COMMIT_WELCOME,
    OP_KEY_PACKAGE,
    OP_TRANSITION_READY,
    DaveBinaryMessage,
    DaveJsonMessage,
    DaveMessage,
    DaveProtocolError,
    E2EERequired,
    check_transition_id,
    check_user_id,
)
from .dave_state import (
    Leaf,
    Participant,
    PendingTransition,
    Proposal,
    Proposals,
    Transitions,
    check_commit,
    committer_of,
)
from .external_sender import ExternalSender
from .mls import KeyPackage, Welcome
from .mls_wire import MLSDecodeError

__all__ = ("TRANSITION_TIMEOUT", "DaveGroupServer")

_log = logging.getLogger(__name__)

#: (:meth:`DaveGroupServer.execute_transition`). Discord's value is not published; the
#: whitepaper says removed members keep decrypting for "roughly two seconds" because of
#: it, so 2 s is the honest guess.
TRANSITION_TIMEOUT = 2.0


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
        self.commit_rejections: Counter[str] = Counter()

        self._external_sender_package = self.external_sender.package()
        self._participants: dict[int, Participant] = {}
        self._protocol_version = max_protocol_version
        self._established = False
        self._epoch = 0
        self._leaves: dict[int, Leaf] = {}
        self._proposals = Proposals(self.group_id, self.external_sender)
        self._transitions = Transitions()

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
        return group_members(self._leaves, self._participants)

    @property
    def pending_members(self) -> tuple[int, ...]:
        """DAVE participants not in the group yet (waiting for a key package or a commit)."""
        return tuple(p.user_id for p in self._participants.values() if p.version > 0 and p.leaf is None)

    @property
    def pending_transitions(self) -> dict[int, PendingTransition]:
        """Announced transitions that were not executed yet, by id."""
        return self._transitions.pending

    @property
    def pending_proposals(self) -> tuple[bytes, ...]:
        """The unrevoked proposal messages of the current epoch, in creation order."""
        return self._proposals.messages

    def has_key_package(self, user_id: int) -> bool:
        """Whether the user sent a key package that no welcome used yet."""
        p = self._participants.get(user_id)
        return p is not None and p.key_package is not None

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
        check_user_id(user_id)
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

        participant = Participant(user_id, version)
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
        return [DaveBinaryMessage(user_id, OP_EXTERNAL_SENDER, self._external_sender_package)]

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
        out = [m for t in self._transitions.forget(user_id) for m in self._execute(t)]
        self._proposals.forget_holder(user_id)
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
            out.append(DaveBinaryMessage(user_id, OP_EXTERNAL_SENDER, self._external_sender_package))
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
        check_transition_id(transition_id)
        transition = self._transitions.get(transition_id)
        if transition is None or user_id not in transition.awaiting:
            _log.debug("user %s ready for transition %s that does not wait for it", user_id, transition_id)
            return []
        return self._execute(self._transitions.ready(transition, user_id))

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
        check_transition_id(transition_id)
        if participant.version == 0:
            raise DaveProtocolError(f"user {user_id} joined without DAVE support")
        _log.info("user %s reported an invalid commit/welcome for transition %s", user_id, transition_id)
        out: list[DaveMessage] = []
        transition = self._transitions.get(transition_id)
        if transition is not None and user_id in transition.awaiting:
            # It will never be ready for this one: do not make the others wait for it.
            out += self._execute(self._transitions.ready(transition, user_id, executes_for_it=False))
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
        check_transition_id(transition_id)
        transition = self._transitions.pop(transition_id)
        if transition is None:
            return []
        _log.info("executing transition %s (timeout, still waiting for %s)", transition_id, sorted(transition.awaiting))
        return self._execute(transition)

    # --- internals: proposals ------------------------------------------------------------

    def _sync(self) -> list[DaveMessage]:
        """Bring the in-flight proposals in line with who should be in the group.

        Called after every change of participants or epoch: a group that lost its
        members is reset or re-created first, then :meth:`.dave_state.Proposals.sync`
        revokes, creates and delivers the proposals.
        """
        if self._protocol_version == 0:
            return []
        if self._established:
            if self._needs_reset():
                return self._sole_member_reset()
            if not self.members:
                # Every member left or reset while others wait to join: nobody can
                # commit in this group any more. Start over from the pending members'
                # local groups (their key packages stay valid).
                _log.info("group of channel %s has no member left; re-creating it", self.channel_id)
                self._reset_group(keep_key_packages=True)
        members = self.members if self._established else None
        return self._proposals.sync(self._participants, self._leaves, epoch=self._epoch, members=members)

    def _drop_mls_state(self, participant: Participant) -> None:
        """The participant's client reset its MLS state (new key package, op 31)."""
        if participant.leaf is not None and participant.leaf in self._leaves:
            self._leaves[participant.leaf].remove = True
        participant.leaf = None
        self._proposals.forget_holder(participant.user_id)

    # --- internals: commits ----------------------------------------------------------------

    def _check_commit(
        self, participant: Participant, message: mls.PublicMessage, welcome: Welcome | None
    ) -> tuple[str | None, list[Proposal], list[Proposal]]:
        """Why the commit cannot be accepted (``None`` if it can), and its proposals."""
        if self._protocol_version == 0:
            return "downgraded", [], []
        return check_commit(
            message,
            welcome,
            group_id=self.group_id,
            epoch=self._epoch,
            committer=committer_of(participant, self._leaves, established=self._established),
            proposals=self._proposals.by_ref,
            expected_refs=self._proposals.expected_refs(participant.user_id, established=self._established),
        )

    def _apply_commit(
        self,
        committer: Participant,
        commit: bytes,
        welcome: Welcome | None,
        removes: list[Proposal],
        adds: list[Proposal],
    ) -> list[DaveMessage]:
        if not self._established:
            # The committer's local group becomes the group; it is leaf 0 there.
            assert committer.key_package is not None
            self._leaves = {0: Leaf(committer.user_id, committer.key_package.leaf_node.signature_key)}
            committer.leaf = 0
            committer.key_package = None
            self._established = True
        announce_to, welcomes = place_commit(self._leaves, self._participants, welcome, removes, adds)
        self._epoch += 1
        self._proposals.clear()

        members = frozenset(announce_to) | frozenset(uid for uid, _ in welcomes)
        transition_id = self._transitions.open(self._protocol_version, self._epoch, members).transition_id
        _log.info(
            "accepted commit of user %s: epoch %s, transition %s, members %s",
            committer.user_id,
            self._epoch,
            transition_id,
            self.members,
        )
        return commit_messages(transition_id, commit, announce_to, welcomes) + self._sync()

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
        for user_id in survivors:
            _log.info("sole member reset for user %s", user_id)
        return sole_member_reset_messages(survivors, self._protocol_version)

    def _reset_group(self, *, keep_key_packages: bool = False) -> None:
        """Forget the group: back to 'not established', every participant pending.

        Key packages are dropped unless ``keep_key_packages``: after op 24 (epoch 1) or
        a downgrade the clients reinitialise and send new ones anyway.
        """
        self._established = False
        self._epoch = 0
        self._leaves = {}
        self._proposals.clear()
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
        transition_id = self._transitions.open(0, None, frozenset(dave_users)).transition_id
        _log.info("downgrading channel %s to transport-only encryption (transition %s)", self.channel_id, transition_id)
        return downgrade_messages(transition_id, dave_users)

    def _upgrade(self) -> list[DaveMessage]:
        # A new group is created from scratch: op 24 with epoch 1 makes every member
        # reset and send a key package; the first commit then carries a transition id.
        self._protocol_version = self.max_protocol_version
        self._reset_group()
        _log.info("upgrading channel %s to DAVE protocol version %s", self.channel_id, self._protocol_version)
        return upgrade_messages(
            (p.user_id for p in self._participants.values() if p.version > 0), self._protocol_version
        )

    # --- internals: transitions -------------------------------------------------------------

    def _execute(self, transition: PendingTransition | None) -> list[DaveMessage]:
        """Op 22 for a transition that executes now, to its recipients in join order (``None``: nothing)."""
        if transition is not None:
            _log.debug("transition %s executes", transition.transition_id)
        return execute_messages(transition, self._participants)

    def _require_participant(self, user_id: int) -> Participant:
        check_user_id(user_id)
        participant = self._participants.get(user_id)
        if participant is None:
            raise DaveProtocolError(f"user {user_id} is not connected to channel {self.channel_id}")
        return participant
