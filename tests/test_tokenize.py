"""The shared tokenizers: exact token lists per script, and ``tok=nltk`` against nltk itself."""

import unicodedata
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nltk.tokenize import word_tokenize
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from evalkit import tokenize
from evalkit.config import MetricSpec
from evalkit.errors import ConfigError
from evalkit.scoring.metric import Group
from evalkit.scoring.registry import default_registry
from evalkit.settings import Setting

NFD = lambda s: unicodedata.normalize("NFD", s)  # noqa: E731

# Expected lists written by hand: one word per space-separated word of a spaced script, its marks inside it.
WORDS = [
    # Devanagari (Hindi): vowel signs (Mc/Mn) and the virama (Mn) stay in the word
    ("हिन्दी भाषा", ["हिन्दी", "भाषा"]),
    ("मैं हिंदी बोलता हूँ।", ["मैं", "हिंदी", "बोलता", "हूँ", "।"]),  # danda is punctuation
    # Tamil: pulli (Mn) and vowel signs (Mc)
    ("தமிழ் மொழி", ["தமிழ்", "மொழி"]),
    # Bengali, with Bengali digits forming a number
    ("২০২৪ সালে বাংলা ভাষা", ["২০২৪", "সালে", "বাংলা", "ভাষা"]),
    # Arabic with harakat (Mn), and Arabic-Indic digits with the Arabic decimal separator
    ("مُحَمَّدٌ رَسُولُ اللَّهِ", ["مُحَمَّدٌ", "رَسُولُ", "اللَّهِ"]),
    ("٣٫١٤ تقريبًا", ["٣٫١٤", "تقريبًا"]),
    # Persian: the zero-width non-joiner stays inside a word
    ("می\u200cخواهم", ["می\u200cخواهم"]),
    # Vietnamese, precomposed and decomposed (NFD: two marks on one letter) give the same tokens
    ("Tiếng Việt rất đẹp", ["Tiếng", "Việt", "rất", "đẹp"]),
    (NFD("Tiếng Việt rất đẹp"), ["Tiếng", "Việt", "rất", "đẹp"]),
    # Latin: decomposed (e + U+0301) and precomposed café are one word, in NFC
    ("cafe\u0301 café", ["café", "café"]),
    ("naïve Ångström", ["naïve", "Ångström"]),
    (NFD("naïve Ångström"), ["naïve", "Ångström"]),
    # Thai and Lao: no spaces between words, one token per grapheme cluster (a letter with its marks)
    ("ภาษาไทย", ["ภ", "า", "ษ", "า", "ไ", "ท", "ย"]),
    ("ง่าย น้ำ", ["ง่", "า", "ย", "น้ำ"]),  # tone mark and SARA AM stay on their consonant
    ("ພາສາລາວ", ["ພ", "າ", "ສ", "າ", "ລ", "າ", "ວ"]),
    ("ปี ๒๕๖๗", ["ปี", "๒๕๖๗"]),  # Thai digits form a number
    # CJK: one token per character; the ideographic space is a space, not a token
    ("秋天的早晨。", ["秋", "天", "的", "早", "晨", "。"]),
    ("你好\u3000世界", ["你", "好", "世", "界"]),
    ("カタカナ and 한국어", ["カ", "タ", "カ", "ナ", "and", "한국어"]),
    ("か\u3099", ["が"]),  # combining dakuten composes in NFC
    ("2024年は１２３", ["2024", "年", "は", "１２３"]),
    # emoji: a skin tone, a ZWJ family, a flag and a keycap are one token each
    ("👍🏽 great👍 👨\u200d👩\u200d👧 🇫🇷 1\ufe0f\u20e3",
     ["👍🏽", "great", "👍", "👨\u200d👩\u200d👧", "🇫🇷", "1\ufe0f\u20e3"]),
    # numbers: . or , between digits stays inside; a sentence's final period does not
    ("pi is 3.14, not 1,000 in 2024.", ["pi", "is", "3.14", ",", "not", "1,000", "in", "2024", "."]),
    ("v1.2 e.g. -5 1.", ["v1.2", "e", ".", "g", ".", "-", "5", "1", "."]),
    # unchanged behaviour
    ("Don't stop, well-known cats!", ["Don't", "stop", ",", "well-known", "cats", "!"]),
    ("foo_bar  \n", ["foo_bar"]),
    ("a\u0600 b\x1fc", ["a", "\u0600", "b", "c"]),  # a prepended mark does not take the space after it
]


