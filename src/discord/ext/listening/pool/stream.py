"""The per-session end of the pool: :class:`StreamHandle` and its counters, :class:`StreamStats`."""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ..checks import check_seconds
from ..decoding import FRAME_KINDS, KIND_SILENCE
from ..opus import FRAME_BYTES
from .protocol import OP_CLOSE, OP_DECODE, OP_RESET, DecodedFrame, DecodeItem, normalized
from .slots import RateLimit, Slot

if TYPE_CHECKING:
    from .processes import AudioProcessPool

__all__ = ("StreamHandle", "StreamStats")

_log = logging.getLogger(__name__)

# Every silence frame shares this one object: a long gap costs a list slot per frame, not 3840 bytes.
_SILENCE_PCM: Final = bytes(FRAME_BYTES)


@dataclass(frozen=True, slots=True)
class StreamStats:
    """A snapshot of a :class:`StreamHandle`'s counters.

    ``decoded``, ``fec``, ``plc``, ``silence`` and ``errors`` are the stream's
    :class:`~discord.ext.listening.decoding.DecodeCounts`, summed over its workers.

    Attributes
    ----------
    submitted: :class:`int`
        Items accepted by :meth:`StreamHandle.submit`.
    decoded, fec, plc, silence, errors: :class:`int`
        See :class:`~discord.ext.listening.decoding.DecodeCounts`.
    lost_in_worker: :class:`int`
        Items whose frames never came back because their worker died or hung (or that
        were still queued when the pool was cleaned up).
    dropped: :class:`int`
        Items refused by :meth:`StreamHandle.submit` (worker backlogged past
        ``wait_timeout``, or the stream/pool closed).
    """

    submitted: int = 0
    decoded: int = 0
    fec: int = 0
    plc: int = 0
    silence: int = 0
    errors: int = 0
    lost_in_worker: int = 0
    dropped: int = 0

    @property
    def concealed(self) -> int:
        """Frames made up for lost packets: FEC + PLC."""
        return self.fec + self.plc


