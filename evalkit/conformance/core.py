"""The check of ``evalkit conformance``: the statistics, the expected distribution, the draws of an in-process
backend.

For each setting and a few contexts (the first prompt, and the prompt followed by the reference model's greedy
continuation of a few lengths), the backend makes N single-token draws with distinct seeds. The expected distribution
is the reference's forward pass (evalkit's engine: the generator's own model) pushed through the setting's chain in
the order the backend declares (:func:`evalkit.generation.sampling.apply_chain`). Each (setting, context) gets:

- a goodness-of-fit test (:func:`fit`): chi-square over the tokens expected at least 5 times, the rest pooled; an
  exact binomial test where two categories remain, a Monte Carlo multinomial test (fixed seed) where 3 to 5 remain;
  a draw outside the expected support fails at once and is reported as such;
- the total-variation distance between the draws' frequencies and the expected distribution;
- a control that must fail (:func:`controls`): the same draws against a deliberately wrong chain (another order, or
  top-p moved by 0.05): the nearest one at a distance of at least :data:`CONTROL_TV`. When the control is not
  rejected, the draws could not have caught an error of that size: the verdict is "inconclusive" and says how many
  draws would do (:func:`draws_needed`, 80% power).

p-values are Holm-adjusted over settings x contexts (the controls' over theirs). The seeds are checked too
(:func:`check_seeds`): the same seed twice gives the same token, and a seeded draw gives the same token alone and
among batch neighbours (other seeds, settings and contexts).

The seed of draw i of (setting, context) is ``derive_seed(config seed, "conformance", setting id, context, i)``, 63
bits, the same for every backend.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from evalkit.compare.stats import holm
from evalkit.errors import EvalkitError
from evalkit.seeds import derive_seed
from evalkit.settings import ORDERS, Setting

ALPHA = 0.05  # the level of every test, after Holm's adjustment
CONTINUATIONS = (0, 4, 16)  # the contexts: the prompt followed by this many tokens of the reference's greedy text
MIN_EXPECTED = 5.0  # a token expected fewer times is pooled into the tail category
FEW = 5  # at most this many categories: Monte Carlo multinomial test instead of chi-square (2: exact binomial)
MONTE_CARLO = 20_000  # replicates of the Monte Carlo test
MC_SEED = 0  # its seed
CONTROL_TV = 0.01  # a control is the nearest wrong chain at least this far (total variation) from the expected one
POWER = 0.8  # the power "how many draws would do" asks for
SEED_PROBES = 16  # draws of the seed checks
DRAW_BATCH = 4096  # rows per decode wave with batch_size auto: one step each, the prefill shared by every row
END = -1  # a draw that ended the text (an end token: the backend returns no token)


# --------------------------------------------------------------------------- statistics (numpy only)


@dataclass(frozen=True)
class Fit:
    """A goodness-of-fit test of draws against a distribution."""

    p_value: float
    test: str  # "chi-square[k=12]", "binomial", "monte-carlo[k=4]", "one category", "support"
    outside: int = 0  # draws of tokens the distribution gives no probability
    outside_tokens: tuple[int, ...] = ()


def _categories(observed: np.ndarray, expected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(observed, expected) counts per category: each token expected at least MIN_EXPECTED times, and the rest of the
    support pooled (merged into the smallest category when the pool itself is expected fewer times)."""
    support = expected > 0
    big = expected >= MIN_EXPECTED
    obs, exp = list(observed[big].astype(float)), list(expected[big])
    rest_o, rest_e = float(observed[support & ~big].sum()), float(expected[support & ~big].sum())
    if rest_e > 0:
        if rest_e >= MIN_EXPECTED or not exp:
            obs.append(rest_o)
            exp.append(rest_e)
        else:
            i = int(np.argmin(exp))
            obs[i] += rest_o
            exp[i] += rest_e
    return np.array(obs), np.array(exp)


