"""MLS (RFC 9420) wire encoding for the DAVE voice server's external-sender role.

A Discord voice gateway never holds MLS group secrets: it only *frames* messages
(external Add/Remove proposals it signs itself) and *inspects* public messages the
members send (commits, welcomes, key packages). This module is exactly that much MLS,
for DAVE protocol version 1 (MLS 1.0, ciphersuite 2 = DHKEMP256_AES128GCM_SHA256_P256,
basic credentials, ECDSA P-256/SHA-256 signatures):

- :func:`encode_varint` / :func:`decode_varint` / :func:`encode_vl`: the MLS
  variable-size vector length header ("VL").
- :class:`ExternalSender`: the server's signing key; builds the op 25 package and signs
  external Add / Remove proposals (MLS ``PublicMessage`` with ``sender = external 0``).
- :func:`encode_proposals_payload`: the op 27 payload.
- Parsers for what members send: :class:`KeyPackage` (op 26),
  :class:`PublicMessage` (the commit in op 28), :class:`Welcome` (the welcome in
  op 28 / op 30) and :func:`split_commit_welcome`.
- :func:`proposal_ref` / :func:`key_package_ref`: MLS ``RefHash`` references, so the
  server can check which proposals a commit covers and which joiner a welcome is for.

Everything here works on ``bytes`` and raises :class:`MLSDecodeError` (a
:class:`ValueError`) on malformed input: the caller is a coordinator that must never
crash on garbage a client sends.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = (
    "CIPHERSUITE_DHKEMP256_AES128GCM_SHA256_P256",
    "CONTENT_TYPE_COMMIT",
    "CONTENT_TYPE_PROPOSAL",
    "CREDENTIAL_BASIC",
    "MLS_VERSION_10",
    "PROPOSALS_APPEND",
    "PROPOSALS_REVOKE",
    "PROPOSAL_ADD",
    "PROPOSAL_REMOVE",
    "SENDER_EXTERNAL",
    "SENDER_MEMBER",
    "WIRE_FORMAT_KEY_PACKAGE",
    "WIRE_FORMAT_PUBLIC_MESSAGE",
    "WIRE_FORMAT_WELCOME",
    "Commit",
    "Credential",
    "EncryptedGroupSecrets",
    "ExternalSender",
    "KeyPackage",
    "LeafNode",
    "MLSDecodeError",
    "Proposal",
    "ProposalOrRef",
    "PublicMessage",
    "Welcome",
    "decode_proposals_payload",
    "decode_varint",
    "encode_proposals_payload",
    "encode_varint",
    "encode_vl",
    "group_id_for_channel",
    "key_package_ref",
    "parse_public_message",
    "proposal_ref",
    "split_commit_welcome",
    "user_id_identity",
)

# --- constants (RFC 9420 IANA registries; only what DAVE v1 uses) -----------------------

MLS_VERSION_10 = 1
CIPHERSUITE_DHKEMP256_AES128GCM_SHA256_P256 = 2

WIRE_FORMAT_PUBLIC_MESSAGE = 1
WIRE_FORMAT_PRIVATE_MESSAGE = 2
WIRE_FORMAT_WELCOME = 3
WIRE_FORMAT_GROUP_INFO = 4
WIRE_FORMAT_KEY_PACKAGE = 5

CONTENT_TYPE_APPLICATION = 1
CONTENT_TYPE_PROPOSAL = 2
CONTENT_TYPE_COMMIT = 3

SENDER_MEMBER = 1
SENDER_EXTERNAL = 2
SENDER_NEW_MEMBER_PROPOSAL = 3
SENDER_NEW_MEMBER_COMMIT = 4

PROPOSAL_ADD = 1
PROPOSAL_UPDATE = 2
PROPOSAL_REMOVE = 3

CREDENTIAL_BASIC = 1

LEAF_NODE_SOURCE_KEY_PACKAGE = 1
LEAF_NODE_SOURCE_UPDATE = 2
LEAF_NODE_SOURCE_COMMIT = 3

# ProposalOrRef.type
_PROPOSAL_OR_REF_PROPOSAL = 1
_PROPOSAL_OR_REF_REFERENCE = 2

#: op 27 operation types (``davey.ProposalsOperationType`` values).
PROPOSALS_APPEND = 0
PROPOSALS_REVOKE = 1

#: Key package lifetime the voice gateway requires (DAVE whitepaper, "Validation").
_LIFETIME_MAX = (0, 2**64 - 1)

_VARINT_MAX = 2**30 - 1
_P256_POINT_LEN = 65  # uncompressed SEC1 point: 0x04 || X || Y


class MLSDecodeError(ValueError):
    """Malformed or unsupported MLS bytes (a :class:`ValueError`)."""


# --- VL: variable-size vector length headers (RFC 9420 section 2.1.2) ----------------------


def encode_varint(value: int) -> bytes:
    """Encode an MLS variable-length integer.

    Parameters
    ----------
    value : int
        ``0 <= value < 2**30``.

    Returns
    -------
    bytes
        1 byte (top bits ``00``, value < 64), 2 bytes (``01``, < 16384) or 4 bytes
        (``10``), always the shortest form (RFC 9420 requires minimal encoding).

    Raises
    ------
    ValueError
        If ``value`` is negative, not an int, or too large.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"varint value must be an int, not {type(value).__name__}")
    if value < 0 or value > _VARINT_MAX:
        raise ValueError(f"varint value out of range [0, 2**30): {value}")
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return struct.pack(">H", 0x4000 | value)
    return struct.pack(">I", 0x80000000 | value)


