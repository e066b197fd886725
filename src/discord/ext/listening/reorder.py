"""Per-SSRC jitter buffer, sans-I/O: packets back in sequence order, losses declared.

Wrap-safe sequence and timestamp arithmetic lives in :mod:`.seqmath`; the value types the
buffer returns (:class:`PushResult`, :class:`Released`, :class:`JitterStats`) live in
:mod:`.reorder_types` and are re-exported here.

:class:`JitterBuffer` takes one SSRC's packets in any order (:meth:`JitterBuffer.push`) and
gives them back in sequence order (:meth:`JitterBuffer.pop_ready`), declaring a missing
packet lost once a later one has waited ``depth`` seconds. It never reads a clock and never
blocks: the caller passes ``now`` (seconds on a monotonic clock) to every call and decides
when to poll; :meth:`JitterBuffer.next_deadline` says when polling next is worthwhile.

Internally packets are keyed by an *extended* sequence number (an unbounded int that keeps
counting across the 65535 -> 0 wrap), so ordering is plain integer ordering: a dict holds the
packets, a heap gives the lowest, and a FIFO of arrival order gives the one that has waited
longest. The in-order path costs a dict insert, a heap push/pop and one tuple per packet.
"""

from __future__ import annotations

import logging
from collections import deque
from heapq import heappop, heappush
from typing import Any, Final

from .reorder_types import JitterStats, PushResult, Released
from .seqmath import SEQ_HALF, SEQ_MASK, TS_HALF, TS_MASK

__all__ = ("JitterBuffer", "JitterStats", "PushResult", "Released")

_log = logging.getLogger(__name__)

# Distance in extended-sequence space between two streams of one buffer (see _restart).
# Far larger than any window, so a restarted stream's packets always sort after the old
# stream's, and the old stream's stragglers still sort before the new stream's.
_STREAM_GAP: Final = 1 << 18

# Building Released through tuple.__new__ skips NamedTuple's Python-level __new__: the
# difference (~0.5 us) is a fifth of the whole per-packet cost.
_tuple_new = tuple.__new__

_ACCEPTED: Final = PushResult.ACCEPTED


# -- jitter buffer --------------------------------------------------------------------------