def fit(observed: np.ndarray, probs: np.ndarray) -> Fit:
    """Test counts ``observed`` (per category, e.g. per token) against probabilities ``probs`` (same shape)."""
    from scipy import stats

    n = int(observed.sum())
    outside_mask = (probs <= 0) & (observed > 0)
    if outside_mask.any():
        tokens = tuple(int(i) for i in np.flatnonzero(outside_mask))
        return Fit(0.0, "support", int(observed[outside_mask].sum()), tokens)
    obs, exp = _categories(observed, probs / probs.sum() * n)
    k = len(exp)
    if k <= 1:
        return Fit(1.0, "one category")
    exp = exp / exp.sum() * n
    if k == 2:
        return Fit(float(stats.binomtest(int(obs[0]), n, exp[0] / n).pvalue), "binomial")
    statistic = float(((obs - exp) ** 2 / exp).sum())
    if k <= FEW:
        sims = np.random.default_rng(MC_SEED).multinomial(n, exp / n, size=MONTE_CARLO)
        simulated = ((sims - exp) ** 2 / exp).sum(axis=1)
        return Fit(float((1 + (simulated >= statistic * (1 - 1e-12)).sum()) / (MONTE_CARLO + 1)), f"monte-carlo[k={k}]")
    return Fit(float(stats.chi2.sf(statistic, k - 1)), f"chi-square[k={k}]")


def tv_distance(observed: np.ndarray, probs: np.ndarray) -> float:
    """Total-variation distance between the draws' frequencies and ``probs``."""
    return float(0.5 * np.abs(observed / observed.sum() - probs / probs.sum()).sum())


def chance_distance(probs: np.ndarray, n: int, reps: int = 200) -> float:
    """The mean total-variation distance of ``n`` draws from ``probs`` itself (simulated, seed MC_SEED): what a
    conforming backend's distance is, by chance alone, at this many draws."""
    q = probs / probs.sum()
    sims = np.random.default_rng(MC_SEED).multinomial(n, q, size=reps)
    return float(0.5 * np.abs(sims / n - q).sum(axis=1).mean())


def draws_needed(probs: np.ndarray, control: np.ndarray, n: int, alpha: float, power: float = POWER) -> int:
    """About how many draws from ``probs`` a test against ``control`` rejects with probability ``power`` at level
    ``alpha``: the chi-square's noncentrality grows with the draws (N x sum (p - c)^2 / c over the control's
    categories, pooled as :func:`fit` pools them at N draws); a draw outside the control's support rejects at once.
    -1: no number of draws tells them apart."""
    probs, control = probs / probs.sum(), control / control.sum()
    outside = float(probs[control <= 0].sum())
    by_support = math.ceil(math.log(1 - power) / math.log1p(-outside)) if 0 < outside < 1 else (1 if outside else None)
    by_fit = None
    while by_fit is None and n < 1 << 40:  # too few draws pool every token into one category: pool at more
        by_fit = _needed_by_fit(probs, control, n, alpha, power)
        n *= 10
    for _ in range(4):  # the categories depend on N: pool at the draws found, again
        found = _needed_by_fit(probs, control, by_fit, alpha, power) if by_fit is not None else None
        if found is None or found == by_fit:
            break
        by_fit = found
    found = [x for x in (by_support, by_fit) if x is not None]
    return min(found) if found else -1


