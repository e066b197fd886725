"""TLS presentation-language encoding and the MLS primitives it signs and hashes with.

The bytes-level layer under :mod:`.mls` (RFC 9420 section 2.1 and section 5): MLS
variable-length integers and vectors ("VL"), a cursor that reads TLS fields, labelled
ECDSA P-256 signatures and ``RefHash``. Everything raises :class:`MLSDecodeError` (a
:class:`ValueError`) on malformed input.
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = (
    "MLSDecodeError",
    "Reader",
    "check_u64",
    "decode_varint",
    "encode_varint",
    "encode_vl",
    "ref_hash",
    "sign_content",
    "verify_with_label",
)

_VARINT_MAX = 2**30 - 1


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


class Reader:
    """Cursor over a buffer that reads TLS presentation-language fields.

    Each read names ``what`` it reads, for the :class:`MLSDecodeError` a short buffer
    raises.

    Parameters
    ----------
    data : bytes
        The buffer.
    pos : int
        Where reading starts.
    """

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
        """One byte."""
        return self._take(1, what)[0]

    def u16(self, what: str = "uint16") -> int:
        """A big-endian 16-bit unsigned integer."""
        return int.from_bytes(self._take(2, what))

    def u32(self, what: str = "uint32") -> int:
        """A big-endian 32-bit unsigned integer."""
        return int.from_bytes(self._take(4, what))

    def u64(self, what: str = "uint64") -> int:
        """A big-endian 64-bit unsigned integer."""
        return int.from_bytes(self._take(8, what))

    def vl(self, what: str = "vector") -> bytes:
        """An MLS ``opaque x<V>``: a varint length, then that many bytes."""
        length, self.pos = decode_varint(self.data, self.pos)
        return self._take(length, what)

    def optional(self, what: str = "optional") -> bool:
        """An MLS ``optional<T>`` presence byte: whether a ``T`` follows."""
        flag = self.u8(what)
        if flag > 1:
            raise MLSDecodeError(f"invalid optional<> presence byte {flag} in {what}")
        return flag == 1

    @property
    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self.data) - self.pos


def check_u64(value: int, name: str) -> None:
    """Raise unless ``value`` fits an MLS ``uint64`` (``TypeError`` / ``ValueError`` naming ``name``)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value < 2**64:
        raise ValueError(f"{name} must fit in an unsigned 64-bit integer: {value}")


def sign_content(label: str, content: bytes) -> bytes:
    """The bytes MLS ``SignWithLabel`` signs: ``SignContent`` for ``label`` and ``content``."""
    # RFC 9420 5.1.2 SignWithLabel: struct { opaque label<V> = "MLS 1.0 " + Label;
    # opaque content<V>; } SignContent
    return encode_vl(b"MLS 1.0 " + label.encode()) + encode_vl(content)


def ref_hash(label: bytes, value: bytes) -> bytes:
    """MLS ``RefHash(label, value)`` of ciphersuite 2 (SHA-256)."""
    # RFC 9420 5.2: RefHash(label, value) = Hash(struct{label<V>; value<V>}); the hash of
    # ciphersuite 2 is SHA-256.
    return hashlib.sha256(encode_vl(label) + encode_vl(value)).digest()


def verify_with_label(signature_key: bytes, label: str, content: bytes, signature: bytes) -> None:
    """MLS ``VerifyWithLabel`` (ECDSA P-256/SHA-256); raises :class:`MLSDecodeError` when it fails."""
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), signature_key)
    except ValueError as exc:
        raise MLSDecodeError(f"signature key is not a P-256 point: {exc}") from None
    try:
        key.verify(signature, sign_content(label, content), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise MLSDecodeError(f"bad {label} signature") from None
