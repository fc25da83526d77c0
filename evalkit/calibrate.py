"""``evalkit calibrate``: each sampler family's knob at the value whose samples have a given mean entropy per token.

Samplers compared at arbitrary values compare their values, not the samplers (the min-p critique, arXiv 2506.13681):
calibration finds, for each sampler family, the value of its knob whose samples have a given mean entropy per token,
so that a sweep compares them at equal entropy. The command line is :mod:`evalkit.cli.calibrate`; the Python API
re-exports :func:`calibrate` as :func:`evalkit.api.calibrate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from evalkit import pipeline
from evalkit.config import SweepConfig, parse_yaml
from evalkit.errors import ConfigError, EvalkitError, shown
from evalkit.inputs import read_regular
from evalkit.progress import RichProgress, Silent
from evalkit.settings import QUALIFIES, Setting


# The knobs a family can calibrate: how the entropy of one step's sampling distribution moves as the knob grows (+1
# rises, -1 falls), the range searched, and the rest of the setting, unless the family gives its own. For a fixed
# context the entropy is monotone in temperature (dH/dT = Var(z)/T^3), and in every knob that keeps a set of tokens
# nested by probability (top-k, top-p, min-p, epsilon, eta, top-n-sigma): a token added after the others has the least
# mass, which raises the entropy. Typical-p and XTC are monotone mostly, not always: the typical set grows by
# |-log p - H|, so it may take in a likely token late; XTC leaves one of the tokens above its threshold.
CALIBRATED: dict[str, tuple[int, tuple[float, float], dict]] = {
    "temperature": (+1, (0.05, 2.0), {}),
    "top_k": (+1, (1, 400), {}),
    "top_p": (+1, (0.01, 1.0), {}),
    "min_p": (-1, (0.0, 0.9), {}),
    "typical_p": (+1, (0.01, 1.0), {}),
    "epsilon_cutoff": (-1, (0.0, 0.5), {}),
    "eta_cutoff": (-1, (0.0, 0.9), {}),
    "top_n_sigma": (+1, (0.01, 10.0), {"order": "llama_cpp"}),  # llama.cpp's knobs: evalkit's engine needs its order
    "xtc_probability": (+1, (0.0, 1.0), {"order": "llama_cpp"}),  # XTC adds entropy to pure sampling's
}
# The families calibrated when none is named: each knob above, XTC at llama.cpp's usual probability and threshold
# (0.5, 0.1) with the temperature setting the entropy (XTC's kept set does not depend on it: it comes first).
DEFAULT_FAMILIES = [*({"knob": k} for k in CALIBRATED if k != "xtc_probability"),
                    {"knob": "temperature", "fixed": {"xtc_probability": 0.5, "order": "llama_cpp"}}]


@dataclass(frozen=True)
class Family:
    """One sampler family to calibrate: its knob, the range searched, and the rest of its setting."""

    knob: str
    low: float
    high: float
    fixed: dict = field(default_factory=dict)

    @property
    def direction(self) -> int:
        return CALIBRATED[self.knob][0]

    @property
    def name(self) -> str:
        """The knob, and the rest of the setting where there is one: ``temperature (xtc_probability 0.5, ...)``."""
        rest = ", ".join(f"{k} {v}" for k, v in self.fixed.items())
        return f"{self.knob} ({rest})" if rest else self.knob

    def setting(self, value: float) -> Setting:
        """The family's setting at ``value``; at the knob's off value, without the knobs that only qualify it."""
        off = Setting.model_fields[self.knob].default
        fixed = {k: v for k, v in self.fixed.items() if not (value == off and self.knob in QUALIFIES.get(k, ()))}
        return Setting(**{**fixed, self.knob: value})

    def midpoint(self, a: float, b: float) -> float | int:
        """Between two values: their geometric mean where the range's ends are positive and an order of magnitude or
        more apart (bisection on the log scale: top_k 1 to 400 takes as many steps near 1 as near 400), else the
        arithmetic mean; rounded."""
        log_scale = 0 < self.low and self.high >= 10 * self.low
        return self.rounded(math.sqrt(a * b) if log_scale else (a + b) / 2)

    def rounded(self, value: float) -> float | int:
        """A value as tried and written: a whole number for top_k, else 4 significant digits."""
        whole = type(Setting.model_fields[self.knob].default) is int
        return int(round(value)) if whole else float(f"{value:.4g}")


@dataclass
class Calibrated:
    """A family's outcome: ``status`` is calibrated (within tolerance), closest (the range or the steps ran out
    first), out of reach (the target lies outside the entropies of the range's ends) or not monotone (the ends'
    entropies are in the wrong order); ``tried``: every (value, mean entropy) measured, in order."""

    family: Family
    target: float
    status: str
    tried: list[tuple[float, float]]

    @property
    def best(self) -> tuple[float, float]:
        return min(self.tried, key=lambda t: abs(t[1] - self.target))

    @property
    def setting(self) -> Setting | None:
        return self.family.setting(self.best[0]) if self.status in ("calibrated", "closest") else None

    def line(self) -> str:
        f, (value, entropy) = self.family, self.best
        ends = sorted(t for t in self.tried[:2])
        if self.status == "out of reach":
            return (f"{f.name}: {self.target:g} nats is out of reach: the entropy goes from {ends[0][1]:.3f} "
                    f"({f.knob} {ends[0][0]:g}) to {ends[-1][1]:.3f} ({f.knob} {ends[-1][0]:g}) on these prompts")
        if self.status == "not monotone":
            return (f"{f.name}: not monotone over {f.low:g} to {f.high:g} on these prompts: the entropy "
                    f"{'falls' if f.direction > 0 else 'rises'} from {ends[0][1]:.3f} to {ends[-1][1]:.3f}")
        return (f"{f.name}: {value:g} gives {entropy:.3f} nats ({self.status}, {len(self.tried)} values tried)")

    def as_dict(self) -> dict:
        s = self.setting
        return {"family": self.family.name, "knob": self.family.knob, "low": self.family.low,
                "high": self.family.high,
                "fixed": self.family.fixed, "target": self.target, "status": self.status, "value": self.best[0],
                "entropy": self.best[1], "setting": None if s is None else pasted(s),
                "setting_id": None if s is None else s.id, "tried": [list(t) for t in self.tried]}


def pasted(setting: Setting) -> dict:
    """A setting as a grid's ``settings`` entry: its knobs away from their defaults."""
    return setting.model_dump(mode="json", exclude_defaults=True)