def _needed_by_fit(probs: np.ndarray, control: np.ndarray, n: int, alpha: float, power: float) -> int | None:
    from scipy import stats

    p_cat, c_cat = _categories(probs * n, np.where(control > 0, control, 0.0) * n)
    if len(c_cat) < 2:
        return None
    per_draw = float(((p_cat - c_cat) ** 2 / c_cat).sum()) / n
    if per_draw <= 0:
        return None
    df = len(c_cat) - 1
    critical = stats.chi2.isf(alpha, df)
    low, high = 1, 2
    while stats.ncx2.sf(critical, df, high * per_draw) < power and high < 1 << 40:
        low, high = high, high * 2
    while high - low > max(1, high // 100):
        mid = (low + high) // 2
        low, high = (mid, high) if stats.ncx2.sf(critical, df, mid * per_draw) < power else (low, mid)
    return high


def fold_end(probs: np.ndarray, eos: list[int]) -> np.ndarray:
    """A distribution over the vocabulary with its end tokens folded into one last category (a backend returns no
    token when it draws one)."""
    out = np.append(probs, probs[eos].sum() if len(eos) else 0.0)
    out[list(eos)] = 0.0
    return out


def counts(tokens: np.ndarray, size: int) -> np.ndarray:
    """Counts per category of ``fold_end``'s layout: END counts in the last one."""
    return np.bincount(np.where(tokens == END, size - 1, tokens), minlength=size).astype(float)


# --------------------------------------------------------------------------- the expected distribution


class Reference:
    """The model whose forward pass gives the expected distribution: a transformers causal LM with its tokenizer."""

    def __init__(self, model, tokenizer, eos_ids: list[int]):
        self.model, self.tokenizer, self.eos_ids = model, tokenizer, list(eos_ids)
        self._logits: dict[tuple[int, ...], object] = {}
        self._vocabulary = None

    @classmethod
    def of(cls, generator) -> Reference:
        """evalkit's engine's own model (a generator with ``model``, ``tokenizer`` and ``eos_ids``)."""
        return cls(generator.model, generator.tokenizer, generator.eos_ids)

    def encode(self, text: str) -> tuple[int, ...]:
        """The tokens of ``text`` as a server tokenizes a prompt (special tokens read, the model's own BOS)."""
        return tuple(self.tokenizer(text)["input_ids"])

    def decode(self, tokens) -> str:
        return self.tokenizer.decode(list(tokens))

    def texts(self) -> list[str]:
        """Each token's text as a server returns it for a completion of that one token: special tokens as nothing,
        a part of a UTF-8 character as nothing (U+FFFD dropped)."""
        texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))], skip_special_tokens=True,
                                            clean_up_tokenization_spaces=False)
        return [t.replace("\ufffd", "") for t in texts]

    def vocabulary(self):
        """What DRY reads of the tokenizer (:class:`evalkit.generation.samplers.dry.Vocabulary`)."""
        from evalkit.generation.samplers.dry import Vocabulary

        return Vocabulary.of_tokenizer(self.tokenizer)

    def logits(self, tokens: tuple[int, ...]):
        """The next-token logits after ``tokens``, [1, vocab] float32 (kept: every control reads them again)."""
        if tokens not in self._logits:
            self._logits[tokens] = self._forward(tokens)
        return self._logits[tokens].clone()

    def _forward(self, tokens: tuple[int, ...]):
        import torch

        with torch.inference_mode():
            device = next(self.model.parameters()).device
            ids = torch.tensor([list(tokens)], device=device)
            return self.model(input_ids=ids).logits[0, -1].float()[None].cpu().clone()

    def continuation(self, tokens: tuple[int, ...], length: int) -> tuple[int, ...]:
        """The greedy continuation of ``tokens`` (never an end token: the best other one), ``length`` tokens."""
        out = list(tokens)
        for _ in range(length):
            z = self.logits(tuple(out))[0].clone()
            z[self.eos_ids] = float("-inf")
            out.append(int(z.argmax()))
        return tuple(out[len(tokens):])

    def expected(self, setting: Setting, tokens: tuple[int, ...], order: str) -> np.ndarray:
        """The first token's distribution for ``setting`` after ``tokens``: the chain in ``order`` (what the setting's
        ``auto`` means) over the logits; greedy: a point mass on the argmax; XTC: the mixture of its step with and
        without the exclusion, by its probability."""
        import torch

        from evalkit.generation.sampling import RowParams, apply_chain, before_temperature

        named = setting if setting.order != "auto" else setting.model_copy(update={"order": order})
        if self._vocabulary is None:
            self._vocabulary = self.vocabulary()
        params = RowParams.from_settings([named], prompts=[list(tokens)], eos=self.eos_ids,
                                         vocabulary=self._vocabulary)
        chain = named.chain(order)
        logits = self.logits(tokens)
        if setting.greedy:
            z = apply_chain(logits, params, before_temperature(chain))[0]
            out = np.zeros(z.shape[-1])
            out[int(z.argmax())] = 1.0
            return out
        if setting.xtc_probability:
            params.u_xtc = torch.zeros(1, dtype=torch.float64)
            on = apply_chain(logits, params, chain).softmax(-1)[0].double().numpy()
            params.u_xtc = torch.ones(1, dtype=torch.float64)
            off = apply_chain(logits, params, chain).softmax(-1)[0].double().numpy()
            return setting.xtc_probability * on + (1 - setting.xtc_probability) * off
        return apply_chain(logits, params, chain).softmax(-1)[0].double().numpy()


