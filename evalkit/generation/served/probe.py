"""The capability check of a served model: a few short requests before any sample is made.

0. Before any request, the kind of server (its GET /models entry's ``owned_by``: llama.cpp's server,
   llama-cpp-python's, vLLM's, or one of unknown kind; :data:`~evalkit.generation.served.protocol.KINDS`)
   decides under which names the knobs are sent; a setting that sets a knob that kind has no field for,
   names another order than the kind's, or counts its penalties over tokens the kind cannot be sent, is
   refused (:meth:`~evalkit.generation.served.protocol.ServerKind.refusal`).
1. One request with every optional knob at its neutral value, and logprobs when the metrics need them,
   made as the sweep's own will be: the longest prompt, ``max_new_tokens``, the stop strings (a prompt
   too long for the server's context, or stop strings it refuses, are refused now). If the server
   refuses it, one request per knob finds those it rejects at their neutral values: they are not sent
   (the server has no such knob, or it is off unless set). Logprobs that the metrics need and the server
   does not give are refused.
2. When the grid samples: ``PROBE_SEEDS`` requests at temperature 2 with different seeds must give at
   least two texts (else the server ignores temperature or seed: refused), and the first seed sent again, after a
   request on another prompt (which changes a cached prompt prefix), must give the first text again (recorded as
   ``seed_reproducible``; a hosted API may not promise it, llama-cpp-python's server reuses the previous request's
   prefix).
3. When the grid samples and the kind names an order: the order is checked, ``PROBE_SEEDS`` requests at
   temperature 10000 with min_p 0.999: one text means min-p applies before the temperature (llama.cpp's
   order), several after it (vLLM's). A server that does not do what its kind's order does is taken for
   one of unknown kind (its order unnamed), and step 0 is done again for that kind. One that rejects the
   request keeps its kind's order, unchecked (vLLM takes no temperature above 2).
4. For each knob the grid sets (temperature: away from 1; a filter that keeps the most likely token: in a
   setting that samples), its probes (:func:`probes`): requests with the knob at an extreme must give one
   text (``one``: it leaves one token, as ``top_k`` 1 does), several (``several``: a qualifier that lets
   more than one token through where the probe before it left one), or change the greedy text of a
   repetitive prompt (``moves``: penalties, DRY, min_tokens). A server that does otherwise ignores the knob,
   one that refuses the request rejects it: refused, naming the knob.

A refusal (400, 422, or the 500 that llama-cpp-python answers a field it does not know with, asked once
more) is not retried further. :func:`budget` bounds the requests and tokens (``evalkit run --plan``).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from evalkit.errors import ConfigError, shown
from evalkit.generation.base import PreparedPrompt
from evalkit.generation.served.client import ServerError, run_async
from evalkit.generation.served.protocol import KINDS, OPTIONAL_KNOBS, OTHER, REQUEST_KNOBS, ServerKind, parse_choice
from evalkit.prompts import Prompt
from evalkit.settings import ORDERS, Setting

PROBE_SEEDS = 6
PROBE_TOKENS = 8  # the tokens of a seeded probe request
MOVES_TOKENS = 16  # of a greedy one on the repetitive prompt
PROBE_TEMPERATURE = 2.0
# the prompt of the greedy probes (penalties, DRY, min_tokens): a model continues it by repeating it
PROBE_TEXT = "one two three one two three one two three one two three one two"
ORDER_PROBE = {"temperature": 1e4, "min_p": 0.999}  # one text: min-p before the temperature; several: after
ORDER_PROBE_ID = Setting(**ORDER_PROBE).id
ONE, SEVERAL, MOVES = "one", "several", "moves"
# knobs that keep the most likely token: moot in a greedy setting (the others can change what argmax picks)
ARGMAX_KEEPING = frozenset({"top_k", "top_p", "min_p", "top_n_sigma", "mirostat", "mirostat_tau", "mirostat_eta"})
# how a server refuses a field it does not take: 400 or 422, or 500 (llama-cpp-python's validation errors)
REFUSED = frozenset({400, 422, 500})
ONCE = frozenset({500})  # a 500 may be a blip: asked once more before it counts as a refusal


@dataclass(frozen=True)
class Probe:
    """How the capability check shows that a server applies ``knob``: requests with ``setting`` (at temperature 2
    unless it says otherwise; ``moves``: greedy, on :data:`PROBE_TEXT`) must give what ``expect`` says."""

    knob: str
    setting: tuple[tuple[str, Any], ...]  # Setting fields
    expect: str  # ONE: one text over PROBE_SEEDS seeds; SEVERAL: more than one; MOVES: another greedy text than
    against: tuple[tuple[str, Any], ...] = (("temperature", 0.0),)  # ...this setting's (MOVES)
    stop: tuple[str, ...] = ()  # stop strings of the request (MOVES)
    label: str = ""  # what messages call what it shows (default: the knob)

    def built(self, params: tuple[tuple[str, Any], ...]) -> Setting:
        base = {"temperature": 0.0} if self.expect == MOVES else {"temperature": PROBE_TEMPERATURE}
        return Setting(**{**base, **dict(params)})


def _probe(knob: str, expect: str, against: dict | None = None, stop: tuple[str, ...] = (), label: str = "",
           **setting) -> Probe:
    greedy = {"temperature": 0.0} if expect == MOVES else {}
    return Probe(knob, tuple({**greedy, **setting}.items()), expect,
                 tuple({"temperature": 0.0, **(against or {})}.items()), stop, label)


# The probes of each knob a server can be sent (a key per line of REQUEST_KNOBS); mirostat's depend on the grid's
# versions (probes()). A DRY penalty is multiplier * base ** (repeat length - allowed length), and PROBE_TEXT
# repeats about ten tokens: multiplier 1 moves the greedy text, multiplier 1e-4 does not until the base is 8, the
# allowed length 30, or a window of 4 tokens, or breakers that cut every repeat, stop it.
_DRY = {"dry_multiplier": 1.0}
_FAINT_DRY = {"dry_multiplier": 1e-4}
_XTC = {"top_k": 2, "xtc_probability": 1.0}  # XTC removes every token above the threshold but the last: of two,
#                                              the first (threshold 0.001: one text), or none (0.5: several)
PROBES: dict[str, tuple[Probe, ...]] = {
    "temperature": (_probe("temperature", ONE, temperature=0.0),),
    "top_p": (_probe("top_p", ONE, top_p=0.001),),
    "top_k": (_probe("top_k", ONE, top_k=1),),
    "min_p": (_probe("min_p", ONE, min_p=0.999),),
    "typical_p": (_probe("typical_p", ONE, typical_p=0.001),),
    "top_n_sigma": (_probe("top_n_sigma", ONE, top_n_sigma=0.001),),
    "xtc_probability": (_probe("xtc_probability", ONE, **_XTC, xtc_threshold=0.001),),
    "xtc_threshold": (_probe("xtc_threshold", SEVERAL, **_XTC, xtc_threshold=0.5),),
    "dry_multiplier": (_probe("dry_multiplier", MOVES, **_DRY),),
    "dry_base": (_probe("dry_base", MOVES, _FAINT_DRY, **_FAINT_DRY, dry_base=8.0),),
    "dry_allowed_length": (_probe("dry_allowed_length", MOVES, _DRY, **_DRY, dry_allowed_length=30),),
    "dry_penalty_last_n": (_probe("dry_penalty_last_n", MOVES, _DRY, **_DRY, dry_penalty_last_n=4),),
    "dry_sequence_breakers": (_probe("dry_sequence_breakers", MOVES, _DRY, **_DRY,
                                     dry_sequence_breakers=("one", "two", "three")),),
    "mirostat": (),  # probes()
    "mirostat_tau": (),
    "mirostat_eta": (),
    "repetition_penalty": (_probe("repetition_penalty", MOVES, repetition_penalty=2.0),),  # vLLM's most
    "presence_penalty": (_probe("presence_penalty", MOVES, presence_penalty=2.0),),
    "frequency_penalty": (_probe("frequency_penalty", MOVES, frequency_penalty=2.0),),
    # a window of the last token only: the repeats of PROBE_TEXT go unpenalized
    "penalty_scope": (_probe("penalty_scope", MOVES, {"repetition_penalty": 2.0}, repetition_penalty=2.0,
                             penalty_scope=1),),
    # vLLM holds back the end of text and the stop strings until min_tokens are out: a space stops the greedy text
    # at once without it
    "min_tokens": (_probe("min_tokens", MOVES, stop=(" ",), min_tokens=4),),
}


def probes(knob: str, settings: list[Setting]) -> tuple[Probe, ...]:
    """The probes that show ``knob`` applied, for a grid of ``settings``. Mirostat's, for each version the grid
    sets: tau 0.5 leaves one token (with eta 0.001), eta 1 lets more through; and where a setting combines
    mirostat with a temperature, temperature 0.01 leaves one token (llama-cpp-python applies no temperature with
    mirostat)."""
    versions = sorted({s.mirostat for s in settings if s.mirostat})
    if knob in ("mirostat", "mirostat_tau"):
        return tuple(_probe(knob, ONE, mirostat=v, mirostat_tau=0.5, mirostat_eta=0.001) for v in versions)
    if knob == "mirostat_eta":
        return tuple(_probe(knob, SEVERAL, mirostat=v, mirostat_tau=0.5, mirostat_eta=1.0) for v in versions)
    if knob == "temperature":
        hot = sorted({s.mirostat for s in settings if s.mirostat and s.temperature not in (0.0, 1.0)})
        return PROBES[knob] + tuple(_probe(knob, ONE, label="temperature with mirostat", mirostat=v, mirostat_tau=0.5,
                                           mirostat_eta=1.0, temperature=0.01) for v in hot)
    return PROBES[knob]


def grid_sets(settings: list[Setting], kind: ServerKind | None = None) -> list[str]:
    """The knobs, in the order of ``REQUEST_KNOBS``, that ``kind`` of server is sent (any kind: None) and some
    setting of the grid sets where they matter: the temperature away from 1, a knob that keeps the most likely
    token in a setting that samples, any other in any setting."""
    sampled = [s for s in settings if not s.greedy]
    return [k for k in REQUEST_KNOBS if (kind is None or k in kind.fields)
            and any(k in s.set_knobs() for s in (sampled if k in ARGMAX_KEEPING else settings))]


@dataclass
class Found:
    sent: dict[str, Any]  # optional knob -> the neutral value sent with every request
    kind: ServerKind = field(default_factory=lambda: KINDS[OTHER])  # the kind of server, after the order check
    not_sent: dict[str, str] = field(default_factory=dict)  # optional knob -> why it is not sent
    honoured: list[str] = field(default_factory=list)  # knobs the grid sets, checked to work
    order_check: str | None = None  # what the order check found
    fingerprint: str | None = None
    reported_model: str | None = None
    seed_reproducible: bool | None = None
    requests: int = 0

    def record(self) -> dict[str, Any]:
        """What the manifest keeps of the check (ModelInfo.server)."""
        return {"kind": self.kind.name, "order": self.kind.order, "order_check": self.order_check,
                "auto_penalty_scope": self.kind.auto_scope, "sent_with_every_request": self.sent,
                "not_sent": self.not_sent, "honoured": self.honoured, "system_fingerprint": self.fingerprint,
                "reported_model": self.reported_model, "seed_reproducible": self.seed_reproducible,
                "probe_requests": self.requests}


def check_settings(kind: ServerKind, settings: list[Setting], base: str, source: str | None, note: str = "") -> None:
    """Refuse the first setting that ``kind`` of server does not apply as it says (no request made)."""
    for setting in settings:
        refused = kind.refusal(setting)
        if refused is not None:
            raise ConfigError(f"{base} does not honour {refused[1]}, which setting {setting.id} sets{note}",
                              source=source, path="grid")


def probe(backend, settings: list[Setting], prompts: list[PreparedPrompt], *, logprobs: int, max_new_tokens: int,
          source: str | None) -> Found:
    check_settings(backend.kind, settings, backend.endpoint.base_url, source)
    return run_async(_check(backend, settings, prompts, logprobs, max_new_tokens, source))


async def _check(backend, settings: list[Setting], prompts: list[PreparedPrompt], logprobs: int,
                 max_new_tokens: int, source: str | None) -> Found:
    base = backend.endpoint.base_url
    url = base + backend.path

    def refuse(message: str) -> ConfigError:
        return ConfigError(message, source=source, path="model")

    found = Found(sent={}, kind=backend.kind)
    prompt, longest = prompts[0], max(prompts, key=lambda p: len(p.rendered))
    repetitive = _probe_prompt(backend.api)
    async with backend.endpoint.client(backend.concurrency) as client:
        async def send(setting: Setting, seed: int, optional: dict, lp: int = 0, tokens: int = PROBE_TOKENS,
                       full: bool = False, refusal: bool = False, on: PreparedPrompt | None = None,
                       stop: tuple[str, ...] = ()) -> dict:
            """A probe request; ``full``: the longest prompt with the sweep's max_new_tokens and stop strings,
            as the sweep's own requests will be (a context too short for them is refused now); ``refusal``:
            a reply that refuses the request is not retried (a 500 once)."""
            found.requests += 1
            if full:
                tokens = max_new_tokens
                body = backend.body(longest, setting, seed, tokens, backend.stop, optional=optional, logprobs=lp,
                                    kind=found.kind)
            else:
                body = backend.body(on or prompt, setting, seed, tokens, stop, optional=optional, logprobs=lp,
                                    kind=found.kind)
            return await backend.endpoint.call(client, "POST", backend.path, body, max_bytes=backend.reply_cap(tokens),
                                               once=ONCE if refusal else frozenset())

        async def texts(setting: Setting, seeds, refusal: bool = False) -> list[str]:
            replies = await asyncio.gather(*(send(setting, s, found.sent, refusal=refusal) for s in seeds))
            return [parse_choice(r, backend.api, url).text for r in replies]

        seen: dict[tuple, list[str]] = {}  # what each probe request gave (probes share some)

        async def run(setting: Setting, expect: str, stop: tuple[str, ...] = ()) -> list[str]:
            key = (setting.id, expect == MOVES, stop)
            if key not in seen:
                if expect == MOVES:
                    reply = await send(setting, 1, found.sent, tokens=MOVES_TOKENS, refusal=True, on=repetitive,
                                       stop=stop)
                    seen[key] = [parse_choice(reply, backend.api, url).text]
                else:
                    seen[key] = await texts(setting, range(1, PROBE_SEEDS + 1), refusal=True)
            return seen[key]

        neutral = Setting()
        everything = {k: values[0] for k, values in OPTIONAL_KNOBS.items()}
        try:
            try:
                first = await send(neutral, 1, everything, lp=logprobs, full=True, refusal=True)
                found.sent = everything
            except ServerError as e:
                if e.status not in REFUSED:
                    raise
                first = await _plain(send, neutral, logprobs, refuse, base)
                found.sent, found.not_sent = await _accepted(send, neutral, OPTIONAL_KNOBS)
            found.fingerprint = backend.endpoint.scrub(first.get("system_fingerprint"))
            found.reported_model = backend.endpoint.scrub(first.get("model"))
            if logprobs:
                _check_logprobs(parse_choice(first, backend.api, url), logprobs, refuse, base)
            if any(not s.greedy for s in settings):
                hot = Setting(temperature=PROBE_TEMPERATURE)
                sampled = await texts(hot, range(1, PROBE_SEEDS + 1))
                # the first seed again, after a request on another prompt: a server that reuses the previous
                # request's cached prompt prefix (llama-cpp-python's) now computes the prompt afresh, as the first
                # sample of a prompt in a run, or on a resume, does
                await send(hot, 1, found.sent, on=repetitive)
                sampled += await texts(hot, [1])
                if not any(sampled):
                    raise refuse(f"{base} returns empty completions: {PROBE_SEEDS} requests at temperature "
                                 f"{PROBE_TEMPERATURE:g} gave no text (is its context full, or does it stop at once?)")
                if len(set(sampled[:PROBE_SEEDS])) < 2:
                    raise refuse(f"{base} does not sample: {PROBE_SEEDS} requests at temperature "
                                 f"{PROBE_TEMPERATURE:g} with different seeds gave one text (does it ignore "
                                 "temperature or seed?)")
                found.seed_reproducible = sampled[-1] == sampled[0]
                if found.kind.order is not None:
                    await _order(found, run, settings, base, source)
            else:
                found.order_check = "not checked: the grid does not sample"
            for knob in grid_sets(settings, found.kind):
                for p in probes(knob, settings):
                    await _show(p, found.kind, run, refuse, base)
                found.honoured.append(knob)
        except ServerError as e:
            raise refuse(f"the capability check failed: {e}") from None
    return found


async def _order(found: Found, run, settings: list[Setting], base: str, source: str | None) -> None:
    """Check that the server applies its kind's order, as far as min-p and the temperature tell; a server that does
    not is taken for one of unknown kind (and the settings are checked again for that kind). A server that refuses
    the check's temperature (vLLM takes none above 2) keeps its kind's order, unchecked."""
    claimed = found.kind
    chain = ORDERS[claimed.order]
    expected_first = chain.index(("min_p",)) < chain.index(("temperature",))
    setting = Setting(**ORDER_PROBE)
    described = _described(claimed, setting, ORDER_PROBE)
    try:
        seen = await run(setting, ONE)
    except ServerError as e:
        if e.status not in REFUSED:
            raise
        found.order_check = f"the {claimed.order} order of {claimed.what}, not checked: it rejects {described} ({e})"
        return
    first = len(set(seen)) == 1
    what = (f"min-p {'before' if first else 'after'} the temperature ({PROBE_SEEDS} requests with {described} gave "
            f"{'one text' if first else f'{len(set(seen))} different texts'})")
    if first == expected_first:
        found.order_check = f"the {claimed.order} order: {what}"
        return
    found.kind = KINDS[OTHER]
    found.order_check = (f"not the {claimed.order} order {claimed.what} applies: {what}; taken for a server of "
                         "unknown kind")
    check_settings(found.kind, settings, base, source,
                   note=f" (its /models entry says {claimed.what}, but it applies {what})")


async def _show(p: Probe, kind: ServerKind, run, refuse, base: str) -> None:
    """Run probe ``p``; refuse a server that does not do what it should."""
    setting = p.built(p.setting)
    params = dict(p.setting)
    shown_params = {k: v for k, v in params.items() if k != "temperature" or p.knob == "temperature"}
    described = _described(kind, setting, shown_params)
    label = p.label or p.knob
    try:
        got = await run(setting, p.expect, p.stop)
        against = await run(p.built(p.against), p.expect, p.stop) if p.expect == MOVES else None
    except ServerError as e:
        if e.status not in REFUSED:
            raise
        raise refuse(f"{base} rejects {described} ({e}), and the grid sets {p.knob}") from None
    distinct = len(set(got))
    if p.expect == ONE and distinct > 1:
        raise refuse(f"{base} ignores {label}: {PROBE_SEEDS} requests with {described} gave {distinct} different "
                     f"texts, and the grid sets {p.knob}")
    if p.expect == SEVERAL and distinct == 1:
        raise refuse(f"{base} ignores {label}: {PROBE_SEEDS} requests with {described} gave one text (it lets more "
                     f"than one token through), and the grid sets {p.knob}")
    if p.expect == MOVES and got == against:
        rest = {k: v for k, v in dict(p.against).items() if k != "temperature"}
        than = f"with {_described(kind, p.built(p.against), rest)}" if rest else "without it"
        raise refuse(f"{base} ignores {label}: with {described} the greedy text of a repetitive prompt is the one it "
                     f"gives {than}, and the grid sets {p.knob}")


def _described(kind: ServerKind, setting: Setting, params: dict[str, Any]) -> str:
    """``params`` as the request carries them: ``name=value`` by the server's field names."""
    request = kind.request(setting)
    names = [kind.fields[k] for k in params]
    return ", ".join(f"{n}={_value(request[n])}" for n in names)


