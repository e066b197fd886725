"""Multi-process Opus decoding: :class:`AudioProcessPool` and the per-session :class:`StreamHandle`.

Opus decoding is the one heavy step of voice receive (~50-130 us per 20 ms frame), so it
runs in worker processes (:mod:`.worker`) while everything cheap (decryption, reordering,
timeline) stays in the parent. One pool serves every voice connection of the process. Each
speaker is placed on one worker for good (:meth:`AudioProcessPool.assign_speaker`: the first
worker fills up to ``SPEAKERS_PER_WORKER`` speakers, then the next...), so its packets meet
the same stateful decoder, in order.

How a batch travels::

    receive thread --submit()--+--------(pipe has room)--------+--> pipe --> worker process
                               +--> slot.pending --> writer ---+
    on_frames(list) <-- reader thread <-- pipe <-- worker (decode in order, conceal gaps)

- One message per batch each way (a pickle of plain tuples; see :mod:`.protocol` for the
  wire format and ``benchmarks/bench_pool.py`` for why pickle and not :mod:`struct`).
- :meth:`StreamHandle.submit` writes to the pipe itself while little is unread in it (a
  write that cannot block); otherwise it queues the batch for the worker's writer thread,
  which coalesces everything queued into one write. Either way it never blocks on the
  pipe, only (bounded by ``wait_timeout``) on a full backlog. With ``defer=True`` the batch
  waits for :meth:`AudioProcessPool.send_deferred`, which writes each worker the deferred
  batches of all its streams at once (the receive engine does that once per round).
- A reader thread per worker receives the decoded frames and calls each stream's
  ``on_frames`` with a list, in order.
- A monitor thread per pool restarts workers that die or hang.

The contract with the receive pipeline: every well-formed item given to
:meth:`StreamHandle.submit` comes back exactly once, either as frames through
``on_frames`` (its own frame, whose ``sequence`` is the item's, preceded by one frame per
frame lost before it) or through ``on_lost`` (worker died or hung, batch dropped by
backpressure, pool cleaned up), until the stream is closed.

Processes are started with the ``forkserver`` method where it exists and ``spawn``
elsewhere (``fork`` is allowed but unsafe once discord.py's threads run: a child forked
while another thread holds a lock, e.g. logging's, can deadlock). Both import the main
module in every worker, so a script that creates a pool must keep its top level behind
``if __name__ == "__main__":``.

Modules: :mod:`.protocol` (items, frames, pipe messages), :mod:`.worker` (the worker
process), :mod:`.stream` (:class:`StreamHandle`), :mod:`.slots` (per-worker bookkeeping),
:mod:`.processes` (:class:`AudioProcessPool`), :mod:`.default` (the default pool).
"""

from ..decoding import DEFAULT_CONCEAL_LIMIT
from .default import get_default_pool, init_audio_processing_pool
from .processes import (
    DEFAULT_MAX_BACKLOG,
    DEFAULT_PROCESS_PATIENCE,
    DEFAULT_WAIT_TIMEOUT,
    SPEAKERS_PER_WORKER,
    AudioProcessPool,
)
from .protocol import DecodedFrame, DecodeItem
from .stream import StreamHandle, StreamStats

__all__ = (
    "DEFAULT_CONCEAL_LIMIT",
    "DEFAULT_MAX_BACKLOG",
    "DEFAULT_PROCESS_PATIENCE",
    "DEFAULT_WAIT_TIMEOUT",
    "SPEAKERS_PER_WORKER",
    "AudioProcessPool",
    "DecodeItem",
    "DecodedFrame",
    "StreamHandle",
    "StreamStats",
    "get_default_pool",
    "init_audio_processing_pool",
)
