"""DAVE messages of the voice gateway (v8): opcodes, message objects and their framing.

Sans-I/O: a websocket shell turns frames into :class:`DaveMessage` objects
(:func:`message_from_frame`), hands them to the group server (:mod:`.dave_server`) or an
in-process member (:mod:`.dave_member`), and writes what they return back out
(:meth:`DaveJsonMessage.to_frame` / :meth:`DaveBinaryMessage.to_frame`). Also here: the
op 27 payload (:func:`encode_proposals_payload`), the errors every DAVE party raises on
bad input, and the checks of user and transition ids they share.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .mls import parse_public_message
from .mls_wire import MLSDecodeError, Reader, encode_vl

__all__ = (
    "E2EE_REQUIRED_CLOSE_CODE",
    "INIT_TRANSITION_ID",
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
    "PROPOSALS_APPEND",
    "PROPOSALS_REVOKE",
    "DaveBinaryMessage",
    "DaveJsonMessage",
    "DaveMessage",
    "DaveProtocolError",
    "E2EERequired",
    "check_transition_id",
    "check_user_id",
    "decode_proposals_payload",
    "encode_proposals_payload",
    "json_message",
    "message_from_frame",
)

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


#: Transition id 0 means "(re)initialisation, execute immediately" (whitepaper op 21).
INIT_TRANSITION_ID = 0

#: op 27 operation types (``davey.ProposalsOperationType`` values).
PROPOSALS_APPEND = 0
PROPOSALS_REVOKE = 1


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


def json_message(user_id: int, op: int, **data: Any) -> DaveJsonMessage:
    """A :class:`DaveJsonMessage` with ``data`` given as keywords."""
    return DaveJsonMessage(user_id, op, data)


def check_user_id(user_id: Any) -> None:
    """Raise :class:`DaveProtocolError` unless ``user_id`` is a positive 64-bit int."""
    if not isinstance(user_id, int) or isinstance(user_id, bool) or not 0 < user_id < 2**64:
        raise DaveProtocolError(f"user id must be a positive 64-bit int, not {user_id!r}")


def check_transition_id(transition_id: Any) -> None:
    """Raise :class:`DaveProtocolError` unless ``transition_id`` is an int in 0..65535."""
    if not isinstance(transition_id, int) or isinstance(transition_id, bool) or not 0 <= transition_id <= 0xFFFF:
        raise DaveProtocolError(f"transition_id must be an int in [0, 65535], not {transition_id!r}")


# --- op 27 --------------------------------------------------------------------------------


def encode_proposals_payload(operation_type: int, items: Sequence[bytes]) -> bytes:
    """The op 27 payload: optype byte + VL(concatenated items).

    Parameters
    ----------
    operation_type : int
        :data:`PROPOSALS_APPEND` (items are proposal ``MLSMessage`` bytes, concatenated
        as they are: each is self-delimiting) or :data:`PROPOSALS_REVOKE` (items are
        ``ProposalRef`` values, each VL-encoded as MLS ``ProposalRef proposal_refs<V>``
        requires).
    items : sequence of bytes
        At least one.

    Returns
    -------
    bytes
        Without the server's ``>H seq`` and op byte.
    """
    if operation_type not in (PROPOSALS_APPEND, PROPOSALS_REVOKE):
        raise ValueError(f"operation_type must be 0 (append) or 1 (revoke), not {operation_type!r}")
    items = list(items)
    if not items:
        raise ValueError("an op 27 payload needs at least one proposal or reference")
    for item in items:
        if not isinstance(item, (bytes, bytearray)) or not item:
            raise ValueError("every proposal / reference must be non-empty bytes")
    if operation_type == PROPOSALS_APPEND:
        body = b"".join(bytes(i) for i in items)
    else:
        body = b"".join(encode_vl(bytes(i)) for i in items)
    return bytes((operation_type,)) + encode_vl(body)


def decode_proposals_payload(payload: bytes) -> tuple[int, tuple[bytes, ...]]:
    """Inverse of :func:`encode_proposals_payload`.

    Returns
    -------
    tuple[int, tuple[bytes, ...]]
        ``(operation_type, items)``: proposal messages (append) or refs (revoke).
    """
    r = Reader(bytes(payload))
    optype = r.u8("operation_type")
    if optype not in (PROPOSALS_APPEND, PROPOSALS_REVOKE):
        raise MLSDecodeError(f"invalid proposals operation type {optype}")
    body = r.vl("proposals")
    if r.remaining:
        raise MLSDecodeError("trailing bytes after the proposals vector")
    items = []
    if optype == PROPOSALS_APPEND:
        pos = 0
        while pos < len(body):
            message, pos = parse_public_message(body, pos)
            items.append(message.raw)
    else:
        br = Reader(body)
        while br.remaining:
            items.append(br.vl("proposal ref"))
    return optype, tuple(items)
