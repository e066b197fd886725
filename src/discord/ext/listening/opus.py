"""libopus through ctypes, from the copy that ships inside PyAV's wheel.

The project needs three things from libopus that no Python wrapper on PyPI gives without a
system package: decoding with in-band FEC (``decode_fec=1`` on the packet after a gap),
packet loss concealment (decoding ``NULL``), and a lean call path (PyAV's codec context adds
frame objects and copies per packet). PyAV's manylinux/macOS/Windows wheels carry libopus as
a separate shared object, so we load that one and call it directly.

The same library is handed to :mod:`discord.opus` by :func:`load_for_discord` so that
discord.py can encode outgoing audio on machines without a system libopus.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import sys
import threading
from typing import Final

__all__ = (
    "CHANNELS",
    "FRAME_BYTES",
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "SILENCE_FRAME",
    "OpusDecoder",
    "OpusEncoder",
    "OpusError",
    "libopus_path",
    "load_for_discord",
    "packet_samples",
)

_log = logging.getLogger(__name__)

SAMPLE_RATE: Final = 48000
CHANNELS: Final = 2
FRAME_SAMPLES: Final = 960  # 20 ms at 48 kHz, per channel
FRAME_BYTES: Final = FRAME_SAMPLES * CHANNELS * 2  # s16le interleaved stereo
#: The Opus frame Discord clients send (five times) when they stop talking.
SILENCE_FRAME: Final = b"\xf8\xff\xfe"

_MAX_FRAME_SAMPLES: Final = 5760  # 120 ms, the longest frame Opus allows
_OPUS_OK: Final = 0
_APPLICATION: Final = {"voip": 2048, "audio": 2049, "lowdelay": 2051}
_SET_BITRATE: Final = 4002
_SET_INBAND_FEC: Final = 4012
_SET_PACKET_LOSS_PERC: Final = 4014
_SET_COMPLEXITY: Final = 4010
_SET_SIGNAL: Final = 4024
_SIGNAL_VOICE: Final = 3001


class OpusError(RuntimeError):
    """A libopus call failed; ``code`` is libopus' negative error code."""

    def __init__(self, code: int, what: str) -> None:
        self.code = code
        super().__init__(f"{what} failed: {_strerror(code)} ({code})")


_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def libopus_path() -> str:
    """Return the path of the libopus shared library bundled with PyAV.

    Raises
    ------
    RuntimeError
        PyAV is installed without a separate libopus (a source build against a system FFmpeg).
    """
    import av  # imported lazily: av pulls in FFmpeg, which a worker that only decodes never needs

    base = os.path.dirname(os.path.dirname(os.path.abspath(av.__file__)))
    patterns = {
        "win32": ("av.libs/*opus*.dll", "av/*opus*.dll"),
        "darwin": ("av/.dylibs/libopus*.dylib", "av/__dot__dylibs/libopus*.dylib"),
    }.get(sys.platform, ("av.libs/libopus*.so*",))
    for pattern in patterns:
        found = sorted(glob.glob(os.path.join(base, pattern)))
        if found:
            return found[0]
    raise RuntimeError(
        "could not find the libopus bundled with PyAV (looked for "
        + ", ".join(patterns)
        + f" under {base}); install PyAV from its binary wheel"
    )


def _library() -> ctypes.CDLL:
    global _lib
    if _lib is not None:
        return _lib
    with _lib_lock:
        if _lib is None:
            lib = ctypes.CDLL(libopus_path())
            c_void_p, c_int, c_int32, c_char_p = ctypes.c_void_p, ctypes.c_int, ctypes.c_int32, ctypes.c_char_p
            lib.opus_strerror.restype = c_char_p
            lib.opus_strerror.argtypes = [c_int]
            lib.opus_encoder_create.restype = c_void_p
            lib.opus_encoder_create.argtypes = [c_int32, c_int, c_int, ctypes.POINTER(c_int)]
            lib.opus_encoder_destroy.argtypes = [c_void_p]
            lib.opus_encode.restype = c_int32
            lib.opus_encode.argtypes = [c_void_p, c_char_p, c_int, c_void_p, c_int32]
            lib.opus_encoder_ctl.restype = c_int
            lib.opus_decoder_create.restype = c_void_p
            lib.opus_decoder_create.argtypes = [c_int32, c_int, ctypes.POINTER(c_int)]
            lib.opus_decoder_destroy.argtypes = [c_void_p]
            lib.opus_decode.restype = c_int
            lib.opus_decode.argtypes = [c_void_p, c_char_p, c_int32, c_void_p, c_int, c_int]
            lib.opus_packet_get_nb_samples.restype = c_int
            lib.opus_packet_get_nb_samples.argtypes = [c_char_p, c_int32, c_int32]
            lib.opus_packet_has_lbrr.restype = c_int
            lib.opus_packet_has_lbrr.argtypes = [c_char_p, c_int32]
            _lib = lib
    return _lib


def _strerror(code: int) -> str:
    try:
        return str(_library().opus_strerror(code).decode())
    except Exception:  # the library itself failed to load: say the number only
        return "libopus error"


def load_for_discord() -> None:
    """Make :mod:`discord.opus` use the bundled libopus if it has none loaded yet.

    discord.py looks for a system libopus to encode what a bot plays; this hands it ours so
    ``VoiceClient.play`` works on a machine with only wheels installed.
    """
    import discord.opus

    if not discord.opus.is_loaded():
        discord.opus.load_opus(libopus_path())
        _log.debug("discord.opus now uses the libopus bundled with PyAV")