class Bisection:
    """Bisection on one family's knob toward ``target`` mean entropy. The ends of the range are measured first; then
    each step measures the midpoint of the bracket (``cold``: the end of lower entropy, ``hot``: the higher) and
    replaces the end on its side of the target, so the bracket always holds the target, even where the measured
    curve wiggles (another value changes which tokens are drawn, so the mean over a decode is monotone only on
    average). It stops within ``tolerance``, when the midpoint rounds to an end, or after ``max_steps``. The midpoint
    is :meth:`Family.midpoint`'s."""

    def __init__(self, family: Family, target: float, tolerance: float, max_steps: int):
        self.family, self.target, self.tolerance, self.max_steps = family, target, tolerance, max_steps
        self.tried: list[tuple[float, float]] = []
        self.cold = self.hot = (0.0, 0.0)
        self.status: str | None = None
        self.asked: list[float] = []

    def pending(self) -> list[float]:
        """The values to measure next (none once done)."""
        f = self.family
        if self.status is not None:
            self.asked = []
        elif not self.tried:
            self.asked = [f.rounded(f.low), f.rounded(f.high)]
        else:
            mid = f.midpoint(self.cold[0], self.hot[0])
            if mid in (self.cold[0], self.hot[0]) or len(self.tried) - 2 >= self.max_steps:
                self.status, self.asked = "closest", []
            else:
                self.asked = [mid]
        return self.asked

    def tell(self, entropies: list[float]) -> None:
        """The mean entropies of the values :meth:`pending` gave, in its order."""
        new = list(zip(self.asked, entropies))
        self.tried += new
        if len(self.tried) == 2:
            low, high = self.tried
            self.cold, self.hot = (low, high) if self.family.direction > 0 else (high, low)
            if self.cold[1] > self.hot[1] + self.tolerance:
                self.status = "not monotone"
                return
            if not self.cold[1] - self.tolerance <= self.target <= self.hot[1] + self.tolerance:
                self.status = "out of reach"
                return
        else:
            for value, entropy in new:
                if entropy < self.target:
                    self.cold = (value, entropy)
                else:
                    self.hot = (value, entropy)
        if any(abs(e - self.target) <= self.tolerance for _, e in new):
            self.status = "calibrated"

    def result(self) -> Calibrated:
        return Calibrated(self.family, self.target, self.status or "closest", self.tried)


