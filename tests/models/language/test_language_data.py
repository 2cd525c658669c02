"""PTB reader, vocabulary and the free-text tokenizer."""

import numpy as np
import pytest

from v1motion.models.datasets import shared_data_dir
from v1motion.models.language.data import Vocabulary, load_ptb, read_ptb_words, tokenize

HAVE_PTB = (shared_data_dir() / "ptb" / "ptb.train.txt.gz").exists()


def test_tokenize_ptb_style():
    assert tokenize("I don't know, it's 3.5 Million dollars. Really?") == [
        "i",
        "do",
        "n't",
        "know",
        "it",
        "'s",
        "N",
        "million",
        "dollars",
        "<eos>",
        "really",
        "<eos>",
    ]
    assert tokenize("  ...  ") == []
    assert tokenize("The U.S. economy") == ["the", "u.s.", "economy"]
    assert tokenize("$5 for AT&T in the 1980s") == [
        "$",
        "N",
        "for",
        "at&t",
        "in",
        "the",
        "1980s",
    ]


def test_typographic_apostrophes_are_read_as_straight_ones():
    # phones and word processors write don’t: it was "don" "t", two words PTB reads rarely
    straight = tokenize("I don't know; it's John's.")
    assert tokenize("I don\u2019t know; it\u2019s John\u02bcs.") == straight
    assert "n't" in straight and "'s" in straight
    # quotes and emoji are dropped as other punctuation is
    assert tokenize("\u201cHello\u201d \U0001f600 world") == ["hello", "world"]


def test_tokenize_keeps_the_vocabularys_abbreviations_and_ptb_number_tokens():
    abbreviations = Vocabulary(["<unk>", "<eos>", "mr.", "inc.", "u.s.", "board"]).abbreviations
    assert abbreviations == {"mr.", "inc.", "u.s."}  # the words that end in a period
    assert tokenize("Mr. Smith joined the board.", abbreviations) == [
        "mr.", "smith", "joined", "the", "board", "<eos>",
    ]  # fmt: skip
    assert tokenize("Mr. Smith joined the board.") == [
        "mr", "<eos>", "smith", "joined", "the", "board", "<eos>",
    ]  # fmt: skip
    # a period after a space, or a word that is no abbreviation, still ends the sentence
    assert tokenize("a mr . b", abbreviations) == ["a", "mr", "<eos>", "b"]
    assert tokenize("Board. Inc. said", abbreviations) == ["board", "<eos>", "inc.", "said"]
    # PTB writes '%' as N ('rose N N'), and pasted PTB text keeps its number token N
    assert tokenize("Rose 12% to N N.") == ["rose", "N", "N", "to", "N", "N", "<eos>"]
    assert tokenize("rock n roll") == ["rock", "n", "roll"]


def test_a_line_break_ends_a_sentence_as_in_ptbs_files():
    # PTB writes one sentence a line with no final period: pasted as it is, its first 50 test lines
    # were one run-on sentence (0 <eos>, perplexity 115.4 against the evaluation's 85.6)
    text = "no it was n't black monday\nbut while the new york\r\nstock exchange fell .\n\nthen"
    assert tokenize(text) == [
        "no", "it", "was", "n't", "black", "monday", "<eos>", "but", "while", "the", "new", "york",
        "<eos>", "stock", "exchange", "fell", "<eos>", "then",
    ]  # fmt: skip
    assert tokenize("one line\n") == ["one", "line", "<eos>"]
    assert tokenize("\n\nword") == ["word"]  # no sentence before the first word
    # PTB's own tokens, pasted: <unk> is the unknown word, not the word "unk"
    assert tokenize("a <unk> b <eos> c <EOS>") == ["a", "<unk>", "b", "<eos>", "c", "<eos>"]


def test_the_vocabularys_words_are_kept_whole():
    vocab = Vocabulary(
        ["<unk>", "<eos>", "non-u.s.", "o'brien", "20th", "us$", "c$", "'", "firms", "$"]
    )
    read = lambda text: tokenize(text, vocab.abbreviations, vocab.index)  # noqa: E731
    assert read("non-U.S. firms") == ["non-u.s.", "firms"]  # was non-u.s <eos> firms
    assert read("Mr. O'Brien") == ["mr", "<eos>", "o'brien"]  # was o 'brien
    assert read("the 20th and 21st") == ["the", "20th", "and", "N"]  # an ordinal PTB has
    assert read("US$5 and C$ 3 and NZ$ 4") == [
        "us$", "N", "and", "c$", "N", "and", "nz", "$", "N",
    ]  # fmt: skip
    assert read("the investors' money") == ["the", "investors", "'", "money"]  # PTB's token '
    assert read("'hello'") == ["'hello"]  # a closing quote after another letter is dropped


def test_text_is_read_after_unicode_normalisation():
    # an accent typed as its own combining mark (macOS, copy-paste) cut the word in two known words
    assert tokenize("cafe\u0301 owners") == tokenize("caf\u00e9 owners") == ["caf\u00e9", "owners"]
    assert tokenize("\ufb01nance \uff54\uff48\uff45") == ["finance", "the"]  # ligature, full width


def test_vocabulary_maps_unknown_words_to_unk():
    vocab = Vocabulary.from_corpus(["b", "a", "b", "<eos>"])
    assert vocab.words[0] == "b"  # most frequent first
    ids = vocab.encode(["a", "zebra", "<eos>"])
    assert ids.dtype == np.int32
    assert vocab.decode(ids) == ["a", "<unk>", "<eos>"]
    with pytest.raises(ValueError, match="must contain '<unk>'"):
        Vocabulary(["a", "<eos>"])
    with pytest.raises(ValueError, match="valid choices: train, valid, test"):
        read_ptb_words("dev")


@pytest.mark.skipif(not HAVE_PTB, reason="Penn Treebank not in the shared data folder")
def test_ptb_matches_its_documented_sizes():
    vocab, data = load_ptb()
    assert len(vocab) == 10000
    assert {k: v.size for k, v in data.items()} == {
        "train": 929589,
        "valid": 73760,
        "test": 82430,
    }
    assert (data["valid"] != vocab.unk_id).sum() < data["valid"].size  # <unk> occurs, as a word
