"""A backend as one declared thing: :class:`BackendSpec` (its config section, the run kind it makes, the metric
inputs its samples supply, where it runs, the sampling knobs it honours and the chain orders it applies, and its
entry points), and the optional abilities a loaded generator may have, as small protocols checked once, at load
(:class:`Abilities`).

Each backend module declares its ``SPEC``; :mod:`evalkit.generation` lists the modules. Nothing here imports
torch or a model library.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from evalkit.errors import shown
from evalkit.settings import AUTO_ORDER, orders_with


@dataclass(frozen=True)
class BackendSpec:
    name: str  # model.backend
    config: type  # its section of the config (evalkit.config.model), a member of the ModelConfig union
    summary: str  # one line for `evalkit backends`
    what: str  # how messages name its sweeps: "a served-model sweep"
    needs: frozenset[str]  # what its samples offer metrics (evalkit.scoring.metric.NEEDS)
    knobs: frozenset[str]  # the fields of its kind's setting that it honours (the others it refuses)
    orders: tuple[str, ...]  # the named chain orders it applies (evalkit.settings.ORDERS); "auto" is always its own
    own_order: tuple[str, ...]  # what "auto" means: the stages in the order it applies them (the manifest records it)
    engine: str  # who samples: "evalkit", "vllm", "the server", "diffusers"
    remote: bool  # the model runs elsewhere (a server): nothing is loaded here, the device is the server's
    load: Callable[..., Any]  # load(config, source, device, status) -> Generator
    check_model: Callable[..., Any]  # check_model(config, device) -> (source, device): before anything loads
    plan_lines: Callable[..., list[tuple[str, str]]] | None = None  # extra lines of --plan (config, settings, ...)
    hints: tuple[tuple[str, str], ...] = ()  # (need, what to use instead) for a metric it cannot serve
    notes: dict[str, str] = field(default_factory=dict)  # knob -> how this backend applies it (`evalkit backends`)
    order_name: str | None = None  # its own order's name (ORDERS): a setting's knob must have a stage there
    explicit_orders: bool = False  # it applies an explicit list of stages too (evalkit's engine)

    @property
    def kind(self) -> str:
        """The run kind it makes: text, image-to-text, text-to-image."""
        return self.config.KIND

    def refusal(self, setting: Any) -> tuple[str, str] | None:
        """(knob, why) for the first knob ``setting`` sets that this backend does not honour; None when it honours
        every one (a knob at its neutral value is not set)."""
        for knob in setting.set_knobs():
            if knob == "order":
                applies = f"it applies {', '.join(self.orders)}" if self.orders else "it applies its own only"
                if isinstance(setting.order, tuple) and not self.explicit_orders:
                    return knob, f"an explicit order of stages ({applies})"
                if isinstance(setting.order, str) and setting.order not in self.orders:
                    return knob, f"order {shown(setting.order)} ({applies})"
            elif knob not in self.knobs:
                return knob, knob
        if self.order_name is not None and hasattr(setting, "missing_in_order"):
            absent = setting.missing_in_order(self.order_name)
            if absent is not None:
                named = setting.order_name(self.order_name)
                have = [o for o in orders_with(absent) if o in self.orders]
                return absent, (f"{absent} in the {named} order, which has no stage for it" + (
                    f" (set order: {' or '.join(have)})" if have else ""))
        return None

    def as_row(self) -> dict[str, Any]:
        """What `evalkit backends` shows of it."""
        return {"backend": self.name, "kind": self.kind, "engine": self.engine, "remote": self.remote,
                "knobs": sorted(self.knobs, key=_field_order(self)),
                "orders": [AUTO_ORDER, *self.orders] if self.kind != "text-to-image" else [],  # an image has no chain
                "own_order": list(self.own_order), "metric_inputs": sorted(self.needs), "summary": self.summary,
                "notes": dict(self.notes)}


def _field_order(spec: BackendSpec) -> Callable[[str], int]:
    from evalkit.settings import ImageSetting, Setting

    fields = list(Setting.model_fields) + list(ImageSetting.model_fields)
    return lambda name: fields.index(name) if name in fields else len(fields)


# --------------------------------------------------------------------------- optional abilities


@runtime_checkable
class ScoresContinuations(Protocol):
    def score_continuations(self, prompt, texts: list[str]) -> list[tuple[float, ...]]:
        """Each text's per-token log-probabilities under the model, as a continuation of ``prompt``."""


@runtime_checkable
class TokenizesTexts(Protocol):
    def tokenize_texts(self, texts: list[str]) -> list[tuple[int, ...]]:
        """The model's token ids of each text, without special tokens."""


@runtime_checkable
class EmbedsContinuations(Protocol):
    def embed_continuations(self, prompt, texts: list[str]) -> Any:
        """The model's final hidden state of each text, as a continuation of ``prompt`` (None: alone)."""


@runtime_checkable
class Closes(Protocol):
    def close(self) -> None:
        """Free what the generator holds beyond memory (an engine's processes)."""


@dataclass(frozen=True)
class Abilities:
    """What a loaded generator can do besides the :class:`~evalkit.generation.base.Generator` protocol, checked
    once, when it is loaded."""

    score_continuations: Callable | None = None
    tokenize_texts: Callable | None = None
    embed_continuations: Callable | None = None
    close: Callable | None = None

    @classmethod
    def of(cls, generator: Any) -> Abilities:
        return cls(
            score_continuations=generator.score_continuations if isinstance(generator, ScoresContinuations) else None,
            tokenize_texts=generator.tokenize_texts if isinstance(generator, TokenizesTexts) else None,
            embed_continuations=generator.embed_continuations if isinstance(generator, EmbedsContinuations) else None,
            close=generator.close if isinstance(generator, Closes) else None)