def _value(v: Any) -> str:
    if isinstance(v, list):
        return json.dumps(v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def _probe_prompt(api: str) -> PreparedPrompt:
    """:data:`PROBE_TEXT` as the sweep's requests carry a prompt: raw text, or one user message."""
    prompt = Prompt(id="capability-check", text=PROBE_TEXT)
    rendered = json.dumps(prompt.chat(None), ensure_ascii=False) if api == "chat" else PROBE_TEXT
    return PreparedPrompt(prompt=prompt, rendered=rendered, token_ids=(), chat_template=api == "chat")


def budget(settings: list[Setting], max_new_tokens: int) -> tuple[int, int]:
    """The most requests and completion tokens the check can cost for a grid of ``settings``, on any kind of
    server: three as long as the sweep's own, one token per neutral value tried, the sampling and order checks,
    the probes."""
    seeded, greedy = {ORDER_PROBE_ID}, set()
    for knob in grid_sets(settings):
        for p in probes(knob, settings):
            if p.expect == MOVES:
                greedy |= {(p.built(p.setting).id, p.stop), (p.built(p.against).id, p.stop)}
            else:
                seeded.add(p.built(p.setting).id)
    tries = sum(len(v) for v in OPTIONAL_KNOBS.values())
    requests = 3 + tries + PROBE_SEEDS + 2 + len(seeded) * PROBE_SEEDS + len(greedy)
    tokens = (3 * max_new_tokens + tries + (PROBE_SEEDS + 2 + len(seeded) * PROBE_SEEDS) * PROBE_TOKENS
              + len(greedy) * MOVES_TOKENS)
    return requests, tokens



def _check_logprobs(choice, logprobs: int, refuse, base: str) -> None:
    """The reply carries the logprobs the metrics need: the chosen tokens', and the top N (at least somewhere:
    a server that keys its top logprobs by text may merge tokens that decode alike)."""
    if not choice.text:
        raise refuse(f"{base} returns an empty completion to the sweep's request (finish_reason "
                     f"{shown(choice.finish_reason)}, no text, so no logprobs either): is its context full, or does "
                     "it stop at once?")
    if choice.logprobs is None or not choice.logprobs[0]:
        raise refuse(f"{base} returns no logprobs, which the metrics need (nll, perplexity, token_entropy with "
                     "top=N)")
    most = max((len(t) for t in choice.logprobs[1]), default=0)
    if logprobs > 1 and most < logprobs:
        raise refuse(f"{base} returns at most {most} top logprobs per token, fewer than the {logprobs} that "
                     f"token_entropy[top={logprobs}] needs")


async def _accepted(send, neutral: Setting, knobs: dict[str, tuple]) -> tuple[dict[str, Any], dict[str, str]]:
    """Each optional knob's first neutral value that the server takes alone; why not, for the others."""
    async def one(knob: str, values: tuple) -> tuple[Any, str | None]:
        why = None
        for value in values:
            try:
                await send(neutral, 1, {knob: value}, tokens=1, refusal=True)
                return value, None
            except ServerError as e:
                if e.status not in REFUSED:
                    raise
                why = f"rejected {knob}={value!r} ({e.status})"
        return None, why

    results = await asyncio.gather(*(one(k, v) for k, v in knobs.items()))
    sent = {k: value for k, (value, why) in zip(knobs, results) if why is None}
    return sent, {k: why for k, (value, why) in zip(knobs, results) if why is not None}


async def _plain(send, neutral: Setting, logprobs: int, refuse, base: str) -> dict:
    """The sweep's request with no optional knob; refuses a server that takes not even that, naming its reason
    (logprobs only when the same request without them is taken)."""
    try:
        return await send(neutral, 1, {}, lp=logprobs, full=True, refusal=True)
    except ServerError as e:
        if not logprobs or e.status not in REFUSED:
            raise refuse(f"{base} refuses the sweep's request: {e}") from None
        with_logprobs = e
    try:
        await send(neutral, 1, {}, full=True, refusal=True)
    except ServerError as e:
        raise refuse(f"{base} refuses the sweep's request: {e}") from None
    raise refuse(f"{base} rejects logprobs={logprobs}, which the metrics need (nll, perplexity, token_entropy with "
                 f"top=N): {with_logprobs}")
