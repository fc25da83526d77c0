"""The human row: each metric's value on the references themselves, the target a setting's value is read
against (Holtzman et al. 2020, Table 1), and the metrics' claims on a run's references.

References are scored as if they were samples: one group per prompt that has references (its texts or
images), plus one group of the corpus for pooled metrics. A per-group metric's reference value is the
mean over those prompts (so it needs per-prompt references, and is comparable with the samples' values
when a prompt has about as many references as samples); a pooled metric pools them all. Metrics that
need what references do not have (token statistics, checks) or that compare with the references
themselves (MAUVE, FID) have no reference value.
"""

from __future__ import annotations

import math

from evalkit.errors import ConfigError
from evalkit.references import ReferenceSet
from evalkit.scoring.metric import Group, Metric, Score
from evalkit.settings import ImageSetting, Setting

CORPUS = "(corpus)"  # the prompt id of the corpus's group


def offered(references: ReferenceSet, logprobs: dict | None = None, token_ids: dict | None = None) -> frozenset[str]:
    """What references offer a metric, scored as samples (their log-probabilities under the model and their
    model token ids where the run computed them)."""
    if references.images:
        return frozenset({"images", "prompts"})
    return frozenset({"texts", "prompts"} | ({"model_logprobs"} if logprobs else set())
                     | ({"token_ids"} if token_ids else set()))


def require_references(metrics: list[Metric], references: ReferenceSet | None, source: str | None = None,
                       where: str = "metrics[{}]", field: str = "references:") -> None:
    """Refuse a metric that compares with references where the run has none (or of the other kind)."""
    for i, m in enumerate(metrics):
        for need, what in (("reference_texts", "texts"), ("reference_images", "images")):
            if need not in m.requires():
                continue
            if references is None:
                raise ConfigError(f"{m.id} compares the samples with reference {what}, and the run has none: add "
                                  f"{field} a JSONL file of reference {what}", source=source, path=where.format(i))
            if references.what != what:
                raise ConfigError(f"{m.id} needs reference {what}, and the run's references are "
                                  f"{references.what}", source=source, path=where.format(i))


def reference_groups(references: ReferenceSet, prompts: dict[str, str], setting: Setting | ImageSetting,
                     logprobs: dict[str, list[tuple[float, ...]]] | None = None,
                     token_ids: dict[str, list[tuple[int, ...]]] | None = None) -> tuple[list[Group], Group | None]:
    """(one group per prompt with references, the corpus's group or None), their samples the references, with
    each reference's per-token log-probabilities under the model by prompt id where ``logprobs`` has them, and
    its model token ids by prompt id (:data:`CORPUS` for the corpus) where ``token_ids`` has them."""
    def group(pid: str, prompt: str, items: tuple[str, ...]) -> Group:
        lp = (logprobs or {}).get(pid)
        stats = {"logprob_model": tuple(tuple(v) for v in lp)} if lp is not None else {}
        ids = tuple(tuple(v) for v in (token_ids or {}).get(pid, ()))
        return Group(prompt_id=pid, prompt=prompt, setting=setting, texts=() if references.images else items,
                     token_ids=ids, images=items if references.images else (), reference_set=references,
                     stats=stats, num_tokens=tuple(len(v) for v in lp) if lp is not None else ())

    per_prompt = [group(pid, prompts.get(pid, pid), refs) for pid, refs in references.by_prompt.items()]
    corpus = group(CORPUS, "", references.corpus) if references.corpus else None
    return per_prompt, corpus


def reference_values(metrics: list[Metric], references: ReferenceSet, prompts: dict[str, str],
                     setting: Setting | ImageSetting, logprobs: dict[str, list[tuple[float, ...]]] | None = None,
                     token_ids: dict[str, list[tuple[int, ...]]] | None = None) -> dict[str, dict[str, object]]:
    """metric id -> {"value", "reason", "n"} for each metric that has a reference value (``prompts``: the
    run's prompt texts by id; ``logprobs``: the references' log-probabilities under the model by prompt id,
    for nll and perplexity; ``token_ids``: their model token ids, for tok=model); n counts the references
    (pooled) or the prompts (per group) it is over."""
    per_prompt, corpus = reference_groups(references, prompts, setting, logprobs, token_ids)
    can = offered(references, logprobs, token_ids)
    out: dict[str, dict[str, object]] = {}
    for m in metrics:
        if not m.reference_row:
            continue  # compares with the references itself
        missing = m.requires() - can
        if missing:
            out[m.id] = {"value": None, "n": 0, "reason": f"{m.id} needs {', '.join(sorted(missing))}, which the "
                                                          "references do not have"}
            continue
        if m.pooled:
            groups = per_prompt + ([corpus] if corpus is not None else [])
            m.prepare_groups(groups)
            score = m.compute_pooled(groups)
            n = sum(len(g.images or g.texts) for g in groups)
        elif not per_prompt:
            score, n = Score.undefined(f"{m.id} is computed per prompt, and the references have none per "
                                       "prompt (only a corpus)"), 0
        else:
            m.prepare_groups(per_prompt)
            values = [m.compute(g).value for g in per_prompt]
            defined = [v for v in values if not math.isnan(v)]
            score = Score(sum(defined) / len(defined)) if defined else Score.undefined(
                f"{m.id} is undefined on every prompt's references")
            n = len(defined)
        out[m.id] = {"value": None if math.isnan(score.value) else float(score.value), "reason": score.reason,
                     "n": n}
    return out
