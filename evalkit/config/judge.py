"""The config's ``judge`` section: the model that rates samples for ``judge_score`` (see docs/judge.md), reached
like a served model (any OpenAI-compatible server) and asked with fixed knobs, and the rubrics a config writes."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from evalkit.config.base import _Strict
from evalkit.config.model import OpenAIModel
from evalkit.errors import shown

# request fields that evalkit sets itself: extra_body cannot change them
JUDGE_OWN_FIELDS = ("model", "messages", "prompt", "temperature", "top_p", "seed", "max_tokens", "n", "stream",
                    "logprobs", "top_logprobs", "echo")


class RubricConfig(_Strict):
    """A rubric the config writes: its text (what the judge rates, one or a few sentences), inline or in a file
    relative to the config, and the scale of its ratings."""

    text: str | None = Field(None, min_length=1)
    file: str | None = Field(None, min_length=1)  # a UTF-8 text file, relative to the config file
    scale: tuple[int, int] = (1, 10)  # the lowest and highest rating (whole numbers)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"text": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _one_of(self) -> RubricConfig:
        if (self.text is None) == (self.file is None):
            raise ValueError("a rubric needs exactly one of 'text' or 'file'")
        if self.text is not None and not self.text.strip():
            raise ValueError(f"text: a rubric's text is empty, got {shown(self.text)}")
        lo, hi = self.scale
        if not 0 <= lo < hi <= 1000:
            raise ValueError("scale: [lowest, highest] with 0 <= lowest < highest <= 1000, "
                             f"got {shown(list(self.scale))}")
        return self


class JudgeConfig(_Strict):
    """The judging model (a served one: the fields of ``model`` for backend openai) and how it is asked."""

    base_url: str  # the API root, e.g. http://127.0.0.1:8080/v1
    id: str = Field(min_length=1)  # the judging model's name, as the server's GET /models lists it
    api: Literal["chat", "completions"] = "chat"  # chat: the server applies the judge's chat template
    api_key_env: str | None = None  # the NAME of the environment variable that holds the API key
    concurrency: int = Field(8, ge=1, le=1024)  # requests in flight
    timeout_s: float = Field(120.0, gt=0, le=86_400)  # per request
    max_retries: int = Field(6, ge=0, le=100)  # on 429, 5xx, dropped connections, timeouts and garbled replies
    backoff_s: float = Field(1.0, ge=0, le=3600)  # the first retry's wait; doubles with each retry
    temperature: float = Field(0.0, ge=0, le=2)  # 0: the most likely reply (greedy where the server allows)
    seed: int | None = Field(0, ge=0, lt=2**31)  # sent with every request; null: none (only at temperature 0)
    max_tokens: int = Field(256, ge=1, le=65_536)  # the judge's reply: its explanation, then its verdict
    mode: Literal["score", "pairwise"] = "score"  # score: a rating per sample; pairwise: a sample against the baseline
    # pairwise: the setting every sample is compared with (its sample of the same prompt and index); none: the first
    baseline: str | None = Field(None, min_length=1)
    # more request fields, sent as they are, for what the server takes beyond OpenAI's (llama.cpp's grammar,
    # vLLM's guided_regex); part of the judge's identity
    extra_body: dict[str, Any] = Field(default_factory=dict)
    rubrics: dict[str, RubricConfig] = Field(default_factory=dict)  # the config's own: judge_score[rubric=NAME]
    cache: bool = True  # the judge cache: a sample already judged by this judge and rubric is not asked again

    _url = field_validator("base_url")(OpenAIModel._url.__func__)
    _env_name = field_validator("api_key_env")(OpenAIModel._env_name.__func__)

    @field_validator("extra_body")
    @classmethod
    def _extra(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if name in JUDGE_OWN_FIELDS:
                raise ValueError(f"{name} is set by evalkit from the judge's own fields, not through extra_body, "
                                 f"got {name} set")
        return v

    @field_validator("rubrics")
    @classmethod
    def _names(cls, v: dict[str, RubricConfig]) -> dict[str, RubricConfig]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,39}", name):
                raise ValueError(f"a rubric's name is a letter, then letters, digits, _ or - (40 at most), "
                                 f"got {shown(name)}")
        return v

    @model_validator(mode="after")
    def _reproducible(self) -> JudgeConfig:
        if self.baseline is not None and self.mode != "pairwise":
            raise ValueError(f"baseline: only mode pairwise compares with a baseline; this judge's mode is "
                             f"{self.mode}, got {shown(self.baseline)}")
        if self.temperature > 0 and self.seed is None:
            raise ValueError(f"seed: a judge that samples (temperature {self.temperature:g}) needs a fixed seed, "
                             "so that its verdicts can be had again; set one, or temperature 0, got null")
        return self