def controls(setting: Setting, order: str) -> list[tuple[str, Setting, str]]:
    """Deliberately wrong chains for ``setting``: (label, setting, order) for each other named order that has all of
    its knobs, and top-p moved by 0.05 (down, and up where it stays below 1; 0.95 when top-p is off). None for a
    greedy setting (every chain has the same argmax)."""
    if setting.greedy:
        return []
    claimed = setting.order_name(order)
    out = [(f"order {name}", setting.model_copy(update={"order": name}), order) for name in ORDERS
           if name != claimed and setting.missing_in_order(name) is None and isinstance(setting.order, str)]
    moved = [setting.top_p - 0.05, setting.top_p + 0.05] if setting.top_p < 1 else [0.95]
    out += [(f"top_p {p:.4g}", setting.model_copy(update={"top_p": p}), order) for p in moved if 0 < p < 1]
    return out


# --------------------------------------------------------------------------- the check


@dataclass(frozen=True)
class Options:
    draws: int = 2000  # single-token draws per setting and context
    seed: int = 0  # the config's seed: every draw's seed derives from it
    batch_size: int = 64  # rows per generate call's decode wave
    continuations: tuple[int, ...] = CONTINUATIONS
    alpha: float = ALPHA


@dataclass(frozen=True)
class Context:
    name: str  # "prompt", "prompt+4"
    prompt: object  # the PreparedPrompt the backend is given (its own prompt id)
    tokens: tuple[int, ...]


@dataclass
class Case:
    """One (setting, context): the draws' test, distance and control."""

    setting: str
    context: str
    draws: int
    fit: Fit
    distance: float
    chance: float  # the distance a conforming backend shows by chance at this many draws (chance_distance)
    control: str | None = None  # what the control changed ("order llama_cpp", "top_p 0.85"); None: no control
    control_distance: float = float("nan")  # between the expected and the control's distribution
    control_fit: Fit | None = None
    needed: int | None = None  # about how many draws would reject the control
    adjusted: float = float("nan")  # Holm-adjusted p-value
    control_adjusted: float = float("nan")
    verdict: str = ""
    note: str = ""  # what the verdict should be read with (texts that stand for several tokens)
    bars: list[tuple[str, float, float]] = field(default_factory=list)  # (category, observed share, expected)

    def as_dict(self) -> dict:
        return {"setting": self.setting, "context": self.context, "draws": self.draws, "test": self.fit.test,
                "p_value": self.fit.p_value, "p_holm": self.adjusted, "distance_tv": self.distance,
                "distance_by_chance": self.chance,
                "outside_support": self.fit.outside, "outside_tokens": list(self.fit.outside_tokens),
                "control": self.control, "control_distance_tv": _num(self.control_distance),
                "control_p_holm": _num(self.control_adjusted),
                "control_test": self.control_fit.test if self.control_fit else None,
                "draws_needed": self.needed, "verdict": self.verdict, "note": self.note or None,
                "largest": [{"category": c, "observed": o, "expected": e} for c, o, e in self.bars]}


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else x


@dataclass
class SeedCheck:
    name: str  # "same seed twice", "alone vs among batch neighbours"
    equal: int
    total: int
    distinct: int  # distinct tokens among the probes (1: the check shows nothing)
    note: str = ""  # why it failed, or why nothing was checked (total 0)

    @property
    def passed(self) -> bool:
        return self.equal == self.total

    def as_dict(self) -> dict:
        return {"check": self.name, "equal": self.equal, "total": self.total, "distinct_tokens": self.distinct,
                "passed": self.passed, "note": self.note or None}


@dataclass
class Report:
    backend: str
    order: str  # what a setting's "auto" order means for the backend
    options: Options
    cases: list[Case] = field(default_factory=list)
    seeds: list[SeedCheck] = field(default_factory=list)
    seconds: float = 0.0
    reference: str = "the backend's own model"  # whose forward pass gave the expected distributions
    logprobs: list = field(default_factory=list)  # evalkit.conformance.served.LogprobCheck, served models
    seed_mapping: str = "the draw's derived seed, as the backend's samples get theirs"

    @property
    def failed(self) -> bool:
        return (any(c.verdict.startswith("fail") for c in self.cases) or any(not s.passed for s in self.seeds)
                or any(not c.passed for c in self.logprobs))

    def counts(self) -> dict[str, int]:
        out = {"pass": 0, "fail": 0, "inconclusive": 0}
        for c in self.cases:
            out[c.verdict.split(":")[0]] += 1
        return out

    def as_dict(self) -> dict:
        return {"backend": self.backend, "order": self.order, "reference": self.reference,
                "draws": self.options.draws, "alpha": self.options.alpha,
                "seed": self.options.seed, "seeds_drawn": "derive_seed(seed, 'conformance', setting id, context, i)",
                "seed_mapping": self.seed_mapping,
                "continuations": list(self.options.continuations), "failed": self.failed, "counts": self.counts(),
                "cases": [c.as_dict() for c in self.cases], "seeds": [s.as_dict() for s in self.seeds],
                "logprobs": [c.as_dict() for c in self.logprobs],
                "seconds": round(self.seconds, 3)}