def decode_varint(data: bytes, offset: int = 0) -> tuple[int, int]:
    """Decode an MLS variable-length integer.

    Parameters
    ----------
    data : bytes
        The buffer.
    offset : int
        Where the varint starts.

    Returns
    -------
    tuple[int, int]
        ``(value, offset_after)``.

    Raises
    ------
    MLSDecodeError
        Truncated input, the reserved ``11`` prefix, or a non-minimal encoding.
    """
    if offset >= len(data):
        raise MLSDecodeError("truncated varint")
    first = data[offset]
    prefix = first >> 6
    if prefix == 3:
        raise MLSDecodeError("invalid varint prefix 0b11")
    size = 1 << prefix
    if offset + size > len(data):
        raise MLSDecodeError("truncated varint")
    value = first & 0x3F
    for byte in data[offset + 1 : offset + size]:
        value = (value << 8) | byte
    # A longer-than-needed form would let two encodings of one message exist, which
    # breaks signatures and RefHash references: RFC 9420 forbids it, so do we.
    if (size == 2 and value < 0x40) or (size == 4 and value < 0x4000):
        raise MLSDecodeError("non-minimal varint encoding")
    return value, offset + size


def encode_vl(data: bytes) -> bytes:
    """Prefix ``data`` with its VL length: the encoding of MLS ``opaque x<V>``."""
    return encode_varint(len(data)) + bytes(data)


class _Reader:
    """Cursor over a buffer that reads TLS presentation-language fields."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def _take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            have = len(self.data) - self.pos
            raise MLSDecodeError(f"truncated {what}: need {n} bytes at offset {self.pos}, have {have}")
        out = self.data[self.pos : end]
        self.pos = end
        return bytes(out)

    def u8(self, what: str = "uint8") -> int:
        return self._take(1, what)[0]

    def u16(self, what: str = "uint16") -> int:
        return struct.unpack(">H", self._take(2, what))[0]

    def u32(self, what: str = "uint32") -> int:
        return struct.unpack(">I", self._take(4, what))[0]

    def u64(self, what: str = "uint64") -> int:
        return struct.unpack(">Q", self._take(8, what))[0]

    def vl(self, what: str = "vector") -> bytes:
        length, self.pos = decode_varint(self.data, self.pos)
        return self._take(length, what)

    def optional(self, what: str = "optional") -> bool:
        flag = self.u8(what)
        if flag > 1:
            raise MLSDecodeError(f"invalid optional<> presence byte {flag} in {what}")
        return flag == 1

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos


# --- helpers ------------------------------------------------------------------------------


def group_id_for_channel(channel_id: int) -> bytes:
    """DAVE's MLS group id: the channel id as 8 big-endian bytes."""
    _check_u64(channel_id, "channel_id")
    return struct.pack(">Q", channel_id)


def user_id_identity(user_id: int) -> bytes:
    """DAVE's basic-credential identity: the user id as 8 big-endian bytes."""
    _check_u64(user_id, "user_id")
    return struct.pack(">Q", user_id)