class StreamHandle:
    """One consumer of the pool: a voice connection's (or listening session's) audio.

    Created by :meth:`AudioProcessPool.open_stream`; not instantiated directly. Thread-safe:
    :meth:`submit` may run on the receive thread while :meth:`stats` runs elsewhere, but
    the items of one SSRC must be submitted in sequence order (from one thread, or
    serialized by the caller).

    Attributes
    ----------
    stream_id: :class:`int`
        Unique within the pool; names the stream's decoder states in the worker.
    guild_id: :class:`int`
        The guild the stream was opened for.
    worker_index: :class:`int`
        ``guild_id % max_processes``.
    conceal_limit: :class:`int`
        Consecutive lost frames concealed by PLC before reporting silence.
    """

    def __init__(
        self,
        pool: AudioProcessPool,
        stream_id: int,
        guild_id: int,
        on_frames: Callable[[list[DecodedFrame]], None],
        slot: Slot,
        conceal_limit: int,
        on_lost: Callable[[list[tuple[Any, ...]]], None] | None = None,
        on_decode_error: Callable[[list[tuple[Any, ...]]], None] | None = None,
    ) -> None:
        self._pool = pool
        self.stream_id = stream_id
        self.guild_id = guild_id
        self.worker_index = slot.index
        self.conceal_limit = conceal_limit
        self._on_frames = on_frames
        self._on_lost = on_lost
        self._on_decode_error = on_decode_error
        self._slot = slot
        # The slot's lock guards every counter below: the pool's threads update them under it.
        self._lock = slot.lock
        self._closed = False
        self._inflight = 0
        self._submitted = 0
        self._decoded = 0
        self._fec = 0
        self._plc = 0
        self._silence = 0
        self._errors = 0
        self._lost_in_worker = 0
        self._dropped = 0
        self._callback_log = RateLimit()
        self._drop_log = RateLimit()

    # -- the packet path -------------------------------------------------------------

    def submit(self, items: Iterable[DecodeItem | tuple[Any, ...]], *, defer: bool = False) -> bool:
        """Queue one batch of packets for decoding; never blocks longer than ``wait_timeout``.

        Call it once per jitter-buffer release with everything released (all SSRCs of the
        connection), not once per packet: the per-call overhead (~10-30 us) is then shared.

        Parameters
        ----------
        items: Iterable[:class:`DecodeItem`]
            Items (``DecodeItem`` or plain tuples in its field order), in sequence order per
            SSRC. Payloads must be :class:`bytes`. The pool keeps its own copy of the list.
        defer: :class:`bool`
            Keep the batch queued until :meth:`AudioProcessPool.send_deferred`, which sends
            everything deferred for a worker, by every stream, in one write (one wake-up of
            the worker and one reply for all of them). For a thread that submits for many
            streams in rounds; it must call ``send_deferred`` after each round. Defaults to
            ``False``: the batch goes out at once.

        Returns
        -------
        :class:`bool`
            ``True`` if the batch was queued; ``False`` if it was dropped and counted in
            :attr:`dropped` because the worker stayed backlogged for ``wait_timeout``
            seconds or the stream is closed.

        Raises
        ------
        TypeError
            An item is not a :class:`DecodeItem` in shape or types.
        """
        # Plain tuples pickle ~8x faster than NamedTuples; tuple() of a tuple is free.
        batch = list(map(tuple, items))
        n = len(batch)
        if not n:
            return True
        slot = self._slot
        message = (OP_DECODE, self.stream_id, self.conceal_limit, batch)
        # Pickled before taking the lock, in case the pipe has room for a direct write (the
        # usual case: the worker keeps up). If it has not, the writer thread re-pickles the
        # message together with others; that only happens while the worker lags behind.
        try:
            data = pickle.dumps([message], 5)
        except Exception:
            batch = normalized(batch)
            message = (OP_DECODE, self.stream_id, self.conceal_limit, batch)
            data = pickle.dumps([message], 5)
        direct = None
        with slot.lock:
            if self._closed:
                self._dropped += n
                return False
            dropped = slot.outstanding and slot.outstanding + n > slot.max_backlog and not self._wait_for_room(n)
            if dropped:
                self._dropped += n
                suppressed = self._drop_log.ready()
                if suppressed is not None and not self._closed:
                    _log.warning(
                        "decode worker %d is backlogged (%d packets queued); dropped %d packets of stream %d "
                        "(%d more drops not logged)",
                        slot.index,
                        slot.outstanding,
                        n,
                        self.stream_id,
                        suppressed,
                    )
            else:
                self._inflight += n
                self._submitted += n
                direct = slot.queue(self, message, len(data), defer)
        if dropped:
            self._lost(batch)
            return False
        if direct is not None:
            try:
                direct.conn.send_bytes(data)
            except (OSError, ValueError):
                # The worker died; the monitor counts this batch as lost with the rest.
                slot.pipe_broke(direct)
            finally:
                direct.send_lock.release()
        return True

    def _wait_for_room(self, n: int) -> bool:
        # Backlogged: wait a bounded time for the worker to catch up; the caller drops the
        # newest batch (its own) if it does not, rather than grow memory or stall the socket.
        # Runs with the slot lock held.
        slot = self._slot
        deadline = time.monotonic() + self._pool.wait_timeout
        while slot.outstanding and slot.outstanding + n > slot.max_backlog and not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            slot.space.wait(remaining)
        return not (self._closed or (slot.outstanding and slot.outstanding + n > slot.max_backlog))

    # -- what the pool's threads report (all with the slot lock held) ----------------------

    def _answered(self, n: int, counts: tuple[int, int, int, int, int]) -> bool:
        """The worker answered ``n`` items, producing ``counts`` (a ``DecodeCounts`` tuple);
        whether their frames are still wanted."""
        decoded, fec, plc, silence, errors = counts
        self._inflight -= n
        self._decoded += decoded
        self._fec += fec
        self._plc += plc
        self._silence += silence
        self._errors += errors
        return not self._closed

    def _worker_lost(self, n: int) -> None:
        """``n`` items will never be answered (their worker died, or the pool closed first)."""
        self._lost_in_worker += n
        self._inflight -= n

    @property
    def _finished(self) -> bool:
        """Closed with nothing in flight: the slot can forget the stream."""
        return self._closed and self._inflight <= 0

    def _shut(self) -> None:
        """Closed by the pool's cleanup (no ``OP_CLOSE``: the worker is gone)."""
        self._closed = True

    # -- callbacks (never under the slot lock) ----------------------------------------------

    def _deliver(self, frames: list[tuple[Any, ...]], refused: list[tuple[Any, ...]]) -> None:
        # Runs on the slot's reader thread with the slot's deliver lock held. Refusals first:
        # the owner may still need what it keeps for those items until their frames arrive.
        if refused:
            self._callback("on_decode_error", self._on_decode_error, refused)
        if not frames:
            return
        kinds, silence_pcm, silence, new = FRAME_KINDS, _SILENCE_PCM, KIND_SILENCE, tuple.__new__
        out = [
            new(DecodedFrame, (s, q, t, silence_pcm if k == silence else a, kinds[k], e)) for s, q, t, a, k, e in frames
        ]
        self._callback("on_frames", self._on_frames, out)

    def _lost(self, items: list[tuple[Any, ...]]) -> None:
        # Tells the owner which items will never produce frames.
        if items:
            self._callback("on_lost", self._on_lost, items)

    def _callback(self, name: str, callback: Callable[[list[Any]], None] | None, arg: list[Any]) -> None:
        if callback is None:
            return
        try:
            callback(arg)
        except Exception:
            suppressed = self._callback_log.ready()
            if suppressed is not None:
                _log.exception("%s of stream %d raised (%d more not logged)", name, self.stream_id, suppressed)

    # -- control ------------------------------------------------------------------------

    def reset(self, ssrc: int | None = None) -> None:
        """Drop the decoder state of ``ssrc`` (all SSRCs of this stream when ``None``).

        Use it when an SSRC is reused or its sender restarted (sequence numbers jumped):
        the next packet then decodes on a fresh decoder instead of one predicting from
        unrelated audio. Ordered with :meth:`submit`: items submitted before the reset
        still use the old state. (A :class:`DecodeItem` with ``new_stream`` does the same
        for its SSRC, at its place in a batch.)

        Parameters
        ----------
        ssrc: Optional[:class:`int`]
            The SSRC, or ``None`` for all.

        Raises
        ------
        ValueError
            ``ssrc`` is not a 32-bit unsigned int or ``None``.
        """
        if ssrc is not None and (not isinstance(ssrc, int) or isinstance(ssrc, bool) or not 0 <= ssrc <= 0xFFFFFFFF):
            raise ValueError(f"ssrc must be a 32-bit unsigned int or None, got {ssrc!r}")
        slot = self._slot
        with slot.lock:
            if self._closed or self._pool.closed:
                return
            slot.push((OP_RESET, self.stream_id, -1 if ssrc is None else ssrc))
            slot.has_work.notify()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every submitted item's frames were delivered (or counted lost).

        Parameters
        ----------
        timeout: :class:`float`
            Seconds to wait at most.

        Returns
        -------
        :class:`bool`
            Whether nothing is in flight any more.
        """
        slot = self._slot
        deadline = time.monotonic() + check_seconds("timeout", timeout)
        with slot.lock:
            while self._inflight > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                slot.space.wait(min(remaining, 0.25))
        return True

    def close(self) -> None:
        """Stop the stream: later submits are dropped, in-flight frames are discarded, and the
        worker frees the stream's decoder states. Idempotent. Call :meth:`flush` first to
        receive the frames still in flight."""
        slot = self._slot
        with slot.lock:
            if self._closed:
                return
            self._closed = True
            if self._inflight <= 0:
                slot.streams.pop(self.stream_id, None)
            if not self._pool.closed:
                slot.push((OP_CLOSE, self.stream_id))
                slot.has_work.notify()
            slot.space.notify_all()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (or the pool was cleaned up)."""
        return self._closed

    def __enter__(self) -> StreamHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- counters -----------------------------------------------------------------------

    def stats(self) -> StreamStats:
        """A consistent snapshot of every counter."""
        with self._lock:
            return StreamStats(
                self._submitted,
                self._decoded,
                self._fec,
                self._plc,
                self._silence,
                self._errors,
                self._lost_in_worker,
                self._dropped,
            )

    @property
    def submitted(self) -> int:
        """Items accepted by :meth:`submit`."""
        return self._submitted

    @property
    def decoded(self) -> int:
        """Frames decoded from their own packet."""
        return self._decoded

    @property
    def concealed(self) -> int:
        """Lost frames recovered by FEC or synthesized by PLC."""
        return self._fec + self._plc

    @property
    def lost_in_worker(self) -> int:
        """Items whose frames were lost because their worker died or hung (or the pool closed)."""
        return self._lost_in_worker

    @property
    def errors(self) -> int:
        """Corrupt packets and malformed items."""
        return self._errors

    @property
    def dropped(self) -> int:
        """Items refused because the worker was backlogged or the stream closed."""
        return self._dropped

    @property
    def in_flight(self) -> int:
        """Items submitted whose frames have not come back yet."""
        return self._inflight

    def __repr__(self) -> str:
        return (
            f"<StreamHandle id={self.stream_id} guild={self.guild_id} worker={self.worker_index} closed={self._closed}>"
        )