def contexts(reference: Reference, prompt, lengths: tuple[int, ...]) -> list[Context]:
    """The prompt, and the prompt followed by the first ``n`` tokens of the reference's greedy continuation, for each
    ``n`` of ``lengths``; each its own prompt id (an engine shares a prefill by prompt id)."""
    text = reference.continuation(tuple(prompt.token_ids), max(lengths, default=0))
    out = []
    for n in lengths:
        tokens = tuple(prompt.token_ids) + text[:n]
        name = "prompt" if n == 0 else f"prompt+{n}"
        inner = dataclasses.replace(prompt.prompt, id=f"{prompt.prompt.id}@{name}")
        shown = prompt.rendered + reference.decode(text[:n])
        out.append(Context(name, dataclasses.replace(prompt, prompt=inner, rendered=shown, token_ids=tokens), tokens))
    return out


def draw(generator, units: list, batch_size: int, on_done=lambda n: None) -> list[int]:
    """One token per unit, in unit order (END where the backend ended the text at once)."""
    where = {id(u): i for i, u in enumerate(units)}  # a record carries its unit (WorkUnit.key formats the setting id)
    out: list[int | None] = [None] * len(units)
    by_key = None  # a backend that hands back copies of the units: found by key (slower: a key formats an id)
    for n, record in enumerate(generator.generate(units, max_new_tokens=1, batch_size=batch_size), start=1):
        i = where.get(id(record.unit))
        if i is None or units[i] is not record.unit:
            by_key = by_key or {u.key: k for k, u in enumerate(units)}
            i = by_key[record.unit.key]
        out[i] = record.token_ids[0] if record.token_ids else END
        on_done(n)
    if None in out:
        missing = units[out.index(None)]
        raise EvalkitError(f"the backend returned no sample for setting {missing.setting.id}, sample "
                           f"{missing.sample_index}")
    return [int(t) for t in out]


def _units(settings: list[Setting], ctxs: list[Context], options: Options) -> list:
    from evalkit.generation import WorkUnit

    return [WorkUnit(c.prompt, s, i, derive_seed(options.seed, "conformance", s.id, c.name, i))
            for c in ctxs for s in settings for i in range(options.draws)]


BARS = 12  # categories shown per case (the largest expected or observed)


class Categories:
    """How draws are counted: by token (``classes`` None), or by groups of tokens, ``classes[i]`` the category of
    the i-th entry of :func:`fold_end`'s layout (a served model returns text, and tokens of one text are one
    category); ``labels`` name the categories."""

    def __init__(self, classes: np.ndarray | None = None, labels: list[str] | None = None):
        self.classes, self.labels = classes, labels

    def project(self, probs: np.ndarray) -> np.ndarray:
        if self.classes is None:
            return probs
        return np.bincount(self.classes, weights=probs, minlength=int(self.classes.max()) + 1)

    def label(self, i: int, reference: Reference, size: int) -> str:
        if self.labels is not None:
            return self.labels[i] if i < len(self.labels) else "(a text no token of the reference makes)"
        return "(end)" if i == size - 1 else repr(reference.decode([i]))


def bars(observed: np.ndarray, expected: np.ndarray, label, n: int = BARS) -> list[tuple[str, float, float]]:
    """The ``n`` categories with the largest expected or observed share: (label, observed share, expected)."""
    share, probs = observed / max(observed.sum(), 1), expected / expected.sum()
    top = np.argsort(-np.maximum(share, probs), kind="stable")[:n]
    return [(label(int(i)), float(share[i]), float(probs[i])) for i in top if share[i] > 0 or probs[i] > 0]


