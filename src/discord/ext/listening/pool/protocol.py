"""What crosses the pipe between the pool and its decode workers, and the items and frames of its API.

One :func:`pickle.dumps` per ``Connection.send_bytes`` call, never one per packet. A pickle
of plain tuples costs ~0.2-0.4 us per packet each way, less than a hand-rolled
:mod:`struct` encoding in Python (~0.3-1 us, mostly to decode); see
``benchmarks/bench_pool.py``. The peer is our own parent or child, so unpickling is no
trust issue.

parent -> worker, a list of messages:
    ``(OP_DECODE, stream_id, conceal_limit, [DecodeItem tuple, ...])``,
    ``(OP_RESET, stream_id, ssrc or -1)``, ``(OP_CLOSE, stream_id)``, ``(OP_STOP,)``.
worker -> parent, one message:
    ``(REPLY_HELLO, pid)`` once at start;
    ``(REPLY_FRAMES, [(stream_id, items_consumed, frames, counts, refused), ...], bytes_read)``
    after each batch (at most ~64 frames per reply), where ``frames`` is a list of
    ``(ssrc, sequence, timestamp, audio, kind_code, extra)`` (see
    :mod:`discord.ext.listening.decoding`), ``counts`` the
    :class:`~discord.ext.listening.decoding.DecodeCounts` of those items as a plain tuple,
    ``refused`` the items whose payload libopus refused, and ``bytes_read`` the total size
    of the messages read so far (the parent uses it to know how full the pipe towards the
    worker is);
    ``(REPLY_ERROR, text)`` when a message could not be processed.
"""

from __future__ import annotations

import pickle
from typing import Any, Final, NamedTuple

from ..frames import FrameKind

__all__ = ("DecodeItem", "DecodedFrame")

OP_DECODE: Final = 1
OP_RESET: Final = 2
OP_CLOSE: Final = 3
OP_STOP: Final = 4

REPLY_HELLO: Final = 1
REPLY_FRAMES: Final = 2
REPLY_ERROR: Final = 3


class DecodeItem(NamedTuple):
    """One packet (or one known-lost position) for the decoder, in sequence order per SSRC.

    Plain tuples in this field order are accepted everywhere a ``DecodeItem`` is (the last
    field may be left out) and are what the pool sends over the pipe (a plain tuple pickles
    ~8x faster than a NamedTuple).

    Attributes
    ----------
    ssrc: :class:`int`
        The RTP SSRC; each SSRC of a stream has its own decoder.
    sequence: :class:`int`
        RTP sequence number (16 bit).
    timestamp: :class:`int`
        RTP timestamp (32 bit, 48 kHz).
    payload: Optional[:class:`bytes`]
        The Opus packet (transport- and DAVE-decrypted, extension and padding stripped).
        ``None`` marks a position known to be lost with no later packet yet (the jitter
        buffer gave up waiting): it is concealed with PLC, like the frames of a gap.
    lost_before: :class:`int`
        How many frames were lost immediately before this one (0 for no gap).
    extra: :class:`int`
        Opaque tag returned unchanged on this item's frames and on its gap frames
        (e.g. an arrival index the parent uses to find arrival time and audio level).
        A small int is cheapest; anything picklable works.
    new_stream: :class:`bool`
        The sender restarted its stream with this packet: the SSRC's decoder is reset
        before it, so it decodes as on a fresh decoder (its ``lost_before`` frames
        included). Defaults to ``False``.
    """

    ssrc: int
    sequence: int
    timestamp: int
    payload: bytes | None
    lost_before: int
    extra: int
    new_stream: bool = False


class DecodedFrame(NamedTuple):
    """One 20 ms frame out of the pool, in sequence order per SSRC.

    Attributes
    ----------
    ssrc: :class:`int`
        The SSRC of the item that produced it.
    sequence: :class:`int`
        RTP sequence number (16 bit); concealed frames carry the lost packet's number.
    timestamp: :class:`int`
        RTP timestamp (32 bit); concealed frames carry ``timestamp - 960 * k`` of the
        packet after the gap (Discord frames are 20 ms).
    audio: :class:`bytes`
        48 kHz stereo s16le PCM (3840 bytes for a 20 ms frame, all zero for ``silence``).
    kind: :class:`~discord.ext.listening.frames.FrameKind`
        ``decoded``, ``fec``, ``plc`` or ``silence``.
    extra: :class:`int`
        The ``extra`` of the :class:`DecodeItem` the frame came from (gap frames share
        the ``extra`` of the packet after the gap).
    """

    ssrc: int
    sequence: int
    timestamp: int
    audio: bytes
    kind: FrameKind
    extra: int


def normalized(batch: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The slow path for batches pickle refuses (memoryview payloads, numpy ints...): coerce
    each field to what the worker expects, or say which item is wrong.

    Raises
    ------
    TypeError
        An item is not a :class:`DecodeItem` in shape or types.
    """
    out = []
    for item in batch:
        try:
            ssrc, seq, ts, payload, lost, extra, *rest = item
            if len(rest) > 1:
                raise ValueError("too many fields")
            new = bool(rest[0]) if rest else False
            out.append(
                (int(ssrc), int(seq), int(ts), None if payload is None else bytes(payload), int(lost), extra, new)
            )
            pickle.dumps(extra, 5)
        except Exception as exc:
            raise TypeError(
                "a DecodeItem must be (ssrc: int, sequence: int, timestamp: int, payload: bytes | None, "
                f"lost_before: int, extra: picklable[, new_stream: bool]), got {item!r:.200}"
            ) from exc
    return out
