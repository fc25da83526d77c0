"""Homogeneity across settings and runs: Infinity-Chat's "hivemind" measure (Jiang et al. 2025, "Artificial
Hivemind: The Open-Ended Homogeneity of Language Models (and Beyond)"), the mean pairwise cosine similarity of
sentence embeddings between the samples of two settings, or of two runs (two models), on the same prompts.

For a prompt, the samples a_1..a_m of one setting and b_1..b_n of another (unit vectors):

    across(a, b) = 1/(m n) sum_ij a_i . b_j = mean(a) . mean(b)        (every pair once, O((m + n) d))
    within(a)    = 1/(m (m-1)) sum_{i != j} a_i . a_j = (|sum a|^2 - m) / (m (m-1))   (distinct pairs)

then the mean over the prompts both have. ``within`` is the same setting's own similarity, the baseline that
``across`` is read against: two settings (or two models) are as alike as a setting with itself when across
reaches within. The per-group metric ``homogeneity`` is each group's ``across`` with the same prompt's samples
under every other setting of the run, averaged over those settings; the report shows the settings x settings
table and ``evalkit compare --homogeneity`` the runs' table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from evalkit.scoring.metric import Group, Score
from evalkit_metrics.semantic import _Embedding, embed


def across(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity over every pair (a_i, b_j) of unit-vector rows."""
    return float(a.mean(axis=0) @ b.mean(axis=0))


def within(a: np.ndarray) -> float:
    """Mean cosine similarity over the distinct pairs of unit-vector rows (NaN under two rows)."""
    m = a.shape[0]
    if m < 2:
        return float("nan")
    s = a.sum(axis=0)
    return float((s @ s - (a * a).sum()) / (m * (m - 1)))


def _vectors(samples: pd.DataFrame, emb: str) -> dict[tuple[str, str], np.ndarray]:
    """Each (prompt, setting)'s embeddings, from a samples table (prompt_id, setting_id, text)."""
    x = embed(emb, [str(t) for t in samples["text"]])
    keys = list(zip(samples["prompt_id"].astype(str), samples["setting_id"].astype(str)))
    rows: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(keys):
        rows.setdefault(key, []).append(i)
    return {key: x[idx] for key, idx in rows.items()}


def settings_table(samples: pd.DataFrame, emb: str) -> pd.DataFrame:
    """One row per pair of settings (a, b), a first-seen no later than b: mean over their shared prompts of
    ``across`` (a == b: ``within``), and the prompts it is over."""
    vectors = _vectors(samples, emb)
    settings = list(dict.fromkeys(samples["setting_id"].astype(str)))
    prompts = list(dict.fromkeys(samples["prompt_id"].astype(str)))
    rows = []
    for i, a in enumerate(settings):
        for b in settings[i:]:
            values = [within(vectors[p, a]) if a == b else across(vectors[p, a], vectors[p, b])
                      for p in prompts if (p, a) in vectors and (p, b) in vectors]
            values = [v for v in values if np.isfinite(v)]
            rows.append({"setting_a": a, "setting_b": b, "similarity": float(np.mean(values)) if values else np.nan,
                         "n_prompts": len(values)})
    return pd.DataFrame(rows, columns=["setting_a", "setting_b", "similarity", "n_prompts"])


def runs_table(base: pd.DataFrame, new: pd.DataFrame, emb: str) -> pd.DataFrame:
    """Per setting both runs have: mean over their shared prompts of ``across`` between the runs' samples, and
    each run's own ``within`` on those prompts."""
    vb, vn = _vectors(base, emb), _vectors(new, emb)
    rows = []
    for sid in dict.fromkeys(base["setting_id"].astype(str)):
        prompts = [p for p, s in vb if s == sid and (p, s) in vn]
        if not prompts:
            continue
        rows.append({"setting_id": sid,
                     "across": float(np.mean([across(vb[p, sid], vn[p, sid]) for p in prompts])),
                     "within_base": float(np.nanmean([within(vb[p, sid]) for p in prompts] + [np.nan])),
                     "within_new": float(np.nanmean([within(vn[p, sid]) for p in prompts] + [np.nan])),
                     "n_prompts": len(prompts)})
    return pd.DataFrame(rows, columns=["setting_id", "across", "within_base", "within_new", "n_prompts"])


class Homogeneity(_Embedding):
    name = "homogeneity"
    kind = "descriptive"
    definition = ("mean cosine similarity between a group's samples and the same prompt's samples under each other "
                  "setting of the run (mean over those settings)")
    reference = "Jiang et al. 2025, Artificial Hivemind: The Open-Ended Homogeneity of Language Models (Infinity-Chat)"
    reference_row = False  # the references have one setting

    def prepare_groups(self, groups: list[Group]) -> None:
        embed(self.params.emb, [t for g in groups for t in g.texts])  # one batched pass
        self._means: dict[str, dict[str, np.ndarray]] = {}
        for g in groups:
            if g.texts:
                self._means.setdefault(g.prompt_id, {})[g.setting.id] = self.embeddings(g).mean(axis=0)

    def compute(self, group: Group) -> Score:
        if not group.texts:
            return Score.undefined("the group has no samples")
        means = getattr(self, "_means", {}).get(group.prompt_id, {})
        others = [v for sid, v in means.items() if sid != group.setting.id]
        if not others:
            return Score.undefined(f"prompt {group.prompt_id!r} has samples under no other setting")
        x = self.embeddings(group)
        sims = x @ np.mean(others, axis=0)  # each sample's mean similarity with the other settings' samples
        return Score(float(sims.mean()), per_sample=tuple(float(v) for v in sims))
