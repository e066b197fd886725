"""Recognising DAVE (end-to-end encrypted) frames inside a transport-decrypted payload, sans-I/O.

A DAVE frame ends with ``supplemental size (1 byte) | FA FA``; the supplemental section
(tag, nonce, unencrypted ranges, size, magic) is ``supplemental size`` bytes long. Opus
silence frames are sent in the clear even under DAVE.
"""

from __future__ import annotations

from typing import Final

from .opus import SILENCE_FRAME

__all__ = ("MAGIC", "is_dave_frame", "is_silence")

MAGIC: Final = b"\xfa\xfa"
_MIN_SUPPLEMENTAL: Final = 8 + 1 + 1 + 2  # truncated tag, 1-byte nonce, size byte, magic


def is_dave_frame(payload: bytes) -> bool:
    """Whether ``payload`` is shaped like a DAVE frame (magic marker and a sane size byte)."""
    n = len(payload)
    if n < _MIN_SUPPLEMENTAL or payload[-2:] != MAGIC:
        return False
    size = payload[-3]
    return _MIN_SUPPLEMENTAL <= size <= n


def is_silence(payload: bytes) -> bool:
    """Whether ``payload`` is the 3-byte Opus silence frame."""
    return payload == SILENCE_FRAME
