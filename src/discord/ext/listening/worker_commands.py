"""The ``worker`` commands of the CLI: ``worker record`` and ``worker stream``.

Both run a :class:`~discord.ext.listening.RedisWorker` over the streams bots publish with
:class:`~discord.ext.listening.RedisStreamSink`; start as many as the work needs, on any
machines: they share the streams. ``record`` writes each stream's files into a directory of
its own; ``stream`` hands each stream's frames or utterances to a function of the user's.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .file_sink import AudioFileSink
from .files import FORMATS, sanitize_filename
from .pcm import PCMFormat
from .redis_stream import redis_client
from .redis_worker import RedisWorker
from .sink import AudioSink
from .stream import AfterSilence, AudioStream

__all__ = ("add_worker_commands", "run_worker_command")

_log = logging.getLogger(__name__)


def add_worker_commands(sub: Any, formats: tuple[str, ...]) -> None:
    """Add ``worker record`` and ``worker stream`` to the CLI's subcommands."""
    worker = sub.add_parser("worker", help="work on what bots publish to Redis (RedisStreamSink); run many")
    jobs = worker.add_subparsers(dest="job", required=True)
    rec = jobs.add_parser("record", help="record each stream into files, as the bot would have")
    strm = jobs.add_parser("stream", help="hand each stream's frames or utterances to a function")
    for job, group in ((rec, "listening-recorders"), (strm, "listening-streams")):
        job.add_argument("--redis", required=True, help="redis:// or rediss:// URL (credentials from the URL)")
        job.add_argument(
            "--streams", default="listening:*", help="which stream keys, a Redis pattern (default: listening:*)"
        )
        job.add_argument(
            "--group", default=group, help=f"consumer group; workers of one group share (default: {group})"
        )
        job.add_argument("--max-streams", type=int, default=64, help="streams worked on at once (default 64)")
        job.add_argument("--lease", type=float, default=10.0, help="seconds before a dead worker's streams move")
        job.add_argument("--idle-exit", type=float, default=None, help="exit after this many seconds with no work")
    rec.add_argument("--output", type=Path, default=Path("recordings"), help="parent directory (default: recordings)")
    rec.add_argument("--format", choices=formats, default="wav")
    rec.add_argument("--no-mixed", action="store_true", help="do not write the mixed track")
    strm.add_argument("--call", required=True, help="module:function called with (stream key, frame or utterance)")
    strm.add_argument("--utterances", action="store_true", help="utterances, not frames")
    strm.add_argument("--silence", type=float, default=0.6, help="the pause that ends an utterance (default 0.6 s)")
    strm.add_argument("--rate", type=int, default=48000, help="sample rate of the audio handed on (default 48000)")
    strm.add_argument("--channels", type=int, choices=(1, 2), default=2)
    strm.add_argument("--dtype", choices=("int16", "float32"), default="int16")


def _worker(args: argparse.Namespace, make_sink: Callable[[str], AudioSink], decode: bool) -> RedisWorker:
    client = redis_client(args.redis)
    client.ping()  # unreachable at start: say so now, not after the first idle wait
    return RedisWorker(
        client,
        make_sink,
        pattern=args.streams,
        group=args.group,
        max_streams=args.max_streams,
        lease=args.lease,
        decode=decode,
    )


def _record(args: argparse.Namespace) -> int:
    file_type = FORMATS[args.format]
    sinks: dict[str, AudioFileSink] = {}

    def files_for(stream: str) -> AudioSink:  # a directory per stream (per recording)
        directory = args.output / sanitize_filename(stream.replace(":", "-"))
        sink = sinks[stream] = AudioFileSink(file_type, directory, mixed=not args.no_mixed)
        return sink

    worker = _worker(args, files_for, decode=False)
    for done in worker.run(idle_exit=args.idle_exit):
        sink = sinks[done.stream]
        files = [*sink.output_files.values(), *([sink.mixed_file] if sink.mixed_file else [])]
        print(f"{done.frames} frames from {done.stream}; {len(files)} files:")
        for f in files:
            print(f"  {f.path}")
    return 1 if worker.failed else 0


def _function(spec: str) -> Callable[..., Any]:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"--call must be module:function, got {spec!r}")
    sys.path.insert(0, ".")  # a module of the user's, beside where they run the worker
    fn = getattr(importlib.import_module(module), name)
    if not callable(fn):
        raise TypeError(f"{spec} is not callable")
    return fn  # type: ignore[no-any-return]


async def _stream(args: argparse.Namespace) -> int:
    fn = _function(args.call)
    fmt = PCMFormat(args.rate, args.channels, args.dtype)
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    errors = 0

    async def hand_on(stream: str, items: Any) -> None:
        nonlocal errors
        async for item in items:
            try:
                result = fn(stream, item)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # the user's function: logged and counted, the stream goes on
                errors += 1
                _log.exception("%s failed on %s", args.call, stream)

    def stream_for(key: str) -> AudioSink:  # on the worker's thread
        sink = AudioStream(format=fmt)
        items = sink.utterances(end=AfterSilence(args.silence)) if args.utterances else aiter(sink)

        def start() -> None:
            task = loop.create_task(hand_on(key, items))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop.call_soon_threadsafe(start)
        return sink

    worker = _worker(args, stream_for, decode=True)
    finished = await asyncio.to_thread(worker.run, idle_exit=args.idle_exit)
    if tasks:
        await asyncio.gather(*tasks)
    print(f"{len(finished)} streams finished; {errors} calls of {args.call} failed")
    return 1 if worker.failed or errors else 0


def run_worker_command(args: argparse.Namespace) -> int:
    """Run ``worker record`` or ``worker stream``; the exit status."""
    try:
        if args.job == "record":
            return _record(args)
        return asyncio.run(_stream(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # Redis unreachable, a bad --call, a directory that cannot be written...
        print(f"the worker failed: {exc}", file=sys.stderr)
        return 1