def _case(reference: Reference, setting: Setting, ctx: Context, tokens: np.ndarray, order: str, m: int,
          alpha: float, categories: Categories = Categories()) -> Case:
    expected = categories.project(fold_end(reference.expected(setting, ctx.tokens, order), reference.eos_ids))
    observed = counts(tokens, len(expected)) if categories.classes is None else np.bincount(
        tokens, minlength=len(expected)).astype(float)
    if len(observed) > len(expected):  # a category no token makes (a text the reference has no token for)
        expected = np.append(expected, np.zeros(len(observed) - len(expected)))
    case = Case(setting.id, ctx.name, len(tokens), fit(observed, expected), tv_distance(observed, expected),
                chance_distance(expected, len(tokens)),
                bars=bars(observed, expected, lambda i: categories.label(i, reference, len(expected))))
    wrong = []
    for label, other, o in controls(setting, order):
        try:
            probs = categories.project(fold_end(reference.expected(other, ctx.tokens, o), reference.eos_ids))
            probs = np.append(probs, np.zeros(len(expected) - len(probs)))
        except EvalkitError:  # a knob that chain cannot apply
            continue
        wrong.append((0.5 * float(np.abs(probs - expected).sum()), label, probs))
    far = [w for w in wrong if w[0] >= CONTROL_TV]
    chosen = min(far, key=lambda w: w[0]) if far else max(wrong, key=lambda w: w[0], default=None)
    if chosen is not None and chosen[0] > 0:
        case.control_distance, case.control, probs = chosen
        case.control_fit = fit(observed, probs)
        case.needed = draws_needed(expected, probs, len(tokens), alpha / m)
    return case


def _verdicts(cases: list[Case], alpha: float) -> None:
    for case, p in zip(cases, holm(np.array([c.fit.p_value for c in cases]))):
        case.adjusted = float(p)
    controlled = [c for c in cases if c.control_fit is not None]
    for case, p in zip(controlled, holm(np.array([c.control_fit.p_value for c in controlled]))):
        case.control_adjusted = float(p)
    for c in cases:
        if c.fit.outside:
            c.verdict = f"fail: {c.fit.outside} draws outside the support"
        elif c.adjusted < alpha:
            c.verdict = "fail"
        elif c.control_fit is not None and not c.control_adjusted < alpha:
            c.verdict = f"inconclusive: too few draws (about {c.needed} would do)"
        else:
            c.verdict = "pass"


def hottest_first(settings: list[Setting]) -> list[Setting]:
    """The settings, the one that keeps the most (highest temperature, then top-p) first: the seed checks' probes
    use it, where draws differ the most (a seed ignored at temperature 0.3 may show nothing)."""
    return sorted(settings, key=lambda s: (-s.temperature, -s.top_p))


def check_seeds(generator, setting: Setting, ctxs: list[Context], others: list[Setting], options: Options
                ) -> list[SeedCheck]:
    """The same seed twice gives the same token; a seeded draw gives the same token alone (a batch of one) and among
    batch neighbours (other seeds, other settings, other contexts, the probes spread among them)."""
    from evalkit.generation import WorkUnit

    ctx = ctxs[0]
    probes = [WorkUnit(ctx.prompt, setting, options.draws + i, derive_seed(options.seed, "conformance-seeds", i))
              for i in range(SEED_PROBES)]
    first, again = draw(generator, probes, len(probes)), draw(generator, probes, len(probes))
    alone = [draw(generator, [u], 1)[0] for u in probes]
    pairs = [(c, s) for c in ctxs for s in [setting, *others]]
    crowd, where = [], []
    for i, probe in enumerate(probes):  # each probe between neighbours of other seeds, settings and contexts
        for j in range(3):
            c, s = pairs[(3 * i + j) % len(pairs)]
            crowd.append(WorkUnit(c.prompt, s, options.draws + SEED_PROBES + 3 * i + j,
                                  derive_seed(options.seed, "conformance-neighbour", i, j)))
            if j == 0:
                where.append(len(crowd))
                crowd.append(probe)
    got = draw(generator, crowd, len(crowd))
    among = [got[k] for k in where]
    distinct = len(set(first))
    return [SeedCheck("same seed twice", sum(a == b for a, b in zip(first, again)), len(probes), distinct),
            SeedCheck("alone vs among batch neighbours", sum(a == b for a, b in zip(alone, among)), len(probes),
                      distinct)]


