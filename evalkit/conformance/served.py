"""``evalkit conformance`` on a served model (``backend: openai``): the draws are requests to the server.

- **Draws**: one completion of one token per draw, with its own seed, at most ``model.concurrency`` requests in
  flight, through the served backend's client: every knob under the server's own name, the neutral values its
  capability check found (no server default shapes a draw), llama.cpp's prompt cache off. A server returns text:
  a draw is counted by its text, and the tokens that make the same text are one category (a draw's token id is
  read where the server gives one: llama.cpp's ``content[].id``, vLLM's ``token_id:N``); each row says how many of
  its draws fell on a text several tokens make. An empty reply that stopped is an end token.
- **Expected distribution**, with ``--reference``: a local model with the same weights. A ``.gguf`` file runs in
  process on llama.cpp itself (llama-cpp-python: the kernels of a llama.cpp server; transformers' de-quantized copy
  of the same file is off by a total variation of about 0.04 at temperature 1, more than 2,000 draws tolerate);
  anything else runs through transformers. Its forward pass after the context, as the reference tokenizes the
  context's text, goes through the setting's chain in the order the setting names, else the order the server
  applies (its kind's: llama.cpp's for llama.cpp's servers, vLLM's for vLLM's).
- **Without a reference**: the server's own top-N logprobs at temperature 1 with no filter (:data:`TOP_N`), each
  context's, are the model. The chain is applied to them twice, with the rest of the probability spread as thinly
  and as thickly as the top-N allow; where the two agree and keep nothing outside the top N, the kept set lies
  inside them and the row is tested over those texts; elsewhere it is inconclusive, and says so.
- **Seeds**: as in process (the same seed twice; alone and among neighbours of other seeds, settings, contexts and
  of requests with no seed), and ``n`` > 1 choices of one request: distinct, and the same when sent again.
- **Logprobs**: a request at :data:`LOGPROB_PROBE` asking for the top-N logprobs, per context: whether they are
  the raw model's or the processed distribution's (the nearer in total variation), against what the kind of server
  reports (:data:`REPORTS`), and their distance from the reference.

Samples and seeds: the seed of a request is :func:`evalkit.generation.served.protocol.request_seed` of the draw's
derived seed, the mapping every served sweep uses (recorded in the report).
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass, field

import numpy as np

from evalkit.conformance import core as cf
from evalkit.errors import ConfigError, EvalkitError
from evalkit.seeds import derive_seed
from evalkit.settings import Setting

TOP_N = 20  # top logprobs asked for: the model without a reference, and the logprobs check
LOGPROB_PROBE = Setting(temperature=0.5, top_p=0.9)  # where raw and processed probabilities differ
LOGPROB_TV = 0.02  # reported probabilities further than this (total variation) from the reference disagree with it
N_CHOICES = 4  # choices of the one request of the n > 1 check
# what each kind of server's logprobs are, read from their code: llama.cpp's server the probabilities after its
# sampler chain (n_probs), llama-cpp-python's the raw model's (logits_to_logprobs of the scores), vLLM's the raw
# model's (logprobs_mode raw_logprobs, its default)
REPORTS = {"llama.cpp": "processed", "llama-cpp-python": "raw", "vllm": "raw"}
OTHER_TEXT = "(another text)"


# --------------------------------------------------------------------------- references


class GGUFReference(cf.Reference):
    """llama.cpp's own forward pass of a GGUF file, in process (llama-cpp-python), with its tokenizer."""

    def __init__(self, path: str):
        import os

        try:
            from llama_cpp import Llama
        except ImportError:
            raise EvalkitError(f"--reference {path}: a GGUF reference runs on llama.cpp in process, which needs "
                               "llama-cpp-python (pip install llama-cpp-python)") from None
        import llama_cpp

        self.path = path
        self.llama = Llama(model_path=path, n_ctx=2048, logits_all=True, verbose=False,
                           n_threads=max(1, os.cpu_count() or 1))
        vocab = self.llama._model.vocab
        eos = [i for i in range(self.llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, i)]
        super().__init__(None, None, eos)

    def _forward(self, tokens: tuple[int, ...]):
        import torch

        self.llama.reset()
        self.llama.eval(list(tokens))
        return torch.from_numpy(np.array(self.llama.scores[len(tokens) - 1], dtype=np.float32))[None]

    def encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.llama.tokenize(text.encode("utf-8"), special=True))

    def decode(self, tokens) -> str:
        return self.llama.detokenize(list(tokens)).decode("utf-8", "replace")

    def texts(self) -> list[str]:
        model = self.llama._model
        return [model.token_to_piece(i).rstrip(b"\0").decode("utf-8", "ignore") for i in range(self.llama.n_vocab())]

    def vocabulary(self):
        from evalkit.generation.samplers.dry import Vocabulary

        model = self.llama._model
        return Vocabulary(lambda: [model.token_to_piece(i, special=True).rstrip(b"\0")
                                   for i in range(self.llama.n_vocab())],
                          lambda b: self.llama.tokenize(b, add_bos=False, special=False))


