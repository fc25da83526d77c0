"""What a report shows, read from run directories: summaries, token entropy by setting,
the samples for the browser, and the changes between runs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from evalkit.compare import Comparison, RunData, compare_runs
from evalkit.errors import EvalkitError
from evalkit.settings import ImageSetting
from evalkit.report import thumbnails
from evalkit.kinds import TEXT_TO_IMAGE, RunKind, kind_named
from evalkit.kinds.base import Axes
from evalkit.report.charts import show_param
from evalkit.settings import Setting, shown_knobs
from evalkit.scoring import aggregate
from evalkit.scoring.decoding_test import run_decoding_test
from evalkit.rundir.reader import Run
from evalkit.rundir.reader import load_run
from evalkit.sandbox import TAMPERED

ENTROPY = {"entropy_sampling": "sampling distribution (after temperature and truncation)",
           "entropy_model": "model distribution (temperature 1, unfiltered)"}


@dataclass
class RunView:
    run: Run
    key: str  # short html-safe id: r0, r1, ...

    @property
    def manifest(self):
        return self.run.manifest

    @property
    def label(self) -> str:
        return self.manifest.run_id

    @property
    def level(self) -> int:
        return int(round(self.manifest.ci["level"] * 100))

    @property
    def kind(self) -> RunKind:
        return kind_named(self.manifest.kind)

    @property
    def images(self) -> bool:
        """A text-to-image run (its settings are guidance scale, steps, scheduler, eta)."""
        return self.kind is TEXT_TO_IMAGE

    @property
    def axes(self) -> Axes:
        return self.kind.report_axes

    @cached_property
    def settings(self) -> list[Setting] | list[ImageSetting]:
        return [self.kind.setting(s.params, s.id) for s in self.manifest.settings]

    @cached_property
    def param_names(self) -> list[str]:
        return shown_knobs(self.settings) if self.settings else []

    @cached_property
    def summary(self) -> pd.DataFrame:
        return self.run.summary

    @property
    def metrics(self) -> list[str]:
        return list(self.manifest.metrics)

    def info(self, metric: str) -> dict:
        return {"kind": "descriptive", "direction": 1, "scale": "linear", "definition": "",
                **self.manifest.metric_info.get(metric, {})}

    def human(self, metric: str) -> float | None:
        """The metric's value on the run's references (the human row), where it has one."""
        value = ((self.manifest.references or {}).get("values") or {}).get(metric, {}).get("value")
        return None if value is None else float(value)

    @cached_property
    def human_likeness(self) -> dict | None:
        """Settings ranked by closeness to the references (Holtzman et al. 2020 read Table 1 so): per metric
        with a reference value, each setting's |value - reference| and its rank (1: closest), and the mean
        rank over those metrics; None where no metric has a reference value."""
        metrics = [m for m in self.metrics if self.human(m) is not None]
        if not metrics:
            return None
        table = self.summary.pivot_table(index="setting_id", columns="metric", values="mean", sort=False,
                                         dropna=False)
        gaps = pd.DataFrame({m: (table[m] - self.human(m)).abs() if m in table else np.nan for m in metrics},
                            index=[s.id for s in self.settings])
        ranks = gaps.rank(method="min")
        mean_rank = ranks.mean(axis=1, skipna=True)
        rows = []
        for sid in mean_rank.sort_values(kind="stable").index:
            cells = [{"value": table.loc[sid, m] if m in table and sid in table.index else math.nan,
                      "gap": gaps.loc[sid, m], "rank": ranks.loc[sid, m]} for m in metrics]
            rows.append({"setting": sid, "cells": cells, "mean_rank": mean_rank.loc[sid]})
        refs = self.manifest.references
        values = refs.get("values") or {}
        missing = [(m, values[m].get("reason") or "undefined") for m in self.metrics
                   if m in values and values[m].get("value") is None]
        return {"metrics": metrics, "human": [self.human(m) for m in metrics], "rows": rows, "missing": missing,
                "source": f"{refs['per_prompt']} {refs['kind']} of {refs['prompts']} prompts and {refs['corpus']} "
                          f"in a corpus, from {Path(refs['file']).name}"}

    @cached_property
    def decoding_test(self) -> pd.DataFrame | None:
        """Spearman's rho between temperature and each diversity metric (None under three temperatures)."""
        return run_decoding_test(self.run)

    def metric_rows(self, metric: str) -> pd.DataFrame:
        return self.summary[self.summary["metric"] == metric].reset_index(drop=True)

    def by_kind(self, kind: str) -> list[str]:
        return [m for m in self.metrics if self.info(m)["kind"] == kind]

    def _where(self, model, ident) -> list[tuple[str, str]]:
        """Which engine made the run: the server (and what it said of itself), or the weights and device."""
        server = model.get("server")
        if server:
            fingerprint = server.get("system_fingerprint")
            return [("served by", f"{model.get('path')} ({server.get('api')}, reported model "
                                  f"{server.get('reported_model')}, "
                                  + (f"fingerprint {fingerprint})" if fingerprint else "no fingerprint)")),
                    ("engine", "the server's own sampler, one request per sample with its derived seed")]
        where = [("model file" if model.get("sha256") else "revision", str(ident)[:16] if ident else "n/a"),
                 ("device", f"{self.manifest.device}, {model.get('dtype', 'n/a')}")]
        order = ", ".join(self.manifest.sampling_order or [])
        named = sorted({str(s.params.get("order")) for s in self.manifest.settings} - {"auto", "None"})
        if named:  # settings that name their chain order apply it
            order += f"; settings with order {', '.join(named)}: that order"
        if model.get("engine"):  # another engine than evalkit's sampled (vLLM)
            where.append(("engine", f"{model.get('engine')}: its own sampler and random streams ({order}), one "
                                    "request per sample with its derived seed; not token for token evalkit's engine"))
        elif model.get("backend") in ("hf", "vlm", None):  # a recorded run's backend (None: before backends)
            where.append(("engine", f"evalkit's ({order}), one random stream per sample from its derived seed"))
        return where

    @cached_property
    def entropy(self) -> pd.DataFrame | None:
        """Per setting: mean entropy per generated token (mean over prompts, bootstrap CI), under the
        sampling and the model distribution; None when the samples have no token statistics."""
        samples = self.run.samples
        if not set(ENTROPY) <= set(samples.columns) or not any(len(v) for v in samples[next(iter(ENTROPY))]):
            return None  # no statistics (a served model's samples have only what its logprobs give)
        rows = []
        for (sid, pid), df in samples.groupby(["setting_id", "prompt_id"], sort=False):
            for col in ENTROPY:
                tokens = np.concatenate([np.asarray(v, dtype=float) for v in df[col]] or [np.zeros(0)])
                rows.append({"setting_id": sid, "prompt_id": pid, "metric": col,
                             "value": float(tokens.mean()) if tokens.size else float("nan")})
        ci = self.manifest.ci
        return aggregate(pd.DataFrame(rows), self.settings, level=ci["level"], resamples=ci["resamples"],
                         seed=ci["seed"])

    def config_text(self) -> str:
        return yaml.safe_dump(self.run.config, sort_keys=False, allow_unicode=True)

    def _values(self, knob: str) -> list:
        """The values the settings give ``knob``, in order; an unknown setting's (None) last."""
        values = {s.params()[knob] for s in self.settings}
        return sorted(values - {None}) + [None] * (None in values)

    def facts(self) -> list[tuple[str, str]]:
        m = self.manifest
        model = m.model
        ident = model.get("sha256") or model.get("revision")
        grid = "; ".join(f"{k}: {', '.join(show_param(v) for v in self._values(k))}" for k in self.param_names)
        config = self.run.config
        backend = model.get("backend", "hf")
        noun = self.kind.noun
        facts = [("run", m.run_id), ("status", m.status),
                 ("model", str(model.get("id")) + (f" ({backend})" if backend != "hf" else "")),
                 *self._where(model, ident), ("seed", str(m.seed)),
                 ("started", m.started_at), ("ended", m.ended_at or "n/a"),
                 ("settings", f"{len(m.settings)} ({grid})"),
                 ("samples", f"{m.n_samples}: {m.n_prompts} {noun} x "
                             f"{len(m.settings)} settings"
                             + (f" x {config['samples_per_prompt']}" if "samples_per_prompt" in config else "")),
                 ("max_new_tokens", str(config.get("max_new_tokens", "n/a"))),
                 ("evalkit", m.evalkit_version),
                 ("libraries", ", ".join(f"{k} {v}" for k, v in m.packages.items() if v)),
                 ("git", f"{m.git.commit[:10]}{' (dirty)' if m.git.dirty else ''}" if m.git else "n/a"),
                 ("confidence", f"{self.level}% {m.ci['method']}, {m.ci['resamples']} resamples, seed {m.ci['seed']}")]
        if self.image_plan is not None:
            facts.append(("images", self.image_plan.describe()))
        if self.tampering is not None:
            facts.append(("tampering", f"{self.tampering} samples whose program tampers with the tests' harness "
                                       "(failed by pass@k; what each did: sample_scores.parquet)"))
        return facts

    @cached_property
    def tampering(self) -> int | None:
        """How many samples' programs were seen tampering with the code sandbox's harness (None: no pass@k)."""
        if not any(m.startswith("pass_at_") for m in self.metrics):
            return None
        per = self.run.sample_scores
        if "reason" not in per:  # a run scored before reasons were kept
            return 0
        seen = per[per["reason"].fillna("").astype(str).str.startswith(TAMPERED)]
        return len(seen.drop_duplicates(["setting_id", "prompt_id", "sample_index"]))

    @cached_property
    def image_plan(self) -> thumbnails.Plan | None:
        """How the run's images go into the report (None: a run without images)."""
        samples = self.run.samples
        if self.images:  # text-to-image: every generated image
            paths = [self.run.path / p for p in samples["image_path"]]
            return thumbnails.plan(paths, samples.groupby(["prompt_id", "setting_id"]).ngroups,
                                   thumbnails.SAMPLE_SIDES)
        if "prompt_image" in samples:  # image-to-text: one image per prompt
            paths = [self.run.path / p for p in samples.drop_duplicates("prompt_id")["prompt_image"]]
            return thumbnails.plan(paths, len(paths), thumbnails.PROMPT_SIDES)
        return None

    def browser_data(self) -> dict:
        """Samples and group scores for the sample browser, as compact nested lists:
        samples[prompt][setting] = [[text, tokens, finish reason], ...];
        scores[prompt][setting] = [value per metric]."""
        samples = self.run.samples.sort_values("sample_index", kind="stable")
        prompts = list(dict.fromkeys(samples["prompt_id"].astype(str)))
        prompt_text = dict(zip(samples["prompt_id"].astype(str), samples["prompt"].astype(str)))
        settings = [s.id for s in self.manifest.settings]
        pi, si = {p: i for i, p in enumerate(prompts)}, {s: i for i, s in enumerate(settings)}
        texts = [[[] for _ in settings] for _ in prompts]
        ntok = samples["num_new_tokens"] if "num_new_tokens" in samples else pd.Series([None] * len(samples))
        finish = samples["finish_reason"] if "finish_reason" in samples else pd.Series([""] * len(samples))
        images = samples["image_path"] if "image_path" in samples else pd.Series([None] * len(samples))
        inline = self.image_plan
        for p, s, text, n, f, image, k in zip(samples["prompt_id"].astype(str), samples["setting_id"],
                                              samples["text"], ntok, finish, images, samples["sample_index"]):
            row = [text, None if pd.isna(n) else int(n), "" if pd.isna(f) else str(f)]
            if image is not None:  # a thumbnail, or beyond the report's budget the image's path
                shown = inline.per_group is None or k < inline.per_group
                row.append(thumbnails.thumbnail(self.run.path / image, inline.side) if shown else str(image))
            texts[pi[p]][si[s]].append(row)
        metrics = [m for m in self.metrics if not self.info(m).get("pooled")]  # per-group values only
        values = [[[None] * len(metrics) for _ in settings] for _ in prompts]
        mi = {m: i for i, m in enumerate(metrics)}
        scores = self.run.scores
        for p, s, m, v in zip(scores["prompt_id"].astype(str), scores["setting_id"], scores["metric"], scores["value"]):
            if p in pi and s in si and m in mi:
                values[pi[p]][si[s]][mi[m]] = float(v) if math.isfinite(v) else None  # JSON has no inf
        first = samples.groupby(samples["prompt_id"].astype(str), sort=False).first()
        if "prompt_image" in samples:  # image-to-text: [id, question, image thumbnail, reference captions]
            side = self.image_plan.side
            listed = [[p, prompt_text[p], thumbnails.thumbnail(self.run.path / first.loc[p, "prompt_image"], side),
                       [str(r) for r in first.loc[p, "references"]]] for p in prompts]
        else:
            listed = [[p, prompt_text[p]] for p in prompts]
        return {"label": self.label, "prompts": listed, "settings": settings,
                "metrics": metrics, "samples": texts, "scores": values}


def load_views(paths: list[str | Path]) -> list[RunView]:
    if not paths:
        raise EvalkitError("report: give at least one run directory")
    views = []
    for i, path in enumerate(paths):
        run = load_run(path)
        if run.manifest.status != "complete":
            raise EvalkitError(f"{run.path}: run is {run.manifest.status}, not complete; nothing to report "
                               f"(resume it with: evalkit run --resume {run.path})")
        run.summary  # noqa: B018 (a missing or damaged table is said here, in one line)
        views.append(RunView(run, f"r{i}"))
    return views


def deltas(base: RunView, new: RunView) -> Comparison:
    """The paired comparison of ``new`` with ``base``; runs that are not comparable are still shown,
    with what differs (``evalkit compare`` refuses them)."""
    ci = base.manifest.ci
    return compare_runs(RunData.from_run(base.run), RunData.from_run(new.run), level=ci["level"],
                        resamples=ci["resamples"], seed=ci["seed"], strict=False)


def script_json(obj) -> str:
    """JSON safe inside <script type="application/json">: no '<', '>' or '&' appear literally, and '/'
    is written '\\/' so that no text (a URL in a sample) reads as a link to another host."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").replace("/", "\\/")
