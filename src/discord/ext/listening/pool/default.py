"""The process-wide default pool: what ``listen()`` uses when it is given none."""

from __future__ import annotations

import os
import threading

from ..checks import check_int, check_seconds
from .processes import DEFAULT_PROCESS_PATIENCE, DEFAULT_WAIT_TIMEOUT, MAX_PROCESSES, AudioProcessPool

__all__ = ("get_default_pool", "init_audio_processing_pool")

_default_pool: AudioProcessPool | None = None
_default_lock = threading.Lock()


def init_audio_processing_pool(
    max_processes: int,
    *,
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
    process_patience: float = DEFAULT_PROCESS_PATIENCE,
) -> AudioProcessPool:
    """Create the process-wide default pool that ``listen()`` uses when given none.

    Call it once at start-up (inside ``if __name__ == "__main__":``). Calling it again with
    the same arguments returns the same pool; with different ones while that pool is open
    raises, because replacing it would cut off the streams using it: call its
    :meth:`~AudioProcessPool.cleanup_processes` first.

    Parameters
    ----------
    max_processes: :class:`int`
        Worker processes (see :class:`AudioProcessPool`).
    wait_timeout: :class:`float`
        See :class:`AudioProcessPool`.
    process_patience: :class:`float`
        See :class:`AudioProcessPool`.

    Raises
    ------
    RuntimeError
        A default pool with other settings is already open.
    TypeError, ValueError
        Bad arguments.
    """
    global _default_pool
    check_int("max_processes", max_processes, 1, MAX_PROCESSES)
    wait_timeout = check_seconds("wait_timeout", wait_timeout)
    process_patience = check_seconds("process_patience", process_patience, positive=True)
    with _default_lock:
        current = _default_pool
        if current is not None and not current.closed:
            same = (current.max_processes, current.wait_timeout, current.process_patience) == (
                max_processes,
                wait_timeout,
                process_patience,
            )
            if same:
                return current
            raise RuntimeError(
                "the default audio processing pool already exists with "
                f"max_processes={current.max_processes}, wait_timeout={current.wait_timeout}, "
                f"process_patience={current.process_patience}; call cleanup_processes() on it "
                "(get_default_pool()) before initializing another"
            )
        _default_pool = AudioProcessPool(max_processes, wait_timeout=wait_timeout, process_patience=process_patience)
        return _default_pool


def get_default_pool() -> AudioProcessPool:
    """The process-wide default pool, created on first use with ``min(2, os.cpu_count())``
    workers unless :func:`init_audio_processing_pool` made one (a closed one is replaced)."""
    global _default_pool
    with _default_lock:
        if _default_pool is None or _default_pool.closed:
            _default_pool = AudioProcessPool(max(1, min(2, os.cpu_count() or 1)))
        return _default_pool
