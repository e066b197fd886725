"""Command line: ``python -m discord.ext.listening {demo,record,worker}``.

``demo`` records simulated members through a local voice server (no token, no network).
``record`` records a real Discord voice channel; the bot token comes from the
``DISCORD_TOKEN`` environment variable, never from the command line (shell history).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import sys
from pathlib import Path

__all__ = ("main",)

_FORMATS = ("wav", "flac", "mp3", "opus", "mka", "m4a", "vorbis")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m discord.ext.listening", description="Voice receive for discord.py.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="record simulated members through the local voice server (no token needed)")
    demo.add_argument("--output", type=Path, default=Path("recordings"), help="parent directory (default: recordings)")
    demo.add_argument("--format", choices=_FORMATS, default="wav")
    demo.add_argument("--loss", type=float, default=0.03, help="simulated packet loss, 0..0.5 (default 0.03)")
    demo.add_argument("--seed", type=int, default=1, help="seed of the simulated network")
    demo.add_argument("--workers", type=int, default=2, help="decode worker processes")
    demo.add_argument("--redis", default=None, metavar="URL", help="publish to Redis and record with a worker beside")
    demo.add_argument("--transcribe", action="store_true", help="print what members say (PocketSphinx, [speech])")

    rec = sub.add_parser("record", help="record a real voice channel (token from $DISCORD_TOKEN)")
    rec.add_argument("--guild", type=int, required=True, help="guild (server) id")
    rec.add_argument("--channel", type=int, required=True, help="voice channel id")
    rec.add_argument("--output", type=Path, default=Path("recordings"), help="parent directory (default: recordings)")
    rec.add_argument("--format", choices=_FORMATS, default="wav")
    rec.add_argument("--duration", type=float, default=None, help="seconds to record (default: until Ctrl-C)")
    rec.add_argument("--until-empty", action="store_true", help="stop when no one else is left in the channel")
    rec.add_argument("--no-mixed", action="store_true", help="do not write the mixed track")
    rec.add_argument(
        "--split", type=float, default=None, metavar="SECONDS", help="numbered files of this many seconds each"
    )
    rec.add_argument(
        "--max-size", type=float, default=None, metavar="MB", help="start a track's next file at this size"
    )
    rec.add_argument(
        "--users",
        type=_user_ids,
        default=None,
        metavar="ID[,ID...]",
        help="record only these members (user ids, comma-separated); the others are not in any file",
    )
    rec.add_argument("--workers", type=int, default=2, help="decode worker processes")
    rec.add_argument("--redis", default=None, metavar="URL", help="publish to Redis and record with a worker beside")
    rec.add_argument("--transcript", action="store_true", help="write transcript.vtt/.jsonl beside the audio")
    from .worker_commands import add_worker_commands

    add_worker_commands(sub, _FORMATS)
    return p


def _user_ids(text: str) -> frozenset[int]:
    try:
        ids = frozenset(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"user ids are comma-separated integers, got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError("give at least one user id")
    return ids


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(args, "transcribe", False) or getattr(args, "transcript", False):
        if args.redis is not None:
            print(
                "a transcript needs the bot to decode: not with --redis (run `worker stream` beside it)",
                file=sys.stderr,
            )
            return 2
        if importlib.util.find_spec("pocketsphinx") is None:
            print("transcribing needs PocketSphinx: pip install 'discord-ext-listening[speech]'", file=sys.stderr)
            return 2
    if args.command == "demo":
        if not 0.0 <= args.loss <= 0.5:
            print("--loss must be within 0..0.5", file=sys.stderr)
            return 2
        from .demo import run_demo

        return asyncio.run(
            run_demo(
                args.output,
                file_format=args.format,
                loss=args.loss,
                seed=args.seed,
                workers=args.workers,
                redis=args.redis,
                transcribe=args.transcribe,
            )
        )
    if args.command == "worker":
        from .worker_commands import run_worker_command

        return run_worker_command(args)
    from .recorder import run_record

    return run_record(args)


if __name__ == "__main__":
    sys.exit(main())
