"""The capability check of a served model: a few short requests before any sample is made.

1. One request with every optional knob at its neutral value, and logprobs when the metrics need them,
   made as the sweep's own will be: the longest prompt, ``max_new_tokens``, the stop strings (a prompt
   too long for the server's context, or stop strings it refuses, are refused now). If the server
   refuses it, one request per knob finds those it rejects at their neutral values: they are not sent
   (the server has no such knob, or it is off unless set). Logprobs that the metrics need and the server
   does not give are refused.
2. When the grid samples: ``PROBE_SEEDS`` requests at temperature 2 with different seeds must give at
   least two texts (else the server ignores temperature or seed: refused), and the first seed sent again
   must give the first text again (recorded as ``seed_reproducible``; a hosted API may not promise it).
3. For each knob the grid sets away from neutral (temperature: away from 1), ``PROBE_SEEDS`` requests at
   temperature 2 with the knob at an extreme that leaves only the most likely token (top_k 1, top_p
   0.001, min_p 0.999; temperature 0) must all give one text. A server that gives several ignores the
   knob, one that refuses the request rejects it: refused.

At most ``MAX_PROBE_REQUESTS`` requests: three as long as the sweep's own, the others of at most
``PROBE_TOKENS`` tokens. A refusal (400, 422, or the 500 that llama-cpp-python answers a field it does
not know with, asked once more) is not retried further.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from evalkit.errors import ConfigError
from evalkit.generation.base import PreparedPrompt
from evalkit.generation.served.client import ServerError, run_async
from evalkit.generation.served.protocol import OPTIONAL_KNOBS, REQUEST_KNOBS, parse_choice
from evalkit.settings import Setting

PROBE_SEEDS = 6
PROBE_TOKENS = 8
PROBE_TEMPERATURE = 2.0
# the knob's value that leaves only the most likely token (a server that honours it decodes greedily), as the
# setting field and the value (REQUEST_KNOBS)
EXTREMES = {knob: {knob: extreme} for knob, (_, _, extreme) in REQUEST_KNOBS.items()}
# how a server refuses a field it does not take: 400 or 422, or 500 (llama-cpp-python's validation errors)
REFUSED = frozenset({400, 422, 500})
ONCE = frozenset({500})  # a 500 may be a blip: asked once more before it counts as a refusal
MAX_PROBE_REQUESTS = (3 + sum(len(v) for v in OPTIONAL_KNOBS.values()) + PROBE_SEEDS + 1
                      + len(EXTREMES) * PROBE_SEEDS)


@dataclass
class Found:
    sent: dict[str, Any]  # optional knob -> the neutral value sent with every request
    not_sent: dict[str, str] = field(default_factory=dict)  # optional knob -> why it is not sent
    honoured: list[str] = field(default_factory=list)  # knobs the grid sets, checked to work
    fingerprint: str | None = None
    reported_model: str | None = None
    seed_reproducible: bool | None = None
    requests: int = 0

    def record(self) -> dict[str, Any]:
        """What the manifest keeps of the check (ModelInfo.server)."""
        return {"sent_with_every_request": self.sent, "not_sent": self.not_sent, "honoured": self.honoured,
                "system_fingerprint": self.fingerprint, "reported_model": self.reported_model,
                "seed_reproducible": self.seed_reproducible, "probe_requests": self.requests}


def grid_sets(settings: list[Setting]) -> list[str]:
    """The request's knobs that some setting of the grid sets away from their neutral value (temperature: away from
    1; the others in a setting that samples), in the order of ``REQUEST_KNOBS``."""
    sampled = [s for s in settings if not s.greedy]
    return [k for k in REQUEST_KNOBS
            if any(k in s.set_knobs() for s in (settings if k == "temperature" else sampled))]


def probe(backend, settings: list[Setting], prompts: list[PreparedPrompt], *, logprobs: int, max_new_tokens: int,
          source: str | None) -> Found:
    return run_async(_probe(backend, settings, prompts, logprobs, max_new_tokens, source))


async def _probe(backend, settings: list[Setting], prompts: list[PreparedPrompt], logprobs: int, max_new_tokens: int,
                 source: str | None) -> Found:
    base = backend.endpoint.base_url
    url = base + backend.path

    def refuse(message: str) -> ConfigError:
        return ConfigError(message, source=source, path="model")

    found = Found(sent={})
    prompt, longest = prompts[0], max(prompts, key=lambda p: len(p.rendered))
    async with backend.endpoint.client(backend.concurrency) as client:
        async def send(setting: Setting, seed: int, optional: dict, lp: int = 0, tokens: int = PROBE_TOKENS,
                       full: bool = False, refusal: bool = False) -> dict:
            """A probe request; ``full``: the longest prompt with the sweep's max_new_tokens and stop strings,
            as the sweep's own requests will be (a context too short for them is refused now); ``refusal``:
            a reply that refuses the request is not retried (a 500 once)."""
            found.requests += 1
            if full:
                tokens = max_new_tokens
                body = backend.body(longest, setting, seed, tokens, backend.stop, optional=optional, logprobs=lp)
            else:
                body = backend.body(prompt, setting, seed, tokens, optional=optional, logprobs=lp)
            return await backend.endpoint.call(client, "POST", backend.path, body, max_bytes=backend.reply_cap(tokens),
                                               once=ONCE if refusal else frozenset())

        async def texts(setting: Setting, seeds, refusal: bool = False) -> list[str]:
            replies = await asyncio.gather(*(send(setting, s, found.sent, refusal=refusal) for s in seeds))
            return [parse_choice(r, backend.api, url).text for r in replies]

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
                seen = await texts(hot, [*range(1, PROBE_SEEDS + 1), 1])
                if len(set(seen[:PROBE_SEEDS])) < 2:
                    raise refuse(f"{base} does not sample: {PROBE_SEEDS} requests at temperature "
                                 f"{PROBE_TEMPERATURE:g} with different seeds gave one text (does it ignore "
                                 "temperature or seed?)")
                found.seed_reproducible = seen[-1] == seen[0]
            for knob in grid_sets(settings):
                extreme = EXTREMES[knob]
                setting = Setting(**{"temperature": PROBE_TEMPERATURE, **extreme})
                (name, value), = extreme.items()
                try:
                    seen = await texts(setting, range(1, PROBE_SEEDS + 1), refusal=True)
                except ServerError as e:
                    if e.status not in REFUSED:
                        raise
                    raise refuse(f"{base} rejects {name}={value:g} ({e}), and the grid sets {knob}") from None
                if len(set(seen)) > 1:
                    raise refuse(f"{base} ignores {knob}: {PROBE_SEEDS} requests with {name}={value:g} gave "
                                 f"{len(set(seen))} different texts, and the grid sets {knob}")
                found.honoured.append(knob)
        except ServerError as e:
            raise refuse(f"the capability check failed: {e}") from None
    return found


def _check_logprobs(choice, logprobs: int, refuse, base: str) -> None:
    """The reply carries the logprobs the metrics need: the chosen tokens', and the top N (at least somewhere:
    a server that keys its top logprobs by text may merge tokens that decode alike)."""
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
