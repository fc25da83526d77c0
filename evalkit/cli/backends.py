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
    for column in ("backend", "makes", "sampled by", "knobs honoured", "chain orders", "metric inputs supplied"):
        table.add_column(column, overflow="fold")
    for row in rows:
        orders = ", ".join(f"{o} ({' > '.join(row['own_order'])})" if o == "auto" else o for o in row["orders"])
        table.add_row(escape(row["backend"]), escape(row["kind"]),
                      escape(row["engine"] + (" (remote)" if row["remote"] else "")),
                      escape(", ".join(row["knobs"])), escape(orders), escape(", ".join(row["metric_inputs"])))
    _print_table(table)
    for row in rows:
        for knob, note in row["notes"].items():
            out.print(f"{escape(row['backend'])}, {escape(knob)}: {escape(note)}", highlight=False)
