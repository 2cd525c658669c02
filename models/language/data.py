"""Penn Treebank (Mikolov's split) and the vocabulary that maps words to ids.

The corpus is read from ``shared_data_dir()/"ptb"`` (gzipped, never copied into the repository). Each
line is a sentence; every line ends with one ``<eos>`` token, so a split is one long stream of ids.
"""

from __future__ import annotations

import gzip
import re
import unicodedata
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import numpy as np

from v1motion.models.datasets import require_shared_data

SPLITS = ("train", "valid", "test")
EOS = "<eos>"
UNK = "<unk>"


def read_ptb_words(split: str, root: Path | None = None) -> list[str]:
    """Read one split as a flat list of words, one ``<eos>`` after each sentence.

    Parameters
    ----------
    split : {"train", "valid", "test"}
    root : folder holding ``ptb.{split}.txt.gz``; default ``shared_data_dir()/"ptb"``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown PTB split {split!r}; valid choices: {', '.join(SPLITS)}")
    folder = Path(root) if root is not None else require_shared_data("ptb")
    path = folder / f"ptb.{split}.txt.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (expected Mikolov's gzipped PTB split)")
    words: list[str] = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            words.extend(line.split())
            words.append(EOS)
    return words


class Vocabulary:
    """A fixed word list with ids; words outside it map to ``<unk>``.

    Parameters
    ----------
    words : the vocabulary, in id order; must contain ``<unk>`` and ``<eos>``.
    """

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if len(set(words)) != len(words):
            raise ValueError("vocabulary words must be unique")
        for special in (UNK, EOS):
            if special not in words:
                raise ValueError(f"vocabulary must contain {special!r}")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}
        self.unk_id = self.index[UNK]
        self.eos_id = self.index[EOS]
        # the words that end in a period (``mr.``, ``inc.``, ``non-u.s.``), for :func:`tokenize`
        self.abbreviations = frozenset(w for w in words if len(w) > 1 and w.endswith("."))

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def from_corpus(cls, words: Iterable[str]) -> Vocabulary:
        """Most frequent first (ties alphabetical), so ids double as frequency ranks."""
        counts = Counter(words)
        counts.setdefault(UNK, 0)
        counts.setdefault(EOS, 0)
        return cls(sorted(counts, key=lambda w: (-counts[w], w)))

    def encode(self, words: Sequence[str]) -> np.ndarray:
        """Ids of ``words`` as an int32 array of shape (n,), unknown words as ``<unk>``."""
        get = self.index.get
        return np.fromiter((get(w, self.unk_id) for w in words), dtype=np.int32, count=len(words))

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.words[int(i)] for i in ids]


def load_ptb(root: Path | None = None) -> tuple[Vocabulary, dict[str, np.ndarray]]:
    """The PTB vocabulary (from train) and each split as an int32 id stream of shape (n,)."""
    words = {s: read_ptb_words(s, root) for s in SPLITS}
    vocab = Vocabulary.from_corpus(words["train"])
    return vocab, {s: vocab.encode(w) for s, w in words.items()}


_APOSTROPHES = str.maketrans(dict.fromkeys("\u2019\u02bc\uff07", "'"))
_CONTRACTION = re.compile(r"(?i)(\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
_NUMBER = re.compile(r"^[+-]?(\d+([.,:/]\d+)*|\d*\.\d+)(st|nd|rd|th)?$")
_TOKEN = re.compile(
    r"(?i)<unk>|<eos>|\n|(?:[a-z]\.){2,}|n't|'\w+|[a-z]{1,2}\$|\w+(?:'\w+)+|[\w-]+(?:[&.,:/]\w+)*"
    r"|(?<=s)'(?!\w)|[$#&%]|[.!?;]"
)


def tokenize(
    text: str, abbreviations: Collection[str] = (), words: Collection[str] = ()
) -> list[str]:
    """Turn free text into PTB-style tokens (before vocabulary look-up).

    Normalises Unicode (NFKC: an accent typed as its own combining mark, a ligature, full-width
    letters read as the plain letters), lower-cases, splits clitics (``don't`` -> ``do n't``) and
    currency signs (``$5`` -> ``$ N``), writes numbers as ``N`` and ``%`` as ``N`` too (as Mikolov's
    preprocessing does: ``12%`` is ``N N`` in PTB), keeps PTB's own tokens ``N``, ``<unk>`` and
    ``<eos>`` (pasted PTB text), turns sentence-final ``.``, ``!``, ``?`` and ``;`` and every line
    break (PTB writes one sentence per line, with no final period) into ``<eos>``, and drops other
    punctuation and symbols (quotes, emoji), which the PTB language-modelling split does not contain.
    Typographic apostrophes (``don’t``, ``it’s``) are read as ``'``, as text from word processors and
    phones writes them; a plural's possessive apostrophe (``investors'``) is PTB's token ``'``, and
    names with one (``O'Brien``) are one word.

    ``abbreviations`` are tokens that end in a period (``mr.``, ``inc.``, ``non-u.s.``: a
    vocabulary's, see :meth:`Vocabulary.abbreviations`); a word followed at once by a period that makes
    one of them is that token, not the word and the end of a sentence. ``words`` (a vocabulary's) are
    kept as they are where a rule would rewrite them: ``20th`` is not a number ``N``, ``us$`` not
    ``us $``.
    """
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
    text = _CONTRACTION.sub(r"\1 \2", text)
    out: list[str] = []
    end = -1  # where the last word token ended in ``text``
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok == "N":
            out.append("N")
            end = -1
            continue
        tok = tok.lower()
        if tok in (UNK, EOS):
            if tok == UNK or (out and out[-1] != EOS):
                out.append(tok)
        elif tok in ".!?;\n":
            if tok == "." and m.start() == end and out[-1] + "." in abbreviations:
                out[-1] += "."
            elif out and out[-1] != EOS:
                out.append(EOS)
        elif tok in words:
            out.append(tok)
            end = m.end()
            continue
        elif tok.endswith("$") and len(tok) > 1:  # a currency this vocabulary does not know
            out.extend((tok[:-1], "$"))
        elif tok == "%" or _NUMBER.match(tok):
            out.append("N")
        else:
            out.append(tok.strip("-") or tok)
            end = m.end()
            continue
        end = -1
    return out
