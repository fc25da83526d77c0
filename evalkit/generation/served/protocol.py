"""What evalkit sends to and reads from an OpenAI-compatible server: the knobs it sends at neutral
values, the seed's range, and a completion reply's first choice (text, finish reason, logprobs)."""

from __future__ import annotations

import math
from typing import Any

from evalkit.generation.served.client import ServerError
from evalkit.settings import Setting

SEED_MODULUS = 2**31  # a request's seed: the sample's derived seed mod 2**31 (a signed 32-bit int everywhere)
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


# The sampling knobs a request carries, by Setting field: the request field, whether it is sent only when set (a
# server that has no such field refuses it even at its neutral value; the capability check finds which), and its
# extreme: the value that leaves only the most likely token, which the capability check sends to see that the server
# applies the knob (a server that honours it decodes greedily; evalkit.generation.served.probe).
REQUEST_KNOBS = {"temperature": ("temperature", False, 0.0), "top_k": ("top_k", True, 1),
                 "top_p": ("top_p", False, 0.001), "min_p": ("min_p", True, 0.999)}


def request_knobs(setting: Setting, optional: bool) -> dict[str, Any]:
    """The request fields of ``setting``'s knobs (:data:`REQUEST_KNOBS`): those always sent, or (``optional``) the
    optional ones that the setting sets."""
    out = {}
    for knob, (name, only_when_set, _) in REQUEST_KNOBS.items():
        value = getattr(setting, knob)
        if only_when_set == optional and not (only_when_set and value == type(setting).model_fields[knob].default):
            out[name] = value
    return out
