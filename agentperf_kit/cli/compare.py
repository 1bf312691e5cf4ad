"""``agentperf compare DIR...``: several sweeps side by side in one tidy table."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="put several sweeps side by side (one row per sweep and tier)")
    p.add_argument("directories", nargs="+", help="sweep directories")
    p.add_argument("--csv", help="also write the table to this CSV file")
    p.set_defaults(func=_compare)


def _compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..report import compare_runs
    from ..schema import UnknownSchemaVersionError

    try:
        table = compare_runs(args.directories)
    except (FileNotFoundError, UnknownSchemaVersionError) as exc:
        from ._common import as_error

        raise as_error(exc) from None
    cols = [
        "run",
        "target",
        "tier",
        "label",
        "max_agents_text",
        "binding_constraint",
        "agents_per_accelerator",
        "agents_per_mw",
        "power_scope",
        "meets_aa_rules",
    ]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        shown = table[cols].rename(columns={"max_agents_text": "max_agents"})
        print(shown.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:,.2f}"))
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0
