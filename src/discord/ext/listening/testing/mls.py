"""MLS (RFC 9420) as much as the DAVE voice server inspects: what members send it.

A Discord voice gateway never holds MLS group secrets: it only *frames* messages
(external Add/Remove proposals it signs itself, :mod:`.external_sender`) and *inspects*
public messages the members send (commits, welcomes, key packages). This module is the
inspecting part, for DAVE protocol version 1 (MLS 1.0, ciphersuite 2 =
DHKEMP256_AES128GCM_SHA256_P256, basic credentials, ECDSA P-256/SHA-256 signatures):

- Parsers for what members send: :class:`KeyPackage` (op 26),
  :class:`PublicMessage` (the commit in op 28), :class:`Welcome` (the welcome in
  op 28 / op 30) and :func:`split_commit_welcome`.
- :func:`proposal_ref` / :func:`key_package_ref`: MLS ``RefHash`` references, so the
  server can check which proposals a commit covers and which joiner a welcome is for.
- The RFC 9420 code points DAVE uses, and DAVE's group id and credential identity.

The TLS encoding underneath (varints, vectors, signatures, hashes) is :mod:`.mls_wire`.
Everything here works on ``bytes`` and raises :class:`.mls_wire.MLSDecodeError` (a
:class:`ValueError`) on malformed input: the caller is a coordinator that must never
crash on garbage a client sends.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .mls_wire import MLSDecodeError, Reader, check_u64, encode_vl, ref_hash, verify_with_label

__all__ = (
    "CIPHERSUITE_DHKEMP256_AES128GCM_SHA256_P256",
    "CONTENT_TYPE_COMMIT",
    "CONTENT_TYPE_PROPOSAL",
    "CREDENTIAL_BASIC",
    "MLS_VERSION_10",
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
    "KeyPackage",
    "LeafNode",
    "Proposal",
    "ProposalOrRef",
    "PublicMessage",
    "Welcome",
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

#: Key package lifetime the voice gateway requires (DAVE whitepaper, "Validation").
_LIFETIME_MAX = (0, 2**64 - 1)

_P256_POINT_LEN = 65  # uncompressed SEC1 point: 0x04 || X || Y


# --- helpers ------------------------------------------------------------------------------


def group_id_for_channel(channel_id: int) -> bytes:
    """DAVE's MLS group id: the channel id as 8 big-endian bytes."""
    check_u64(channel_id, "channel_id")
    return struct.pack(">Q", channel_id)


def user_id_identity(user_id: int) -> bytes:
    """DAVE's basic-credential identity: the user id as 8 big-endian bytes."""
    check_u64(user_id, "user_id")
    return struct.pack(">Q", user_id)


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
            return int.from_bytes(self.identity)
        return None


def _parse_credential(r: Reader) -> Credential:
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


def _parse_leaf_node(r: Reader) -> LeafNode:
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
        r = Reader(data)
        kp = cls._read(r)
        if r.remaining:
            raise MLSDecodeError(f"{r.remaining} trailing bytes after the key package")
        return kp

    @classmethod
    def _read(cls, r: Reader) -> KeyPackage:
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
        verify_with_label(self.leaf_node.signature_key, "LeafNodeTBS", self.leaf_node.tbs, self.leaf_node.signature)
        verify_with_label(self.leaf_node.signature_key, "KeyPackageTBS", self.tbs, self.signature)


@dataclass(frozen=True)
class Proposal:
    """An Add or Remove proposal (the only types DAVE allows)."""

    proposal_type: int
    key_package: KeyPackage | None = None
    removed: int | None = None


def _parse_proposal(r: Reader) -> Proposal:
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


def _parse_commit(r: Reader) -> Commit:
    proposals_blob = r.vl("commit proposals")
    pr = Reader(proposals_blob)
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
    r = Reader(data, offset)
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
        r = Reader(data)
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
        sr = Reader(secrets_blob)
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
    return ref_hash(b"MLS 1.0 Proposal Reference", parsed.authenticated_content)


def key_package_ref(key_package: bytes) -> bytes:
    """``KeyPackageRef`` of a bare KeyPackage encoding (RefHash, SHA-256)."""
    return ref_hash(b"MLS 1.0 KeyPackage Reference", bytes(key_package))