def packet_samples(packet: bytes) -> int:
    """Return the number of samples per channel at 48 kHz that an Opus packet decodes to.

    Raises
    ------
    OpusError
        The packet is not a valid Opus packet.
    """
    n = int(_library().opus_packet_get_nb_samples(packet, len(packet), SAMPLE_RATE))
    if n < 0:
        raise OpusError(n, "opus_packet_get_nb_samples")
    return n


def packet_has_fec(packet: bytes) -> bool:
    """Whether an Opus packet carries in-band FEC (LBRR) data for the frame before it."""
    return bool(_library().opus_packet_has_lbrr(packet, len(packet)) == 1)


class OpusEncoder:
    """A libopus encoder for 48 kHz stereo 20 ms frames of s16le PCM.

    Parameters
    ----------
    bitrate: :class:`int`
        Target bits per second (Discord's default channel bitrate is 64000).
    fec: :class:`bool`
        Whether to embed in-band forward error correction (what Discord clients do).
    expected_loss: :class:`int`
        Expected packet loss in percent (0-100); libopus only emits FEC data when this is > 0.
    application: :class:`str`
        ``"voip"``, ``"audio"`` or ``"lowdelay"``.
    """

    def __init__(
        self, bitrate: int = 64000, *, fec: bool = True, expected_loss: int = 10, application: str = "audio"
    ) -> None:
        if not 6000 <= bitrate <= 510000:
            raise ValueError(f"bitrate must be within 6000..510000 bits/s, got {bitrate!r}")
        if not 0 <= expected_loss <= 100:
            raise ValueError(f"expected_loss must be a percentage 0..100, got {expected_loss!r}")
        if application not in _APPLICATION:
            raise ValueError(f"application must be one of {sorted(_APPLICATION)}, got {application!r}")
        lib = _library()
        err = ctypes.c_int()
        self._lib = lib
        self._state = lib.opus_encoder_create(SAMPLE_RATE, CHANNELS, _APPLICATION[application], ctypes.byref(err))
        if err.value != _OPUS_OK or not self._state:
            raise OpusError(err.value, "opus_encoder_create")
        self._ctl(_SET_BITRATE, bitrate)
        self._ctl(_SET_INBAND_FEC, int(fec))
        self._ctl(_SET_PACKET_LOSS_PERC, expected_loss)
        self._ctl(_SET_SIGNAL, _SIGNAL_VOICE)
        self._out = ctypes.create_string_buffer(4000)

    def _ctl(self, request: int, value: int) -> None:
        ret = self._lib.opus_encoder_ctl(ctypes.c_void_p(self._state), ctypes.c_int(request), ctypes.c_int(value))
        if ret != _OPUS_OK:
            raise OpusError(ret, f"opus_encoder_ctl({request})")

    def encode(self, pcm: bytes) -> bytes:
        """Encode one 20 ms frame (3840 bytes of 48 kHz stereo s16le) into an Opus packet."""
        if len(pcm) != FRAME_BYTES:
            raise ValueError(f"expected {FRAME_BYTES} bytes of PCM (20 ms of 48 kHz stereo s16le), got {len(pcm)}")
        n = self._lib.opus_encode(self._state, bytes(pcm), FRAME_SAMPLES, self._out, len(self._out))
        if n < 0:
            raise OpusError(n, "opus_encode")
        return self._out.raw[:n]

    def __del__(self) -> None:
        state, self._state = getattr(self, "_state", None), None
        if state:
            self._lib.opus_encoder_destroy(state)


class OpusDecoder:
    """A stateful libopus decoder producing 48 kHz stereo s16le PCM.

    One decoder serves one SSRC, fed in sequence order: Opus predicts each frame from the one
    before, so decoding out of order (or sharing a decoder between speakers) corrupts audio.
    """

    def __init__(self) -> None:
        lib = _library()
        err = ctypes.c_int()
        self._lib = lib
        self._state = lib.opus_decoder_create(SAMPLE_RATE, CHANNELS, ctypes.byref(err))
        if err.value != _OPUS_OK or not self._state:
            raise OpusError(err.value, "opus_decoder_create")
        self._pcm = ctypes.create_string_buffer(_MAX_FRAME_SAMPLES * CHANNELS * 2)
        # Slicing a memoryview copies only the decoded bytes; ``.raw[:n]`` copies all 23 kB.
        self._view = memoryview(self._pcm).cast("B")
        self._decode = lib.opus_decode

    def decode(self, packet: bytes) -> bytes:
        """Decode one Opus packet; returns its PCM (3840 bytes for a 20 ms packet).

        Raises
        ------
        OpusError
            The packet is corrupt.
        """
        n = self._decode(self._state, packet, len(packet), self._pcm, _MAX_FRAME_SAMPLES, 0)
        if n < 0:
            raise OpusError(n, "opus_decode")
        return self._view[: n * 4].tobytes()

    def decode_fec(self, next_packet: bytes, samples: int = FRAME_SAMPLES) -> bytes:
        """Recover the frame *before* ``next_packet`` from its in-band FEC data.

        When ``next_packet`` carries no FEC, libopus falls back to concealment, so the
        result is always ``samples`` samples long.
        """
        n = self._decode(self._state, next_packet, len(next_packet), self._pcm, samples, 1)
        if n < 0:
            raise OpusError(n, "opus_decode(fec)")
        return self._view[: n * 4].tobytes()

    def conceal(self, samples: int = FRAME_SAMPLES) -> bytes:
        """Packet loss concealment: synthesize ``samples`` samples continuing the last audio."""
        n = self._decode(self._state, None, 0, self._pcm, samples, 0)
        if n < 0:
            raise OpusError(n, "opus_decode(plc)")
        return self._view[: n * 4].tobytes()

    def __del__(self) -> None:
        state, self._state = getattr(self, "_state", None), None
        if state:
            self._lib.opus_decoder_destroy(state)