def _check_u64(value: int, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value < 2**64:
        raise ValueError(f"{name} must fit in an unsigned 64-bit integer: {value}")


def _sign_content(label: str, content: bytes) -> bytes:
    # RFC 9420 5.1.2 SignWithLabel: struct { opaque label<V> = "MLS 1.0 " + Label;
    # opaque content<V>; } SignContent
    return encode_vl(b"MLS 1.0 " + label.encode()) + encode_vl(content)


def _ref_hash(label: bytes, value: bytes) -> bytes:
    # RFC 9420 5.2: RefHash(label, value) = Hash(struct{label<V>; value<V>}); the hash of
    # ciphersuite 2 is SHA-256.
    return hashlib.sha256(encode_vl(label) + encode_vl(value)).digest()


def _verify_with_label(signature_key: bytes, label: str, content: bytes, signature: bytes) -> None:
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), signature_key)
    except ValueError as exc:
        raise MLSDecodeError(f"signature key is not a P-256 point: {exc}") from None
    try:
        key.verify(signature, _sign_content(label, content), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise MLSDecodeError(f"bad {label} signature") from None


# --- external sender (the voice gateway's identity) ---------------------------------------


class ExternalSender:
    """The voice server's MLS external sender: a P-256 signing key and a basic credential.

    Members put this sender into their group's ``external_senders`` extension (op 25)
    and from then on accept Add/Remove proposals signed by it.

    Parameters
    ----------
    private_key : cryptography.hazmat.primitives.asymmetric.ec.EllipticCurvePrivateKey, optional
        A P-256 key; a fresh one is generated when omitted.
    identity : bytes
        The basic credential's identity. Discord's content is not documented; any bytes
        work for davey (default ``b"discord-voice-emulator"``).
    """

    def __init__(
        self,
        private_key: ec.EllipticCurvePrivateKey | None = None,
        identity: bytes = b"discord-voice-emulator",
    ) -> None:
        if private_key is None:
            private_key = ec.generate_private_key(ec.SECP256R1())
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(private_key.curve, ec.SECP256R1):
            raise ValueError("the external sender key must be a P-256 (SECP256R1) private key")
        if not isinstance(identity, (bytes, bytearray)):
            raise TypeError("identity must be bytes")
        self._key = private_key
        self.identity: bytes = bytes(identity)
        #: Uncompressed SEC1 point (65 bytes), the MLS ``SignaturePublicKey`` of suite 2.
        self.signature_public_key: bytes = private_key.public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint
        )

    def package(self) -> bytes:
        """The op 25 payload: ``ExternalSender{signature_key<V>, Credential}``.

        Returns
        -------
        bytes
            ``VL(signature_key) || u16 1 (basic) || VL(identity)``; without the
            server's ``>H seq`` and op byte.
        """
        return encode_vl(self.signature_public_key) + struct.pack(">H", CREDENTIAL_BASIC) + encode_vl(self.identity)

    def sign_with_label(self, label: str, content: bytes) -> bytes:
        """MLS ``SignWithLabel``: ECDSA P-256/SHA-256, DER-encoded."""
        return self._key.sign(_sign_content(label, content), ec.ECDSA(hashes.SHA256()))

    def _proposal_message(self, group_id: bytes, epoch: int, proposal: bytes) -> bytes:
        if not isinstance(group_id, (bytes, bytearray)) or not group_id:
            raise ValueError("group_id must be non-empty bytes")
        _check_u64(epoch, "epoch")
        framed_content = (
            encode_vl(bytes(group_id))
            + struct.pack(">Q", epoch)
            + struct.pack(">BI", SENDER_EXTERNAL, 0)  # sender: external, sender_index 0
            + encode_vl(b"")  # authenticated_data
            + bytes((CONTENT_TYPE_PROPOSAL,))
            + proposal
        )
        head = struct.pack(">HH", MLS_VERSION_10, WIRE_FORMAT_PUBLIC_MESSAGE)
        # FramedContentTBS for an external sender: version, wire_format, content and no
        # GroupContext (RFC 9420 6.1: the context is only bound for member senders).
        signature = self.sign_with_label("FramedContentTBS", head + framed_content)
        # FramedContentAuthData for a proposal is the signature alone, and external
        # senders carry no membership_tag.
        return head + framed_content + encode_vl(signature)

    def add_proposal(self, group_id: bytes, epoch: int, key_package: bytes) -> bytes:
        """An external Add proposal as an MLS ``PublicMessage``.

        Parameters
        ----------
        group_id : bytes
            The MLS group id (:func:`group_id_for_channel`).
        epoch : int
            The group's current epoch (0 for a group that is not established yet: every
            member's local group starts there).
        key_package : bytes
            The joiner's bare ``KeyPackage`` (op 26 payload). It is checked to parse
            completely, so a truncated one cannot produce a confusing proposal.

        Returns
        -------
        bytes
            The ``MLSMessage`` (``>HH 1, 1`` + FramedContent + signature<V>).
        """
        KeyPackage.parse(key_package)  # raises MLSDecodeError on garbage
        return self._proposal_message(group_id, epoch, struct.pack(">H", PROPOSAL_ADD) + bytes(key_package))

    def remove_proposal(self, group_id: bytes, epoch: int, leaf_index: int) -> bytes:
        """An external Remove proposal (``>H 3`` + ``>I removed``) as an MLS ``PublicMessage``."""
        if not isinstance(leaf_index, int) or isinstance(leaf_index, bool) or not 0 <= leaf_index < 2**32:
            raise ValueError(f"leaf_index must be an unsigned 32-bit integer: {leaf_index!r}")
        return self._proposal_message(group_id, epoch, struct.pack(">HI", PROPOSAL_REMOVE, leaf_index))


