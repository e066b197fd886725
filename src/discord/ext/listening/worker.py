"""The decode worker: what runs inside each :class:`~discord.ext.listening.pool.AudioProcessPool` process.

The parent (:mod:`discord.ext.listening.pool`) sends batches of Opus packets, already
ordered per SSRC by the jitter buffer; this module decodes them in that order with one
stateful :class:`~discord.ext.listening.opus.OpusDecoder` per (stream, SSRC), conceals the
gaps the parent reports, and sends the PCM back in batches.

Everything here is importable in a fresh interpreter (the ``spawn`` and ``forkserver``
start methods import :func:`worker_main` by name), and the decoding itself lives in the
sans-I/O :class:`StreamDecoder`, which the tests and the benchmark also use in-process.

Wire protocol: one :func:`pickle.dumps` per ``Connection.send_bytes`` call, never one
per packet. A pickle of plain tuples costs ~0.2-0.4 us per packet each way, less than a
hand-rolled :mod:`struct` encoding in Python (~0.3-1 us, mostly to decode); see
``benchmarks/bench_pool.py``. The peer is our own parent, so unpickling is no trust issue.

parent -> worker, a list of messages:
    ``(OP_DECODE, stream_id, conceal_limit, [DecodeItem tuple, ...])``,
    ``(OP_RESET, stream_id, ssrc or -1)``, ``(OP_CLOSE, stream_id)``, ``(OP_STOP,)``.
worker -> parent, one message:
    ``(REPLY_HELLO, pid)`` once at start;
    ``(REPLY_FRAMES, [(stream_id, items_consumed, frames, counts), ...], bytes_read)``
    after each batch (at most ~64 frames per reply), where ``frames`` is a list of
    ``(ssrc, sequence, timestamp, audio, kind_code, extra)``, ``counts`` is
    ``[decoded, fec, plc, silence, errors]`` and ``bytes_read`` the total size of the
    messages read so far (the parent uses it to know how full the pipe towards us is);
    ``(REPLY_ERROR, text)`` when a message could not be processed.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
from multiprocessing.connection import Connection
from typing import Any, Final, NamedTuple

from .opus import FRAME_SAMPLES, OpusDecoder, OpusError, packet_has_fec

__all__ = (
    "KIND_DECODED",
    "KIND_FEC",
    "KIND_OPUS",
    "KIND_PLC",
    "KIND_SILENCE",
    "DecodeItem",
    "StreamDecoder",
    "worker_main",
)

_log = logging.getLogger(__name__)

# Frame kinds travel as small ints (pickling enum members costs a name lookup each);
# the parent maps them back to FrameKind.
KIND_DECODED: Final = 0
KIND_FEC: Final = 1
KIND_PLC: Final = 2
KIND_SILENCE: Final = 3
KIND_OPUS: Final = 4

OP_DECODE: Final = 1
OP_RESET: Final = 2
OP_CLOSE: Final = 3
OP_STOP: Final = 4

REPLY_HELLO: Final = 1
REPLY_FRAMES: Final = 2
REPLY_ERROR: Final = 3

#: Default number of consecutive lost frames concealed by PLC (5 x 20 ms = 100 ms);
#: past it libopus' extrapolation has faded out anyway, so we report silence instead.
DEFAULT_CONCEAL_LIMIT: Final = 5
#: A gap longer than this (~11 minutes) is not a gap but a restarted stream: it is cut
#: down so one bad ``lost_before`` cannot make a worker emit millions of frames.
MAX_GAP: Final = 32767
#: Decoder states kept per stream; the least recently used one goes first beyond that.
MAX_SSRCS_PER_STREAM: Final = 256
#: How often an idle worker checks that its parent still exists.
_IDLE_POLL: Final = 1.0
#: A worker answers after at most about this many frames, so replies keep flowing under
#: load (the parent's hang detection relies on that) and each stays ~250 KB.
_REPLY_FRAMES: Final = 64

_TS_STEP: Final = FRAME_SAMPLES  # Discord sends 20 ms frames; a lost frame is assumed to be one too


class DecodeItem(NamedTuple):
    """One packet (or one known-lost position) for the decoder, in sequence order per SSRC.

    Plain tuples in this field order are accepted everywhere a ``DecodeItem`` is and are
    what the pool sends over the pipe (a plain tuple pickles ~8x faster than a NamedTuple).

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
    """

    ssrc: int
    sequence: int
    timestamp: int
    payload: bytes | None
    lost_before: int
    extra: int


class _SsrcState:
    __slots__ = ("decoder", "plc_run", "used")

    def __init__(self, used: int) -> None:
        self.decoder = OpusDecoder()
        # Consecutive frames concealed by PLC since the last real audio; bounded by the
        # stream's conceal limit.
        self.plc_run = 0
        self.used = used


class StreamDecoder:
    """Sans-I/O decoding of one stream's packets (every SSRC of one listening session).

    Parameters
    ----------
    max_ssrcs: :class:`int`
        Decoder states kept at once; the least recently used is dropped beyond that.

    Notes
    -----
    Concealment of a gap of ``n`` frames before a received packet ``P``:

    - the frame right before ``P`` is recovered from ``P``'s in-band FEC when
      :func:`~discord.ext.listening.opus.packet_has_fec` says it has some
      (:data:`KIND_FEC`; these do not count against the limit: they are the sender's own
      low-bitrate copy of the lost frame, not a guess);
    - the other lost frames, oldest first, are synthesized by PLC (:data:`KIND_PLC`) while
      fewer than ``conceal_limit`` consecutive frames have been concealed, and reported as
      silence (:data:`KIND_SILENCE`, empty audio) after that.

    Lost frames carry ``sequence - k`` and ``timestamp - 960 * k`` (wrapped) for the
    k-th frame before ``P``. A corrupt packet counts one error and is concealed like a
    lost frame. Items that cannot even be unpacked count an error and produce nothing.
    """

    __slots__ = ("_max_ssrcs", "_states", "_tick")

    def __init__(self, max_ssrcs: int = MAX_SSRCS_PER_STREAM) -> None:
        self._states: dict[int, _SsrcState] = {}
        self._tick = 0
        self._max_ssrcs = max_ssrcs

    def reset(self, ssrc: int | None = None) -> None:
        """Forget the decoder state of ``ssrc`` (every SSRC when ``None``)."""
        if ssrc is None:
            self._states.clear()
        else:
            self._states.pop(ssrc, None)

    def _new_state(self, ssrc: int) -> _SsrcState:
        states = self._states
        if len(states) >= self._max_ssrcs:
            # Bounded table: evict the least recently used decoder (O(n), only on overflow).
            del states[min(states, key=lambda k: states[k].used)]
        state = states[ssrc] = _SsrcState(self._tick)
        return state

    def decode(self, items: list[Any], conceal_limit: int, out: list[tuple], counts: list[int]) -> None:
        """Decode ``items`` in order, appending frame tuples to ``out``.

        Parameters
        ----------
        items: List[:class:`DecodeItem`]
            Packets in sequence order per SSRC.
        conceal_limit: :class:`int`
            Consecutive frames concealed by PLC before reporting silence.
        out: :class:`list`
            Receives ``(ssrc, sequence, timestamp, audio, kind_code, extra)`` tuples.
        counts: :class:`list`
            Five counters ``[decoded, fec, plc, silence, errors]`` incremented in place.
        """
        append = out.append
        states = self._states
        # LRU age advances per batch, not per item: cheaper, and precise enough to pick
        # which of 256 decoders to drop.
        self._tick += 1
        tick = self._tick
        decoded = 0
        for item in items:
            try:
                ssrc, seq, ts, payload, lost, extra = item
                state = states.get(ssrc)
                if state is None:
                    state = self._new_state(ssrc)
                state.used = tick
                if lost or type(payload) is not bytes or not payload:
                    # Gaps, lost positions, odd payload types: the rare path.
                    payload = self._unusual(state, conceal_limit, item, append, counts)
                    if payload is None:
                        continue
                try:
                    pcm = state.decoder.decode(payload)
                except OpusError:
                    counts[4] += 1
                    self._conceal(state, conceal_limit, ssrc, seq & 0xFFFF, ts & 0xFFFFFFFF, extra, append, counts)
                    continue
                state.plc_run = 0
                append((ssrc, seq & 0xFFFF, ts & 0xFFFFFFFF, pcm, KIND_DECODED, extra))
                decoded += 1
            except Exception:  # a malformed item (wrong shape or types): count it, keep going
                counts[4] += 1
        counts[0] += decoded

    def _unusual(self, state: _SsrcState, limit: int, item: tuple, append: Any, counts: list[int]) -> bytes | None:
        """Conceal the gap before ``item``; return the payload still to decode, or ``None``."""
        ssrc, seq, ts, payload, lost, extra = item
        if payload is not None:
            if type(payload) is not bytes:
                payload = bytes(payload)  # bytearray / memoryview: libopus takes bytes
            if not payload:
                payload = None  # libopus would run PLC on an empty packet anyway; say so
        lost = min(int(lost), MAX_GAP)
        if lost > 0:
            fec_ok = payload is not None and packet_has_fec(payload)
            for k in range(lost, 0, -1):
                q = (seq - k) & 0xFFFF
                t = (ts - _TS_STEP * k) & 0xFFFFFFFF
                if k == 1 and fec_ok:
                    try:
                        append((ssrc, q, t, state.decoder.decode_fec(payload), KIND_FEC, extra))
                        counts[1] += 1
                        continue
                    except OpusError:
                        counts[4] += 1  # corrupt next packet: fall back to PLC below
                self._conceal(state, limit, ssrc, q, t, extra, append, counts)
        if payload is None:
            self._conceal(state, limit, ssrc, seq & 0xFFFF, ts & 0xFFFFFFFF, extra, append, counts)
        return payload

    @staticmethod
    def _conceal(
        state: _SsrcState, limit: int, ssrc: int, q: int, t: int, extra: Any, append: Any, counts: list[int]
    ) -> None:
        if state.plc_run < limit:
            try:
                pcm = state.decoder.conceal()
            except OpusError:  # never seen in practice; silence keeps the frame count honest
                counts[4] += 1
            else:
                state.plc_run += 1
                append((ssrc, q, t, pcm, KIND_PLC, extra))
                counts[2] += 1
                return
        append((ssrc, q, t, b"", KIND_SILENCE, extra))
        counts[3] += 1


def worker_main(conn: Connection, index: int) -> None:
    """Entry point of a decode worker process (module level so ``spawn`` can import it).

    Runs until it receives ``OP_STOP``, its pipe closes, or its parent disappears. Never
    raises for bad input: malformed messages are reported back as ``REPLY_ERROR`` and
    corrupt packets are counted per stream.

    Parameters
    ----------
    conn: :class:`multiprocessing.connection.Connection`
        The worker's end of its duplex pipe to the pool.
    index: :class:`int`
        The worker's slot in the pool (for log messages).
    """
    # Ctrl+C reaches the whole process group; the parent decides when workers stop.
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):  # pragma: no cover - not the main thread / platform quirk
        pass
    # Our parent is the pool's process (spawn, fork) or the forkserver, which exits with
    # it. Being reparented means it died without closing our pipe (under fork a sibling
    # can hold the pipe's other end too), so EOF alone would not tell us.
    parent = os.getppid()
    streams: dict[int, StreamDecoder] = {}
    dumps, loads = pickle.dumps, pickle.loads
    replies: list[tuple] = []  # decoded but not yet sent
    owed = 0  # frames in ``replies``
    bytes_read = 0

    def send_replies() -> None:
        nonlocal replies, owed
        conn.send_bytes(dumps((REPLY_FRAMES, replies, bytes_read), 5))
        replies, owed = [], 0

    def report(text: str) -> None:
        conn.send_bytes(dumps((REPLY_ERROR, f"worker {index}: {text}"[:1000]), 5))

    _log.debug("decode worker %d running (pid %d)", index, os.getpid())
    try:
        conn.send_bytes(dumps((REPLY_HELLO, os.getpid()), 5))
        while True:
            if replies and not conn.poll(0):
                # Nothing else waiting: answer now. (While input keeps coming, answers
                # accumulate up to _REPLY_FRAMES, so small batches share one pipe write.)
                send_replies()
            if not conn.poll(_IDLE_POLL):
                if os.getppid() != parent:
                    return
                continue
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                return
            bytes_read += len(data)
            try:
                messages = loads(data)
            except Exception as exc:  # undecodable bytes: say so and keep going
                report(f"bad message: {exc!r}")
                continue
            for message in messages:
                try:
                    op = message[0]
                    if op == OP_DECODE:
                        _, sid, limit, items = message
                        dec = streams.get(sid)
                        if dec is None:
                            dec = streams[sid] = StreamDecoder()
                        # Slices keep each reply small: the parent's recv_bytes costs grow
                        # faster than linearly with message size (6 us/frame at 2 MB
                        # against 1.7 us/frame at 200 KB).
                        for i in range(0, len(items), _REPLY_FRAMES):
                            part = items[i : i + _REPLY_FRAMES]
                            frames: list[tuple] = []
                            counts = [0, 0, 0, 0, 0]
                            # Acknowledge every item, even if decoding blows up half way:
                            # the parent's in-flight accounting and hang detection rely on it.
                            replies.append((sid, len(part), frames, counts))
                            try:
                                dec.decode(part, limit, frames, counts)
                            except Exception as exc:
                                counts[4] += 1
                                report(f"decoding stream {sid} failed: {exc!r}")
                            owed += len(frames)
                            if owed >= _REPLY_FRAMES:
                                send_replies()
                    elif op == OP_RESET:
                        _, sid, ssrc = message
                        dec = streams.get(sid)
                        if dec is not None:
                            dec.reset(None if ssrc < 0 else ssrc)
                    elif op == OP_CLOSE:
                        streams.pop(message[1], None)
                    elif op == OP_STOP:
                        if replies:
                            send_replies()
                        return
                    else:
                        raise ValueError(f"unknown op {op!r}")
                except (BrokenPipeError, EOFError, ConnectionResetError):
                    raise
                except Exception as exc:
                    report(f"{exc!r} in {str(message)[:200]}")
    except (BrokenPipeError, EOFError, ConnectionResetError):
        return  # the parent went away mid-send: nothing left to do
    finally:
        streams.clear()
        try:
            conn.close()
        except OSError:
            pass