class TopReference(cf.Reference):
    """The server's own top-N logprobs as the model: context k's logits are its top-N logprobs, then the rest of the
    probability as ``tail`` tokens of equal share (thin: many; thick: as few as the smallest top-N one allows)."""

    SPREAD = 100_000  # tokens the thin tail spreads over

    def __init__(self, tops: list[dict[str, float]], thick: bool):
        super().__init__(None, None, [])
        self.tops, self.thick = tops, thick
        self.size = TOP_N + self.SPREAD

    def _forward(self, tokens: tuple[int, ...]):
        import torch

        top = sorted(self.tops[tokens[0]].values(), reverse=True)
        rest = max(0.0, 1.0 - sum(math.exp(v) for v in top))
        z = np.full(self.size, -np.inf)
        z[:len(top)] = top
        if rest > 0:
            smallest = math.exp(top[-1]) if top else rest
            count = min(self.SPREAD, math.ceil(rest / smallest)) if self.thick else self.SPREAD
            z[TOP_N:TOP_N + count] = math.log(rest / count)
        return torch.from_numpy(z.astype(np.float64)).float()[None]

    def vocabulary(self):
        return None


def load_reference(config, reference: str | None) -> cf.Reference | None:
    """The reference a served check compares with: a GGUF file on llama.cpp in process, anything else through
    transformers; None without ``--reference``."""
    if reference is None:
        return None
    from pathlib import Path

    if reference.endswith(".gguf"):
        if not Path(reference).is_file():
            raise ConfigError(f"no such GGUF file: {reference}", path="--reference")
        return GGUFReference(reference)
    return cf.load_reference(config, reference, object())


# --------------------------------------------------------------------------- requests and replies


@dataclass(frozen=True)
class Reply:
    """What a draw's reply says: its text, finish reason, the token id where the server gives it, and the top
    logprobs keyed by text (where asked for)."""

    text: str
    finish: str | None
    token_id: int | None = None
    top: dict[str, float] = field(default_factory=dict)
    choices: tuple[str, ...] = ()  # every choice's text (n > 1)


_TOKEN_ID = re.compile(r"token_id:(\d+)$")


def reply_of(data: dict) -> Reply:
    """The first choice of a completion reply: OpenAI's legacy logprobs lists (``tokens``, ``top_logprobs`` keyed by
    text) or the chat-style ``content`` list (llama.cpp's server: with ``id``)."""
    choices = data["choices"]
    choice = choices[0]
    text = choice.get("text")
    if text is None:
        text = (choice.get("message") or {}).get("content") or ""
    lp = choice.get("logprobs") or {}
    token_id, top = None, {}
    if lp.get("content"):
        first = lp["content"][0]
        token_id = first.get("id") if isinstance(first.get("id"), int) else None
        top = {x["token"]: float(x["logprob"]) for x in first.get("top_logprobs") or []}
    elif lp.get("tokens"):
        found = _TOKEN_ID.match(str(lp["tokens"][0]))
        token_id = int(found.group(1)) if found else None
        top = {k: float(v) for k, v in ((lp.get("top_logprobs") or [None])[0] or {}).items()}
    texts = tuple(c.get("text") or "" for c in choices)
    return Reply(text, choice.get("finish_reason"), token_id, top, texts)