def check(generator, reference: Reference, settings: list[Setting], prompt, *, backend: str, order: str,
          options: Options = Options(), ui=None) -> Report:
    """Draw, test and check the seeds of ``generator`` (a loaded text backend) for ``settings`` on ``prompt`` (a
    PreparedPrompt) against ``reference``, with ``order`` what a setting's ``auto`` order means for the backend."""
    import time

    from evalkit.progress import Silent

    ui = ui or Silent()
    started = time.perf_counter()
    ctxs = contexts(reference, prompt, options.continuations)
    units = _units(settings, ctxs, options)
    with ui.phase("drawing", total=len(units)) as phase:
        tokens = draw(generator, units, options.batch_size, lambda n: phase.update(completed=n))
    blocks = iter(np.array(tokens).reshape(-1, options.draws))  # _units' order: contexts, settings, draws
    drawn = {(c.name, s.id): next(blocks) for c in ctxs for s in settings}
    m = len(settings) * len(ctxs)
    cases = [_case(reference, s, c, drawn[(c.name, s.id)], order, m, options.alpha)
             for s in settings for c in ctxs]
    _verdicts(cases, options.alpha)
    report = Report(backend, order, options, cases)
    sampled = hottest_first([s for s in settings if not s.greedy])
    if sampled:
        with ui.phase("checking seeds"):
            report.seeds = check_seeds(generator, sampled[0], ctxs, sampled[1:], options)
    report.seconds = time.perf_counter() - started
    return report


# --------------------------------------------------------------------------- from a config


def pick_settings(config, wanted: list[str] | None, spec) -> list[Setting]:
    """The config's settings, or those ``wanted`` names: a setting id of the config, or ``KNOB=VALUE[,KNOB=VALUE]``
    (values read as YAML); each must be one the backend honours."""
    import yaml
    from pydantic import ValidationError

    from evalkit.errors import ConfigError
    from evalkit.plan import check_honoured

    settings = config.settings()
    check_honoured(config, [as_sent(s, spec) for s in settings])
    if not wanted:
        return settings
    by_id = {s.id: s for s in settings}
    out = []
    for text in wanted:
        if text in by_id:
            out.append(by_id[text])
            continue
        knobs = {}
        for part in text.split(","):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise ConfigError(f"expects a setting id of the config ({', '.join(by_id)}) or KNOB=VALUE[,KNOB=VALUE]"
                                  f", got {text!r}", path="--setting")
            knobs[key.strip()] = yaml.safe_load(value)
        try:
            setting = Setting(**knobs)
        except (ValidationError, TypeError) as e:
            message = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
            raise ConfigError(f"{text}: {message.removeprefix('Value error, ')}", path="--setting") from None
        refused = spec.refusal(as_sent(setting, spec))
        if refused is not None:
            raise ConfigError(f"backend {spec.name} does not honour {refused[1]}", path="--setting")
        out.append(setting)
    return list({s.id: s for s in out}.values())


def as_sent(setting: Setting, spec) -> Setting:
    """What a backend is asked for: a served model applies its server's own order, so the order a setting names
    is the one the check claims the server applies (the expected distribution's), not part of the request."""
    if spec.remote and isinstance(setting.order, str) and setting.order != "auto":
        return setting.model_copy(update={"order": "auto"})
    return setting


def load_reference(config, reference: str | None, generator) -> Reference:
    """evalkit's engine is its own reference; another in-process engine (vLLM) takes the same weights through
    transformers (``reference``, else the config's model), as does any reference in vLLM's environment (whose
    transformers is older than evalkit's engine needs)."""
    from evalkit.config import config_from_dict
    from evalkit.generation import load_backend
    from evalkit.generation.model import engine_transformers_here

    if reference is None and hasattr(generator, "model") and hasattr(generator, "tokenizer"):
        return Reference.of(generator)
    if reference is None and hasattr(generator, "tokenizer") and hasattr(generator, "eos_ids"):
        return through_transformers(config, generator.tokenizer, generator.eos_ids)
    data = {"name": "reference", "model": {"backend": "hf", "id": str(reference or config.model.id)},
            "prompts": ["-"], "report": False}
    ref_config = config_from_dict(data, source="--reference")
    if not engine_transformers_here():
        return through_transformers(ref_config)
    return Reference.of(load_backend(ref_config))


