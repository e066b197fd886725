"""What the jitter buffer (:class:`.JitterBuffer`, in :mod:`.reorder`) gives back.

:class:`PushResult` says what :meth:`.JitterBuffer.push` did with a packet, :class:`Released`
is one packet coming out of :meth:`.JitterBuffer.pop_ready` (or ``flush``/``reset``), and
:class:`JitterStats` is a snapshot of the buffer's counters. All three are re-exported by
:mod:`.reorder`, which is where callers import them from.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ("JitterStats", "PushResult", "Released")


class PushResult(enum.Enum):
    """What :meth:`.JitterBuffer.push` did with a packet."""

    #: Held; it will come out of :meth:`.JitterBuffer.pop_ready` in order.
    ACCEPTED = "accepted"
    #: Held, and it starts a new stream: the sequence number jumped beyond the windows (or
    #: moved against its timestamp), so the sender restarted. Nothing was declared lost.
    RESTART = "restart"
    #: Held, but the buffer was full, so the oldest held packet was dropped (counted in
    #: :attr:`JitterStats.overflow`).
    OVERFLOW = "overflow"
    #: Dropped: this sequence number is already held or was already released.
    DUPLICATE = "duplicate"
    #: Dropped: its place in the stream was already released (declared lost).
    LATE = "late"

    @property
    def accepted(self) -> bool:
        """Whether the packet is held (it will be released or counted later)."""
        return self is PushResult.ACCEPTED or self is PushResult.RESTART or self is PushResult.OVERFLOW

    @property
    def duplicate(self) -> bool:
        """Whether the packet was dropped as a duplicate."""
        return self is PushResult.DUPLICATE

    @property
    def late(self) -> bool:
        """Whether the packet was dropped as late."""
        return self is PushResult.LATE


class Released(NamedTuple):
    """One packet coming out of the jitter buffer, in sequence order.

    Attributes
    ----------
    sequence: :class:`int`
        RTP sequence number (16 bit).
    timestamp: :class:`int`
        RTP timestamp (32 bit).
    payload: Any
        Whatever was pushed (the buffer never looks at it).
    arrival: :class:`float`
        The ``now`` given to :meth:`.JitterBuffer.push` for this packet: when it arrived,
        not when it was released. Timeline placement wants this one.
    lost_before: :class:`int`
        How many sequence numbers right before this packet will never be released (they
        did not arrive in time, or were dropped on overflow). The decoder conceals that
        many frames before decoding this packet: the last one with this packet's in-band
        FEC, the others with PLC. Always 0 when :attr:`new_stream` is set.
    new_stream: :class:`bool`
        The first packet of a stream: the very first one, the first after
        :meth:`.JitterBuffer.reset`, or the first after a detected sender restart. There is
        nothing before it to conceal; a decoder may reset, and a timeline should place it
        by arrival time.
    """

    sequence: int
    timestamp: int
    payload: Any
    arrival: float
    lost_before: int = 0
    new_stream: bool = False


@dataclass(frozen=True, slots=True)
class JitterStats:
    """A snapshot of a :class:`.JitterBuffer`'s counters.

    Every pushed packet is in exactly one of ``released``, ``duplicates``, ``late``,
    ``overflow`` or still held: ``received == released + duplicates + late + overflow +
    held`` at all times (``held == 0`` after :meth:`.JitterBuffer.flush`).

    Attributes
    ----------
    received: :class:`int`
        Packets pushed.
    released: :class:`int`
        Packets released.
    duplicates: :class:`int`
        Packets dropped because their sequence number was held or released already.
    late: :class:`int`
        Packets dropped because their place had already been declared lost.
    lost: :class:`int`
        Sequence numbers declared missing inside streams: the sum of every released
        :attr:`Released.lost_before` (includes packets dropped on overflow).
    overflow: :class:`int`
        Held packets dropped because the buffer was full.
    restarts: :class:`int`
        Sender restarts detected (see :class:`.JitterBuffer`).
    held: :class:`int`
        Packets held right now.
    """

    received: int
    released: int
    duplicates: int
    late: int
    lost: int
    overflow: int
    restarts: int
    held: int