class Sender:
    """Requests to the served backend's server: bodies made by the backend (its knobs, neutral values, prompt cache
    off), at most ``concurrency`` in flight."""

    def __init__(self, backend):
        self.backend = backend

    def body(self, prompt, setting: Setting, seed: int | None, *, logprobs: int = 0, tokens: int = 1,
             n: int = 1, ids: bool = False) -> dict:
        """A request's body; ``ids``: ask for the drawn token's id where the server gives it (with its logprob)."""
        body = self.backend.body(prompt, setting, 0 if seed is None else seed, tokens, logprobs=logprobs or int(ids))
        if seed is None:
            del body["seed"]
        if n != 1:
            body["n"] = n
        if ids and self.backend.kind.name == "vllm":
            body["return_tokens_as_token_ids"] = True
        return body

    def send(self, bodies: list[dict], *, concurrency: int | None = None, on_done=lambda n: None) -> list[Reply]:
        from evalkit.generation.served.client import run_async
        from evalkit.generation.served.protocol import parse_choice

        backend = self.backend
        url = backend.endpoint.base_url + backend.path
        width = concurrency or backend.concurrency
        done = [0]

        async def main():
            gate = asyncio.Semaphore(width)
            async with backend.endpoint.client(width) as client:
                async def one(body: dict) -> Reply:
                    async with gate:
                        data = await backend.endpoint.call(client, "POST", backend.path, body,
                                                           parse=lambda d: (d, parse_choice(d, backend.api, url)))
                    done[0] += 1
                    on_done(done[0])
                    return reply_of(data[0])

                return await asyncio.gather(*(one(b) for b in bodies))

        return list(run_async(main()))

    def one_by_one(self, bodies: list[dict]) -> list[Reply]:
        return [self.send([b], concurrency=1)[0] for b in bodies]


# --------------------------------------------------------------------------- categories


class TextCategories(cf.Categories):
    """Draws counted by text: the tokens of one text are one category, the end tokens one more; a text no token
    makes is a category of its own, outside the expected support."""

    def __init__(self, texts: list[str], eos: list[int]):
        index: dict[str, int] = {}
        classes = np.empty(len(texts) + 1, dtype=np.int64)
        ends = set(eos)
        for i, t in enumerate(texts):
            if i not in ends:
                classes[i] = index.setdefault(t, len(index))
        end = len(index)
        classes[list(ends)] = end
        classes[-1] = end
        labels = [repr(t) for t in index] + ["(end)"]
        super().__init__(classes, labels)
        self.index, self.end = index, end
        self.shared = {t for t, n in zip(*np.unique(np.array(texts, dtype=object), return_counts=True)) if n > 1}
        self.unknown: dict[str, int] = {}

    def of_key(self, key: str) -> int | None:
        """The category of a top-logprobs key (a text, or vLLM's ``token_id:N``); None: no token makes it."""
        found = _TOKEN_ID.match(key)
        if found and int(found.group(1)) < len(self.classes) - 1:
            return int(self.classes[int(found.group(1))])
        return self.index.get(key.replace("\ufffd", ""))

    def of(self, reply: Reply) -> int:
        if reply.token_id is not None and 0 <= reply.token_id < len(self.classes) - 1:
            return int(self.classes[reply.token_id])
        if reply.text == "" and reply.finish == "stop":
            return self.end
        text = reply.text.replace("\ufffd", "")
        if text in self.index:
            return self.index[text]
        if text not in self.unknown:
            self.unknown[text] = self.end + 1 + len(self.unknown)
            self.labels.append(f"{text!r} (no token makes it)")
        return self.unknown[text]

    def ambiguous(self, replies: list[Reply]) -> int:
        """Draws whose text several tokens make (and whose token id the server did not give)."""
        return sum(r.token_id is None and r.text.replace("\ufffd", "") in self.shared for r in replies)


class TopCategories(cf.Categories):
    """Draws against the server's top-N texts of one context: each its own category, any other text one more."""

    def __init__(self, top: dict[str, float], size: int):
        texts = [t for t, _ in sorted(top.items(), key=lambda kv: -kv[1])]
        classes = np.full(size + 1, len(texts), dtype=np.int64)
        classes[:len(texts)] = np.arange(len(texts))
        super().__init__(classes, [repr(t) for t in texts] + [OTHER_TEXT])
        self.index = {t: i for i, t in enumerate(texts)}

    def of(self, reply: Reply) -> int:
        return self.index.get(reply.text, len(self.index))


# --------------------------------------------------------------------------- the check


