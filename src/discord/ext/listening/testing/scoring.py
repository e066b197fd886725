"""How close recognised text is to what was said: word error rate, for tests and benchmarks."""

from __future__ import annotations

import re

__all__ = ("normalize_words", "word_error_rate")

_NOT_WORD = re.compile(r"[^a-z0-9' ]+")


def normalize_words(text: str) -> list[str]:
    """Lower-case words without punctuation (``"Let's start."`` -> ``["let's", "start"]``)."""
    return _NOT_WORD.sub(" ", text.lower().replace("-", " ")).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / words of ``reference``, after
    :func:`normalize_words` (Levenshtein distance over words). It exceeds 1 when the
    hypothesis adds more words than the reference has."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    if not ref:
        return float(len(hyp) > 0)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / len(ref)
