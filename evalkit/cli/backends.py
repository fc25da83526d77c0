"""``evalkit backends``: what every backend honours (sampling knobs, chain orders) and supplies (metric inputs),
as a table to read before writing a grid, or as JSON (``--json``)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from evalkit.cli.base import _print_table, app, out


@app.command("backends")
def list_backends(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: one object per backend.")] = False,
) -> None:
    """List the backends: the sampling knobs each honours, the chain orders it applies, the metric inputs its
    samples supply. A setting that uses a knob or an order its backend does not honour is refused before a run."""
    from evalkit.api import backends

    rows = backends()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="backends (model.backend)", show_lines=True)
    for column in ("backend", "makes", "sampled by", "knobs honoured", "chain orders", "metric inputs it supplies"):
        table.add_column(column, overflow="fold")
    for row in rows:
        orders = ", ".join(f"{o} ({' > '.join(row['own_order'])})" if o == "auto" else o for o in row["orders"])
        table.add_row(escape(row["backend"]), escape(row["kind"]),
                      escape(row["engine"] + (" (remote)" if row["remote"] else "")),
                      escape(", ".join(row["knobs"])), escape(orders), escape(", ".join(row["supplied"])))
    _print_table(table)
    out.print("Besides what a backend supplies, every text sample offers texts, prompts, answers, tests and reference "
              "texts; an image-to-text one its image and captions; a text-to-image one its prompt and reference "
              "images (--json: metric_inputs, all of them).", highlight=False, soft_wrap=True)
    for row in rows:
        for knob, note in row["notes"].items():
            out.print(f"{escape(row['backend'])}, {escape(knob)}: {escape(note)}", highlight=False)
