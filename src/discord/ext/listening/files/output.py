"""The raw output of a recording file, I/O error helpers and silent PCM, shared by every format."""

from __future__ import annotations

import errno as errno_codes
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from ..opus import CHANNELS, SAMPLE_RATE

__all__ = ("BYTES_PER_SAMPLE", "ZEROS", "Output", "is_io_error", "silence_chunks")

BYTES_PER_SAMPLE: Final = 2 * CHANNELS  # one s16le stereo sample frame


class Output:
    """The open file of a recording: unbuffered, so what is written reaches the OS at once.

    A killed process loses nothing the OS has (the page cache survives the process); what
    Python would still hold in a buffer would be lost. PyAV writes through this object too
    (it is a file object), and :meth:`pwrite` patches headers without moving the position.
    :meth:`close` is a no-op (PyAV may call it when its container closes, before the last
    header patch); :meth:`release` closes the descriptor.
    """

    __slots__ = ("fh", "owned", "path")

    def __init__(self, path: Path, fileobj: Any = None) -> None:
        self.path = path
        # A caller's binary file object (a BytesIO...) is written in place and left open.
        self.owned = fileobj is None
        self.fh: Any = open(path, "w+b", buffering=0) if fileobj is None else fileobj

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        total = 0
        while total < len(view):
            n = self.fh.write(view[total:])
            if not n:  # pragma: no cover - a regular file never takes zero bytes without an error
                raise OSError(errno_codes.EIO, "write returned 0")
            total += n
        return total

    def pwrite(self, data: bytes, offset: int) -> None:
        if self.owned and hasattr(os, "pwrite"):
            fd = self.fh.fileno()
            done = 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], offset + done)
        else:  # Windows has no pwrite: seek there and back
            here = self.fh.tell()
            try:
                self.fh.seek(offset)
                self.write(data)
            finally:
                self.fh.seek(here)

    def pread(self, size: int, offset: int) -> bytes:
        if self.owned and hasattr(os, "pread"):
            return os.pread(self.fh.fileno(), size, offset)
        if not self.owned:  # the caller's file object: read it in place, then come back
            here = self.fh.tell()
            try:
                self.fh.seek(offset)
                return bytes(self.fh.read(size))
            finally:
                self.fh.seek(here)
        with open(self.path, "rb") as reader:  # pragma: no cover - Windows has no pread
            reader.seek(offset)
            return reader.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self.fh.seek(offset, whence))

    def tell(self) -> int:
        return int(self.fh.tell())

    def truncate(self, size: int) -> int:
        return int(self.fh.truncate(size))

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def release(self) -> None:
        if self.owned:
            self.fh.close()
        elif hasattr(self.fh, "flush"):
            self.fh.flush()


def is_io_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an I/O failure (an :exc:`OSError` or an FFmpeg error), not a programming error."""
    if isinstance(exc, OSError):
        return True
    try:
        import av
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, av.FFmpegError)


ZEROS: Final = bytes(SAMPLE_RATE * BYTES_PER_SAMPLE)  # one second of silence, shared, never mutated


def silence_chunks(samples: int, chunk: int = SAMPLE_RATE) -> Iterator[memoryview]:
    """Yield silent PCM in pieces of at most ``chunk`` samples (bounded memory)."""
    view = memoryview(ZEROS)
    while samples > 0:
        n = min(samples, chunk, len(ZEROS) // BYTES_PER_SAMPLE)
        yield view[: n * BYTES_PER_SAMPLE]
        samples -= n
