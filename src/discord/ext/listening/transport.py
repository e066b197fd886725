"""Transport encryption of voice packets (the ``*_rtpsize`` AEAD modes), sans-I/O.

Discord's two current modes share one layout (docs/architecture.md, "Protocol facts"):

* RTP: ``AAD = fixed header + CSRCs + 4-byte extension preamble``, then the ciphertext of
  ``extension body + payload (+ padding)`` with the 16-byte tag at its end, then a 4-byte
  big-endian counter that, zero-padded, is the nonce.
* RTCP: ``AAD = the first 8 bytes``, then ciphertext + tag, then the 4-byte nonce counter.

Every ``xsalsa20_poly1305*`` mode was discontinued by Discord in 2024 and is not supported.
"""

from __future__ import annotations

import struct
from typing import Final

import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = (
    "AES_GCM",
    "SUPPORTED_MODES",
    "XCHACHA20",
    "AESGCMCipher",
    "DecryptionFailed",
    "TransportCipher",
    "XChaCha20Cipher",
    "transport_cipher",
)

AES_GCM: Final = "aead_aes256_gcm_rtpsize"
XCHACHA20: Final = "aead_xchacha20_poly1305_rtpsize"
#: Modes in our order of preference (Discord prefers AES-GCM; it is ~8x cheaper to decrypt).
SUPPORTED_MODES: Final = (AES_GCM, XCHACHA20)

_TAG: Final = 16
_NONCE_SUFFIX: Final = 4
_RTCP_AAD: Final = 8
_COUNTER = struct.Struct(">I")


class DecryptionFailed(ValueError):
    """A packet failed authentication or is too short to hold a tag and nonce."""


class TransportCipher:
    """Encrypts and decrypts voice packets for one connection's secret key.

    Parameters
    ----------
    secret_key: :class:`bytes`
        The 32-byte key from SESSION_DESCRIPTION (``bytes(data['secret_key'])``).
    """

    mode: str = ""
    nonce_length: int = 0

    def __init__(self, secret_key: bytes | bytearray | list[int]) -> None:
        key = bytes(secret_key)
        if len(key) != 32:
            raise ValueError(f"a transport secret key is 32 bytes, got {len(key)}")
        self._key = key
        self._nonce_pad = bytes(self.nonce_length - _NONCE_SUFFIX)

    def __repr__(self) -> str:  # never show the key
        return f"<{type(self).__name__} mode={self.mode}>"

    # The primitive pair each mode implements.
    def _seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        raise NotImplementedError

    def _open(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        raise NotImplementedError

    def _nonce(self, suffix: bytes) -> bytes:
        return suffix + self._nonce_pad

    def encrypt(self, aad: bytes, plaintext: bytes, counter: int) -> bytes:
        """Return ``aad + ciphertext+tag + counter`` for one packet.

        ``aad`` is the clear header (RTP: :func:`.rtp.build_rtp_header`; RTCP: 8 bytes).
        ``counter`` is the 32-bit per-packet nonce counter; never reuse one with a key.
        """
        suffix = _COUNTER.pack(counter & 0xFFFFFFFF)
        return aad + self._seal(self._nonce(suffix), plaintext, aad) + suffix

    def decrypt(self, packet: bytes, aad_length: int) -> bytes:
        """Authenticate and decrypt one packet whose first ``aad_length`` bytes are clear.

        Raises
        ------
        DecryptionFailed
            The packet is too short or its tag does not verify (forged, corrupt, or sealed
            with another key).
        """
        if len(packet) < aad_length + _TAG + _NONCE_SUFFIX:
            raise DecryptionFailed(f"{len(packet)}-byte packet cannot hold a {aad_length}-byte header, tag and nonce")
        # (the nonce built inline: this runs once per received packet)
        return self._open(
            packet[-_NONCE_SUFFIX:] + self._nonce_pad, packet[aad_length:-_NONCE_SUFFIX], packet[:aad_length]
        )

    def decrypt_rtcp(self, packet: bytes) -> bytes:
        """Decrypt an RTCP packet; returns the clear compound packet (header included)."""
        return packet[:_RTCP_AAD] + self.decrypt(packet, _RTCP_AAD)


class AESGCMCipher(TransportCipher):
    """``aead_aes256_gcm_rtpsize``: AES-256-GCM with a 12-byte nonce."""

    mode = AES_GCM
    nonce_length = 12

    def __init__(self, secret_key: bytes | bytearray | list[int]) -> None:
        super().__init__(secret_key)
        self._aead = AESGCM(self._key)

    def _seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, plaintext, aad)

    def _open(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise DecryptionFailed("AES-GCM tag did not verify") from None


class XChaCha20Cipher(TransportCipher):
    """``aead_xchacha20_poly1305_rtpsize``: XChaCha20-Poly1305 with a 24-byte nonce."""

    mode = XCHACHA20
    nonce_length = 24

    def _seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, self._key)

    def _open(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, aad, nonce, self._key)
        except nacl.exceptions.CryptoError:
            raise DecryptionFailed("XChaCha20-Poly1305 tag did not verify") from None


_CIPHERS: Final[dict[str, type[TransportCipher]]] = {AES_GCM: AESGCMCipher, XCHACHA20: XChaCha20Cipher}


def transport_cipher(mode: str, secret_key: bytes | bytearray | list[int]) -> TransportCipher:
    """Return the cipher for an encryption mode name as Discord spells it.

    Raises
    ------
    ValueError
        The mode is not one of :data:`SUPPORTED_MODES`.
    """
    try:
        cls = _CIPHERS[mode]
    except KeyError:
        raise ValueError(
            f"unsupported voice encryption mode {mode!r}; supported: {', '.join(SUPPORTED_MODES)}"
        ) from None
    return cls(secret_key)
