"""Opus decoding per SSRC, with the frames that stand in for lost packets (sans-I/O).

:class:`DecoderSet` is the one place that turns a sender's ordered Opus packets into PCM:
the decode workers of :mod:`discord.ext.listening.pool` run one per listening stream, and
the sinks that receive ``FrameKind.opus`` frames (``listen(decode=False)``) use one to
decode them. It keeps one stateful :class:`~discord.ext.listening.opus.OpusDecoder` per SSRC
(Opus predicts each frame from the previous ones, so packets of one SSRC must meet the same
decoder, in order) and fills gaps:

- the frame right before a received packet ``P`` is recovered from ``P``'s in-band FEC when
  :func:`~discord.ext.listening.opus.packet_has_fec` says it has some (``KIND_FEC``; not
  counted against the limit: it is the sender's own low-bitrate copy, not a guess);
- the other lost frames, oldest first, are synthesized by packet loss concealment
  (``KIND_PLC``) while fewer than ``conceal_limit`` consecutive frames have been concealed,
  then reported as silence (``KIND_SILENCE``, empty audio).

Frames come out as plain tuples ``(ssrc, sequence, timestamp, audio, kind, extra)`` with a
small int ``kind`` (see :data:`FRAME_KINDS`): they cross a process boundary, where plain
tuples and ints pickle several times faster than named tuples and enum members.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from .frames import FrameKind
from .opus import FRAME_SAMPLES, OpusDecoder, OpusError, packet_has_fec
from .seqmath import SEQ_MASK, TS_MASK, seq_add, ts_add

__all__ = (
    "DEFAULT_CONCEAL_LIMIT",
    "FRAME_KINDS",
    "KIND_DECODED",
    "KIND_FEC",
    "KIND_PLC",
    "KIND_SILENCE",
    "MAX_GAP",
    "MAX_SSRCS",
    "DecodeCounts",
    "DecoderSet",
    "lost_before_first",
)

KIND_DECODED: Final = 0
KIND_FEC: Final = 1
KIND_PLC: Final = 2
KIND_SILENCE: Final = 3
#: The :class:`~discord.ext.listening.frames.FrameKind` of each frame kind code.
FRAME_KINDS: Final = (FrameKind.decoded, FrameKind.fec, FrameKind.plc, FrameKind.silence)

#: Default number of consecutive lost frames concealed by PLC (5 x 20 ms = 100 ms); past it
#: libopus' extrapolation has faded out anyway, so silence is reported instead.
DEFAULT_CONCEAL_LIMIT: Final = 5
#: A gap longer than this (~11 minutes) is not a gap but a restarted stream: it is cut down
#: so one bad ``lost_before`` cannot make a decoder emit millions of frames.
MAX_GAP: Final = 32767
#: Decoders a :class:`DecoderSet` keeps by default; the least recently used goes first.
MAX_SSRCS: Final = 256

# Discord sends 20 ms frames; a lost frame is assumed to be one too.
_TS_STEP: Final = FRAME_SAMPLES


@dataclass(slots=True)
class DecodeCounts:
    """What a :class:`DecoderSet` produced, by frame kind, and what it could not decode.

    Attributes
    ----------
    decoded: :class:`int`
        Frames decoded from their own packet.
    fec: :class:`int`
        Lost frames recovered from the next packet's in-band FEC.
    plc: :class:`int`
        Lost frames synthesized by packet loss concealment.
    silence: :class:`int`
        Lost frames past the concealment limit, reported as silence.
    errors: :class:`int`
        Packets libopus refused (each still produced a concealed frame in
        :meth:`DecoderSet.decode_items`) and items that could not be unpacked.
    """

    decoded: int = 0
    fec: int = 0
    plc: int = 0
    silence: int = 0
    errors: int = 0

    def take(self) -> tuple[int, int, int, int, int]:
        """Return the counters as a plain tuple in field order and zero them.

        Returns
        -------
        Tuple[:class:`int`, :class:`int`, :class:`int`, :class:`int`, :class:`int`]
            ``(decoded, fec, plc, silence, errors)`` since the last call.
        """
        # Not dataclasses.astuple: it deep-copies, ~10x slower, and the worker calls this per reply.
        out = (self.decoded, self.fec, self.plc, self.silence, self.errors)
        self.decoded = self.fec = self.plc = self.silence = self.errors = 0
        return out


class _Ssrc:
    __slots__ = ("decoder", "plc_run", "used")

    def __init__(self, used: int) -> None:
        self.decoder = OpusDecoder()
        # Consecutive frames concealed by PLC since the last real audio; bounded by the limit.
        self.plc_run = 0
        self.used = used


class DecoderSet:
    """One Opus decoder per SSRC, and the frames that stand in for lost packets.

    Parameters
    ----------
    conceal_limit: :class:`int`
        Consecutive lost frames synthesized by PLC before silence is reported (0: no PLC;
        FEC still applies).
    max_ssrcs: :class:`int`
        Decoders kept at once; beyond it the least recently used is dropped.

    Attributes
    ----------
    conceal_limit: :class:`int`
        As given.
    counts: :class:`DecodeCounts`
        Frames produced and errors met so far (see :meth:`DecodeCounts.take`).
    """

    __slots__ = ("_max_ssrcs", "_states", "_tick", "conceal_limit", "counts")

    def __init__(self, conceal_limit: int = DEFAULT_CONCEAL_LIMIT, max_ssrcs: int = MAX_SSRCS) -> None:
        self.conceal_limit = conceal_limit
        self.counts = DecodeCounts()
        self._states: dict[int, _Ssrc] = {}
        self._tick = 0
        self._max_ssrcs = max_ssrcs

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, ssrc: object) -> bool:
        return ssrc in self._states

    def reset(self, ssrc: int | None = None) -> None:
        """Forget the decoder of ``ssrc`` (every SSRC when ``None``).

        The next packet of that SSRC then decodes on a fresh decoder, as it must after the
        sender restarted its encoder: an old decoder would predict from unrelated audio.

        Parameters
        ----------
        ssrc: Optional[:class:`int`]
            The SSRC to forget, or ``None`` for all.
        """
        if ssrc is None:
            self._states.clear()
        else:
            self._states.pop(ssrc, None)

    def _state(self, ssrc: int) -> _Ssrc:
        states = self._states
        state = states.get(ssrc)
        if state is None:
            if len(states) >= self._max_ssrcs:
                # Bounded table: evict the least recently used decoder (O(n), only on overflow).
                del states[min(states, key=lambda k: states[k].used)]
            state = states[ssrc] = _Ssrc(self._tick)
        state.used = self._tick
        return state

    def decode(self, ssrc: int, payload: bytes) -> bytes | None:
        """Decode one packet of ``ssrc``, the next in its sequence; no gap handling.

        Parameters
        ----------
        ssrc: :class:`int`
            Picks the decoder.
        payload: :class:`bytes`
            The Opus packet.

        Returns
        -------
        Optional[:class:`bytes`]
            48 kHz stereo s16le PCM, or ``None`` if libopus refused the packet (counted in
            :attr:`DecodeCounts.errors`).
        """
        self._tick += 1
        state = self._state(ssrc)
        try:
            pcm = state.decoder.decode(bytes(payload))
        except OpusError:
            self.counts.errors += 1
            return None
        state.plc_run = 0
        self.counts.decoded += 1
        return pcm

    def decode_items(self, items: Iterable[Any], out: list[tuple[Any, ...]], refused: list[Any] | None = None) -> None:
        """Decode a batch of items in order, concealing the gaps they report.

        Parameters
        ----------
        items: Iterable[:class:`~discord.ext.listening.pool.DecodeItem`]
            ``(ssrc, sequence, timestamp, payload, lost_before, extra[, new_stream])``
            tuples, in sequence order per SSRC. ``new_stream`` true resets the SSRC's decoder
            before the item (its gap is then concealed on the fresh decoder). A ``None`` or
            empty payload is a position known to be lost: it is concealed like a gap.
        out: :class:`list`
            Receives ``(ssrc, sequence, timestamp, audio, kind, extra)`` tuples: for each item
            one per frame lost before it (``sequence - k``, ``timestamp - 960 * k``, wrapped)
            and then its own, concealed if libopus refuses its payload.
        refused: Optional[:class:`list`]
            Receives each item whose payload libopus refused.
        """
        append = out.append
        states = self._states
        # LRU age advances per batch, not per item: cheaper, and precise enough to pick which
        # of 256 decoders to drop.
        self._tick += 1
        tick = self._tick
        counts = self.counts
        decoded = 0
        for item in items:
            try:
                try:
                    ssrc, seq, ts, payload, lost, extra, new = item
                except ValueError:
                    # A plain 6-tuple (no new_stream field): accepted, just not the fast path.
                    ssrc, seq, ts, payload, lost, extra = item
                    new = False
                state = states.get(ssrc)
                if state is None:
                    state = self._state(ssrc)
                state.used = tick
                if lost or new or type(payload) is not bytes or not payload:
                    # Gaps, restarts, lost positions, odd payload types: the rare path.
                    if new:
                        del states[ssrc]
                        state = self._state(ssrc)
                    payload = self._gap(state, ssrc, seq, ts, payload, lost, extra, append)
                    if payload is None:
                        continue
                try:
                    pcm = state.decoder.decode(payload)
                except OpusError:
                    counts.errors += 1
                    if refused is not None:
                        refused.append(item)
                    self._conceal(state, ssrc, seq & SEQ_MASK, ts & TS_MASK, extra, append)  # seq_add(seq, 0), inlined
                    continue
                state.plc_run = 0
                append((ssrc, seq & SEQ_MASK, ts & TS_MASK, pcm, KIND_DECODED, extra))  # seq_add(seq, 0), inlined
                decoded += 1
            except Exception:  # a malformed item (wrong shape or types): count it, keep going
                counts.errors += 1
        counts.decoded += decoded

    def _gap(
        self,
        state: _Ssrc,
        ssrc: int,
        seq: int,
        ts: int,
        payload: Any,
        lost: int,
        extra: Any,
        append: Callable[[tuple[Any, ...]], None],
    ) -> bytes | None:
        """Emit the frames lost before an item; return its payload still to decode, or ``None``."""
        if payload is not None:
            if type(payload) is not bytes:
                payload = bytes(payload)  # bytearray / memoryview: libopus takes bytes
            if not payload:
                payload = None  # libopus would run PLC on an empty packet anyway; say so
        packet: bytes | None = payload
        lost = min(int(lost), MAX_GAP)
        if lost > 0:
            fec = packet if packet is not None and packet_has_fec(packet) else None
            for k in range(lost, 0, -1):
                q = seq_add(seq, -k)
                t = ts_add(ts, -_TS_STEP * k)
                if k == 1 and fec is not None:
                    try:
                        append((ssrc, q, t, state.decoder.decode_fec(fec), KIND_FEC, extra))
                        self.counts.fec += 1
                        continue
                    except OpusError:
                        self.counts.errors += 1  # corrupt next packet: fall back to PLC below
                self._conceal(state, ssrc, q, t, extra, append)
        if packet is None:
            self._conceal(state, ssrc, seq_add(seq, 0), ts_add(ts, 0), extra, append)
        return packet

    def _conceal(
        self, state: _Ssrc, ssrc: int, q: int, t: int, extra: Any, append: Callable[[tuple[Any, ...]], None]
    ) -> None:
        if state.plc_run < self.conceal_limit:
            try:
                pcm = state.decoder.conceal()
            except OpusError:  # never seen in practice; silence keeps the frame count honest
                self.counts.errors += 1
            else:
                state.plc_run += 1
                append((ssrc, q, t, pcm, KIND_PLC, extra))
                self.counts.plc += 1
                return
        append((ssrc, q, t, b"", KIND_SILENCE, extra))
        self.counts.silence += 1


def lost_before_first(new_stream: bool, position: int, payload: bytes) -> tuple[int, ...]:
    """The timeline position of a frame lost right before an SSRC's first packet, if any.

    Nothing before the first packet says a packet is missing, except the packet itself: Opus
    puts low-bitrate redundancy (LBRR) of the previous frame only into a packet whose encoder
    did produce that frame. So a first packet carrying LBRR means its predecessor was sent and
    lost on the way (typically a member's first word on a lossy network), and the decoder can
    rebuild it from this packet's FEC data.
    """
    if new_stream and position >= FRAME_SAMPLES and packet_has_fec(payload):
        return (position - FRAME_SAMPLES,)
    return ()
