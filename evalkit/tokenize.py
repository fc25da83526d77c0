"""Word tokenizers shared by the metrics. The tokenizer is part of every metric's name.

- ``words`` (default), on the NFC form of the text (a decomposed ``café``, e + U+0301, and a
  precomposed one are the same word), over grapheme clusters (a letter with its combining marks,
  an emoji with its skin tone or ZWJ sequence), so a mark never leaves its base:

  - a word: letters, marks, digits and ``_`` in any script (``हिन्दी``, ``தமிழ்``, ``tiếng``, ``مُحَمَّد``),
    with inner apostrophes or hyphens kept (``don't``, ``well-known``) and a ``.`` or ``,`` between
    two digits kept inside the number (``3.14``, ``1,000``, also ``1,2,3``; ``2024.`` at a sentence's
    end is ``2024`` and ``.``);
  - each CJK ideograph, kana or CJK punctuation mark, and each grapheme cluster of Thai, Lao, Khmer and
    Myanmar letters, as its own token: these scripts put no spaces between words, so splitting on
    spaces would make a whole sentence one "word", and splitting them into words needs a dictionary.
    Their digits still form numbers;
  - every other visible grapheme cluster (a punctuation mark, a symbol, an emoji such as 👍🏽 or
    👨‍👩‍👧) as its own token.

  No lowercasing, no other normalization (NFKC would change full-width letters and ligatures).
  Grapheme clusters are the ``regex`` package's ``\\X`` (Unicode's extended grapheme clusters, kept
  current by that package; nltk and transformers already depend on it); the text is split on spaces
  first, so no token holds a space.
- ``whitespace``: ``str.split()``.
- ``chars``: every non-space character (code point).
- ``nltk``: nltk's ``word_tokenize(text, preserve_line=True)`` (its improved Treebank tokenizer, no
  sentence splitting, so no Punkt download), unchanged: the tokens of Texygen's self-BLEU, for
  reproducing published numbers. Texygen calls ``word_tokenize(text)``, which first splits sentences
  with Punkt: for a sample of several sentences a period inside it then becomes its own token
  (``world.`` here, ``world`` ``.`` there).
- ``model``: the model's own token ids of each sample (needs them: not for texts scored
  from a file).
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable
from typing import Literal

import regex

_CJK = (
    r"\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u3190-\u31ff\u3400-\u4dbf"
    r"\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef\U00020000-\U0002fa1f"
)
_UNSPACED = r"\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"  # scripts written without spaces between words
# A word's grapheme clusters start with a letter, mark, digit or _, not in a script with a token per cluster
# (its digits excepted: they form numbers); inside a word: an apostrophe or a hyphen, and in a number . or ,
# (or the Arabic ٫ ٬) between two digits. Anything else: one token per grapheme cluster.
_WORD_CLUSTER = rf"(?:(?=[[\p{{L}}\p{{M}}\p{{N}}_]--[[{_CJK}{_UNSPACED}]--\p{{Nd}}]])\X)"
_JOINER = r"(?:['’\-]|(?<=\p{Nd})[.,٫٬](?=\p{Nd}))"
_WORDS = regex.compile(rf"{_WORD_CLUSTER}+(?:{_JOINER}{_WORD_CLUSTER}+)*|\X", regex.V1)


def words(text: str) -> list[str]:
    """Split on spaces first: a grapheme cluster may hold a space (after a prepended mark, U+0600)."""
    return [t for chunk in unicodedata.normalize("NFC", text).split() for t in _WORDS.findall(chunk)]


def whitespace(text: str) -> list[str]:
    return text.split()


def chars(text: str) -> list[str]:
    return [c for c in text if not c.isspace()]


def nltk_words(text: str) -> list[str]:
    from nltk.tokenize import word_tokenize

    return word_tokenize(text, preserve_line=True)


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {
    "words": words, "whitespace": whitespace, "chars": chars, "nltk": nltk_words}


def get(name: str) -> Callable[[str], list[str]]:
    return TOKENIZERS[name]


TextTok = Literal["words", "whitespace", "chars", "nltk"]  # the tokenizers of text
Tok = Literal["words", "whitespace", "chars", "nltk", "model"]  # the `tok=` parameter of the text metrics


def sample_tokens(group, tok: str) -> list[list]:
    """The tokens of each sample of a group: split text, or the model's token ids for ``model``. A text is
    split once for all the metrics that use the same tokenizer (the split is memoized)."""
    if tok == "model":
        return [list(ids) for ids in group.token_ids]
    return [list(_split(tok, text)) for text in group.texts]


def forget() -> None:
    """Drop the memoized splits: called after each group is scored, so only one group's texts are held."""
    _split.cache_clear()


@functools.lru_cache(maxsize=None)  # emptied after each group (forget), so it holds one group's texts
def _split(tok: str, text: str) -> tuple[str, ...]:
    return tuple(get(tok)(text))
