"""DAVE members that live in-process, and the routing between them and the group server.

- :class:`LocalDaveMember`: a simulated member inside the emulator; it owns a real
  :class:`davey.DaveSession` and reacts to the server's messages exactly as discord.py
  2.7.1 does, so the emulator treats in-process members and a real bot alike.
- :func:`deliver` / :func:`connect_local_member`: route messages between the group server
  (:class:`.dave_server.DaveGroupServer`) and in-process members until nothing is left.
- :func:`stale_epoch_member`: a member sealing under keys no receiver holds (a dead epoch).
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import davey

from .dave_messages import (
    INIT_TRANSITION_ID,
    OP_ANNOUNCE_COMMIT,
    OP_COMMIT_WELCOME,
    OP_EXECUTE_TRANSITION,
    OP_EXTERNAL_SENDER,
    OP_INVALID_COMMIT_WELCOME,
    OP_KEY_PACKAGE,
    OP_PREPARE_EPOCH,
    OP_PREPARE_TRANSITION,
    OP_PROPOSALS,
    OP_TRANSITION_READY,
    OP_WELCOME,
    DaveBinaryMessage,
    DaveJsonMessage,
    DaveMessage,
    check_user_id,
    json_message,
)
from .dave_server import DaveGroupServer

__all__ = ("LocalDaveMember", "connect_local_member", "deliver", "stale_epoch_member")

_log = logging.getLogger(__name__)


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
        check_user_id(user_id)
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
                return out + self._handlejson_message(message.op, message.data)
            return self._apply_deferred() + self._handlejson_message(message.op, message.data)
        if isinstance(message, DaveBinaryMessage):
            # Anything binary belongs to the epoch after a deferred commit: apply that first.
            return self._apply_deferred() + self._handleDaveBinaryMessage(message.op, message.payload)
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

    def _handlejson_message(self, op: int, data: Mapping[str, Any]) -> list[DaveMessage]:
        if self.session is None:  # discord.py: `elif self._connection.dave_session:`
            return []
        if op == OP_PREPARE_TRANSITION:
            transition_id = data["transition_id"]
            self.pending_transitions[transition_id] = data["protocol_version"]
            if transition_id == INIT_TRANSITION_ID:
                self._execute_transition(transition_id)
                return []
            if data["protocol_version"] == 0 and self.session is not None:
                self.session.set_passthrough_mode(True, 120)
            return [json_message(self.user_id, OP_TRANSITION_READY, transition_id=transition_id)]
        if op == OP_EXECUTE_TRANSITION:
            self._execute_transition(data["transition_id"])
            return []
        if op == OP_PREPARE_EPOCH:
            if data["epoch"] == 1:
                self.protocol_version = data["protocol_version"]
                return self._reinit_session()
            return []
        return []

    def _handleDaveBinaryMessage(self, op: int, payload: bytes) -> list[DaveMessage]:
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
                return [DaveBinaryMessage(self.user_id, OP_COMMIT_WELCOME, data)]
            return []
        if op in (OP_ANNOUNCE_COMMIT, OP_WELCOME):
            (transition_id,) = struct.unpack_from(">H", payload, 0)
            if self.switch_at_execute and op == OP_ANNOUNCE_COMMIT and transition_id != INIT_TRANSITION_ID:
                self._deferred = (op, transition_id, payload[2:])
                self.pending_transitions[transition_id] = self.protocol_version
                return [json_message(self.user_id, OP_TRANSITION_READY, transition_id=transition_id)]
            try:
                if op == OP_ANNOUNCE_COMMIT:
                    session.process_commit(payload[2:])
                else:
                    session.process_welcome(payload[2:])
            except Exception:  # discord.py catches everything here too
                _log.debug("member %s cannot process op %s of transition %s", self.user_id, op, transition_id)
                return self._recover_from_invalid_commit(transition_id)
            if transition_id != INIT_TRANSITION_ID:
                self.pending_transitions[transition_id] = self.protocol_version
                return [json_message(self.user_id, OP_TRANSITION_READY, transition_id=transition_id)]
            return []
        return []

    def _reinit_session(self) -> list[DaveMessage]:
        if self.protocol_version > 0:
            if self.session is not None:
                self.session.reinit(self.protocol_version, self.user_id, self.channel_id)
            else:
                self.session = davey.DaveSession(self.protocol_version, self.user_id, self.channel_id)
            return [DaveBinaryMessage(self.user_id, OP_KEY_PACKAGE, self.session.get_serialized_key_package())]
        if self.session is not None:
            self.session.reset()
            self.session.set_passthrough_mode(True, 10)
        return []

    def _recover_from_invalid_commit(self, transition_id: int) -> list[DaveMessage]:
        out: list[DaveMessage] = [json_message(self.user_id, OP_INVALID_COMMIT_WELCOME, transition_id=transition_id)]
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
    check_user_id(user_id)
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