@dataclass
class LogprobCheck:
    """Whether the top-N probabilities a server reports are the raw model's or the processed distribution's."""

    context: str
    setting: str
    reported: str  # "raw" or "processed": the nearer
    claimed: str | None  # what the kind of server reports (REPORTS); None: unknown
    distance_raw: float  # total variation from the reference's raw distribution, over the reported texts and the rest
    distance_processed: float
    total: float  # the reported probabilities' sum (past 1: wrong)

    @property
    def passed(self) -> bool:
        near = min(self.distance_raw, self.distance_processed) <= LOGPROB_TV
        return near and self.total <= 1 + 1e-3 and (self.claimed is None or self.reported == self.claimed)

    def why(self) -> str:
        if self.total > 1 + 1e-3:
            return f"the reported probabilities sum to {self.total:.4f}"
        if min(self.distance_raw, self.distance_processed) > LOGPROB_TV:
            return "neither the raw model's nor the processed distribution's"
        if self.claimed is not None and self.reported != self.claimed:
            return f"{self.reported}, where this kind of server reports {self.claimed}"
        return self.reported

    def as_dict(self) -> dict:
        return {"context": self.context, "setting": self.setting, "reported": self.reported,
                "claimed": self.claimed, "distance_raw_tv": self.distance_raw,
                "distance_processed_tv": self.distance_processed, "sum": self.total, "passed": self.passed,
                "verdict": self.why()}


def served_contexts(reference: cf.Reference | None, sender: Sender, prompt, lengths: tuple[int, ...]
                    ) -> list[cf.Context]:
    """The prompt, and the prompt followed by the first ``n`` tokens of a greedy continuation (the reference's, else
    the server's at temperature 0), as text: the tokens are the reference's tokenization of that text (what the
    server reads); without a reference, the context's index."""
    import dataclasses

    if reference is not None:
        text = reference.continuation(reference.encode(prompt.rendered), max(lengths, default=0))
        tail = [reference.decode(text[:n]) for n in lengths]
    else:
        longest = max(lengths, default=0)
        tail = [""] * len(lengths)
        if longest:
            (reply,) = sender.send([sender.body(prompt, Setting(temperature=0.0), 0, tokens=longest)])
            words = reply.text
            tail = [words[: round(len(words) * n / longest)] if n else "" for n in lengths]
    out = []
    for k, (n, extra) in enumerate(zip(lengths, tail)):
        name = "prompt" if n == 0 else f"prompt+{n}"
        rendered = prompt.rendered + extra
        tokens = reference.encode(rendered) if reference is not None else (k,)
        inner = dataclasses.replace(prompt.prompt, id=f"{prompt.prompt.id}@{name}")
        out.append(cf.Context(name, dataclasses.replace(prompt, prompt=inner, rendered=rendered), tokens))
    return out


def _draw(sender: Sender, settings: list[Setting], ctxs: list[cf.Context], options: cf.Options, ui,
          ids: bool) -> dict:
    bodies, keys = [], []
    for c in ctxs:
        for s in settings:
            for i in range(options.draws):
                seed = derive_seed(options.seed, "conformance", s.id, c.name, i)
                bodies.append(sender.body(c.prompt, cf.as_sent(s, _REMOTE), seed, ids=ids))
                keys.append((c.name, s.id))
    with ui.phase("drawing", total=len(bodies)) as phase:
        replies = sender.send(bodies, on_done=lambda n: phase.update(completed=n))
    out: dict[tuple[str, str], list[Reply]] = {}
    for key, reply in zip(keys, replies):
        out.setdefault(key, []).append(reply)
    return out


class _Remote:
    remote = True


_REMOTE = _Remote()


def _claimed(setting: Setting, kind) -> str:
    if isinstance(setting.order, str) and setting.order != "auto":
        return setting.order
    if kind.order is None:
        raise ConfigError(f"the server applies an order evalkit cannot name ({kind.what}): name the order it claims "
                          f"in the setting (order=llama_cpp, order=vllm, ...)", path="--setting")
    return kind.order


