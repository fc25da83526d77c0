"""The judge behind ``judge_score``: the config's ``judge:`` section as a served model, asked through the served
backend's client (:class:`~evalkit.generation.served.client.Endpoint`: retries, Retry-After, a cap on a reply's
size, the key only in the Authorization header and masked in every reply), with a cache of its verdicts.

- Every request carries the judge's knobs explicitly: ``temperature``, ``top_p`` 1, ``seed`` (unless null),
  ``max_tokens``, ``n`` 1, what the kind of server needs for the same reply to the same request (llama.cpp's
  server: ``cache_prompt`` false, as for a sweep's samples), and ``extra_body`` as given.
- The judge cache (SQLite, ``$EVALKIT_JUDGE_CACHE``, default ``judge.sqlite`` beside the sample cache) keys a
  reply by the judge's identity (model id, api, knobs, extra_body) and the exact messages sent (rubric, prompt
  templates, the request and the sample's text): the same sample is never judged twice by the same judge and
  rubric, and a rerun sends nothing. Every reply is kept, parsed or not (asked again, the judge says the same).
- A request that fails for good (after retries) stops the run as a server fault does: exit 130, the samples
  kept, ``evalkit run --resume`` scores again and asks only what the cache lacks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

from evalkit.config import SweepConfig
from evalkit.config.judge import JudgeConfig
from evalkit.errors import ConfigError, EvalkitError, Stopped, shown
from evalkit.generation.gguf import cache_dir
from evalkit.generation.served.client import Endpoint, ServerError, run_async
from evalkit.generation.served.protocol import kind_of, parse_choice
from evalkit.scoring.metric import Metric

JUDGE_VERSION = "1"  # bump when what decides a verdict besides the identity and the messages changes
REPLY_BYTES = 1 << 20  # a judge's reply may hold this much, plus per token:
REPLY_BYTES_PER_TOKEN = 4096
CHARS_PER_TOKEN = 4  # --plan's estimate of tokens from characters
EQUIVALENCE_TEMPLATE_CHARS = 700  # --plan: the equivalence prompt around a pair (evalkit_metrics.noveltybench)


class JudgeFailed(ServerError, Stopped):
    """The judge failed a request for good: the run stops as an interrupted one (exit 130) and keeps its samples."""


def judge_cache_path() -> Path:
    """``$EVALKIT_JUDGE_CACHE``, else ``judge.sqlite`` beside the sample cache (``$EVALKIT_SAMPLE_CACHE``'s folder,
    else evalkit's cache)."""
    if os.environ.get("EVALKIT_JUDGE_CACHE"):
        return Path(os.environ["EVALKIT_JUDGE_CACHE"]).expanduser()
    samples = os.environ.get("EVALKIT_SAMPLE_CACHE")
    return (Path(samples).expanduser().parent if samples else cache_dir()) / "judge.sqlite"


class Reply(NamedTuple):
    """A judge's reply: its text, and the ``model`` and ``system_fingerprint`` fields of the server's reply (None
    where the server sent none), key masked."""

    text: str
    model: str | None = None
    fingerprint: str | None = None


class JudgeCache:
    """Replies by key, in SQLite (WAL: several runs may share it)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        try:
            self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, reply TEXT NOT NULL, "
                            "model TEXT, fingerprint TEXT)")
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(verdicts)")}
            for column in ("model", "fingerprint"):  # what the server said made the reply (a cache of before: none)
                if column not in columns:
                    try:
                        self.db.execute(f"ALTER TABLE verdicts ADD COLUMN {column} TEXT")
                    except sqlite3.OperationalError as e:  # another run sharing the cache added it first
                        if "duplicate column" not in str(e):
                            raise
        except sqlite3.DatabaseError as e:
            raise EvalkitError(f"the judge cache {path} cannot be used ({e}): move it away, or set judge.cache: "
                               "false") from None

    def get(self, keys: list[str]) -> dict[str, Reply]:
        out: dict[str, Reply] = {}
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            rows = self.db.execute(f"SELECT key, reply, model, fingerprint FROM verdicts WHERE key IN "
                                   f"({','.join('?' * len(part))})", part)
            out.update((key, Reply(text, model, fingerprint)) for key, text, model, fingerprint in rows.fetchall())
        return out

    def put(self, key: str, reply: Reply) -> None:
        self.db.execute("INSERT OR REPLACE INTO verdicts (key, reply, model, fingerprint) VALUES (?, ?, ?, ?)",
                        (key, reply.text, reply.model, reply.fingerprint))

    def close(self) -> None:
        self.db.close()


class Judge:
    """The config's judge: its endpoint, knobs and cache. ``replies`` asks it (concurrently) what the cache lacks."""

    def __init__(self, config: JudgeConfig, source: str | None, settings: list[str]):
        self.config, self.source = config, source
        self.model_id, self.mode, self.api = config.id, config.mode, config.api
        self.baseline = config.baseline or (settings[0] if settings else None)
        if config.mode == "pairwise" and len(settings) < 2:
            raise ConfigError(f"pairwise compares each setting's samples with the baseline setting's, and the sweep "
                              f"has {len(settings)} setting: use mode score, or add settings", source=source,
                              path="judge.mode")
        if config.mode == "pairwise" and config.baseline is not None and config.baseline not in settings:
            raise ConfigError(f"the baseline is none of the sweep's settings ({', '.join(settings[:8])}"
                              f"{', ...' if len(settings) > 8 else ''}), got {shown(config.baseline)}",
                              source=source, path="judge.baseline")
        self.endpoint = Endpoint(config.base_url, judge_key(config, source), config.timeout_s, config.max_retries,
                                 config.backoff_s)
        self.path = "/chat/completions" if config.api == "chat" else "/completions"
        self.listed: dict[str, Any] | None = None
        # verdicts asked for; requests answered (sent), retried, answered by the judge cache, by this run's own
        # earlier replies (two metrics asking the same: asked once)
        self.asked = self.sent = self.retried = self.from_cache = self.repeated = 0
        self.made_by: dict[str, Counter] = {"model": Counter(), "system_fingerprint": Counter()}  # of replies used
        self.memo: dict[str, Reply] = {}  # this run's replies by key
        self.phase = None  # evalkit.progress.Phase of the judging phase, where one is open (see judging())

    # ------------------------------------------------------------------ what it is

    def knobs(self) -> dict[str, Any]:
        """The fields of every request besides the messages."""
        c = self.config
        out: dict[str, Any] = {"model": c.id, "temperature": c.temperature, "top_p": 1.0, "max_tokens": c.max_tokens,
                               "n": 1, "stream": False}
        if c.seed is not None:
            out["seed"] = c.seed
        if self.listed is not None:  # llama.cpp's server: no reuse of the previous request's prompt cache
            out.update(kind_of(self.listed).fixed)
        return {**out, **c.extra_body}

    def identity(self) -> str:
        """What decides a verdict besides the messages (the cache's key holds it)."""
        return json.dumps([JUDGE_VERSION, self.config.api, self.knobs()], sort_keys=True, separators=(",", ":"))

    def record(self) -> dict[str, Any]:
        """The judge as the manifest records it: where it is, what it was asked with, what its server listed. The
        key's variable by name; the key itself nowhere."""
        c = self.config
        return {"backend": "openai", "base_url": c.base_url, "id": c.id, "api": c.api,
                "endpoint": c.base_url + self.path, "api_key_env": c.api_key_env, "concurrency": c.concurrency,
                "timeout_s": c.timeout_s, "max_retries": c.max_retries, "backoff_s": c.backoff_s, "mode": c.mode,
                **({"baseline": self.baseline} if c.mode == "pairwise" else {}),
                "sent_with_every_request": self.knobs(), "cache": c.cache, "listed": self.listed,
                "server_kind": kind_of(self.listed).name if self.listed is not None else None}

    def usage(self) -> dict[str, Any]:
        """What the judge did in this run (the manifest's ``judge``): its record, the verdicts asked for and how each
        was had (a request, the judge cache, this run's own earlier reply), the retries, and the ``model`` and
        ``system_fingerprint`` that the server's replies named, counted over the verdicts used (a cached verdict
        counts what its reply named when it was asked)."""
        return {**self.record(),
                "requests": {"asked": self.asked, "sent": self.sent, "retried": self.retried,
                             "from_cache": self.from_cache, "repeated": self.repeated},
                "replies_by": {name: dict(sorted(c.items())) for name, c in self.made_by.items()}}

    # ------------------------------------------------------------------ asking

    def connect(self) -> None:
        """Ask the server for its models (once): refuse an unreachable one, a bad key, a model it does not serve."""
        if self.listed is not None:
            return
        try:
            entries = self.endpoint.listed_models()
        except ServerError as e:
            raise self._start_error(e) from None
        names = [str(m.get("id")) for m in entries]
        if self.model_id not in names:
            served = ", ".join(shown(self.endpoint.masked(n, limit=80)) for n in names[:20]) or "none"
            raise ConfigError(f"{shown(self.model_id)} is not served by {self.endpoint.base_url} (served: {served})",
                              source=self.source, path="judge.id")
        entry = entries[names.index(self.model_id)]
        self.listed = self.endpoint.scrub({k: v for k, v in entry.items()
                                           if isinstance(v, (str, int, float, bool)) or v is None})

    def _start_error(self, e: ServerError) -> ConfigError:
        base = self.endpoint.base_url
        if e.status in (401, 403):
            env = self.config.api_key_env
            hint = f"is the key in ${env} right?" if env else "name the key's environment variable in judge.api_key_env"
            said = f": {e.detail}" if e.detail else ""
            return ConfigError(f"{base} refused the judge's request ({e.status}{said}); {hint}", source=self.source,
                               path="judge.api_key_env")
        if e.status == 404:
            return ConfigError(f"{base}/models does not exist (404): base_url should be the API root that has /models, "
                               "e.g. http://127.0.0.1:8080/v1", source=self.source, path="judge.base_url")
        return ConfigError(f"{_renamed(str(e))}" + (" (is the judge's server running?)" if e.status is None else ""),
                           source=self.source, path="judge.base_url")

    def key(self, system: str, user: str) -> str:
        return hashlib.sha256(json.dumps([self.identity(), system, user]).encode()).hexdigest()

    def body(self, system: str, user: str) -> dict[str, Any]:
        if self.api == "chat":
            messages = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
        else:
            messages = {"prompt": f"{system}\n\n{user}\n\n"}
        return {**self.knobs(), **messages}

    def replies(self, prompts: list[tuple[str, str]]) -> list[str]:
        """The judge's reply to each (system, user) pair: from this run's earlier replies, the cache, else asked
        (each distinct one once). Each verdict had advances the judging phase, where one is open."""
        keys = [self.key(s, u) for s, u in prompts]
        self.asked += len(keys)
        found = {k: self.memo[k] for k in keys if k in self.memo}
        rest = [k for k in keys if k not in found]
        # per occurrence: a prompt this run had a reply to, or one asked again within this call (sent once)
        self.repeated += (len(keys) - len(rest)) + (len(rest) - len(set(rest)))
        cache = JudgeCache(judge_cache_path()) if self.config.cache else None
        try:
            cached = cache.get(list(dict.fromkeys(rest))) if cache is not None else {}
            self.from_cache += sum(k in cached for k in set(rest))
            found.update(cached)
            self._progress(len(keys) - sum(k not in found for k in keys))
            todo = {k: p for k, p in zip(keys, prompts) if k not in found}
            if todo:
                try:
                    found.update(run_async(self._ask(todo, cache)))
                except BaseExceptionGroup as e:  # asyncio.TaskGroup's: the first failure is the one to tell
                    raise _first_error(e) from None
        finally:
            if cache is not None:
                cache.close()
        for k in dict.fromkeys(keys):
            if k not in self.memo:
                self.memo[k] = found[k]
                for name, value in zip(("model", "system_fingerprint"), found[k][1:]):
                    if value is not None:
                        self.made_by[name][value] += 1
        return [found[k].text for k in keys]

    def _progress(self, done: int) -> None:
        if self.phase is not None:
            self.phase.advance(done)
            self.phase.update(status=f"{self.sent} sent, {self.from_cache} from the judge cache")

    async def _ask(self, todo: dict[str, tuple[str, str]], cache: JudgeCache | None) -> dict[str, Reply]:
        out: dict[str, Reply] = {}
        url = self.endpoint.base_url + self.path
        gate = asyncio.Semaphore(self.config.concurrency)

        def reply_of(data: dict) -> Reply:  # a reply that is not a completion is retried
            named = [data.get(f) if isinstance(data.get(f), str) else None for f in ("model", "system_fingerprint")]
            return Reply(parse_choice(data, self.api, url).text, *named)

        def retried(error, wait) -> None:
            self.retried += 1

        async def one(client, key: str, system: str, user: str) -> None:
            async with gate:
                try:
                    reply = await self.endpoint.call(client, "POST", self.path, self.body(system, user),
                                                     max_bytes=REPLY_BYTES + self.config.max_tokens
                                                     * REPLY_BYTES_PER_TOKEN, parse=reply_of, on_retry=retried)
                except ServerError as e:
                    raise JudgeFailed(f"the judge ({self.model_id!r} at {self.endpoint.base_url}) failed: "
                                      f"{_renamed(str(e))}", e.status) from None
                self.sent += 1
            out[key] = Reply(*(self.endpoint.scrub(v) if v is not None else None for v in reply))
            if cache is not None:
                cache.put(key, out[key])
            self._progress(1)

        async with self.endpoint.client(self.config.concurrency) as client:
            async with asyncio.TaskGroup() as group:
                for key, (system, user) in todo.items():
                    group.create_task(one(client, key, system, user))
        return out


def _renamed(message: str) -> str:
    """A client message about the judge: its fields are judge.*, not model.*."""
    return message.replace("(model.timeout_s)", "(judge.timeout_s)")


def _first_error(e: BaseException) -> BaseException:
    """The first error inside an exception group (asyncio.TaskGroup raises one)."""
    while isinstance(e, BaseExceptionGroup):
        e = e.exceptions[0]
    return e


def judge_key(config: JudgeConfig, source: str | None) -> str | None:
    """The judge's API key, from the environment variable ``judge.api_key_env`` names (never from the config)."""
    name = config.api_key_env
    if not name:
        return None
    key = os.environ.get(name)
    if not key:
        raise ConfigError(f"the environment variable {name} is not set (it should hold the judge's API key)",
                          source=source, path="judge.api_key_env")
    if not all(0x21 <= ord(c) <= 0x7E for c in key):
        raise ConfigError(f"the API key in {name} holds characters an HTTP header cannot carry (non-ASCII, spaces or "
                          "line breaks): check the variable", source=source, path="judge.api_key_env")
    return key


# ---------------------------------------------------------------------- the config's judge, bound to its metrics

def judged(metrics: list[Metric]) -> list[tuple[int, Metric]]:
    """(place in the list, metric) of every metric that asks a judge, those held by another metric included
    (``effective[quality=judge_score...]``): a metric with ``bind_judge``, unless its ``asks_judge`` says it does
    not with its parameters (``distinct_k[check=exact]``)."""
    out = []

    def walk(i: int, m: Metric, depth: int = 0) -> None:
        if hasattr(m, "bind_judge") and getattr(m, "asks_judge", True):
            out.append((i, m))
        for value in vars(m).values() if depth < 4 else ():
            for inner in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(inner, Metric):
                    walk(i, inner, depth + 1)

    for i, m in enumerate(metrics):
        walk(i, m)
    return out


def bind_judges(metrics: list[Metric], config: SweepConfig, settings: list) -> Judge | None:
    """Give every judge metric the config's judge and its rubric; refuse one without a ``judge:`` section or with an
    unknown rubric (one line, naming the metric's place). The judge (None where no metric asks one)."""
    found = judged(metrics)
    if not found:
        return None
    if config.judge is None:
        i, m = found[0]
        raise ConfigError(f"{m.id} needs a judge: section (the judging model's base_url and id; see docs/judge.md)",
                          source=config.source, path=f"metrics[{i}]")
    judge = Judge(config.judge, config.source, [s.id for s in settings])
    rubrics = {name: (rubric_text(config, name), r.scale) for name, r in config.judge.rubrics.items()}
    for i, m in found:
        try:
            m.bind_judge(judge, rubrics)
        except ValueError as e:
            raise ConfigError(str(e), source=config.source, path=f"metrics[{i}].rubric") from None
    return judge


def judge_of(metrics: list[Metric]) -> Judge | None:
    """The judge bound to the metrics (one per config), or None."""
    return next((m.judge for _, m in judged(metrics) if m.judge is not None), None)


def judging(groups: list, metrics: list[Metric], ui) -> None:
    """Every judge request of the metrics, in a phase of its own ("judging", before scoring's): each metric that
    asks the judge judges the groups now (``prepare_groups``; it keeps its verdicts, so scoring asks nothing again).
    The bar counts verdicts, had from the judge, its cache or this run's earlier replies; its total is what the
    metrics may ask for, an upper bound where a metric asks fewer as it goes (an equivalence check)."""
    found = [m for _, m in judged(metrics) if m.judge is not None]
    if not found:
        return
    judge = found[0].judge  # one per config
    bound = sum(m.judge_requests(groups) for m in found)
    with ui.phase("judging", total=bound) as phase:
        judge.phase = phase
        asked = judge.asked
        try:
            for m in found:
                m.prepare_groups(groups)
        finally:
            judge.phase = None
        phase.update(total=judge.asked - asked, completed=judge.asked - asked,
                     status=f"{judge.sent} sent, {judge.from_cache} from the judge cache")


def rubric_text(config: SweepConfig, name: str) -> str:
    rubric = config.judge.rubrics[name]
    if rubric.text is not None:
        return rubric.text.strip()
    where = f"judge.rubrics.{name}.file"
    path = config.resolve_path(rubric.file, where)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        why = "not UTF-8" if isinstance(e, UnicodeDecodeError) else (e.strerror or type(e).__name__).lower()
        raise ConfigError(f"cannot read the rubric ({why}), got {shown(rubric.file)}", source=config.source,
                          path=where) from None
    if not text:
        raise ConfigError(f"the rubric file is empty, got {shown(rubric.file)}", source=config.source, path=where)
    return text


def plan_lines(metrics: list[Metric], config: SweepConfig, prompts: list, settings: list,
               units: int) -> list[tuple[str, str]]:
    """What the judge would be sent (``evalkit run --plan``): requests and an estimate of their tokens. Ratings are
    counted exactly (before the cache); an equivalence check's pairs by their upper bound, k(k-1)/2 per group."""
    found = [m for _, m in judged(metrics) if m.judge is not None]
    if not found:
        return []
    c = config.judge
    raters = {m.id: m for m in found if hasattr(m, "rubric_text")}
    pairing = sorted({m.id for m in found if not hasattr(m, "rubric_text")})
    prompt_chars = sum(len(p.display) for p in prompts) / max(len(prompts), 1)
    requests = chars = 0
    parts = []
    if raters:
        per_sample, rated = 1, units
        if c.mode == "pairwise":  # both orders, for every sample but the baseline's
            per_sample = 2
            rated -= units // max(len(settings), 1)
        requests = rated * per_sample * len(raters)
        response_chars = config.max_new_tokens * CHARS_PER_TOKEN * (2 if c.mode == "pairwise" else 1)
        template = max(len(m.rubric_text) for m in raters.values()) + 900  # the prompt template around them
        chars = requests * (template + prompt_chars + response_chars)
        parts.append(f"{len(raters)} rubric{'s' if len(raters) > 1 else ''}")
    if pairing:  # every check=judge metric asks the same pairs: the judge asks each once
        k = config.samples_per_prompt
        pairs = units // max(k, 1) * (k * (k - 1) // 2)
        chars += pairs * (EQUIVALENCE_TEMPLATE_CHARS + prompt_chars + 2 * config.max_new_tokens * CHARS_PER_TOKEN)
        if raters:
            parts[0] += f": {requests}"
        parts.append(f"equivalence of samples for {', '.join(pairing)}: {pairs}, an upper bound (k(k-1)/2 = "
                     f"{k * (k - 1) // 2} pairs per group of {k}; fewer as samples join a class)")
        requests += pairs
    head = [("judge", f"{c.base_url} ({c.api}, model {c.id!r})" + (
        f", mode {c.mode}" + (f" against {next(iter(raters.values())).judge.baseline}" if c.mode == "pairwise"
                              else "") if raters else ", equivalence of pairs"))]
    return head + [
        ("judge requests, at most", f"{requests} ({'; '.join(parts)}; fewer where the judge cache holds a verdict), "
                                    f"at most {c.concurrency} in flight"),
        ("judge tokens, about", f"{int(chars / CHARS_PER_TOKEN)} prompt + at most {requests * c.max_tokens} "
                                "completion")]