def sampler_families(section: list | None, source: str | None = None, path: str = "calibrate") -> list[Family]:
    """The families a ``calibrate:`` section lists (``[{knob, range: [low, high], fixed: {...}}, ...]``; range and fixed
    default to :data:`CALIBRATED`'s, fixed merged over them), or :data:`DEFAULT_FAMILIES` (None)."""
    if section is None:
        section = DEFAULT_FAMILIES
    if not isinstance(section, list) or not section:
        raise ConfigError(f"a non-empty list of families ({{knob: top_p, range: [0.1, 1.0]}}, ...), got "
                          f"{shown(section)}", source=source, path=path)
    out = []
    for i, item in enumerate(section):
        where = f"{path}[{i}]"
        item = {"knob": item} if isinstance(item, str) else item
        if not isinstance(item, dict) or set(item) - {"knob", "range", "fixed"}:
            raise ConfigError(f"a family is a mapping with knob, range and fixed, got {shown(item)}", source=source,
                              path=where)
        knob = item.get("knob")
        if knob not in CALIBRATED:
            raise ConfigError(f"knob must be one of {', '.join(CALIBRATED)} (knobs with a monotone effect on the "
                              f"entropy), got {shown(knob)}", source=source, path=f"{where}.knob")
        _, default_range, default_fixed = CALIBRATED[knob]
        span, fixed = item.get("range", default_range), item.get("fixed", {})
        numbers = isinstance(span, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in span)
        if not numbers or len(span) != 2 or span[0] >= span[1]:
            raise ConfigError(f"range is [low, high] with low < high, got {shown(span)}", source=source,
                              path=f"{where}.range")
        if not isinstance(fixed, dict) or knob in fixed:
            raise ConfigError(f"fixed is a mapping of the other knobs of the setting, got {shown(fixed)}",
                              source=source, path=f"{where}.fixed")
        family = Family(knob, span[0], span[1], {**default_fixed, **fixed})
        for end in (family.low, family.high):
            try:
                family.setting(family.rounded(end))
            except ValidationError as e:
                raise ConfigError(f"{knob} {end:g}: {e.errors()[0]['msg'].removeprefix('Value error, ')}",
                                  source=source, path=where) from None
        out.append(family)
    return out