# --- parsed structures ----------------------------------------------------------------------


@dataclass(frozen=True)
class Credential:
    """An MLS credential. DAVE allows only basic credentials (type 1)."""

    credential_type: int
    identity: bytes

    @property
    def user_id(self) -> int | None:
        """The Discord user id when ``identity`` is 8 big-endian bytes, else ``None``."""
        if self.credential_type == CREDENTIAL_BASIC and len(self.identity) == 8:
            return struct.unpack(">Q", self.identity)[0]
        return None


def _parse_credential(r: _Reader) -> Credential:
    ctype = r.u16("credential_type")
    if ctype != CREDENTIAL_BASIC:
        raise MLSDecodeError(f"unsupported credential type {ctype} (DAVE allows only basic)")
    return Credential(ctype, r.vl("credential identity"))


@dataclass(frozen=True)
class LeafNode:
    """An MLS ``LeafNode`` (only the fields a voice gateway looks at are decoded)."""

    encryption_key: bytes
    signature_key: bytes
    credential: Credential
    source: int
    lifetime: tuple[int, int] | None
    signature: bytes
    #: The encoding up to (not including) ``signature``: the ``LeafNodeTBS`` prefix.
    tbs: bytes = field(repr=False)


def _parse_leaf_node(r: _Reader) -> LeafNode:
    start = r.pos
    encryption_key = r.vl("leaf encryption_key")
    signature_key = r.vl("leaf signature_key")
    credential = _parse_credential(r)
    for part in ("versions", "cipher_suites", "extensions", "proposals", "credentials"):
        r.vl(f"capabilities.{part}")
    source = r.u8("leaf_node_source")
    lifetime = None
    if source == LEAF_NODE_SOURCE_KEY_PACKAGE:
        lifetime = (r.u64("not_before"), r.u64("not_after"))
    elif source == LEAF_NODE_SOURCE_COMMIT:
        r.vl("parent_hash")
    elif source != LEAF_NODE_SOURCE_UPDATE:
        raise MLSDecodeError(f"invalid leaf_node_source {source}")
    r.vl("leaf extensions")
    tbs = r.data[start : r.pos]
    signature = r.vl("leaf signature")
    return LeafNode(encryption_key, signature_key, credential, source, lifetime, signature, bytes(tbs))


