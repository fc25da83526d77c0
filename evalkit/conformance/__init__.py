"""``evalkit conformance``: does a backend sample from the distribution it claims?

- :mod:`~evalkit.conformance.core`: the statistics (chi-square with the tail pooled, exact and Monte Carlo tests,
  Holm, the control that must fail, the draws a control needs), the expected distribution (a reference's forward
  pass through the setting's chain), and the check of an in-process backend (evalkit's engine, vLLM).
- :mod:`~evalkit.conformance.served`: the check of a served model (any OpenAI-compatible server): draws as
  requests, counted by text; a ``--reference`` with the same weights, or the server's own top-N logprobs; seeds with
  unseeded neighbours and ``n`` > 1; whether the logprobs it reports are the raw model's or the processed ones.
- :mod:`~evalkit.conformance.page`: the ``--html`` page.
"""

from __future__ import annotations

from evalkit.conformance import core, served
from evalkit.conformance.core import Options, Reference, Report, plan

__all__ = ["Options", "Reference", "Report", "plan", "run"]


def run(path, *, overrides: list[str] | None = None, settings: list[str] | None = None, draws: int = 2000,
        reference: str | None = None, ui=None) -> Report:
    """``evalkit conformance``: the config's backend, its settings (or ``settings``: ids or ``KNOB=VALUE,...``),
    ``draws`` per setting and context, against ``reference`` (see the modules)."""
    config, spec, chosen = core._inputs(path, overrides, settings, draws)
    if spec.remote:
        return served.run(config, spec, chosen, draws=draws, reference=reference, ui=ui)
    return core.run_local(config, spec, chosen, draws=draws, reference=reference, ui=ui)