def calibrate(config: str | Path, entropy: float, knobs: list | None = None, *, overrides: list[str] | None = None,
              tolerance: float = 0.02, max_steps: int = 12, progress: bool | object = True) -> list[Calibrated]:
    """For each sampler family, the value of its knob whose samples have mean entropy ``entropy`` (nats per token of
    the sampling distribution: the mean over samples of each sample's mean ``entropy_sampling``, the number a run's
    ``token_entropy[dist=sampling]`` gives), found by :class:`Bisection` with evalkit's engine on the config's model,
    prompts, samples per prompt, max_new_tokens and seed. ``knobs``: the families (as a ``calibrate:`` section
    lists them); None: the config's ``calibrate:`` section, else :data:`DEFAULT_FAMILIES`. All families
    are measured together, one decode per bisection step."""
    from evalkit.executors import executor_for
    from evalkit.plan import checked_inputs

    sweep, fams = _calibration_plan(Path(config), entropy, knobs, overrides, tolerance)
    _, _, _, prompts, _, _ = checked_inputs(sweep)
    ui = RichProgress() if progress is True else (Silent() if progress is False else progress)
    executor = executor_for(sweep)
    checked = executor.check()
    try:
        with ui.phase("loading") as phase:
            generator = executor.load(checked, status=lambda msg: phase.update(status=msg))
            prepared = generator.prepare(prompts, chat_template=sweep.prompts.chat_template,
                                         system_prompt=sweep.prompts.system_prompt, max_new_tokens=sweep.max_new_tokens)
        batch = generator.batch_size(sweep.batch_size, prepared, sweep.max_new_tokens)
        searches = [Bisection(f, entropy, tolerance, max_steps) for f in fams]
        for step in range(max_steps + 2):  # the ends, then a midpoint per step
            asked = [(b, [b.family.setting(v) for v in values]) for b in searches if (values := b.pending())]
            if not asked:
                break
            measured = _mean_entropies(sweep, executor, prepared, [s for _, ss in asked for s in ss], batch, ui,
                                       f"calibrating, step {step}")
            for b, settings in asked:
                b.tell([measured[s.id] for s in settings])
    finally:
        executor.close()
    return [b.result() for b in searches]


def _calibration_plan(path: Path, entropy: float, knobs: list | None, overrides: list[str] | None,
                      tolerance: float) -> tuple[SweepConfig, list[Family]]:
    """The sweep and the families to calibrate, every check done that needs no
    model: each family's ends are settings the backend honours."""
    from evalkit.config import config_from_dict
    from evalkit.generation import spec_of

    data = parse_yaml(_text_of(path), str(path))
    sweep = config_from_dict(data, source=str(path), base_dir=path.resolve().parent, overrides=overrides)
    section = sweep.calibrate
    if not (math.isfinite(entropy) and entropy >= 0):
        raise EvalkitError(f"--entropy: a mean entropy in nats, >= 0, got {shown(entropy)}")
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise EvalkitError(f"--tolerance: a positive number of nats, got {shown(tolerance)}")
    fams = sampler_families(knobs, path="--knob") if knobs is not None else sampler_families(section, str(path))
    spec = spec_of(sweep.model.backend)
    if "token_stats" not in spec.needs:
        raise ConfigError(f"calibration measures the sampling distribution's entropy per token, which backend "
                          f"{spec.name} does not give (evalkit's engine does: backend hf)", source=str(path),
                          path="model.backend")
    for f in fams:
        for end in (f.low, f.high):
            refused = spec.refusal(f.setting(f.rounded(end)))
            if refused is not None:
                raise ConfigError(f"backend {spec.name} does not honour {refused[1]}, which the {f.knob} family "
                                  "sets", source=str(path), path="calibrate")
    return sweep, fams


def _text_of(path: Path) -> str:
    raw = read_regular(path, "config file")
    try:
        return raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file is not UTF-8 (byte {e.start})", source=str(path)) from None


def _mean_entropies(config: SweepConfig, executor, prepared: list, settings: list[Setting], batch: int, ui,
                    what: str) -> dict[str, float]:
    """Each setting's mean over its samples of their mean sampling entropy per token (by setting id; a sample with no
    token counts for nothing), from one decode of the run's work units for these settings."""
    unique = list({s.id: s for s in settings}.values())
    units = pipeline.plan(config, prepared, unique)
    per_sample: dict[str, list[float]] = {s.id: [] for s in unique}
    with ui.phase(what, total=len(units)) as phase:
        for record in executor.run(units, max_new_tokens=config.max_new_tokens, batch_size=batch,
                                   stop=tuple(config.stop), progress=lambda n, s: phase.update(completed=n)):
            entropies = record.stats.get("entropy_sampling") or []
            if entropies:
                per_sample[record.unit.setting.id].append(sum(entropies) / len(entropies))
    return {sid: sum(v) / len(v) if v else float("nan") for sid, v in per_sample.items()}
