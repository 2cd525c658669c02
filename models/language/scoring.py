"""Score free text with a trained R-GLM: per-word surprisal and next-word predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from v1motion.models.language.data import EOS, tokenize
from v1motion.models.language.rglm import LinearRecurrentLM

LOG2E = 1.0 / np.log(2.0)


class LanguageScorer:
    """Text in, surprisal out. Reading starts at a sentence boundary (an implicit ``<eos>``).

    Parameters
    ----------
    model : a fitted :class:`LinearRecurrentLM`
    """

    def __init__(self, model: LinearRecurrentLM):
        model._check_fitted()
        self.model = model
        self.vocab = model.vocab_

    @classmethod
    def from_file(cls, path: str | Path) -> LanguageScorer:
        return cls(LinearRecurrentLM.load(path))

    def _ids(self, text: str) -> tuple[list[str], np.ndarray, list[bool]]:
        _check_text(text)
        words = tokenize(text, self.vocab.abbreviations, self.vocab.index)
        unknown = [w not in self.vocab.index for w in words]
        return words, self.vocab.encode(words), unknown

    def tokens(self, text: str) -> list[str]:
        """The tokens the model reads for ``text`` (before vocabulary look-up)."""
        _check_text(text)
        return tokenize(text, self.vocab.abbreviations, self.vocab.index)

    def score(self, text: str) -> dict:
        """Per-token surprisal (bits) and the perplexity of ``text``.

        Returns
        -------
        dict with ``tokens`` (list of {token, word, unknown, surprisal_bits}, where ``word`` is the
        vocabulary entry scored, ``<unk>`` for unknown tokens), ``perplexity`` and ``bits_per_token``.

        Raises
        ------
        ValueError if the text holds no words.
        """
        words, ids, unknown = self._ids(text)
        if not words:
            raise ValueError("text contains no words to score")
        stream = np.concatenate([[self.vocab.eos_id], ids])
        bits = -self.model.log_probs(stream) * LOG2E
        tokens = [
            {
                "token": w,
                "word": self.vocab.words[int(i)],
                "unknown": u,
                "surprisal_bits": float(b),
            }
            for w, i, u, b in zip(words, ids, unknown, bits, strict=True)
        ]
        mean = float(bits.mean())
        return {"tokens": tokens, "bits_per_token": mean, "perplexity": float(2.0**mean)}

    def next_words(self, context: str, k: int = 10) -> list[dict]:
        """The ``k`` most probable next words after ``context`` (may be empty), most likely first.

        ``<unk>`` is not a word to suggest (it stands for every rare word at once) and is left out;
        the probabilities are the model's, not renormalised without it.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be a whole number, got {k!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        _, ids, _ = self._ids(context)
        stream = np.concatenate([[self.vocab.eos_id], ids]).astype(np.int64)
        logp = self.model.next_word_log_probs(stream).copy()
        logp[self.vocab.unk_id] = -np.inf
        k = min(k, logp.size - 1)
        top = np.argpartition(-logp, k - 1)[:k]
        top = top[np.argsort(-logp[top])]
        return [
            {"word": self.vocab.words[int(i)], "probability": float(np.exp(logp[i]))} for i in top
        ]


def _check_text(text) -> None:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")


__all__ = ["LanguageScorer", "EOS"]
