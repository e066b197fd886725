"""The decode worker: what runs inside each :class:`~discord.ext.listening.pool.AudioProcessPool` process.

The parent sends batches of Opus packets, already ordered per SSRC by the jitter buffer;
the worker decodes them in that order with one
:class:`~discord.ext.listening.decoding.DecoderSet` per stream, which conceals the gaps the
parent reports, and sends the PCM back in batches (wire format:
:mod:`discord.ext.listening.pool.protocol`).

Everything here is importable in a fresh interpreter: the ``spawn`` and ``forkserver``
start methods import :func:`worker_main` by name.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
from multiprocessing.connection import Connection
from typing import Any, Final

from ..decoding import DecoderSet
from .protocol import OP_CLOSE, OP_DECODE, OP_RESET, OP_STOP, REPLY_ERROR, REPLY_FRAMES, REPLY_HELLO

__all__ = ("worker_main",)

_log = logging.getLogger(__name__)

#: How often an idle worker checks that its parent still exists.
_IDLE_POLL: Final = 5.0
#: A worker answers after at most about this many frames, so replies keep flowing under
#: load (the parent's hang detection relies on that) and each stays ~250 KB.
_REPLY_FRAMES: Final = 64


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
    streams: dict[int, DecoderSet] = {}
    dumps, loads = pickle.dumps, pickle.loads
    replies: list[tuple[Any, ...]] = []  # decoded but not yet sent
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
                            dec = streams[sid] = DecoderSet(limit)
                        # Slices keep each reply small: the parent's recv_bytes costs grow
                        # faster than linearly with message size (6 us/frame at 2 MB
                        # against 1.7 us/frame at 200 KB).
                        for i in range(0, len(items), _REPLY_FRAMES):
                            part = items[i : i + _REPLY_FRAMES]
                            frames: list[tuple[Any, ...]] = []
                            refused: list[Any] = []
                            try:
                                dec.decode_items(part, frames, refused)
                            except Exception as exc:
                                dec.counts.errors += 1
                                report(f"decoding stream {sid} failed: {exc!r}")
                            # Every item is acknowledged, even if decoding blew up half way:
                            # the parent's in-flight accounting and hang detection rely on it.
                            replies.append((sid, len(part), frames, dec.counts.take(), refused))
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
