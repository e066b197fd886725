"""Wrap-safe RTP arithmetic, sans-I/O: 16-bit sequence numbers and 32-bit timestamps.

The one place the project does modular RTP arithmetic. Sequence numbers wrap every ~22
minutes at 50 packets a second, timestamps every ~24.9 hours at 48 kHz from a random start:
everything that compares, subtracts or advances them calls these functions instead of
writing its own masks. A hot loop that inlines one of them says so next to the inlined
expression (``# seq_diff, inlined``) so a reader can find every copy by that label.
"""

from __future__ import annotations

from typing import Final

__all__ = (
    "SEQ_HALF",
    "SEQ_MASK",
    "SEQ_MOD",
    "TS_HALF",
    "TS_MASK",
    "TS_MOD",
    "seq_add",
    "seq_diff",
    "ts_add",
    "ts_diff",
)

#: Sequence numbers are 16 bits (RFC 3550); they wrap every ~22 minutes at 50 packets/s.
SEQ_MOD: Final = 1 << 16
#: Masks and half ranges, for a hot loop that inlines one of the functions below (labelled).
SEQ_MASK: Final = SEQ_MOD - 1
SEQ_HALF: Final = SEQ_MOD >> 1
#: RTP timestamps are 32 bits; at 48 kHz they wrap every ~24.9 hours (from a random start).
TS_MOD: Final = 1 << 32
TS_MASK: Final = TS_MOD - 1
TS_HALF: Final = TS_MOD >> 1


def seq_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` between two 16-bit sequence numbers.

    Parameters
    ----------
    a, b: :class:`int`
        Sequence numbers (any int; only the low 16 bits count).

    Returns
    -------
    :class:`int`
        The ``d`` in ``[-32768, 32767]`` with ``b + d == a`` modulo 2**16: positive when
        ``a`` comes after ``b``.
    """
    return ((a - b + SEQ_HALF) & SEQ_MASK) - SEQ_HALF


def seq_add(seq: int, n: int) -> int:
    """``seq + n`` wrapped to 16 bits (``n`` may be negative)."""
    return (seq + n) & SEQ_MASK


def ts_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` between two 32-bit RTP timestamps.

    Returns
    -------
    :class:`int`
        The ``d`` in ``[-2**31, 2**31 - 1]`` with ``b + d == a`` modulo 2**32 (at 48 kHz:
        up to ~12.4 hours either way).
    """
    return ((a - b + TS_HALF) & TS_MASK) - TS_HALF


def ts_add(ts: int, n: int) -> int:
    """``ts + n`` wrapped to 32 bits (``n`` may be negative)."""
    return (ts + n) & TS_MASK
