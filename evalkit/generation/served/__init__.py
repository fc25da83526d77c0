"""The served backend (``model.backend: openai``): a model behind any OpenAI-compatible server
(llama.cpp's server, vLLM, SGLang, TGI, a hosted API).

- One request per sample, with the sample's own seed (its whole derived seed on a vLLM server, as evalkit's
  vLLM backend in process is given it; mod 2**31 elsewhere:
  :func:`~evalkit.generation.served.protocol.request_seed`) and every sampling knob in the body: ``temperature``,
  ``top_p``, ``max_tokens``, ``stop``, and,
  where the server takes them, ``top_k`` (-1 switches it off everywhere), ``min_p`` and the penalties at
  their neutral values (llama.cpp applies ``repeat_penalty`` 1.1, ``top_k`` 40 and ``min_p`` 0.05 by
  default; vLLM applies the model's generation_config.json). ``n`` is always 1: with ``n > 1`` the
  choices of one request share its seed, and a sample would depend on the request it was grouped in.
- Each knob a setting sets goes under the name the kind of server has for it (llama.cpp's server,
  llama-cpp-python's, vLLM's, or one of unknown kind: :data:`~evalkit.generation.served.protocol.REQUEST_KNOBS`);
  the server applies its own chain order (llama.cpp's for a llama.cpp server, vLLM's for a vLLM server, one
  evalkit cannot name for the others), and a setting that names another is refused.
- Before any sample, a capability check (:mod:`evalkit.generation.served.probe`) refuses a server that
  rejects or ignores a knob the grid sets, and finds the order it applies.
- Token statistics come from the logprobs the server returns: the chosen token's log-probability, and
  from the top-N log-probabilities a truncated entropy (``token_entropy[dist=model,top=N]``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from evalkit.config import OpenAIModel, SweepConfig
from evalkit.errors import ConfigError, EvalkitError, shown
from evalkit.generation.base import ModelInfo, PreparedPrompt, ProgressFn, SampleRecord, WorkUnit
from evalkit.generation.served.client import Endpoint, SampleFailed, ServerError
from evalkit.generation.served.protocol import (KINDS, REQUEST_KNOBS, ServerKind, kind_of, parse_choice,
                                                request_seed, seed_mapping, truncated_entropy)
from evalkit.generation.spec import BackendSpec
from evalkit.prompts import Prompt
from evalkit.settings import AUTO_ORDER, Setting

REPLY_BYTES = 4 << 20  # a reply may hold this much, plus per token:
REPLY_BYTES_PER_TOKEN = 4096


class ServedBackend:
    """A model behind an OpenAI-compatible server; implements :class:`~evalkit.generation.base.Generator`."""

    def __init__(self, config: SweepConfig, status=lambda msg: None):
        mc = config.model
        self._source = config.source
        self.api = mc.api
        self.model_id = mc.id
        self.concurrency = mc.concurrency
        self.stop = tuple(config.stop)
        key = api_key(config)
        self.endpoint = Endpoint(mc.base_url, key, mc.timeout_s, mc.max_retries, mc.backoff_s)
        self.path = "/chat/completions" if self.api == "chat" else "/completions"
        started = time.perf_counter()
        status(f"asking {mc.base_url} for its models")
        listing = self._models(config)
        self.sent: dict[str, Any] = {}  # optional knob -> value, set by check()
        self.not_sent: dict[str, str] = {}  # optional knob -> why not
        self.logprobs = 0  # top logprobs asked for per token (0: none)
        self.kind = kind_of(listing)  # the kind of server its /models entry says (check() confirms its order)
        self.info = ModelInfo(
            backend="openai", id=mc.id, source="served", path=mc.base_url, device="server",
            context_length=listing.get("max_model_len"), has_chat_template=self.api == "chat",
            rng=_rng(self.kind),
            load_seconds=round(time.perf_counter() - started, 3),
            server={"base_url": mc.base_url, "api": self.api, "listed": listing})

    def _models(self, config: SweepConfig) -> dict[str, Any]:
        """The served model's entry in GET /models; refuses an unreachable server or an unknown name."""
        try:
            entries = self.endpoint.listed_models()
        except ServerError as e:
            raise self._start_error(e, config) from None
        names = [str(m.get("id")) for m in entries]
        if self.model_id not in names:
            served = ", ".join(shown(self.endpoint.masked(n, limit=80)) for n in names[:20]) or "none"
            more = f" and {len(names) - 20} more" if len(names) > 20 else ""
            raise ConfigError(f"{shown(self.model_id)} is not served by {self.endpoint.base_url} (served: {served}"
                              f"{more})", source=config.source, path="model.id")
        entry = entries[names.index(self.model_id)]
        scalars = {k: v for k, v in entry.items() if isinstance(v, (str, int, float, bool)) or v is None}
        return self.endpoint.scrub(scalars)

    def _start_error(self, e: ServerError, config: SweepConfig) -> EvalkitError:
        base = self.endpoint.base_url
        if e.status in (401, 403):
            env = config.model.api_key_env
            hint = (f"is the key in ${env} right?" if env else
                    "name the environment variable that holds the key in model.api_key_env")
            said = f": {e.detail}" if e.detail else ""
            return ConfigError(f"{base} refused the request ({e.status}{said}); {hint}", source=config.source,
                               path="model.api_key_env")
        if e.status == 404:
            return ConfigError(f"{base}/models does not exist (404): base_url should be the API root that has "
                               "/models and /completions, e.g. http://127.0.0.1:8080/v1", source=config.source,
                               path="model.base_url")
        if e.status is None:
            return ConfigError(f"{e} (is the server running?)", source=config.source, path="model.base_url")
        return ConfigError(str(e), source=config.source, path="model.base_url")

    # ------------------------------------------------------------------ prompts

    def prepare(self, prompts: list[Prompt], *, chat_template: bool | str, system_prompt: str | None,
                max_new_tokens: int) -> list[PreparedPrompt]:
        """The prompt as sent: raw text (completions) or the messages (chat, as JSON); no local tokens."""
        if self.api == "chat" and chat_template is False:
            raise ConfigError("with model.api: chat the server applies its chat template; use model.api: completions "
                              "to send raw text", source=self._source, path="prompts.chat_template")
        if self.api == "completions" and chat_template is True:
            raise ConfigError("with model.api: completions the server gets raw text; use model.api: chat for the "
                              "server's chat template", source=self._source, path="prompts.chat_template")
        out = []
        for p in prompts:
            if self.api == "chat":
                rendered = json.dumps(p.chat(system_prompt), ensure_ascii=False)
            else:
                if p.messages is not None:
                    raise ConfigError(f"prompt {p.id!r} is chat messages: use model.api: chat to send them",
                                      source=self._source, path="prompts")
                rendered = f"{system_prompt}\n\n{p.text}" if system_prompt else (p.text or "")
            out.append(PreparedPrompt(prompt=p, rendered=rendered, token_ids=(), chat_template=self.api == "chat"))
        return out

    def check(self, settings: list[Setting], prompts: list[PreparedPrompt], *, logprobs: int = 0,
              max_new_tokens: int = 0, status=lambda msg: None) -> None:
        """Find which knobs the server takes and honours before any sample is made; refuse a server that
        rejects or ignores one that the grid sets, or gives no logprobs when the metrics need them."""
        from evalkit.generation.served.probe import probe

        self.logprobs = logprobs
        status(f"checking which sampling knobs {self.endpoint.base_url} honours")
        found = probe(self, settings, prompts, logprobs=logprobs, max_new_tokens=max_new_tokens or 1,
                      source=self._source)
        self.sent, self.not_sent, self.kind = found.sent, found.not_sent, found.kind
        self.info.rng = _rng(self.kind)
        self.info.server.update(found.record())
        identity = {"base_url": self.endpoint.base_url, "model": self.model_id, "api": self.api,
                    "root": self.info.server["listed"].get("root"),  # vLLM: the weights behind the name
                    "fingerprint": found.fingerprint, "sent": self.sent, "logprobs": logprobs,
                    "kind": self.kind.name}
        self.info.endpoint_id = "served:" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        self.info.server["names_its_weights"] = bool(found.fingerprint or identity["root"])

    # ------------------------------------------------------------------ requests

    def body(self, prompt: PreparedPrompt, setting: Setting, seed: int, max_tokens: int,
             stop: tuple[str, ...] = (), optional: dict[str, Any] | None = None, logprobs: int | None = None,
             kind: ServerKind | None = None) -> dict:
        """One request's body: the prompt, every sampling knob (under ``kind``'s names: the server's), the seed."""
        body: dict[str, Any] = {"model": self.model_id}
        if self.api == "chat":
            body["messages"] = json.loads(prompt.rendered)
        else:
            body["prompt"] = prompt.rendered
        body.update(self.knobs(setting, max_tokens, stop, optional, kind))
        body["seed"] = request_seed(seed, kind or self.kind)
        body.update(self._logprob_fields(self.logprobs if logprobs is None else logprobs))
        return body

    def _logprob_fields(self, logprobs: int) -> dict[str, Any]:
        if not logprobs:
            return {}
        return {"logprobs": True, "top_logprobs": logprobs} if self.api == "chat" else {"logprobs": logprobs}

    def knobs(self, setting: Setting, max_tokens: int, stop: tuple[str, ...] = (),
              optional: dict[str, Any] | None = None, kind: ServerKind | None = None) -> dict[str, Any]:
        """The sampling fields of a request for ``setting`` (without prompt and seed): the optional knobs at their
        neutral values, and the setting's own under the names of ``kind`` of server (the server's)."""
        out: dict[str, Any] = {"max_tokens": max_tokens, "n": 1, "stream": False}
        if stop:
            out["stop"] = list(stop)
        out.update(self.sent if optional is None else optional)
        out.update((kind or self.kind).request(setting))  # a knob the grid sets wins over its neutral value
        out.update((kind or self.kind).fixed)  # llama.cpp: no reuse of the previous request's prompt cache
        return out

    def generation_params(self, setting: Setting, max_new_tokens: int) -> dict[str, Any]:
        """Exactly what each request of ``setting`` carries besides its prompt and seed."""
        return {"engine": "openai-compatible server", "endpoint": self.endpoint.base_url + self.path,
                **self.knobs(setting, max_new_tokens, self.stop), "seed": seed_mapping(self.kind),
                **self._logprob_fields(self.logprobs)}

    def batch_size(self, requested: int | str, prompts: list[PreparedPrompt], max_new_tokens: int) -> int:
        return self.concurrency  # requests in flight

    def reply_cap(self, max_tokens: int) -> int:
        return REPLY_BYTES + max_tokens * REPLY_BYTES_PER_TOKEN

    def generate(self, units: list[WorkUnit], *, max_new_tokens: int, batch_size: int | None = None,
                 stop: tuple[str, ...] = (), progress: ProgressFn | None = None) -> Iterator[SampleRecord]:
        """At most ``concurrency`` requests in flight; yields each sample as its reply arrives (in a thread of
        its own where an event loop already runs in this one: a notebook)."""
        records = self._generate(units, max_new_tokens, stop, progress)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            yield from records
            return
        yield from _in_thread(records)

    def _generate(self, units: list[WorkUnit], max_new_tokens: int, stop: tuple[str, ...],
                  progress: ProgressFn | None) -> Iterator[SampleRecord]:
        loop = asyncio.new_event_loop()
        client = self.endpoint.client(self.concurrency)
        pending: set[asyncio.Task] = set()
        todo = iter(units)
        started, done, tokens, retries = time.perf_counter(), 0, 0, [0]
        cap = self.reply_cap(max_new_tokens)

        def retried(e: ServerError, wait: float) -> None:
            """Count a retry, and say on the progress line what is waited for (a long Retry-After too)."""
            retries[0] += 1
            if progress is not None:
                why = f"{e.status}" if e.status else "no reply"
                if e.retry_after and e.retry_after > self.endpoint.timeout_s:
                    why += (f", Retry-After {e.retry_after:g} s capped at model.timeout_s "
                            f"{self.endpoint.timeout_s:g} s")
                progress(done, f"{retries[0]} retried; waiting {wait:.0f} s to retry ({why})")

        async def one(unit: WorkUnit) -> SampleRecord:
            body = self.body(unit.prompt, unit.setting, unit.seed, max_new_tokens, stop)
            try:  # a reply that is not a completion is retried like a garbled one
                data, choice = await self.endpoint.call(
                    client, "POST", self.path, body, max_bytes=cap, parse=self.parse,
                    on_retry=retried)
            except ServerError as e:
                raise SampleFailed(f"prompt {unit.prompt.prompt.id!r}, setting {unit.setting.id}, sample "
                                   f"{unit.sample_index}: {e}", e.status) from None
            return self.record(unit, data, choice, stop)

        def fill() -> None:
            while len(pending) < self.concurrency:
                unit = next(todo, None)
                if unit is None:
                    return
                pending.add(loop.create_task(one(unit)))

        try:
            fill()
            while pending:
                finished, _ = loop.run_until_complete(asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED))
                pending.difference_update(finished)
                failed = [t.exception() for t in finished if t.exception() is not None]  # read, every one
                for task in finished:  # the samples that did arrive are kept, even beside a failure
                    if task.exception() is None:
                        record = task.result()
                        done += 1
                        tokens += record.num_tokens or 0
                        yield record
                if failed:
                    raise failed[0]
                fill()
                if progress is not None:
                    elapsed = max(time.perf_counter() - started, 1e-9)
                    progress(done, f"{done / elapsed:.1f} req/s, {tokens / elapsed:.0f} tok/s"
                             + (f", {retries[0]} retried" if retries[0] else ""))
        finally:
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(client.aclose())
            loop.run_until_complete(loop.shutdown_asyncgens())  # as asyncio.run does: none is left pending
            loop.close()

    def parse(self, data: dict):
        """(reply, its first choice); raises a retryable ServerError for a reply that is not a completion, or that
        lacks the logprobs the metrics need (the capability check saw the server give them: a sample stored without
        them would leave its prompt out of nll and the entropies without a word)."""
        url = self.endpoint.base_url + self.path
        choice = parse_choice(data, self.api, url)
        if self.logprobs and choice.text:
            chosen, tops = choice.logprobs if choice.logprobs is not None else ([], [])
            if not chosen:
                raise ServerError(f"the reply from {url} has no logprobs (asked for {self.logprobs}, which the metrics "
                                  "need and the capability check saw it return)", retryable=True)
            if self.logprobs > 1 and not any(tops):
                raise ServerError(f"the reply from {url} has no top logprobs (asked for {self.logprobs}, which "
                                  f"token_entropy[top={self.logprobs}] needs and the capability check saw it return)",
                                  retryable=True)
        return data, choice

    def record(self, unit: WorkUnit, data: dict, choice, stop: tuple[str, ...]) -> SampleRecord:
        """A sample from a reply and its parsed first choice."""
        fingerprint = self.endpoint.scrub(data.get("system_fingerprint"))
        expected = self.info.server.get("system_fingerprint")
        if fingerprint and expected and fingerprint != expected:
            raise EvalkitError(f"the server's system_fingerprint changed from {expected!r} to {fingerprint!r} during "
                               "the run: its samples would mix two deployments")
        text, finish = self.endpoint.scrub(choice.text), self.endpoint.scrub(choice.finish_reason)
        cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        elif finish == "stop":
            # "stop" means the end of text or a stop string; vLLM names the string (stop_reason), others do not,
            # and without stop strings it can only be the end of text
            finish = "stop" if isinstance(choice.stop_reason, str) or (stop and choice.stop_reason is None) else "eos"
        stats: dict[str, list] = {}
        if self.logprobs and choice.logprobs is not None:
            chosen, tops = choice.logprobs
            stats["logprob_model"] = chosen  # and top=1 too: -p log p of the most likely token, the weakest bound
            stats["entropy_model_top"] = [truncated_entropy(t, self.logprobs) for t in tops]
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        n_tokens = usage.get("completion_tokens")
        if not isinstance(n_tokens, int) or isinstance(n_tokens, bool) or not 0 <= n_tokens < 2**31:
            n_tokens = len(choice.logprobs[0]) if choice.logprobs is not None else 0  # absent or garbled
        return SampleRecord(unit=unit, text=text, finish_reason=finish, stats=stats, num_tokens=n_tokens)