class JitterBuffer:
    """Puts one SSRC's RTP packets back in sequence order and detects losses, sans-I/O.

    Release rule (checked by :meth:`pop_ready`): a held packet comes out when it is the next
    expected sequence number, or when any held packet has waited ``depth`` seconds since it
    arrived; then everything before that packet comes out in order and the missing sequence
    numbers in between are declared lost (:attr:`Released.lost_before`). So after a loss the
    following packet waits at most ``depth``, never longer, and an in-order packet waits not
    at all (unless it ends a quiet stretch, see below). The first packet of a stream waits
    ``depth`` (there is no history to say whether an earlier one is still coming);
    ``arrival`` on every released packet stays exact.

    Sequence windows, relative to the highest sequence number seen (RFC 3550 appendix A.1
    uses the same idea with 3000/100):

    - up to ``max_dropout`` ahead: a normal forward step, gaps are losses;
    - up to ``max_misorder`` behind: reordered (held), duplicate or late (dropped);
    - anything else is a *restart*: the sender began a new stream (a client that re-created
      its RTP session; Discord gives a reconnecting client a new SSRC, so this is rare). The
      new stream is released after what is held of the old one, starts with
      :attr:`Released.new_stream` and declares nothing lost. A packet that moves forward in
      sequence but backward in RTP timestamp (or backward in sequence but forward in
      timestamp) is also a restart: within one audio stream both always move together.
      Late stragglers of the previous stream are still recognised as such (filled in if
      their place is still held, else counted late) rather than restarting again.
    - except a packet outside the windows whose RTP timestamp is *behind* the stream's
      newest: that is what an old packet of this very stream looks like (a duplicate
      delivered seconds late, or a *replayed* datagram: replays authenticate, the transport
      has no replay protection), so it is counted late and never restarts the stream. A
      sender that really restarted with such numbers is recognised once
      ``restart_probation`` consecutive packets of its new stream arrived with no packet of
      the current stream in between (those are counted late; the next one restarts). A
      replay therefore cannot re-insert old audio while the stream is alive, nor make the
      following live packets look lost.

    Long idle gaps are not losses: both Discord's clients and discord.py keep the sequence
    contiguous across silence (only the timestamp may jump), so the first packet after
    minutes of quiet is simply the next expected one. It waits ``depth`` all the same, like
    a stream's first packet, whenever it comes more than ``depth`` after the stream's
    previous packet: a network stall holds packets back and then delivers them in a burst,
    and the first of them taken alone looks like a pause (the caller would shift the rest of
    the speech by the stall, see :func:`.timeline.debursted_arrivals`); held, it comes out
    together with the burst. Only the first packet after a pause or a stall pays this.

    Memory is bounded: at most ``max_packets`` are held; when a push finds the buffer full,
    the held packet with the lowest sequence number is dropped and counted in
    :attr:`JitterStats.overflow` (it is the one closest to its deadline and, when the caller
    stopped polling, long overdue). Its place then counts in the next packet's
    ``lost_before``, so the decoder conceals it.

    Parameters
    ----------
    depth: :class:`float`
        Seconds a packet may wait for missing predecessors (the added latency after a loss).
    max_packets: :class:`int`
        Packets held at most.
    max_dropout: :class:`int`
        Largest forward sequence jump still treated as loss rather than a restart.
    max_misorder: :class:`int`
        Largest backward distance still treated as reordering (late/duplicate) rather than a
        restart.
    restart_probation: :class:`int`
        Consecutive packets, with no packet of the current stream in between, needed to
        accept a restart whose timestamps lie behind the current stream's (see above).

    Notes
    -----
    Not thread-safe: one owner calls :meth:`push` and :meth:`pop_ready` (the receive path
    holds a lock around both). ``now`` must come from one monotonic clock; values may repeat.
    """

    __slots__ = (
        "_bounds",
        "_buf",
        "_duplicates",
        "_fifo",
        "_fifo_limit",
        "_heap",
        "_hist",
        "_hist_mask",
        "_hold_until",
        "_late",
        "_live_at",
        "_lost",
        "_nxt",
        "_overflow",
        "_prev_ext",
        "_prev_hist",
        "_prev_nxt",
        "_prev_seq",
        "_probe",
        "_received",
        "_ref_ext",
        "_ref_seq",
        "_ref_ts",
        "_released",
        "_restarts",
        "depth",
        "max_dropout",
        "max_misorder",
        "max_packets",
        "restart_probation",
    )

    def __init__(
        self,
        depth: float = 0.06,
        max_packets: int = 256,
        *,
        max_dropout: int = 1000,
        max_misorder: int = 100,
        restart_probation: int = 50,
    ) -> None:
        if not depth >= 0.0:  # also rejects NaN
            raise ValueError(f"depth must be >= 0 seconds, got {depth!r}")
        if max_packets < 1:
            raise ValueError(f"max_packets must be >= 1, got {max_packets!r}")
        if not 1 <= max_dropout < SEQ_HALF:
            raise ValueError(f"max_dropout must be within 1..{SEQ_HALF - 1}, got {max_dropout!r}")
        if not 1 <= max_misorder < SEQ_HALF:
            raise ValueError(f"max_misorder must be within 1..{SEQ_HALF - 1}, got {max_misorder!r}")
        if restart_probation < 1:
            raise ValueError(f"restart_probation must be >= 1, got {restart_probation!r}")
        self.restart_probation = restart_probation
        # Arrival of the newest in-window packet of the current stream, and the run of
        # old-looking packets that may turn out to be a restarted sender:
        # (sequence, timestamp, count, arrival of the first).
        self._live_at = float("-inf")
        # pop_ready releases nothing before this (a packet that came after a quiet stretch
        # waits for the ones a stall may have held up behind it).
        self._hold_until = float("-inf")
        self._probe: tuple[int, int, int, float] | None = None
        self.depth = float(depth)
        self.max_packets = max_packets
        self.max_dropout = max_dropout
        self.max_misorder = max_misorder
        # ext -> Released (built once at push; replaced only when a gap or stream start
        # has to be recorded on it).
        self._buf: dict[int, Released] = {}
        self._heap: list[int] = []
        # Extended sequence numbers in arrival order; entries of packets already gone are
        # skipped lazily (and compacted when the deque gets long).
        self._fifo: deque[int] = deque()
        self._fifo_limit = 2 * max_packets + 16
        # Lower bounds (ext) of streams that begin after the one being released.
        self._bounds: deque[int] = deque()
        # Next extended sequence number to release; None at a stream start (not decided).
        self._nxt: int | None = None
        # Bit k set: ext ``_nxt - 1 - k`` was released.
        # Tells a duplicate of a released packet from a late one.
        self._hist = 0
        self._hist_mask = (1 << (max_misorder + 1)) - 1
        # Highest packet seen of the current stream: the reference for windows and unwrapping.
        self._ref_ext: int | None = None
        self._ref_seq = 0
        self._ref_ts = 0
        # The same for the stream before the last restart (to recognise its stragglers),
        # and once it is fully released, its final _nxt and _hist (to tell a straggling
        # duplicate from a late packet).
        self._prev_ext: int | None = None
        self._prev_seq = 0
        self._prev_nxt: int | None = None
        self._prev_hist = 0
        self._received = 0
        self._released = 0
        self._duplicates = 0
        self._late = 0
        self._lost = 0
        self._overflow = 0
        self._restarts = 0

    def __len__(self) -> int:
        """Packets held right now."""
        return len(self._buf)

    def __repr__(self) -> str:
        return f"<JitterBuffer depth={self.depth} held={len(self._buf)} next={self._nxt}>"

    @property
    def stats(self) -> JitterStats:
        """The counters (a snapshot)."""
        return JitterStats(
            self._received,
            self._released,
            self._duplicates,
            self._late,
            self._lost,
            self._overflow,
            self._restarts,
            len(self._buf),
        )

    # -- input -------------------------------------------------------------------------

    def push(self, sequence: int, timestamp: int, payload: Any, now: float) -> PushResult:
        """Offer one packet, in whatever order packets arrive.

        Parameters
        ----------
        sequence: :class:`int`
            RTP sequence number (16 bit).
        timestamp: :class:`int`
            RTP timestamp (32 bit).
        payload: Any
            Carried through untouched to :attr:`Released.payload`.
        now: :class:`float`
            Arrival time (monotonic seconds).

        Returns
        -------
        :class:`PushResult`
            Whether the packet is held or why it was dropped (each outcome is counted).
        """
        self._received += 1
        ref = self._ref_ext
        if ref is None:
            # First packet of a fresh buffer: it defines the sequence space.
            self._ref_ext = ref = sequence & SEQ_MASK
            self._ref_seq = sequence
            self._ref_ts = timestamp
            self._live_at = now
            return self._store(ref, sequence, timestamp, payload, now, PushResult.ACCEPTED)
        d = ((sequence - self._ref_seq + SEQ_HALF) & SEQ_MASK) - SEQ_HALF  # seq_diff, inlined
        if d > 0:
            # Forward. Within one stream the timestamp never goes back while the sequence
            # goes forward, so a backward timestamp means a new stream even in the window.
            td = ((timestamp - self._ref_ts + TS_HALF) & TS_MASK) - TS_HALF  # ts_diff, inlined
            if d > self.max_dropout or td < 0:
                if td < 0 and d > self.max_dropout:
                    return self._old(sequence, timestamp, payload, now)
                return self._restart(sequence, timestamp, payload, now)
            if now - self._live_at > self.depth:
                self._hold_until = now + self.depth
            self._live_at = now
            ext = ref + d
            self._ref_ext = ext
            self._ref_seq = sequence
            self._ref_ts = timestamp
            buf = self._buf
            if len(buf) >= self.max_packets:
                return self._store(ext, sequence, timestamp, payload, now, PushResult.ACCEPTED)
            # The common case, inlined (_store without the overflow branch).
            buf[ext] = _tuple_new(Released, (sequence, timestamp, payload, now, 0, False))
            heappush(self._heap, ext)
            fifo = self._fifo
            fifo.append(ext)
            if len(fifo) > self._fifo_limit:
                self._fifo = deque(e for e in fifo if e in buf)
            return _ACCEPTED
        if d < -self.max_misorder or (
            d < 0 and ((timestamp - self._ref_ts + TS_HALF) & TS_MASK) - TS_HALF > 0
        ):  # ts_diff, inlined
            if (
                d < -self.max_misorder and ((timestamp - self._ref_ts + TS_HALF) & TS_MASK) - TS_HALF <= 0
            ):  # ts_diff, inlined
                return self._old(sequence, timestamp, payload, now)
            return self._restart(sequence, timestamp, payload, now)
        self._live_at = now
        ext = ref + d
        if ext in self._buf:
            self._duplicates += 1
            return PushResult.DUPLICATE
        nxt = self._nxt
        if nxt is not None and ext < nxt:
            return self._behind(ext, nxt)
        return self._store(ext, sequence, timestamp, payload, now, PushResult.ACCEPTED)

    def _behind(self, ext: int, nxt: int) -> PushResult:
        # Its place was already passed: a second copy of a released packet, or a late one.
        off = nxt - 1 - ext
        if off <= self.max_misorder and (self._hist >> off) & 1:
            self._duplicates += 1
            return PushResult.DUPLICATE
        self._late += 1
        return PushResult.LATE

    def _store(
        self, ext: int, sequence: int, timestamp: int, payload: Any, now: float, result: PushResult
    ) -> PushResult:
        buf = self._buf
        if len(buf) >= self.max_packets:
            bound = self._bounds[0] if self._bounds else None
            self._evict()
            if bound is not None and ext < bound and not (self._bounds and self._bounds[0] == bound):
                # The eviction finished the stream this packet (a straggler) belongs to:
                # its place is gone with it. Holding it would put it in the next stream.
                self._late += 1
                return PushResult.LATE
            if result is PushResult.ACCEPTED:
                result = PushResult.OVERFLOW
        buf[ext] = _tuple_new(Released, (sequence, timestamp, payload, now, 0, False))
        heappush(self._heap, ext)
        fifo = self._fifo
        fifo.append(ext)
        if len(fifo) > self._fifo_limit:
            # Only reachable when the caller stops polling under a flood: stale entries pile
            # up behind a live head. Compacting is O(n) once per ~n pushes.
            self._fifo = deque(e for e in fifo if e in buf)
        return result

    def _evict(self) -> None:
        head = heappop(self._heap)
        del self._buf[head]
        self._overflow += 1
        if self._bounds and head >= self._bounds[0]:
            # The stream before this one is fully gone: the evicted packet would have
            # started this stream.
            self._finish_streams(head, self._nxt, self._hist)
            self._nxt = None
        # _nxt is deliberately not advanced: the next release then sees the evicted place
        # as part of its gap (lost_before), so the decoder conceals it. A second copy of the
        # evicted packet arriving later is still accepted (the data is not lost after all).
        _log.debug("jitter buffer full (%d): dropped ext seq %d", self.max_packets, head)

    def _old(self, sequence: int, timestamp: int, payload: Any, now: float) -> PushResult:
        # Behind the current stream in timestamp and outside the windows in sequence: an
        # old packet of this stream (late duplicate, replay), or a sender restart that
        # happened to land behind. Only a run of such packets with no current-stream packet
        # in between is taken for a restart.
        result = self._straggler(sequence, timestamp, payload, now)
        if result is not None:
            return result
        probe = self._probe
        if (
            probe is not None
            and sequence == (probe[0] + 1) & SEQ_MASK
            and ((timestamp - probe[1] + TS_HALF) & TS_MASK) - TS_HALF > 0  # ts_diff, inlined
            and self._live_at < probe[3]
        ):
            count, first = probe[2] + 1, probe[3]
        else:
            count, first = 1, now
        if count >= self.restart_probation:
            self._probe = None
            return self._restart(sequence, timestamp, payload, now)
        self._probe = (sequence, timestamp, count, first)
        self._late += 1
        return PushResult.LATE

    def _straggler(self, sequence: int, timestamp: int, payload: Any, now: float) -> PushResult | None:
        # A packet of the stream before the last restart? Judged within that stream (filled
        # in while it is being released, else duplicate or late); None if it is not one.
        prev = self._prev_ext
        if prev is not None:
            d_old = ((sequence - self._prev_seq + SEQ_HALF) & SEQ_MASK) - SEQ_HALF  # seq_diff, inlined
            if -self.max_misorder <= d_old <= self.max_misorder:
                # A straggler of the stream before the restart, not yet another restart.
                ext = prev + d_old
                nxt = self._nxt
                bounds = self._bounds
                if ext in self._buf:
                    self._duplicates += 1
                    return PushResult.DUPLICATE
                if bounds and ext < bounds[-1]:
                    # That stream is still being released: fill in or judge as usual.
                    if nxt is None or ext >= nxt:
                        if d_old > 0:
                            self._prev_ext = ext
                            self._prev_seq = sequence
                        return self._store(ext, sequence, timestamp, payload, now, PushResult.ACCEPTED)
                    return self._behind(ext, nxt)
                end = self._prev_nxt
                if end is not None and ext < end:
                    off = end - 1 - ext
                    if off <= self.max_misorder and (self._prev_hist >> off) & 1:
                        self._duplicates += 1
                        return PushResult.DUPLICATE
                self._late += 1
                return PushResult.LATE
        return None

    def _restart(self, sequence: int, timestamp: int, payload: Any, now: float) -> PushResult:
        result = self._straggler(sequence, timestamp, payload, now)
        if result is not None:
            return result
        self._probe = None
        self._restarts += 1
        _log.debug(
            "sequence %d / timestamp %d after %d / %d: sender restarted, new stream",
            sequence,
            timestamp,
            self._ref_seq,
            self._ref_ts,
        )
        ref = self._ref_ext
        assert ref is not None
        self._prev_ext = ref
        self._prev_seq = self._ref_seq
        base = ref + _STREAM_GAP
        if self._buf:
            # Old packets stay and come out first; the bound marks where the new stream's
            # extended numbers (including ones up to half the space behind ``base``) begin.
            self._bounds.append(ref + _STREAM_GAP // 2)
            self._prev_nxt = None
        else:
            self._prev_nxt = self._nxt
            self._prev_hist = self._hist
            self._nxt = None
        self._ref_ext = base
        self._ref_seq = sequence
        self._ref_ts = timestamp
        return self._store(base, sequence, timestamp, payload, now, PushResult.RESTART)

    # -- output ------------------------------------------------------------------------

    def pop_ready(self, now: float) -> list[Released]:
        """Release, in sequence order, every packet that is ready at ``now``.

        Parameters
        ----------
        now: :class:`float`
            The current time (same clock as :meth:`push`).

        Returns
        -------
        List[:class:`Released`]
            Possibly empty. Call again when more packets arrive, or at
            :meth:`next_deadline`.
        """
        heap = self._heap
        if not heap or now < self._hold_until:
            return []
        if len(heap) == 1 and heap[0] == self._nxt and not self._bounds:
            # The steady state: one packet, the next expected. Same effect as _release.
            ext = heap.pop()
            self._nxt = ext + 1
            self._hist = ((self._hist << 1) | 1) & self._hist_mask
            self._released += 1
            self._fifo.clear()
            return [self._buf.pop(ext)]
        return self._release(now - self.depth, False)

    def flush(self) -> list[Released]:
        """Release everything held, in order, without waiting (listening ends).

        The sequence state is kept: later packets of the same stream continue it (earlier
        ones count as late). Use :meth:`reset` to forget the stream as well.
        """
        if not self._heap:
            return []
        return self._release(0.0, True)

    def reset(self) -> list[Released]:
        """Flush, then forget the stream: the next packet starts a new one.

        For when the caller dropped packets on purpose (a paused recording): the sequence
        gap that leaves is not loss.
        """
        out = self.flush()
        self._hold_until = float("-inf")
        self._bounds.clear()
        self._fifo.clear()
        self._nxt = None
        self._hist = 0
        self._ref_ext = None
        self._prev_ext = None
        self._prev_nxt = None
        self._probe = None
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`pop_ready` will next release something without new input.

        Returns
        -------
        Optional[:class:`float`]
            A time on the ``now`` clock (possibly already past), or ``None`` when nothing is
            held.
        """
        buf = self._buf
        if not buf:
            return None
        heap = self._heap
        if heap[0] == self._nxt and not (self._bounds and heap[0] >= self._bounds[0]):
            return max(buf[heap[0]].arrival, self._hold_until)
        fifo = self._fifo
        while fifo[0] not in buf:
            fifo.popleft()
        return max(buf[fifo[0]].arrival + self.depth, self._hold_until)

    def _finish_streams(self, head: int, nxt: int | None, hist: int) -> None:
        # The release point crosses into the stream holding ``head`` (skipping streams whose
        # packets were all dropped on overflow). When that is the current stream, the one
        # just finished is the "previous" one: keep its end state for its stragglers.
        bounds = self._bounds
        while bounds and head >= bounds[0]:
            bounds.popleft()
        if not bounds:
            self._prev_nxt = nxt
            self._prev_hist = hist

    def _release(self, limit: float, force: bool) -> list[Released]:
        out: list[Released] = []
        append = out.append
        heap = self._heap
        buf = self._buf
        fifo = self._fifo
        bounds = self._bounds
        nxt = self._nxt
        hist = self._hist
        mask = self._hist_mask
        lost = 0
        while heap:
            head = heap[0]
            if bounds and head >= bounds[0]:
                # Everything of the previous stream is out: this one starts afresh.
                self._finish_streams(head, nxt, hist)
                nxt = None
            if head != nxt and not force:
                # Not the next one: it may go only once something held is overdue. The
                # longest-waiting held packet is at the front of the FIFO (after skipping
                # entries of packets already gone); everything before it in sequence goes
                # out first, gaps declared lost.
                while fifo[0] not in buf:
                    fifo.popleft()
                if buf[fifo[0]].arrival > limit:
                    break
            heappop(heap)
            item = buf.pop(head)
            if head == nxt:
                hist = ((hist << 1) | 1) & mask
            elif nxt is None:
                item = item._replace(new_stream=True)
                hist = 1
            elif head - nxt >= _STREAM_GAP // 2:  # pragma: no cover - a stream boundary lost: never a gap
                _log.warning("jitter buffer: ext seq %d after %d is no gap; starting a new stream", head, nxt)
                item = item._replace(new_stream=True)
                hist = 1
            else:
                gap = head - nxt
                lost += gap
                item = item._replace(lost_before=gap)
                hist = ((hist << (gap + 1)) | 1) & mask
            append(item)
            nxt = head + 1
        if not heap:
            fifo.clear()
        self._nxt = nxt
        self._hist = hist
        self._lost += lost
        self._released += len(out)
        return out