@pytest.mark.parametrize("text, expected", WORDS)
def test_words_keeps_marks_with_their_base(text, expected):
    assert tokenize.words(text) == expected


def test_words_are_nfc():
    text = NFD("Tiếng Việt, café, naïve, ḍ̇")
    assert tokenize.words(text) == tokenize.words(unicodedata.normalize("NFC", text))
    assert all(unicodedata.is_normalized("NFC", t) for t in tokenize.words(text))


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_words_lose_no_visible_character(text):
    tokens = tokenize.words(text)
    assert all(t and not any(c.isspace() for c in t) for t in tokens)
    assert "".join(tokens) == "".join(c for c in unicodedata.normalize("NFC", text) if not c.isspace())


def metric(name, **params):
    return default_registry().create(MetricSpec(name=name, params=params))


def group(*texts, prompt="q"):
    return Group(prompt_id="p", prompt=prompt, setting=Setting(), texts=tuple(texts),
                 token_ids=tuple(() for _ in texts))


def test_word_counts_and_distinct_n_in_hindi():
    g = group("हिन्दी भाषा", "हिन्दी")
    assert metric("mean_length", unit="words").compute(g).value == pytest.approx(1.5)
    assert metric("distinct_n", n=1).compute(g).value == pytest.approx(2 / 3)  # (before: 10 pieces, 7 distinct)


NLTK_TEXTS = ['He said "don\'t go" (twice).', "It costs $3.14, I think.", "They can't; we won't!",
              "Well... it's fine."]


def test_nltk_tokenizer_is_word_tokenize_without_sentence_splitting():
    assert tokenize.get("nltk")(NLTK_TEXTS[0]) == ["He", "said", "``", "do", "n't", "go", "''", "(", "twice", ")", "."]
    assert tokenize.get("nltk")("Hello world. Bye now.") == ["Hello", "world.", "Bye", "now", "."]  # no Punkt
    for text in NLTK_TEXTS:
        assert tokenize.get("nltk")(text) == word_tokenize(text, preserve_line=True)


def test_self_bleu_with_nltk_tokens_equals_nltk():
    """Texygen's self-BLEU: nltk tokens, sentence_bleu against all other samples, n = 3, method1."""
    refs_tokens = [word_tokenize(t, preserve_line=True) for t in NLTK_TEXTS]
    expected = []
    for i, hyp in enumerate(refs_tokens):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected.append(sentence_bleu(refs_tokens[:i] + refs_tokens[i + 1:], hyp, weights=(1 / 3,) * 3,
                                          smoothing_function=SmoothingFunction().method1))
    m = metric("self_bleu", n=3, tok="nltk")
    assert m.id == "self_bleu[n=3,smooth=method1,tok=nltk]"
    score = m.compute(group(*NLTK_TEXTS))
    assert list(score.per_sample) == pytest.approx(expected, abs=1e-12)
    assert score.value == pytest.approx(sum(expected) / len(expected), abs=1e-12)
    assert metric("self_bleu", n=3).compute(group(*NLTK_TEXTS)).value != pytest.approx(score.value)


@pytest.mark.parametrize("name", ["distinct_n", "self_bleu", "novelty", "ttr", "mattr", "mtld", "ent_n",
                                  "seq_rep_n", "rep_l"])
def test_every_tok_metric_takes_nltk_and_refuses_a_bogus_name(name):
    m = metric(name, tok="nltk")
    assert "tok=nltk" in m.id
    assert m.compute(group("They can't go.", "We won't stay.", prompt="Can't they?")).reason is None
    with pytest.raises(ConfigError, match=r"tok: Input should be .*'nltk'.*got 'bogus'") as e:
        metric(name, tok="bogus")
    assert "\n" not in str(e.value)
