"""What evalkit sends to and reads from an OpenAI-compatible server: the knobs it sends at neutral
values, the seed's range, a completion reply's first choice (text, finish reason, logprobs), and the kinds of
server it knows (:class:`ServerKind`): each knob's request field there, the chain order it applies, which tokens
its penalties count."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from evalkit.errors import shown
from evalkit.generation.served.client import ServerError
from evalkit.settings import AUTO_SCOPE, PENALTIES, QUALIFIES, Setting

SEED_MODULUS = 2**31  # a request's seed on a server that takes 32 bits: the derived seed mod 2**31 (see request_seed)
# sent at a neutral value where the server takes one (the capability check finds out which, trying them
# in order), so that no server default shapes a sample: knobs outside the OpenAI schema, and the penalties.
# top_k is off at 0 for llama.cpp and vLLM, at -1 for SGLang and older vLLM. The rest switch off what a
# llama.cpp server can be started with (--typical, --mirostat, --dry-multiplier, --xtc-probability,
# --top-nsigma, --dynatemp-range) and the penalties of every server.
OPTIONAL_KNOBS = {"top_k": (0, -1), "min_p": (0.0,), "presence_penalty": (0.0,), "frequency_penalty": (0.0,),
                  "repetition_penalty": (1.0,), "repeat_penalty": (1.0,), "typical_p": (1.0,), "mirostat": (0,),
                  "mirostat_mode": (0,), "dry_multiplier": (0.0,), "xtc_probability": (0.0,),
                  "top_n_sigma": (-1.0,), "dynatemp_range": (0.0,)}


class Choice:
    """The first choice of a completion reply: text, finish reason, and (chosen, top) logprobs per token."""

    def __init__(self, text: str, finish_reason: str | None, stop_reason: Any,
                 logprobs: tuple[list[float], list[list[float]]] | None):
        self.text, self.finish_reason, self.stop_reason, self.logprobs = text, finish_reason, stop_reason, logprobs


def parse_choice(data: dict, api: str, url: str) -> Choice:
    """The first choice of a reply. Logprobs come as OpenAI's chat list (``content``: token, logprob,
    top_logprobs), which llama.cpp's own server also uses for completions, or as the legacy completions
    lists (``token_logprobs``, ``top_logprobs`` keyed by text). Top lists align with the tokens."""
    try:
        choice = data["choices"][0]
        text = (choice["message"].get("content") or "") if api == "chat" else choice["text"]
        if not isinstance(text, str) or not isinstance(choice.get("finish_reason"), str | None):
            raise TypeError
        text.encode("utf-8")  # a lone surrogate (a JSON escape such as \ud800) is no text
        if not isinstance(choice.get("stop_reason"), str | int | None) or isinstance(choice.get("stop_reason"), bool):
            raise TypeError
        logprobs = _logprobs(choice.get("logprobs") or None)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError, OverflowError):
        raise ServerError(f"the reply from {url} is not a completion (no choices[0] with text, a finish reason and "
                          "well-formed logprobs)", retryable=True) from None
    return Choice(text, choice.get("finish_reason"), choice.get("stop_reason"), logprobs)


def _logprob(value, chosen: bool) -> float:
    """A log-probability as the server gave it: at most 0 (up to rounding), finite for a chosen token, -inf
    allowed in a top list (a token the server rules out)."""
    v = float(value)
    if math.isnan(v) or v > 1e-3 or (chosen and math.isinf(v)) or v == math.inf:
        raise ValueError(f"not a log-probability: {v}")
    return v


def _logprobs(lp) -> tuple[list[float], list[list[float]]] | None:
    if lp is None:
        return None
    if lp.get("content") is not None:  # a list of {token, logprob, top_logprobs: [{token, logprob}]}
        content = lp["content"]
        return ([_logprob(t["logprob"], True) for t in content],
                [[_logprob(x["logprob"], False) for x in (t.get("top_logprobs") or [])] for t in content])
    if lp.get("token_logprobs") is None:
        return None
    chosen = [_logprob(v, True) for v in lp["token_logprobs"]]
    tops = [[_logprob(v, False) for v in (t or {}).values()] for t in (lp.get("top_logprobs") or [])]
    return chosen, (tops + [[] for _ in range(len(chosen) - len(tops))])[: len(chosen)]


def truncated_entropy(top_logprobs: list[float], n: int) -> float:
    """-sum p log p over the ``n`` most likely tokens (a lower bound of the entropy: the tail is left out);
    NaN where the server gave no top logprobs for the token."""
    best = sorted((v for v in top_logprobs if v > -math.inf), reverse=True)[:n]
    return -sum(math.exp(v) * v for v in best) if best else math.nan


# --------------------------------------------------------------------------- kinds of server

# The kinds of server evalkit knows, the columns of REQUEST_KNOBS: llama.cpp's own server (llama-server),
# llama-cpp-python's server, vLLM's OpenAI server, and any other OpenAI-compatible server.
LLAMA_CPP, LLAMA_CPP_PYTHON, VLLM, OTHER = "llama.cpp", "llama-cpp-python", "vllm", "other"
SERVER_KINDS = (LLAMA_CPP, LLAMA_CPP_PYTHON, VLLM, OTHER)

# Each Setting knob a server can be sent: its request field on each kind of server, None where that kind has none
# (a setting that sets the knob is refused there). A new served knob is one line here and its probe in
# evalkit.generation.served.probe. Read from the servers' code: llama.cpp's tools/server (params_from_json_cmpl),
# llama-cpp-python's llama_cpp/server/types.py (CreateCompletionRequest: its request has no typical_p, top-n-sigma,
# XTC, DRY or penalty window, and it drops a field it does not know without a word), vLLM's
# entrypoints/openai/protocol.py. penalty_scope is sent where it has a field (llama.cpp's window) and honoured
# without one where it is the server's own scope (vLLM's); see ServerKind.scope_refusal.
REQUEST_KNOBS: dict[str, tuple[str | None, str | None, str | None, str | None]] = {
    #                        llama.cpp                llama-cpp-python   vllm                  other
    "temperature":           ("temperature",          "temperature",     "temperature",        "temperature"),
    "top_p":                 ("top_p",                "top_p",           "top_p",              "top_p"),
    "top_k":                 ("top_k",                "top_k",           "top_k",              "top_k"),
    "min_p":                 ("min_p",                "min_p",           "min_p",              "min_p"),
    "typical_p":             ("typical_p",            None,              None,                 None),
    "top_n_sigma":           ("top_n_sigma",          None,              None,                 None),
    "xtc_probability":       ("xtc_probability",      None,              None,                 None),
    "xtc_threshold":         ("xtc_threshold",        None,              None,                 None),
    "dry_multiplier":        ("dry_multiplier",       None,              None,                 None),
    "dry_base":              ("dry_base",             None,              None,                 None),
    "dry_allowed_length":    ("dry_allowed_length",   None,              None,                 None),
    "dry_penalty_last_n":    ("dry_penalty_last_n",   None,              None,                 None),
    "dry_sequence_breakers": ("dry_sequence_breakers", None,             None,                 None),
    "mirostat":              ("mirostat",             "mirostat_mode",   None,                 None),
    "mirostat_tau":          ("mirostat_tau",         "mirostat_tau",    None,                 None),
    "mirostat_eta":          ("mirostat_eta",         "mirostat_eta",    None,                 None),
    "repetition_penalty":    ("repeat_penalty",       "repeat_penalty",  "repetition_penalty", "repetition_penalty"),
    "presence_penalty":      ("presence_penalty",     "presence_penalty", "presence_penalty",  "presence_penalty"),
    "frequency_penalty":     ("frequency_penalty",    "frequency_penalty", "frequency_penalty", "frequency_penalty"),
    "penalty_scope":         ("repeat_last_n",        None,              None,                 None),
    "min_tokens":            (None,                   None,              "min_tokens",         None),
}
ALWAYS_SENT = ("temperature", "top_p")  # in every request; the others only where the setting sets them


@dataclass(frozen=True)
class ServerKind:
    """A kind of server: the request field of each knob it honours, the chain order it applies, and which tokens
    its penalties count."""

    name: str  # a column of REQUEST_KNOBS
    what: str  # how messages name it
    order: str | None  # the named order (evalkit.settings.ORDERS) it applies; None: its own, which evalkit cannot name
    owned_by: str | None  # what its GET /models entries give as owned_by (how evalkit tells it)
    scopes: str  # which penalty_scope it can be sent: "window" (a count of last tokens), "own" (its own), "auto"
    auto_scope: str  # which tokens its penalties count when penalty_scope is auto (the manifest says so)
    fixed: tuple[tuple[str, Any], ...] = ()  # request fields sent with every request (not knobs): cache reuse off
    full_seed: bool = False  # takes a 64-bit seed: sent the sample's whole derived seed, as vLLM in process is
    fields: dict[str, str] = field(init=False, repr=False)  # knob -> request field, for each knob it honours

    def __post_init__(self) -> None:
        column = SERVER_KINDS.index(self.name)
        object.__setattr__(self, "fields", {knob: names[column] for knob, names in REQUEST_KNOBS.items()
                                            if names[column] is not None})

    def refusal(self, setting: Setting) -> tuple[str, str] | None:
        """(knob, why) for the first thing in ``setting`` this kind of server does not apply as the setting says: a
        knob it has no field for, another order than its own, a penalty scope it cannot be sent; None: it applies
        all."""
        for knob in setting.set_knobs():
            if knob == "order":
                if isinstance(setting.order, tuple):
                    return knob, f"an explicit order of stages ({self.what} applies its own)"
                if setting.order != self.order:
                    applies = (f"{self.what} applies the {self.order} order" if self.order else
                               f"{self.what} applies its own order, which evalkit cannot name")
                    return knob, f"order {shown(setting.order)} ({applies})"
            elif knob != "penalty_scope" and knob not in self.fields:
                return knob, f"{knob} ({self.what} has no request field for it{_elsewhere(knob)})"
        if self.order is not None:
            absent = setting.missing_in_order(self.order)
            if absent is not None:
                return absent, f"{absent} (the {self.order} order that {self.what} applies has no stage for it)"
        return self.scope_refusal(setting)

    def scope_refusal(self, setting: Setting) -> tuple[str, str] | None:
        """(penalty_scope, why) when the setting's penalties count other tokens than this server can be made to
        count; None when it can."""
        penalties = [p for p in PENALTIES if p in setting.set_knobs()]
        if not penalties or setting.penalty_scope == "auto":
            return None
        scope = shown(setting.penalty_scope)
        if self.scopes == "window" and setting.penalty_scope == "output":
            return "penalty_scope", (f"penalty_scope {scope} ({self.what} counts the prompt's tokens too: set a count "
                                     "of last tokens, prompt+output or auto)")
        if self.scopes == "own":
            own = AUTO_SCOPE[self.order]
            for p in penalties:
                if setting.scope(p, self.order) != own[p]:
                    return "penalty_scope", (f"penalty_scope {scope} for {p} ({self.what} counts it over {own[p]}: "
                                             "leave penalty_scope auto)")
        if self.scopes == "auto":
            return "penalty_scope", (f"penalty_scope {scope} ({self.what} counts its penalties over "
                                     f"{self.auto_scope}, which no request field changes: leave penalty_scope auto)")
        return None

    def request(self, setting: Setting) -> dict[str, Any]:
        """The request fields of ``setting``'s knobs on this kind of server: temperature and top_p always, every
        other knob the setting sets, and the knobs that qualify a set one at their values, set or not (nothing is
        left to a server default). Raises ValueError for a setting it does not apply (the capability check
        refuses those first)."""
        refused = self.refusal(setting)
        if refused is not None:
            raise ValueError(f"{self.what} does not apply {refused[1]}")
        set_ = set(setting.set_knobs())
        out: dict[str, Any] = {}
        for knob, name in self.fields.items():
            if knob in ALWAYS_SENT or knob in set_ or any(k in set_ for k in QUALIFIES.get(knob, ())):
                out[name] = self._value(setting, knob)
        return out

    def _value(self, setting: Setting, knob: str) -> Any:
        value = getattr(setting, knob)
        if knob == "dry_sequence_breakers":
            return list(value)
        if knob == "penalty_scope":  # the window of llama.cpp's penalties: the last N tokens, -1 all of them
            scope = setting.scope(next(p for p in PENALTIES if p in setting.set_knobs()), self.order)
            return -1 if scope == "prompt+output" else scope
        return value


def request_seed(seed: int, kind: ServerKind) -> int:
    """The seed a request carries for a sample's derived seed (63 bits): the whole seed where the kind of server takes
    64-bit seeds (vLLM's, as evalkit's in-process vLLM backend is given it: the same seed gives the same sample), the
    seed mod 2**31 elsewhere (llama.cpp's samplers take 32 bits; an unknown server may too)."""
    return seed if kind.full_seed else seed % SEED_MODULUS


def seed_mapping(kind: ServerKind) -> str:
    """What the manifest says of :func:`request_seed` for ``kind``."""
    return "the sample's derived seed" + ("" if kind.full_seed else " mod 2**31")


def _elsewhere(knob: str) -> str:
    """Which kinds of server take ``knob``, and under what name (for a refusal)."""
    names = [f"{KINDS[kind].what} takes {name}" for kind, name in zip(SERVER_KINDS, REQUEST_KNOBS.get(knob, ()))
             if name is not None]
    return f"; {', '.join(names)}" if names else ""


KINDS: dict[str, ServerKind] = {k.name: k for k in (
    # cache_prompt false: llama.cpp's server would reuse the previous request's KV cache for the common prompt prefix,
    # whose logits can differ from a fresh prompt's (so the same seed would not always give the same sample)
    ServerKind(LLAMA_CPP, "llama.cpp's server", "llama_cpp", "llamacpp", "window",
               "the last 64 tokens of prompt and output (repeat_last_n 64, sent)", (("cache_prompt", False),)),
    ServerKind(LLAMA_CPP_PYTHON, "llama-cpp-python's server", "llama_cpp", "me", "auto",
               "the last --last_n_tokens_size generated tokens (64 unless the server was started with another)"),
    ServerKind(VLLM, "a vLLM server", "vllm", "vllm", "own",
               "prompt and output for repetition_penalty, the output for presence and frequency penalties",
               full_seed=True),
    ServerKind(OTHER, "an OpenAI-compatible server of unknown kind", None, None, "auto",
               "tokens of its own choosing"),
)}


def kind_of(listed: dict[str, Any]) -> ServerKind:
    """The kind of server whose GET /models entry for the model is ``listed`` (its owned_by says which)."""
    owner = listed.get("owned_by")
    return next((k for k in KINDS.values() if k.owned_by is not None and k.owned_by == owner), KINDS[OTHER])
