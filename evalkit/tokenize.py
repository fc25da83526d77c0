"""Word tokenizers shared by the metrics. The tokenizer is part of every metric's name.

- ``words`` (default): words with inner apostrophes or hyphens kept (``don't``,
  ``well-known``), numbers, each punctuation mark as its own token, and every CJK
  ideograph, kana or CJK punctuation mark as its own token: Chinese and Japanese have
  no spaces, so splitting on whitespace would make a whole sentence one "word".
  No lowercasing.
- ``whitespace``: ``str.split()``.
- ``chars``: every non-space character.
- ``model``: the model's own token ids of each sample (needs them: not for texts scored
  from a file).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

_CJK = (
    "\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u3190-\u31ff\u3400-\u4dbf"
    "\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef\U00020000-\U0002fa1f"
)
_WORDS = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])\w)+(?:['’\-](?:(?![{_CJK}])\w)+)*|[^\w\s]", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORDS.findall(text)


def whitespace(text: str) -> list[str]:
    return text.split()


def chars(text: str) -> list[str]:
    return [c for c in text if not c.isspace()]


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {"words": words, "whitespace": whitespace, "chars": chars}


def get(name: str) -> Callable[[str], list[str]]:
    return TOKENIZERS[name]


Tok = Literal["words", "whitespace", "chars", "model"]  # the `tok=` parameter of the text metrics


def sample_tokens(group, tok: str) -> list[list]:
    """The tokens of each sample of a group: split text, or the model's token ids for ``model``."""
    if tok == "model":
        return [list(ids) for ids in group.token_ids]
    split = get(tok)
    return [split(text) for text in group.texts]