@dataclass(frozen=True)
class KeyPackage:
    """A parsed MLS ``KeyPackage`` (the op 26 payload: bare, not wrapped in an MLSMessage)."""

    version: int
    cipher_suite: int
    init_key: bytes
    leaf_node: LeafNode
    signature: bytes
    #: The exact encoding this was parsed from.
    raw: bytes = field(repr=False)
    tbs: bytes = field(repr=False)

    @classmethod
    def parse(cls, data: bytes) -> KeyPackage:
        """Parse a complete bare ``KeyPackage``.

        Raises
        ------
        MLSDecodeError
            Malformed, trailing bytes, or not MLS 1.0 / ciphersuite 2.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"key package must be bytes, not {type(data).__name__}")
        data = bytes(data)
        r = _Reader(data)
        kp = cls._read(r)
        if r.remaining:
            raise MLSDecodeError(f"{r.remaining} trailing bytes after the key package")
        return kp

    @classmethod
    def _read(cls, r: _Reader) -> KeyPackage:
        start = r.pos
        version = r.u16("key package version")
        if version != MLS_VERSION_10:
            raise MLSDecodeError(f"key package is not MLS 1.0 (version {version})")
        suite = r.u16("key package cipher_suite")
        if suite != CIPHERSUITE_DHKEMP256_AES128GCM_SHA256_P256:
            raise MLSDecodeError(f"key package uses ciphersuite {suite}, DAVE v1 needs 2")
        init_key = r.vl("init_key")
        leaf = _parse_leaf_node(r)
        if leaf.source != LEAF_NODE_SOURCE_KEY_PACKAGE:
            raise MLSDecodeError("key package leaf node source is not key_package")
        r.vl("key package extensions")
        tbs = r.data[start : r.pos]
        signature = r.vl("key package signature")
        return cls(version, suite, init_key, leaf, signature, bytes(r.data[start : r.pos]), bytes(tbs))

    @property
    def user_id(self) -> int | None:
        """The user id of the leaf's basic credential (``None`` if it is not 8 bytes)."""
        return self.leaf_node.credential.user_id

    def ref(self) -> bytes:
        """``KeyPackageRef``: what a Welcome names its recipients by."""
        return key_package_ref(self.raw)

    def validate(self, user_id: int | None = None) -> None:
        """Check what the voice gateway checks before proposing the key package.

        Parameters
        ----------
        user_id : int, optional
            The authenticated user; the credential must name exactly this user.

        Raises
        ------
        MLSDecodeError
            Wrong credential, lifetime other than ``[0, 2**64-1]``, a signature key
            that is no P-256 point, or a bad leaf node / key package signature.
        """
        if user_id is not None and self.user_id != user_id:
            raise MLSDecodeError(f"key package credential names user {self.user_id}, the sender is {user_id}")
        if self.leaf_node.lifetime != _LIFETIME_MAX:
            raise MLSDecodeError(f"key package lifetime must be [0, 2**64-1], got {self.leaf_node.lifetime}")
        if len(self.leaf_node.signature_key) != _P256_POINT_LEN:
            raise MLSDecodeError("leaf signature key is not an uncompressed P-256 point")
        _verify_with_label(self.leaf_node.signature_key, "LeafNodeTBS", self.leaf_node.tbs, self.leaf_node.signature)
        _verify_with_label(self.leaf_node.signature_key, "KeyPackageTBS", self.tbs, self.signature)


@dataclass(frozen=True)
class Proposal:
    """An Add or Remove proposal (the only types DAVE allows)."""

    proposal_type: int
    key_package: KeyPackage | None = None
    removed: int | None = None


def _parse_proposal(r: _Reader) -> Proposal:
    ptype = r.u16("proposal_type")
    if ptype == PROPOSAL_ADD:
        return Proposal(ptype, key_package=KeyPackage._read(r))
    if ptype == PROPOSAL_REMOVE:
        return Proposal(ptype, removed=r.u32("removed leaf index"))
    raise MLSDecodeError(f"unsupported proposal type {ptype} (DAVE allows add and remove)")


@dataclass(frozen=True)
class ProposalOrRef:
    """One entry of a commit's proposal list: an inline proposal or a reference."""

    proposal: Proposal | None = None
    reference: bytes | None = None


@dataclass(frozen=True)
class Commit:
    """An MLS ``Commit`` body."""

    proposals: tuple[ProposalOrRef, ...]
    #: The committer's new leaf node when the commit carries an UpdatePath.
    path_leaf_node: LeafNode | None


def _parse_commit(r: _Reader) -> Commit:
    proposals_blob = r.vl("commit proposals")
    pr = _Reader(proposals_blob)
    items = []
    while pr.remaining:
        kind = pr.u8("ProposalOrRef type")
        if kind == _PROPOSAL_OR_REF_PROPOSAL:
            items.append(ProposalOrRef(proposal=_parse_proposal(pr)))
        elif kind == _PROPOSAL_OR_REF_REFERENCE:
            items.append(ProposalOrRef(reference=pr.vl("proposal reference")))
        else:
            raise MLSDecodeError(f"invalid ProposalOrRef type {kind}")
    leaf = None
    if r.optional("commit path"):
        leaf = _parse_leaf_node(r)
        r.vl("update path nodes")
    return Commit(tuple(items), leaf)