def _rng(kind: ServerKind) -> str:
    return f"the server's: one request per sample, seed = {seed_mapping(kind)}"


def _in_thread(items: Iterator) -> Iterator:
    """``items``, produced in a worker thread; closing this iterator stops the worker after its current item."""
    import queue
    import threading

    out: queue.Queue = queue.Queue()
    stop = threading.Event()
    end = object()

    def work() -> None:
        try:
            for item in items:
                out.put(item)
                if stop.is_set():
                    break
        except BaseException as e:  # handed to the consumer
            out.put(e)
        finally:
            items.close()
            out.put(end)

    thread = threading.Thread(target=work, name="evalkit-served", daemon=True)
    thread.start()
    try:
        while (item := out.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def plan_lines(config: SweepConfig, settings: list[Setting], prompts: list[Prompt],
               units: int) -> list[tuple[str, str]]:
    """The cost of a served sweep before anything is sent (``evalkit run --plan``)."""
    from evalkit.generation.served.probe import budget

    system = len(config.prompts.system_prompt or "")
    chars = sum(len(p.display) + system for p in prompts) * len(settings) * config.samples_per_prompt
    # every Ray worker checks the server and sends its own requests in flight
    workers = config.executor.workers if config.executor.kind == "ray" else 1
    each = f" ({workers} workers, each its own)" if workers > 1 else ""
    check_requests, check_tokens = (workers * n for n in budget(settings, config.max_new_tokens))
    return [("endpoint", f"{config.model.base_url} ({config.model.api}, model {config.model.id!r})"),
            ("requests", f"{units} (one per sample), at most {workers * config.model.concurrency} in flight{each}"),
            ("capability check", f"at most {check_requests} requests, {check_tokens} tokens in all, "
                                 f"and GET /models{each}"),
            ("completion tokens, at most", str(units * config.max_new_tokens + check_tokens)),
            ("prompt characters sent, about", str(chars))]


def api_key(config: SweepConfig) -> str | None:
    """The API key, from the environment variable that ``model.api_key_env`` names (never from the config)."""
    name = config.model.api_key_env
    if not name:
        return None
    key = os.environ.get(name)
    if not key:
        raise ConfigError(f"the environment variable {name} is not set (it should hold the API key)",
                          source=config.source, path="model.api_key_env")
    if not all(0x21 <= ord(c) <= 0x7E for c in key):  # an HTTP header carries visible ASCII only
        raise ConfigError(f"the API key in {name} holds characters an HTTP header cannot carry (non-ASCII, spaces "
                          "or line breaks): check the variable", source=config.source, path="model.api_key_env")
    return key


def check_model(config: SweepConfig, device: bool = True) -> tuple[None, str]:
    """Before connecting: the key's variable is set (the server itself is asked when the backend loads); the
    device is the server's, wherever the check runs."""
    api_key(config)
    return None, "server"


def load(config: SweepConfig, source=None, device: str = "server", status=lambda msg: None) -> ServedBackend:
    return ServedBackend(config, status=status)


class ServedSpec(BackendSpec):
    """The served backend's spec. What a setting can be sent depends on the kind of server, which is known when the
    server is asked (the capability check); before, the plan refuses what no kind of server applies: a knob none has
    a field for, an order no kind applies (an explicit list of stages, transformers', SGLang's), a knob the named
    order's server has no field for, a penalty scope no server can be sent."""

    def refusal(self, setting: Any) -> tuple[str, str] | None:
        refused = super().refusal(setting)
        if refused is not None or not isinstance(setting, Setting):
            return refused
        if setting.order != AUTO_ORDER:
            return NAMED[setting.order].refusal(setting)
        every = [k.refusal(setting) for k in KINDS.values()]
        if all(every):
            knob, why = every[0]
            return knob, f"{why}, nor does any other kind of server evalkit knows apply this setting"
        return None


NAMED = {"llama_cpp": KINDS["llama.cpp"], "vllm": KINDS["vllm"]}  # for a named order: the server that applies it

SPEC = ServedSpec(
    name="openai", config=OpenAIModel, what="a served-model sweep",
    summary="a model behind an OpenAI-compatible server (llama.cpp, vLLM, SGLang, TGI, hosted APIs)",
    needs=frozenset({"token_counts", "model_logprobs", "top_logprobs"}),
    knobs=frozenset(REQUEST_KNOBS) | {"order"}, orders=tuple(NAMED),
    own_order=("the server's own (llama_cpp on a llama.cpp server, vllm on a vLLM server: model.server.order)",),
    engine="the server", remote=True, load=load, check_model=check_model, plan_lines=plan_lines,
    hints=(("token_stats", "a server returns top-N logprobs: token_entropy with top: 20 is their lower bound, nll and "
                           "perplexity take dist: model"),
           ("token_ids", "the server's token ids are not returned: use tok: words"),
           ("model_features", "a server returns no hidden states: use a sentence embedder, emb: all-MiniLM-L6-v2")),
    notes={"order": "the server applies its own chain: llama_cpp on a llama.cpp server, vllm on a vLLM server (the "
                    "capability check confirms it); a setting that names another is refused",
           "typical_p": "llama.cpp's server only (as are top_n_sigma, XTC and DRY)",
           "mirostat": "llama.cpp's server (mirostat), llama-cpp-python's (mirostat_mode, no temperature with it)",
           "repetition_penalty": "repeat_penalty on llama.cpp's servers, repetition_penalty elsewhere",
           "penalty_scope": "llama.cpp's server: a count of last tokens (repeat_last_n), prompt+output or auto; "
                            "vLLM: its own scope (auto); other servers: auto",
           "min_tokens": "a vLLM server only"})