def check(backend, reference: cf.Reference | None, settings: list[Setting], prompt, *, options: cf.Options,
          ui=None) -> cf.Report:
    """Draw from a served backend (loaded, its capability check done), test against ``reference`` (or the server's
    top-N logprobs), check its seeds and its logprobs."""
    import time

    from evalkit.progress import Silent

    ui = ui or Silent()
    started = time.perf_counter()
    sender = Sender(backend)
    kind = backend.kind
    for s in settings:
        _claimed(s, kind)
    ctxs = served_contexts(reference, sender, prompt, options.continuations)
    drawn = _draw(sender, settings, ctxs, options, ui, ids=reference is not None)
    m = len(settings) * len(ctxs)
    if reference is not None:
        categories = TextCategories(reference.texts(), reference.eos_ids)
        cases = []
        for s in settings:
            for c in ctxs:
                replies = drawn[(c.name, s.id)]
                tokens = np.array([categories.of(r) for r in replies])
                case = cf._case(reference, s, c, tokens, _claimed(s, kind), m, options.alpha, categories)
                shared = categories.ambiguous(replies)
                if shared:
                    case.note = f"{shared} draws of texts that several tokens make (each text one category)"
                cases.append(case)
        cf._verdicts(cases, options.alpha)
        name = getattr(reference, "path", None) or str(getattr(reference.model, "name_or_path", "the reference"))
    else:
        cases = _top_cases(sender, settings, ctxs, drawn, kind, m, options)
        name = f"the server's own top-{TOP_N} logprobs at temperature 1"
    report = cf.Report(f"openai ({kind.what})", kind.order or "its own", options, cases, reference=name)
    sampled = cf.hottest_first([s for s in settings if not s.greedy])
    if sampled:
        with ui.phase("checking seeds"):
            report.seeds = check_seeds(sender, sampled[0], ctxs, sampled[1:], options)
    if reference is not None:
        with ui.phase("checking logprobs"):
            report.logprobs = check_logprobs(sender, reference, ctxs, kind, options)
    report.seed_mapping = backend.info.rng
    report.seconds = time.perf_counter() - started
    return report


def _top_cases(sender: Sender, settings, ctxs, drawn, kind, m: int, options: cf.Options) -> list[cf.Case]:
    """Cases against the server's own top-N logprobs at temperature 1 (no filter), context by context."""
    neutral = Setting()
    bodies = [sender.body(c.prompt, neutral, 0, logprobs=TOP_N) for c in ctxs]
    tops = [dict(sorted(r.top.items(), key=lambda kv: -kv[1])[:TOP_N]) for r in sender.send(bodies)]
    if not all(tops):
        raise EvalkitError(f"the server gives no top logprobs (asked for {TOP_N}), and there is no --reference: "
                           "nothing to compare the draws with")
    thin, thick = TopReference(tops, thick=False), TopReference(tops, thick=True)
    cases, untestable = [], set()
    for s in settings:
        for k, c in enumerate(ctxs):
            categories = TopCategories(tops[k], thin.size)
            tokens = np.array([categories.of(r) for r in drawn[(c.name, s.id)]])
            order = _claimed(s, kind)
            case = cf._case(thin, s, c, tokens, order, m, options.alpha, categories)
            a = categories.project(cf.fold_end(thin.expected(s, c.tokens, order), []))
            b = categories.project(cf.fold_end(thick.expected(s, c.tokens, order), []))
            if a[-1] > 1e-9 or b[-1] > 1e-9 or np.abs(a - b).max() > 1e-6:
                case.fit = cf.Fit(float("nan"), "untested")
                case.control_fit, case.control = None, None
                untestable.add(id(case))
            cases.append(case)
    cf._verdicts(cases, options.alpha)
    for case in cases:
        if id(case) in untestable:
            case.verdict = (f"inconclusive: the kept set is not inside the server's top-{TOP_N} logprobs "
                            "(give --reference)")
    return cases