@dataclass(frozen=True)
class PublicMessage:
    """A parsed MLS ``MLSMessage`` with wire format ``public_message``."""

    group_id: bytes
    epoch: int
    sender_type: int
    #: Leaf index (member sender) or external sender index; ``None`` for new-member senders.
    sender_index: int | None
    authenticated_data: bytes
    content_type: int
    proposal: Proposal | None
    commit: Commit | None
    signature: bytes
    confirmation_tag: bytes | None
    membership_tag: bytes | None
    #: The exact bytes of the whole MLSMessage.
    raw: bytes = field(repr=False)
    #: ``AuthenticatedContent`` (wire_format + content + auth): what RefHash covers.
    authenticated_content: bytes = field(repr=False)


def parse_public_message(data: bytes, offset: int = 0) -> tuple[PublicMessage, int]:
    """Parse one MLS ``PublicMessage`` at ``data[offset:]``.

    Only proposal and commit content is supported (application data is never public
    in DAVE).

    Returns
    -------
    tuple[PublicMessage, int]
        The message and the offset just after it (MLS messages carry no outer length:
        this is how concatenated messages are split).

    Raises
    ------
    MLSDecodeError
        Malformed, or not a public proposal/commit of MLS 1.0.
    """
    data = bytes(data)
    r = _Reader(data, offset)
    version = r.u16("MLSMessage version")
    if version != MLS_VERSION_10:
        raise MLSDecodeError(f"not an MLS 1.0 message (version {version})")
    wire_format = r.u16("wire_format")
    if wire_format != WIRE_FORMAT_PUBLIC_MESSAGE:
        raise MLSDecodeError(f"expected a public message, got wire format {wire_format}")
    group_id = r.vl("group_id")
    epoch = r.u64("epoch")
    sender_type = r.u8("sender_type")
    if sender_type in (SENDER_MEMBER, SENDER_EXTERNAL):
        sender_index: int | None = r.u32("sender index")
    elif sender_type in (SENDER_NEW_MEMBER_PROPOSAL, SENDER_NEW_MEMBER_COMMIT):
        sender_index = None
    else:
        raise MLSDecodeError(f"invalid sender type {sender_type}")
    authenticated_data = r.vl("authenticated_data")
    content_type = r.u8("content_type")
    proposal = commit = None
    if content_type == CONTENT_TYPE_PROPOSAL:
        proposal = _parse_proposal(r)
    elif content_type == CONTENT_TYPE_COMMIT:
        commit = _parse_commit(r)
    else:
        raise MLSDecodeError(f"unsupported public content type {content_type}")
    signature = r.vl("signature")
    confirmation_tag = r.vl("confirmation_tag") if content_type == CONTENT_TYPE_COMMIT else None
    auth_end = r.pos
    membership_tag = r.vl("membership_tag") if sender_type == SENDER_MEMBER else None
    message = PublicMessage(
        group_id=group_id,
        epoch=epoch,
        sender_type=sender_type,
        sender_index=sender_index,
        authenticated_data=authenticated_data,
        content_type=content_type,
        proposal=proposal,
        commit=commit,
        signature=signature,
        confirmation_tag=confirmation_tag,
        membership_tag=membership_tag,
        raw=data[offset : r.pos],
        authenticated_content=data[offset + 2 : auth_end],
    )
    return message, r.pos


@dataclass(frozen=True)
class EncryptedGroupSecrets:
    """One recipient's entry of a Welcome."""

    new_member: bytes
    #: The encoding of the whole entry (KeyPackageRef<V> + HPKECiphertext).
    raw: bytes = field(repr=False)


