"""Speech to text with PocketSphinx, offline: :class:`PocketSphinxRecognizer`.

The optional extra ``[speech]`` installs it; its wheel ships a US English acoustic model,
language model and dictionary, so nothing is downloaded. It is fast and small, and far less
accurate than Whisper on open speech: the demo's and the tests' default, and the engine of
:class:`~discord.ext.listening.VoiceCommands` (a closed vocabulary, where it does well).
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

import numpy as np

from .pcm import PCMFormat
from .transcribe import Recognition, Word

__all__ = ("PocketSphinxRecognizer", "decode_utterance", "sphinx_decoder")

#: Frames a second in PocketSphinx's word times.
FRAME_RATE = 100
_ALTERNATE = re.compile(r"\(\d+\)$")  # "read(2)": the dictionary's second pronunciation
_NOT_WORDS = frozenset({"<s>", "</s>", "<sil>", "(NULL)"})  # and fillers: "[NOISE]", "++UH++"


def _pocketsphinx() -> Any:
    try:
        import pocketsphinx
    except ImportError as exc:
        raise ImportError("PocketSphinx is not installed: pip install 'discord-ext-listening[speech]'") from exc
    return pocketsphinx


def check_sphinx_options(config: dict[str, Any]) -> None:
    """Raise ``TypeError`` for an option PocketSphinx does not have, ``ValueError`` for a value
    it cannot read."""
    pocketsphinx = _pocketsphinx()
    try:
        pocketsphinx.Config(**config)
    except KeyError as exc:
        raise TypeError(f"PocketSphinx has no option among {sorted(config)}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"a PocketSphinx option has a value it cannot read ({config}): {exc}") from None


def sphinx_decoder(**config: Any) -> Any:
    """A ``pocketsphinx.Decoder`` with the bundled model and ``config`` (its option names)."""
    pocketsphinx = _pocketsphinx()
    decoder = pocketsphinx.Decoder(**{"loglevel": "FATAL", **config})
    # The model's feat.params overrides the feature options given here (cmn, remove_noise...)
    # without a word; give them back.
    params = os.path.join(decoder.config["hmm"], "feat.params")
    from_model = set()
    if os.path.exists(params):
        with open(params, encoding="utf-8") as f:
            from_model = {line.split()[0].lstrip("-") for line in f if line.startswith("-")}
    lost = {k: v for k, v in config.items() if k in from_model and decoder.config[k] != v}
    if lost:
        for key, value in lost.items():
            decoder.config[key] = value
        decoder.reinit_feat()
    return decoder


def decode_utterance(decoder: Any, pcm: bytes) -> Any:
    """Decode one whole utterance (16 kHz mono s16le) with the decoder's active search; its
    hypothesis, or ``None`` (its segments are then in ``decoder.seg()``)."""
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    return decoder.hyp()


def spoken(segments: Any) -> list[Any]:
    """The segments that are words (fillers, silence and sentence marks left out)."""
    return [s for s in segments if not (s.word in _NOT_WORDS or s.word.startswith(("[", "++")))]


def as_word(segment: Any, offset: float = 0.0) -> Word:
    """A word segment as a :class:`Word` ("read(2)" -> "read"), ``offset`` seconds earlier."""
    start, end = segment.start_frame / FRAME_RATE, (segment.end_frame + 1) / FRAME_RATE
    return Word(_ALTERNATE.sub("", segment.word), start - offset, end - offset)


def words_of(decoder: Any) -> tuple[Word, ...]:
    """The words of the decoder's last utterance, with their times (fillers and silence left out)."""
    return tuple(as_word(s) for s in spoken(decoder.seg()))


class PocketSphinxRecognizer:
    """A :class:`Recognizer` running PocketSphinx with its bundled US English model.

    Parameters
    ----------
    **config
        PocketSphinx options (``hmm``, ``lm``, ``dict``, ``beam``...), to use another model
        or tune it; the bundled model's defaults otherwise. Feature options the model's
        ``feat.params`` also sets (``cmn``, ``remove_noise``...) are honoured over it.

    Raises
    ------
    TypeError
        An option PocketSphinx does not have.
    ValueError
        An option's value it cannot read.
    ImportError
        PocketSphinx is not installed.
    """

    format = PCMFormat(16000, 1, "int16")
    #: PocketSphinx holds the GIL while it decodes: it runs in processes.
    releases_gil = False

    def __init__(self, **config: Any) -> None:
        check_sphinx_options(config)
        self.config = config
        self._decoder: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # to worker processes: settings, not the decoder
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state["config"])  # type: ignore[misc]

    def __copy__(self) -> PocketSphinxRecognizer:
        return PocketSphinxRecognizer(**self.config)

    def recognize(self, audio: np.ndarray) -> Recognition:
        """The text of one utterance (16 kHz mono int16), with word times."""
        pcm = np.asarray(audio)
        if pcm.dtype != np.int16:
            raise TypeError(f"PocketSphinxRecognizer takes int16 samples, got {pcm.dtype}")
        with self._lock:
            if self._decoder is None:
                self._decoder = sphinx_decoder(**self.config)
            decoder = self._decoder
            hyp = decode_utterance(decoder, pcm.tobytes())
            text = hyp.hypstr if hyp is not None else ""
            return Recognition(text, words_of(decoder) if text else ())
