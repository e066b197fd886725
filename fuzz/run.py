#!/usr/bin/env python3
"""Run the fuzz targets of ``fuzz/targets.py`` under atheris (libFuzzer), each for a bounded time.

Usage::

    python fuzz/run.py                       # every target, 30 s each
    python fuzz/run.py --seconds 600 rtcp    # one target, ten minutes
    python fuzz/run.py --seconds 10 all      # every target in one process (the test suite does this)

Each target runs in its own process (libFuzzer ends its process when the time is up) with
``-max_total_time`` (the time bound), ``-timeout`` (one input taking longer is a hang: a
finding) and ``-rss_limit_mb`` (memory beyond it is a finding). A finding leaves the input
that triggered it in ``--artifacts`` (default ``fuzz/artifacts/``); replay it with
``python fuzz/run.py --replay FILE TARGET``. The exit status is non-zero when any target
found something or could not run.

Coverage: the package ``discord.ext.listening`` is instrumented, so libFuzzer steers by the
Python branches the inputs reach. davey (Rust), cryptography and libopus are not
instrumented; they are exercised through the inputs the Python code passes them.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

_EXECS = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_PEAK = re.compile(r"stat::peak_rss_mb:\s*(\d+)")
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")


def _child(name: str, seconds: int, timeout: int, rss_limit_mb: int, artifacts: str) -> None:
    import atheris

    # Dependencies load uninstrumented first (instrumenting discord.py would take ~20 s and
    # steer the search by code we do not test); then our package is instrumented on import.
    import davey  # noqa: F401
    import numpy  # noqa: F401

    import discord  # noqa: F401

    with atheris.instrument_imports(include=["discord.ext.listening"]):
        import targets
    target = targets.TARGETS[name]
    corpus = tempfile.mkdtemp(prefix=f"listening-fuzz-{name}-")
    for i, seed in enumerate(targets.seeds(name)):
        Path(corpus, f"seed{i}").write_bytes(seed)
    Path(artifacts).mkdir(parents=True, exist_ok=True)
    argv = [
        sys.argv[0],
        corpus,
        f"-max_total_time={seconds}",
        f"-timeout={timeout}",
        f"-rss_limit_mb={rss_limit_mb}",
        "-max_len=4096",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts.rstrip('/')}/{name}-",
    ]
    atheris.Setup(argv, target)
    atheris.Fuzz()


def run(names: list[str], seconds: int, timeout: int, rss_limit_mb: int, artifacts: str) -> list[dict]:
    results = []
    for name in names:
        started = time.monotonic()
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            name,
            "--seconds",
            str(seconds),
            "--timeout",
            str(timeout),
            "--rss-limit-mb",
            str(rss_limit_mb),
            "--artifacts",
            artifacts,
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + timeout + 120)
            output, code = done.stderr + done.stdout, done.returncode
        except subprocess.TimeoutExpired as exc:
            output, code = f"runner: the fuzzer process outlived its time bound\n{exc.stderr or ''}", -1
        execs = _EXECS.findall(output) or [m[0] for m in _DONE.findall(output)]
        peak = _PEAK.findall(output)
        result = {
            "target": name,
            "ok": code == 0,
            "exit_code": code,
            "inputs": int(execs[-1]) if execs else 0,
            "seconds": round(time.monotonic() - started, 1),
            "peak_rss_mb": int(peak[-1]) if peak else None,
        }
        if code != 0:
            result["output"] = output[-4000:]
        results.append(result)
    return results


def replay(path: str, name: str) -> int:
    import targets

    targets.TARGETS[name](Path(path).read_bytes())
    print(f"{name}: {path} ran without a finding")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", help="targets to run (default: all)")
    parser.add_argument("--seconds", type=int, default=30, help="time bound per target (default 30)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take (default 10)")
    parser.add_argument("--rss-limit-mb", type=int, default=2048, help="memory bound of a fuzzing process")
    parser.add_argument("--artifacts", default=str(HERE / "artifacts"), help="where findings are written")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--replay", metavar="FILE", help="run one saved input through TARGET")
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.seconds, args.timeout, args.rss_limit_mb, args.artifacts)
        return 0
    import targets

    if args.replay:
        if len(args.targets) != 1:
            parser.error("--replay needs exactly one TARGET")
        return replay(args.replay, args.targets[0])
    names = args.targets or [n for n in targets.TARGETS if n != "all"]
    unknown = [n for n in names if n not in targets.TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {', '.join(targets.TARGETS)}")
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed (pip install atheris; Linux/macOS wheels)", file=sys.stderr)
        return 2
    results = run(names, args.seconds, args.timeout, args.rss_limit_mb, args.artifacts)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            status = "ok" if r["ok"] else f"FINDING (exit {r['exit_code']})"
            print(
                f"{r['target']:10} {status:22} {r['inputs']:>10} inputs  {r['seconds']:>6}s  peak {r['peak_rss_mb']} MB"
            )
            if not r["ok"]:
                print(r["output"])
        print(f"total: {sum(r['inputs'] for r in results)} inputs")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