@dataclass(frozen=True)
class Welcome:
    """A parsed MLS ``Welcome`` (bare, or inside an MLSMessage with wire format 3)."""

    cipher_suite: int
    secrets: tuple[EncryptedGroupSecrets, ...]
    encrypted_group_info: bytes
    #: Whether the input was wrapped in an MLSMessage header (``>HH 1, 3``).
    wrapped: bool
    raw: bytes = field(repr=False)

    @classmethod
    def parse(cls, data: bytes) -> Welcome:
        """Parse a complete Welcome.

        Raises
        ------
        MLSDecodeError
            Malformed, trailing bytes or a ciphersuite other than 2.
        """
        data = bytes(data)
        r = _Reader(data)
        wrapped = False
        # A bare Welcome starts with the cipher suite (0x0002); an MLSMessage with
        # version 0x0001. The two cannot be confused for DAVE's only suite.
        if len(data) >= 2 and data[:2] == struct.pack(">H", MLS_VERSION_10):
            r.u16()
            wire_format = r.u16("wire_format")
            if wire_format != WIRE_FORMAT_WELCOME:
                raise MLSDecodeError(f"expected a welcome, got wire format {wire_format}")
            wrapped = True
        suite = r.u16("welcome cipher_suite")
        if suite != CIPHERSUITE_DHKEMP256_AES128GCM_SHA256_P256:
            raise MLSDecodeError(f"welcome uses ciphersuite {suite}, DAVE v1 needs 2")
        secrets_blob = r.vl("welcome secrets")
        sr = _Reader(secrets_blob)
        secrets = []
        while sr.remaining:
            start = sr.pos
            new_member = sr.vl("welcome new_member")
            sr.vl("hpke kem_output")
            sr.vl("hpke ciphertext")
            secrets.append(EncryptedGroupSecrets(new_member, secrets_blob[start : sr.pos]))
        info = r.vl("encrypted_group_info")
        if r.remaining:
            raise MLSDecodeError(f"{r.remaining} trailing bytes after the welcome")
        return cls(suite, tuple(secrets), info, wrapped, data)

    def recipients(self) -> tuple[bytes, ...]:
        """The ``KeyPackageRef`` of every member this welcome is for."""
        return tuple(s.new_member for s in self.secrets)

    def for_recipient(self, key_package_reference: bytes) -> bytes:
        """A copy of this welcome that keeps only one recipient's group secrets.

        The voice gateway sends each joiner only its own entry (DAVE whitepaper, op 30).
        The encrypted group info is shared and unchanged, so the result is a valid
        Welcome for that recipient. The wrapping (bare or MLSMessage) is preserved.

        Raises
        ------
        ValueError
            If the welcome has no entry for that key package.
        """
        for entry in self.secrets:
            if entry.new_member == key_package_reference:
                body = (
                    struct.pack(">H", self.cipher_suite) + encode_vl(entry.raw) + encode_vl(self.encrypted_group_info)
                )
                if self.wrapped:
                    body = struct.pack(">HH", MLS_VERSION_10, WIRE_FORMAT_WELCOME) + body
                return body
        raise ValueError("the welcome has no group secrets for that key package")


def split_commit_welcome(payload: bytes) -> tuple[bytes, bytes | None]:
    """Split an op 28 payload into the commit and the optional welcome.

    discord.py sends ``commit + welcome`` with no separator; the commit's own length is
    found by parsing it.

    Returns
    -------
    tuple[bytes, bytes | None]
        ``(commit_message, welcome_or_None)``.

    Raises
    ------
    MLSDecodeError
        If the commit does not parse, or the rest is not a Welcome.
    """
    message, end = parse_public_message(payload)
    if message.content_type != CONTENT_TYPE_COMMIT:
        raise MLSDecodeError("op 28 does not start with a commit")
    rest = bytes(payload[end:])
    if not rest:
        return message.raw, None
    Welcome.parse(rest)
    return message.raw, rest


def proposal_ref(message: bytes) -> bytes:
    """``ProposalRef`` of a proposal ``PublicMessage`` (RefHash over AuthenticatedContent).

    Commits reference proposals by these 32 bytes; revocations (op 27, type 1) name them.
    """
    parsed, end = parse_public_message(message)
    if end != len(message):
        raise MLSDecodeError("trailing bytes after the proposal message")
    if parsed.content_type != CONTENT_TYPE_PROPOSAL:
        raise MLSDecodeError("not a proposal message")
    return _ref_hash(b"MLS 1.0 Proposal Reference", parsed.authenticated_content)


def key_package_ref(key_package: bytes) -> bytes:
    """``KeyPackageRef`` of a bare KeyPackage encoding (RefHash, SHA-256)."""
    return _ref_hash(b"MLS 1.0 KeyPackage Reference", bytes(key_package))


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
    r = _Reader(bytes(payload))
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
        br = _Reader(body)
        while br.remaining:
            items.append(br.vl("proposal ref"))
    return optype, tuple(items)
