"""What every run kind defines; the text kind is the default behaviour of each member."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from evalkit.config import SweepConfig
from evalkit.errors import ConfigError
from evalkit.generation.base import STAT_COLUMNS, PreparedPrompt, SampleRecord, WorkUnit
from evalkit.rundir.writer import RunWriter
from evalkit.scoring.metric import Metric
from evalkit.settings import APPLICATION_ORDER, chain_labels, ImageSetting, Setting


def unit_fields(unit: WorkUnit) -> dict[str, Any]:
    """The columns every samples row starts with: the prompt, the setting and its parameters, index and seed."""
    p = unit.prompt.prompt
    return {"prompt_id": p.id, "prompt": p.display, "setting_id": unit.setting.id, **unit.setting.params(),
            "sample_index": unit.sample_index, "seed": unit.seed}


class UnknownSetting(Setting):
    """The setting of samples that name none (rows of a scored file without any knob): no knob is known, so its
    id is ``unknown`` and its parameters are empty in every table (null) and in the manifest (none recorded),
    never the neutral values of a setting that nobody said was used."""

    ID: ClassVar[str] = "unknown"

    @property
    def id(self) -> str:
        return self.ID

    def params(self) -> dict[str, None]:
        return dict.fromkeys(type(self).model_fields)

    def set_knobs(self) -> list[str]:
        return []


@dataclass(frozen=True)
class Axes:
    """How a report lays out a kind's grid."""

    x: str  # heatmap columns, line-chart x axis
    y: str  # heatmap rows, one line each
    panels: tuple[str, ...]  # small multiples where these vary


@dataclass(frozen=True)
class RunKind:
    name: str  # as the manifest records it
    what: str  # how errors name such a run: "a text sweep", "a file of texts"
    columns: tuple[str, ...]  # of the samples table
    needs: frozenset[str]  # what its samples offer metrics (see evalkit.scoring.metric.NEEDS)
    setting_type: type = Setting
    noun: str = "prompts"  # what its prompts are called in summaries
    verb: str = "make"  # "{metric} needs X, which {what} does not {verb}"
    sampling_order: tuple[str, ...] = chain_labels(APPLICATION_ORDER)  # the stages, in the order they apply
    report_axes: Axes = Axes("temperature", "top_p", ("top_k", "min_p", "order"))
    hints: tuple[tuple[str, str], ...] = ()  # (need, what to use instead) for a metric this kind cannot serve

    @property
    def axes(self) -> tuple[str, ...]:
        """The grid axes (the setting's parameters)."""
        return tuple(self.setting_type.model_fields)

    def setting(self, params: dict[str, Any], setting_id: str | None = None) -> Setting | ImageSetting:
        """The setting a record's parameters name (a knob a run made before it existed is at its neutral value);
        the record of an :class:`UnknownSetting` (id ``unknown``, no parameters) names that one."""
        if setting_id == UnknownSetting.ID and not params:
            return UnknownSetting()
        return self.setting_type(**{k: params[k] for k in self.axes if k in params})

    def check_metrics(self, metrics: list[Metric], source: str | None, where: str = "metrics[{}]") -> None:
        """Refuse a metric that needs what this kind's samples do not offer."""
        for i, m in enumerate(metrics):
            missing = m.requires() - self.needs
            if missing:
                hint = next((h for need, h in self.hints if need in missing), None)
                raise ConfigError(f"{m.id} needs {', '.join(sorted(missing))}, which {self.what} does not "
                                  f"{self.verb}" + (f" ({hint})" if hint else ""), source=source, path=where.format(i))

    # ------------------------------------------------------------------ sweeps (not scored files)

    def check_prompts(self, prompts: list, source: str | None) -> None:
        """What the kind refuses in the prompts before anything is loaded (beyond the schema)."""

    def prompt_line(self, p: PreparedPrompt, writer: RunWriter) -> dict[str, Any]:
        """The prompt's line in prompts.jsonl (a prompt sent as text to a server has no tokens of evalkit's)."""
        checks = {"checks": p.prompt.checks.as_json()} if p.prompt.checks else {}
        return {"id": p.prompt.id, "prompt": p.prompt.display, "rendered": p.rendered,
                "n_tokens": len(p.token_ids) if p.token_ids else None,
                "chat_template": p.chat_template, **checks}

    def row(self, unit: WorkUnit, result: dict[str, Any], writer: RunWriter, config: SweepConfig) -> dict[str, Any]:
        """A samples row from a record's cacheable form (:meth:`cached`)."""
        return {**unit_fields(unit), "text": result["text"],
                "num_new_tokens": result.get("num_new_tokens", len(result["token_ids"])),
                "finish_reason": result["finish_reason"],
                "token_ids": result["token_ids"], **{name: result.get(name, []) for name in self.stat_columns}}

    @property
    def stat_columns(self) -> list[str]:
        return [c for c in STAT_COLUMNS if c in self.columns]

    def cached(self, record: SampleRecord) -> dict[str, Any]:
        """What the sample cache keeps of a record (JSON)."""
        counted = {} if record.num_tokens is None else {"num_new_tokens": record.num_tokens}
        return {"text": record.text, "token_ids": list(record.token_ids), "finish_reason": record.finish_reason,
                **counted, **{name: record.stats.get(name, []) for name in self.stat_columns}}

    def decides(self, unit: WorkUnit, config: SweepConfig, eos: list[int]) -> list:
        """What decides a unit's output besides its prompt tokens, setting and seed (part of its cache key). A prompt
        without tokens of evalkit's (sent as text to a server) is decided by its text as sent; the endpoint, model,
        server fingerprint and the knobs sent with every request are in the model id of the key."""
        if not unit.prompt.token_ids:
            return [config.max_new_tokens, list(config.stop), unit.prompt.rendered]
        return [config.max_new_tokens, list(config.stop), eos]

    def recovered(self, unit: WorkUnit, config: SweepConfig, writer: RunWriter) -> dict[str, Any] | None:
        """A unit's row when its output was kept before its row was (text: never)."""
        return None
