"""Speech to text with faster-whisper (CTranslate2's Whisper): :class:`WhisperRecognizer`.

The optional extra ``[whisper]`` installs it. The model (a size such as ``"small"`` or a
directory holding a converted model) is fetched by faster-whisper on the user's machine the
first time, or read from ``download_root`` / a path; this package ships none.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from .checks import check_int, check_text
from .pcm import PCMFormat
from .transcribe import Recognition, Word

__all__ = ("WhisperRecognizer",)


class WhisperRecognizer:
    """A :class:`Recognizer` running a Whisper model through faster-whisper.

    ::

        recognizer = listening.WhisperRecognizer("small.en", compute_type="int8")
        async for line in listening.transcribe(vc, recognizer):
            ...

    Parameters
    ----------
    model: Union[:class:`str`, :class:`os.PathLike`]
        A model size faster-whisper knows (``"tiny.en"``, ``"small"``, ``"large-v3"``...) or the
        directory of a CTranslate2 Whisper model.
    device, compute_type: :class:`str`
        Where and at which precision it runs (``"cpu"`` and ``"int8"`` by default).
    cpu_threads: :class:`int`
        Threads of one recognition (0: CTranslate2's default).
    language: Optional[:class:`str`]
        The language spoken (``"en"``...); detected per utterance when ``None``.
    beam_size: :class:`int`
        Beam search width (1 is greedy: faster, a little less accurate). Defaults to 5.
    download_root: Optional[:class:`str`]
        Where faster-whisper keeps downloaded models.
    local_files_only: :class:`bool`
        Never download: the model must be in ``download_root`` or at ``model``.
    **options
        Passed to ``WhisperModel.transcribe`` (``initial_prompt``, ``hotwords``,
        ``vad_filter``...).
    """

    format = PCMFormat(16000, 1, "float32")
    #: CTranslate2 releases the GIL while it computes: threads do.
    releases_gil = True

    def __init__(
        self,
        model: str | os.PathLike[str] = "small",
        *,
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 0,
        language: str | None = None,
        beam_size: int = 5,
        download_root: str | None = None,
        local_files_only: bool = False,
        **options: Any,
    ) -> None:
        self.model = os.fspath(model) if isinstance(model, os.PathLike) else check_text("model", model)
        self.device = check_text("device", device)
        self.compute_type = check_text("compute_type", compute_type)
        self.cpu_threads = check_int("cpu_threads", cpu_threads, 0, 1024)
        self.language = None if language is None else check_text("language", language)
        self.beam_size = check_int("beam_size", beam_size, 1, 64)
        self.download_root = download_root
        self.local_files_only = bool(local_files_only)
        self.options = options
        self._engine: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # to worker processes: settings, not the model
        state = dict(self.__dict__)
        state["_engine"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __copy__(self) -> WhisperRecognizer:
        other = WhisperRecognizer.__new__(WhisperRecognizer)
        other.__setstate__(self.__getstate__())
        return other

    def load(self) -> Any:
        """The faster-whisper model, loaded on first use (downloaded first if need be)."""
        with self._lock:
            if self._engine is None:
                try:
                    from faster_whisper import WhisperModel
                except ImportError as exc:
                    raise ImportError(
                        "WhisperRecognizer needs faster-whisper: pip install 'discord-ext-listening[whisper]'"
                    ) from exc
                self._engine = WhisperModel(
                    self.model,
                    device=self.device,
                    compute_type=self.compute_type,
                    cpu_threads=self.cpu_threads,
                    download_root=self.download_root,
                    local_files_only=self.local_files_only,
                )
            return self._engine

    def recognize(self, audio: np.ndarray) -> Recognition:
        """The text of one utterance (16 kHz mono float32), with word times."""
        engine = self.load()
        segments, _info = engine.transcribe(
            np.asarray(audio, dtype=np.float32),
            language=self.language,
            beam_size=self.beam_size,
            word_timestamps=True,
            condition_on_previous_text=False,  # each utterance stands alone
            **self.options,
        )
        texts: list[str] = []
        words: list[Word] = []
        for segment in segments:
            texts.append(segment.text.strip())
            for w in segment.words or ():
                words.append(Word(w.word.strip(), float(w.start), float(w.end)))
        return Recognition(" ".join(t for t in texts if t), tuple(words))