def through_transformers(config, tokenizer=None, eos_ids: list[int] | None = None) -> Reference:
    """The config's model through transformers alone, float32 on the CPU, with ``tokenizer`` and ``eos_ids`` (else
    the model's own, as evalkit's backends find its end tokens)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from evalkit.generation.decoding import TokenizedBackend
    from evalkit.generation.model import locate_model

    where, kwargs, _ = locate_model(config).checkpoint(getattr(config.model, "revision", None))
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kwargs).eval()
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        try:
            generation = GenerationConfig.from_pretrained(where, **kwargs)
        except OSError:  # no generation_config.json
            generation = GenerationConfig.from_model_config(model.config)
        ends = TokenizedBackend()
        ends._special_tokens(tokenizer, generation)
        eos_ids = ends.eos_ids
    return Reference(model, tokenizer, eos_ids)


def _inputs(path, overrides: list[str] | None, settings: list[str] | None, draws: int):
    """(config, spec, settings) of a conformance check, every input checked with nothing loaded."""
    from evalkit.config import load_config
    from evalkit.errors import ConfigError
    from evalkit.generation import spec_of

    config = load_config(path, overrides)
    spec = spec_of(config.model.backend)
    if spec.kind != "text":
        raise ConfigError(f"conformance tests a text backend's next-token draws; backend {spec.name} makes "
                          f"{spec.kind}", source=config.source, path="model.backend")
    if draws < 10:
        raise EvalkitError(f"--draws: at least 10 draws per setting and context, got {draws}")
    return config, spec, pick_settings(config, settings, spec)


def plan(path, *, overrides: list[str] | None = None, settings: list[str] | None = None,
         draws: int = 2000) -> list[tuple[str, str]]:
    """What a check would draw, as (label, value) lines, with nothing loaded."""
    _, spec, chosen = _inputs(path, overrides, settings, draws)
    rows = len(chosen) * len(CONTINUATIONS)
    sampled = [s for s in chosen if not s.greedy]
    # twice, one by one, and each among 3 neighbours; served: among 4 (2 unseeded), and one request of n > 1 twice
    seeds = (8 * SEED_PROBES + 2 if spec.remote else 7 * SEED_PROBES) if sampled else 0
    auto = spec.order_name or "the server's own: llama_cpp on llama.cpp's servers, vllm on vLLM's"
    lines = [("backend", f"{spec.name} (order auto = {auto})"),
             ("settings", ", ".join(s.id for s in chosen)),
             ("contexts", ", ".join("prompt" if n == 0 else f"prompt+{n}" for n in CONTINUATIONS)),
             ("draws", f"{rows} rows x {draws} = {rows * draws} single-token draws, and {seeds} for the seed checks")]
    if spec.remote:
        extra = 2 * len(CONTINUATIONS) + 1  # top logprobs (or the logprobs check) per context, a greedy continuation
        lines.append(("requests", f"{rows * draws + seeds} of one token, about {extra} more, and the capability "
                                  "check's"))
    return lines


def run_local(config, spec, chosen: list[Setting], *, draws: int, reference: str | None, ui=None) -> Report:
    """A check of an in-process backend (evalkit's engine, vLLM): load it, draw, test (see :func:`check`)."""
    from evalkit.generation import load_backend
    from evalkit.prompts import load_prompts

    prompt = load_prompts(config)[0]
    generator = load_backend(config)
    try:
        prepared = generator.prepare([prompt], chat_template=config.prompts.chat_template,
                                     system_prompt=config.prompts.system_prompt,
                                     max_new_tokens=1 + max(CONTINUATIONS))[0]
        ref = load_reference(config, reference, generator)
        batch = (min(draws, DRAW_BATCH) if config.batch_size == "auto"
                 else generator.batch_size(config.batch_size, [prepared], 1))
        options = Options(draws=draws, seed=config.seed, batch_size=batch)
        report = check(generator, ref, chosen, prepared, backend=spec.name, order=spec.order_name or "auto",
                       options=options, ui=ui)
        report.reference = reference or ("the backend's own model" if ref.model is getattr(generator, "model", None)
                                         else str(config.model.id))
        return report
    finally:
        close = getattr(generator, "close", None)
        if callable(close):
            close()