def check_seeds(sender: Sender, setting: Setting, ctxs: list[cf.Context], others: list[Setting],
                options: cf.Options) -> list[cf.SeedCheck]:
    """The same seed twice; each seeded probe alone (one request in flight) and among neighbours (other seeds,
    settings, contexts, and requests with no seed, all in flight together); ``n`` > 1 choices of one request."""
    ctx = ctxs[0]
    sent = cf.as_sent(setting, _REMOTE)
    seeds = [derive_seed(options.seed, "conformance-seeds", i) for i in range(cf.SEED_PROBES)]
    probes = [sender.body(ctx.prompt, sent, s) for s in seeds]
    first = [r.text for r in sender.send(probes)]
    again = [r.text for r in sender.send(probes)]
    alone = [r.text for r in sender.one_by_one(probes)]
    pairs = [(c, cf.as_sent(s, _REMOTE)) for c in ctxs for s in [setting, *others]]
    crowd, where = [], []
    for i, probe in enumerate(probes):
        for j in range(4):  # a neighbour with another seed, another setting or context, and one with no seed
            c, s = pairs[(4 * i + j) % len(pairs)]
            crowd.append(sender.body(c.prompt, s, None if j % 2 else derive_seed(options.seed,
                                                                                   "conformance-neighbour", i, j)))
            if j == 1:
                where.append(len(crowd))
                crowd.append(probe)
    got = sender.send(crowd)
    among = [got[k].text for k in where]
    distinct = len(set(first))
    checks = [cf.SeedCheck("same seed twice", sum(a == b for a, b in zip(first, again)), len(probes), distinct),
              cf.SeedCheck("alone vs among batch neighbours (seeded and unseeded)",
                           sum(a == b for a, b in zip(alone, among)), len(probes), distinct)]
    body = sender.body(ctx.prompt, sent, seeds[0], n=N_CHOICES)
    one, two = sender.send([body, body], concurrency=1)
    if len(one.choices) < N_CHOICES:
        checks.append(cf.SeedCheck(f"n={N_CHOICES} choices of one request", 0, 0, len(set(one.choices)),
                                   note=f"not honoured: {len(one.choices)} choice(s) for n={N_CHOICES}"))
    else:
        distinct_choices = len(set(one.choices))
        same = one.choices == two.choices
        note = ("every choice the same (one seed for all of them)" if distinct_choices == 1 else
                "" if same else "other choices when sent again")
        checks.append(cf.SeedCheck(f"n={N_CHOICES} choices of one request: distinct, and the same sent twice",
                                   int(same and distinct_choices > 1), 1, distinct_choices, note=note))
    return checks


def check_logprobs(sender: Sender, reference: cf.Reference, ctxs: list[cf.Context], kind,
                   options: cf.Options) -> list[LogprobCheck]:
    """Per context: the top-N probabilities the server reports at :data:`LOGPROB_PROBE`, against the reference's raw
    distribution and the processed one (the probe through the server's order)."""
    order = kind.order or "llama_cpp"
    categories = TextCategories(reference.texts(), reference.eos_ids)
    bodies = [sender.body(c.prompt, LOGPROB_PROBE, derive_seed(options.seed, "conformance-logprobs", c.name),
                          logprobs=TOP_N, ids=True) for c in ctxs]
    out = []
    for c, reply in zip(ctxs, sender.send(bodies)):
        if not reply.top:
            continue
        raw = categories.project(cf.fold_end(reference.expected(Setting(), c.tokens, order), reference.eos_ids))
        processed = categories.project(cf.fold_end(reference.expected(LOGPROB_PROBE, c.tokens, order),
                                                   reference.eos_ids))
        known = {key: categories.of_key(key) for key in reply.top}
        texts = [key for key, where in known.items() if where is not None]
        reported = np.array([math.exp(reply.top[t]) for t in texts])
        where = [known[t] for t in texts]

        def distance(probs: np.ndarray) -> float:
            rest_reported, rest = max(0.0, 1 - reported.sum()), max(0.0, 1 - probs[where].sum())
            return float(0.5 * (np.abs(reported - probs[where]).sum() + abs(rest_reported - rest)))

        d_raw, d_processed = distance(raw), distance(processed)
        out.append(LogprobCheck(c.name, LOGPROB_PROBE.id, "raw" if d_raw <= d_processed else "processed",
                                REPORTS.get(kind.name), d_raw, d_processed, float(reported.sum())))
    return out


# --------------------------------------------------------------------------- from a config


def run(config, spec, chosen: list[Setting], *, draws: int, reference: str | None, ui=None,
        continuations: tuple[int, ...] = cf.CONTINUATIONS) -> cf.Report:
    """``evalkit conformance`` on a served config: load the backend, run its capability check for the settings as
    sent, then :func:`check`."""
    from evalkit.generation import load_backend
    from evalkit.prompts import load_prompts

    if reference is not None and config.model.api == "chat":
        raise ConfigError("a --reference reads the prompt's tokens: use model.api: completions (with chat the server "
                          "applies a template the reference cannot see)", source=config.source, path="model.api")
    ref = load_reference(config, reference)
    backend = load_backend(config)
    prompt = load_prompts(config)[0]
    prepared = backend.prepare([prompt], chat_template=config.prompts.chat_template,
                               system_prompt=config.prompts.system_prompt, max_new_tokens=1)[0]
    backend.check([cf.as_sent(s, _REMOTE) for s in chosen], [prepared], logprobs=0, max_new_tokens=1)
    options = cf.Options(draws=draws, seed=config.seed, batch_size=backend.concurrency, continuations=continuations)
    return check(backend, ref, chosen, prepared, options=options, ui=ui)
