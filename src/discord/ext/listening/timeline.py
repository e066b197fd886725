"""Where each frame goes on the recording timeline, sans-I/O.

A recording has one timeline: sample 0 is the moment listening started (its ``origin``, a
time on the monotonic clock) and it runs at 48 kHz. Every user's file is laid on it, so the
files line up in any editor. Two clocks tell us where a frame belongs:

- the sender's RTP timestamp, exact to the sample but only *relative* (it starts at a random
  value, and across silence it is not reliable: Discord's WebRTC clients advance it while
  silent, discord.py's sender does not, so a bot's 10 s pause leaves no trace in it);
- the arrival time, absolute but noisy (network jitter).

:class:`StreamClock` uses each for what it is good at: inside a talk spurt the RTP timestamp
places frames (contiguous frames land exactly ``samples`` apart, so a file never gets
jitter-made clicks, gaps or overlaps); at the start of a spurt, and whenever the two clocks
disagree by more than jitter explains, arrival time decides. RTCP sender reports, when they
come, sharpen that arrival-time guess. :class:`Timeline` keeps the recording's origin and
its pauses.

No clock is read here: every method takes ``now`` (monotonic seconds) from the caller.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Final

from .opus import FRAME_SAMPLES, SAMPLE_RATE
from .rtp import ntp_to_unix
from .seqmath import TS_HALF, TS_MASK, seq_diff, ts_add, ts_diff

__all__ = ("StreamClock", "Timeline", "debursted_arrivals")

_log = logging.getLogger(__name__)

#: Sender reports remembered for the arrival-offset estimate (Discord-like senders report
#: every ~5 s, so this spans ~40 s: long enough to catch one report with little queuing
#: delay, short enough that the two machines' clocks do not drift apart noticeably).
_SR_HISTORY: Final = 8


class StreamClock:
    """Maps one SSRC's RTP timestamps onto the recording timeline.

    Call :meth:`position` for each frame in sequence order (what the jitter buffer
    releases), with the frame's *arrival* time. Within a talk spurt the answer is
    ``previous position + RTP distance``: contiguous 20 ms frames are exactly 960 samples
    apart whatever the jitter. A frame starts a new spurt, placed by arrival time, when

    - it is the first one, or the caller says ``new_stream`` (the jitter buffer detected a
      sender restart);
    - no packet arrived for more than ``gap`` seconds (plus the duration of any frames
      reported lost in between), e.g. a pause in speech or a recording pause;
    - its RTP timestamp is discontinuous: backwards, or further ahead than ``gap`` (plus
      reported losses);
    - its arrival disagrees with its RTP placement by more than ``tolerance``, measured
      against the disagreement at the start of the spurt, and the frame before it was an
      Opus silence frame: this catches a discord.py sender's short pauses (its timestamp
      stands still while time passes, and it always sends silence frames before pausing);
    - its arrival disagrees with its RTP placement by more than ``drift_tolerance`` after an
      audio frame: a network stall that holds up a few packets of continuous speech leaves
      them where the sender's clock says (a smaller bound would move the rest of the spurt
      by the stall), while the drift between the sender's and our clock during endless
      speech (music bots) stays bounded.

    A new spurt starts at the arrival position, or where an RTCP sender report predicts it
    when that agrees with arrival within ``tolerance`` (see :meth:`sender_report`), but never
    before the end of the previous frame: positions of one SSRC never overlap and always
    increase. Room for frames reported lost before it is kept as long as that moves the
    frame at most ``tolerance`` past its arrival position.

    Accuracy: a spurt's first frame is placed with the arrival jitter of that one packet
    (the rest of the spurt inherits it, exactly spaced), so with up to ±15 ms of jitter every
    frame lands within one 20 ms frame of where it was spoken, for both sender behaviours.
    Pauses shorter than ``tolerance`` plus jitter by a sender whose timestamp stands still
    may be shortened (there is no way to tell them from jitter at the time), and such a
    sender's pauses without silence frames before them are only seen when longer than
    ``gap`` or ``drift_tolerance``.

    Parameters
    ----------
    origin: :class:`float`
        Monotonic time of sample 0 of the recording.
    sample_rate: :class:`int`
        Samples per second of both the RTP clock and the timeline (48000 for Opus).
    gap: :class:`float`
        Seconds without packets after which arrival time decides again.
    tolerance: :class:`float`
        Seconds of disagreement between arrival and RTP placement accepted as jitter after
        a silence frame. It must exceed twice the expected one-way jitter, and stay below
        the shortest pause that should survive from senders that do not advance RTP time
        while silent.
    drift_tolerance: :class:`float`
        Seconds of disagreement accepted after an audio frame (at least ``tolerance``).

    Attributes
    ----------
    resyncs: :class:`int`
        Frames (after the first) placed by arrival time rather than by RTP timestamp.
    """

    __slots__ = (
        "_after_silence",
        "_drift_samples",
        "_end",
        "_gap_samples",
        "_lag0",
        "_last_arrival",
        "_next_ts",
        "_rate",
        "_sr_offset",
        "_sr_offsets",
        "_sr_rtp",
        "_sr_time",
        "_tol_samples",
        "gap",
        "origin",
        "resyncs",
        "sample_rate",
        "tolerance",
    )

    def __init__(
        self,
        origin: float,
        *,
        sample_rate: int = SAMPLE_RATE,
        gap: float = 0.2,
        tolerance: float = 0.06,
        drift_tolerance: float = 0.25,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate!r}")
        if not gap > 0.0:
            raise ValueError(f"gap must be positive, got {gap!r}")
        if not tolerance > 0.0:
            raise ValueError(f"tolerance must be positive, got {tolerance!r}")
        if not drift_tolerance >= tolerance:
            raise ValueError(f"drift_tolerance must be at least tolerance ({tolerance!r}), got {drift_tolerance!r}")
        self.origin = float(origin)
        self.sample_rate = sample_rate
        self.gap = float(gap)
        self.tolerance = float(tolerance)
        self._rate = float(sample_rate)
        self._gap_samples = round(gap * sample_rate)
        self._tol_samples = round(tolerance * sample_rate)
        self._drift_samples = round(drift_tolerance * sample_rate)
        self._after_silence = True
        # RTP timestamp right after the last placed frame, and the timeline sample there.
        self._next_ts: int | None = None
        self._end = 0
        # arrival position - placed position at the spurt's first frame: the reference the
        # tolerance is measured against (non-zero when the start was clamped or SR-placed).
        self._lag0 = 0
        self._last_arrival = float("-inf")
        # Latest sender report: sender wall time (s) <-> RTP timestamp, and the estimated
        # offset from sender wall time to our arrival clock (min over recent reports).
        self._sr_time = 0.0
        self._sr_rtp: int | None = None
        self._sr_offsets: deque[float] = deque(maxlen=_SR_HISTORY)
        self._sr_offset = 0.0
        self.resyncs = 0

    def __repr__(self) -> str:
        return f"<StreamClock end={self._end} next_ts={self._next_ts} resyncs={self.resyncs}>"

    @property
    def end(self) -> int | None:
        """Timeline sample right after the last placed frame (``None`` before the first)."""
        return None if self._next_ts is None else self._end

    def position(
        self,
        timestamp: int,
        now: float,
        samples: int = FRAME_SAMPLES,
        *,
        lost_before: int = 0,
        new_stream: bool = False,
        silence: bool = False,
    ) -> int:
        """Place one frame; frames must come in sequence order.

        Parameters
        ----------
        timestamp: :class:`int`
            The frame's RTP timestamp (32 bit; wraps are fine).
        now: :class:`float`
            When the frame's packet *arrived* (monotonic seconds; not when it was released).
        samples: :class:`int`
            The frame's duration in samples (960 for Discord's 20 ms frames).
        lost_before: :class:`int`
            Frames of ``samples`` each lost right before this one
            (:attr:`~discord.ext.listening.reorder.Released.lost_before`). Room is kept for
            them before the returned position (up to ``tolerance`` past the arrival
            position), so concealment placed at ``position - k * samples`` does not overlap
            earlier audio. Callers that place concealed frames through this method
            themselves pass 0.
        new_stream: :class:`bool`
            The sender restarted (:attr:`~discord.ext.listening.reorder.Released.new_stream`):
            its RTP timestamps say nothing about the previous ones.
        silence: :class:`bool`
            The frame is an Opus silence frame (what senders send before they pause): the
            next frame is checked against ``tolerance`` rather than ``drift_tolerance``.

        Returns
        -------
        :class:`int`
            Timeline sample of the frame's first sample (may be negative for a frame that
            arrived before ``origin``).
        """
        arr = round((now - self.origin) * self._rate)
        need = lost_before * samples if lost_before > 0 else 0
        after_silence, self._after_silence = self._after_silence, silence
        nts = self._next_ts
        if nts is not None and not new_stream:
            d = ((timestamp - nts + TS_HALF) & TS_MASK) - TS_HALF  # ts_diff, inlined
            pos = self._end + d
            tol = self._tol_samples if after_silence else self._drift_samples
            if (
                need <= d <= need + self._gap_samples
                and now - self._last_arrival <= self.gap + need / self._rate
                and -tol <= arr - pos - self._lag0 <= tol
            ):
                self._next_ts = ts_add(timestamp, samples)
                self._end = pos + samples
                if now > self._last_arrival:
                    self._last_arrival = now
                return pos
        # A new spurt: arrival time (or a sender report) decides.
        pos = self._anchor(timestamp, arr, now)
        if nts is not None:
            # Never before the previous frame's end. Room for the lost frames too, but only
            # as far as ``tolerance`` past where arrival puts us: a huge ``lost_before`` (a
            # misjudged restart) must not push the stream into the future for good; the
            # concealment that does not fit overlaps earlier audio, which writers drop.
            end = self._end
            floor = end + need
            if floor > pos + self._tol_samples:
                floor = max(end, pos + self._tol_samples)
            if pos < floor:
                pos = floor
            self.resyncs += 1
            _log.debug("timestamp %d arriving at %d: new spurt at %d (arrival says %d)", timestamp, arr, pos, arr)
        self._lag0 = arr - pos
        self._next_ts = ts_add(timestamp, samples)
        self._end = pos + samples
        if now > self._last_arrival:
            self._last_arrival = now
        return pos

    def _anchor(self, timestamp: int, arr: int, now: float) -> int:
        if self._sr_rtp is not None:
            # Sender time of this frame via the last report, moved to our clock by the
            # offset of the least-delayed recent report. Only trusted if it agrees with
            # arrival: a sender whose RTP clock stops in silence breaks the report's mapping.
            sent = self._sr_time + ts_diff(timestamp, self._sr_rtp) / self._rate
            p = round((sent + self._sr_offset - self.origin) * self._rate)
            if 0 <= arr - p <= self._tol_samples:
                return p
            if -self._tol_samples <= arr - p < 0:
                # Predicted after it arrived: every report so far was queued longer than this
                # packet. Its own arrival is the better offset, for later spurts too.
                self._sr_offsets.append(now - sent)
                self._sr_offset = min(self._sr_offsets)
                return arr
        return arr

    def sender_report(self, ntp_timestamp: int, rtp_timestamp: int, now: float) -> None:
        """Use an RTCP sender report of this SSRC to place future spurt starts better.

        A report says which RTP timestamp the sender's wall clock (NTP) read at one moment.
        ``arrival - NTP`` of a report is the clock offset between the sender and us plus that
        report's network delay; the smallest value over recent reports is the best offset
        estimate (queuing only ever adds delay). A spurt start is then placed at
        ``report NTP + (timestamp - report RTP) / rate + offset``: where the sender says it
        spoke, free of this one packet's jitter, as long as that agrees with the arrival
        position within ``tolerance``. Frames inside a spurt are unaffected (RTP already
        places them exactly), so a bogus report can move a spurt start by ``tolerance`` at
        most.

        Parameters
        ----------
        ntp_timestamp: :class:`int`
            The report's 64-bit NTP timestamp (seconds since 1900 << 32 | fraction).
        rtp_timestamp: :class:`int`
            The report's RTP timestamp.
        now: :class:`float`
            When the report arrived (monotonic seconds).
        """
        sent = ntp_to_unix(ntp_timestamp)
        offsets = self._sr_offsets
        if offsets and self._sr_rtp is not None and sent < self._sr_time:
            # The sender's clock went back (or reports came out of order): old offsets are
            # no longer comparable.
            offsets.clear()
        self._sr_time = sent
        self._sr_rtp = ts_add(rtp_timestamp, 0)
        offsets.append(now - sent)
        self._sr_offset = min(offsets)


class Timeline:
    """The recording's time axis: its origin, its sample rate, and its pauses.

    Positions run on the wall clock from the origin, paused or not: a pause is silence of
    the paused length in every file (the caller drops frames arriving while paused), and
    after :meth:`resume` positions simply continue where the clock is. Stream clocks need no
    telling: after a pause they see a gap and place the next frame by arrival.

    Parameters
    ----------
    origin: :class:`float`
        Monotonic time when listening started (sample 0).
    sample_rate: :class:`int`
        Samples per second.
    """

    __slots__ = ("_pause_start", "_spans", "origin", "sample_rate")

    def __init__(self, origin: float, sample_rate: int = SAMPLE_RATE) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate!r}")
        self.origin = float(origin)
        self.sample_rate = sample_rate
        self._pause_start: int | None = None
        self._spans: list[tuple[int, int]] = []

    def __repr__(self) -> str:
        return f"<Timeline origin={self.origin} paused={self.paused} pauses={len(self._spans)}>"

    def position(self, now: float) -> int:
        """The timeline sample at monotonic time ``now`` (same rounding as :class:`StreamClock`)."""
        return round((now - self.origin) * self.sample_rate)

    def stream_clock(self, **kwargs: Any) -> StreamClock:
        """A :class:`StreamClock` on this timeline (keyword arguments are passed on)."""
        kwargs.setdefault("sample_rate", self.sample_rate)
        return StreamClock(self.origin, **kwargs)

    @property
    def paused(self) -> bool:
        """Whether the recording is paused now."""
        return self._pause_start is not None

    def pause(self, now: float) -> int:
        """Start a pause at ``now``; returns its start position (no-op if already paused)."""
        if self._pause_start is None:
            self._pause_start = self.position(now)
            _log.debug("timeline paused at sample %d", self._pause_start)
        return self._pause_start

    def resume(self, now: float) -> int:
        """End the pause at ``now``; returns the position where recording continues.

        No-op (returns the current position) if not paused.
        """
        pos = self.position(now)
        start = self._pause_start
        if start is not None:
            self._spans.append((start, max(pos, start)))
            self._pause_start = None
            _log.debug("timeline resumed at sample %d after %d paused samples", pos, pos - start)
        return pos

    @property
    def pauses(self) -> tuple[tuple[int, int], ...]:
        """Finished pauses as ``(start, end)`` sample spans, oldest first (end exclusive)."""
        return tuple(self._spans)

    def paused_samples(self, now: float) -> int:
        """Total paused samples so far, including a pause still running at ``now``."""
        total = sum(e - s for s, e in self._spans)
        if self._pause_start is not None:
            total += max(0, self.position(now) - self._pause_start)
        return total

    def paused_at(self, position: int) -> bool:
        """Whether timeline sample ``position`` lies in a pause (finished or running).

        A frame released after :meth:`resume` can still belong before it (it waited in a
        jitter buffer); a writer that wants pauses to stay silent checks its start here.
        """
        start = self._pause_start
        if start is not None and position >= start:
            return True
        for s, e in reversed(self._spans):
            if s <= position < e:
                return True
            if e <= position:
                return False
        return False


def debursted_arrivals(released: list[Any]) -> list[float]:
    """Arrival times with bursts undone, for placing packets on the timeline.

    When the receiving thread stalls (GIL, a busy machine), packets that were sent 20 ms
    apart are read together; taken at face value, the first of them looks late and would
    shift the speech on the timeline. A packet cannot have been sent later than its
    successor minus their RTP distance, so within one contiguous release each arrival is
    capped by the next one's. This only ever moves arrivals earlier.
    """
    out = [r.arrival for r in released]
    for i in range(len(released) - 2, -1, -1):
        a, b = released[i], released[i + 1]
        if b.new_stream:
            continue
        step = seq_diff(b.sequence, a.sequence)
        if step >= 1 and ts_diff(b.timestamp, a.timestamp) == FRAME_SAMPLES * step:
            cap = out[i + 1] - step * FRAME_SAMPLES / SAMPLE_RATE
            if cap < out[i]:
                out[i] = cap
    return out
