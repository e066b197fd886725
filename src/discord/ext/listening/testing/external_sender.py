"""The voice gateway's MLS identity: the external sender of every DAVE group.

Discord's voice gateway is no member of a call's MLS group, yet it decides who joins and
leaves: members accept the Add and Remove proposals it signs because op 25 named it the
group's external sender. :class:`ExternalSender` holds that signing key, builds the op 25
package and signs the proposals (MLS ``PublicMessage`` with ``sender = external 0``).
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .mls import (
    CONTENT_TYPE_PROPOSAL,
    CREDENTIAL_BASIC,
    MLS_VERSION_10,
    PROPOSAL_ADD,
    PROPOSAL_REMOVE,
    SENDER_EXTERNAL,
    WIRE_FORMAT_PUBLIC_MESSAGE,
    KeyPackage,
)
from .mls_wire import check_u64, encode_vl, sign_content

__all__ = ("ExternalSender",)


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
        return self._key.sign(sign_content(label, content), ec.ECDSA(hashes.SHA256()))

    def _proposal_message(self, group_id: bytes, epoch: int, proposal: bytes) -> bytes:
        if not isinstance(group_id, (bytes, bytearray)) or not group_id:
            raise ValueError("group_id must be non-empty bytes")
        check_u64(epoch, "epoch")
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
