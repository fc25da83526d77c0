"""Scored files: samples made elsewhere (an API, another harness), scored by ``evalkit score FILE.jsonl``.

Each line of the file is one sample: ``text`` (required), the prompt as ``prompt_id`` and/or
``prompt`` (at least one), optionally the setting it was sampled with (``temperature``,
``top_p``, ``top_k``, ``min_p`` and Setting's other knobs; a knob not given is at its neutral value: 1, 1, 0, 0;
a line that gives no knob at all has the setting ``unknown``, its knobs null in every table, since nothing says
what it was sampled with) and ``sample_index`` (else the order
within its group). Captions of images add ``image`` (a path relative to the file) and may add
``references`` (reference captions); every row of a prompt names the same image. Rows may carry
their prompt's checks (``answer``, ``answer_format``, ``answer_pattern``, ``tests``, ``entry_point``,
``code_prefix``: see :mod:`evalkit.checks`), the same on every row of a prompt that gives them. Other
fields are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from evalkit.checks import Checks, checks_of
from evalkit.config.schema import refuse_bools_as_numbers
from evalkit.errors import ConfigError, shown
from evalkit.kinds.base import RunKind, UnknownSetting
from evalkit.prompts import POOLED, read_jsonl_rows, unreadable_image
from evalkit.rundir.columns import BASE_SAMPLE_COLUMNS, VLM_COLUMNS
from evalkit.scoring.metric import CHECK_NEEDS, VLM_NEEDS
from evalkit.settings import Setting, knob_type

TEXT_ONLY_NEEDS = frozenset({"texts", "prompts", "reference_texts"}) | CHECK_NEEDS
# a metric that counts model tokens: what a file of texts can measure instead
TEXT_HINTS = (("token_counts", "mean_length[unit=words] counts words"),)
SCORED = RunKind(name="scored", what="a file of texts", verb="have", columns=tuple(BASE_SAMPLE_COLUMNS),
                 needs=TEXT_ONLY_NEEDS, hints=TEXT_HINTS)
SCORED_CAPTIONS = RunKind(name="scored", what="a file of texts with images", verb="have",
                          columns=tuple(BASE_SAMPLE_COLUMNS + VLM_COLUMNS), needs=TEXT_ONLY_NEEDS | VLM_NEEDS,
                          hints=TEXT_HINTS)


class _GenerationRow(BaseModel):
    """One line of a scored file; its setting's knobs are :data:`GenerationRow`'s fields (each of Setting's)."""

    model_config = ConfigDict(extra="ignore")

    text: str
    prompt_id: str | int | None = None
    prompt: str | None = None
    sample_index: int | None = Field(None, ge=0, le=2**31 - 1)
    image: str | None = Field(None, min_length=1)  # the image the text describes (a path relative to the file)
    references: list[str] | None = Field(None, min_length=1)  # its reference captions
    answer: str | int | float | None = None  # checks of its prompt (evalkit.checks)
    answer_format: str | None = None
    answer_pattern: str | None = None
    tests: str | None = None
    entry_point: str | None = None
    code_prefix: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        refuse_bools_as_numbers(cls, data)
        return data

    @model_validator(mode="after")
    def _prompt(self) -> _GenerationRow:
        if self.prompt_id is None and self.prompt is None:
            raise ValueError("a row needs 'prompt_id' or 'prompt'")
        return self


# a line's setting: every knob of Setting, validated as a setting validates it, at its neutral value when not given
GenerationRow = create_model(
    "GenerationRow", __base__=_GenerationRow, __module__=__name__,
    **{name: (knob_type(name), f.default) for name, f in Setting.model_fields.items()})


def read_generations(path: Path) -> tuple[pd.DataFrame, dict[str, Checks]]:
    """The file as a samples table (sample-index order within each group), and the checks its rows carry by
    prompt id. Raises ConfigError naming the line."""
    source = str(path)
    rows = []
    checks: dict[str, tuple[Checks, int]] = {}
    for number, row in read_jsonl_rows(path, "file", GenerationRow):
        where = f"line {number}"
        knobs = Setting.model_fields.keys() & row.model_fields_set
        setting = Setting(**{k: getattr(row, k) for k in Setting.model_fields}) if knobs else UnknownSetting()
        pid = str(row.prompt_id) if row.prompt_id is not None else row.prompt
        if pid == POOLED:
            raise ConfigError(f"prompt {POOLED!r} is reserved: it names values pooled over all prompts (use another "
                              "prompt_id)", source=source, path=where)
        image = _image(path, row.image, where) if row.image is not None else None
        try:
            check = checks_of(row)
        except ValueError as e:
            raise ConfigError(f"prompt {shown(pid)}: {e}", source=source, path=where) from None
        if check is not None:
            first = checks.setdefault(pid, (check, number))
            if not first[0].same_as(check):
                raise ConfigError(f"prompt {shown(pid)} has other checks (answer, tests) than on line {first[1]}",
                                  source=source, path=where)
        rows.append({"prompt_id": pid, "prompt": row.prompt if row.prompt is not None else pid,
                     "setting_id": setting.id, **setting.params(), "sample_index": row.sample_index, "seed": None,
                     "text": row.text, "num_new_tokens": None, "finish_reason": None, "token_ids": [],
                     "prompt_image": image, "references": tuple(row.references or ()), "_line": number,
                     "_prompt_given": row.prompt is not None})
    if not rows:
        raise ConfigError("the file has no generations", source=source)
    samples = pd.DataFrame(rows)
    images = samples["prompt_image"].notna().any()
    if images and samples["prompt_image"].isna().any():
        line = int(samples.loc[samples["prompt_image"].isna().idxmax(), "_line"])
        raise ConfigError("no image, while other lines name one: every line names the image it describes",
                          source=source, path=f"line {line}")
    given = samples[samples["_prompt_given"]]  # one prompt text per prompt id, where lines give one
    first = given.groupby("prompt_id", sort=False)["prompt"].first()
    other = given[given["prompt"] != given["prompt_id"].map(first)]
    if len(other):
        bad = other.iloc[0]
        raise ConfigError(f"prompt {shown(bad['prompt_id'])} has another prompt text than on the first line that "
                          "gives one", source=source, path=f"line {int(bad['_line'])}")
    samples["prompt"] = samples["prompt_id"].map(first).where(samples["prompt_id"].isin(first.index),
                                                              samples["prompt"])
    for column in ("prompt_image", "references") if images else ():
        per_prompt = samples.groupby("prompt_id", sort=False)[column].transform("first")
        other = samples[column] != per_prompt
        if other.any():
            bad = samples[other].iloc[0]
            raise ConfigError(f"prompt {bad['prompt_id']!r} has another {column.replace('prompt_', '')} than on its "
                              f"first line", source=source, path=f"line {int(bad['_line'])}")
    order = samples.groupby(["prompt_id", "setting_id"], sort=False).cumcount()
    given = samples["sample_index"]
    samples["sample_index"] = given.where(given.notna(), order).astype(int)
    dup = samples.duplicated(["prompt_id", "setting_id", "sample_index"])
    if dup.any():
        line = int(samples.loc[dup.idxmax(), "_line"])
        raise ConfigError("duplicate sample_index within its prompt and setting", source=source, path=f"line {line}")
    samples = samples.drop(columns=["_line", "_prompt_given"]).assign(references=samples["references"].map(list))
    columns = BASE_SAMPLE_COLUMNS + (VLM_COLUMNS if images else [])
    # a whole-number knob stays whole where lines of an unknown setting leave it null
    whole = [k for k, f in Setting.model_fields.items() if f.annotation is int and samples[k].isna().any()]
    return (samples.astype({"num_new_tokens": "Int64", "seed": "Int64", **dict.fromkeys(whole, "Int64")})[columns],
            {p: c for p, (c, _) in checks.items()})


def _image(path: Path, name: str, where: str) -> str:
    try:
        image = (path.parent / Path(name).expanduser()).resolve()
    except (RuntimeError, OSError):  # a loop of symbolic links
        raise ConfigError(f"image is a loop of symbolic links: {name}", source=str(path), path=where) from None
    if not image.exists():
        raise ConfigError(f"image not found: {image}", source=str(path), path=where)
    if not image.is_file():
        raise ConfigError(f"image is not a regular file: {image}", source=str(path), path=where)
    why = unreadable_image(image)
    if why:
        raise ConfigError(f"not a readable image ({why}): {image}", source=str(path), path=where)
    return str(image)
