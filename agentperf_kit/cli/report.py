"""``agentperf report DIR``: the tables of a finished sweep, and a standalone HTML report."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="print a sweep's tables and write DIR/report.html")
    p.add_argument("directory", help="a sweep directory (with summary.json)")
    p.add_argument("--html", help="where to write the HTML report (default DIR/report.html)")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from ..report import write_html_report
    from ..schema import UnknownSchemaVersionError
    from ..sweep import format_summary, load_sweep

    try:
        res = load_sweep(args.directory)
    except (FileNotFoundError, UnknownSchemaVersionError) as exc:
        from ._common import as_error

        raise as_error(exc) from None
    print(format_summary(res.summary))
    from ..tasks import format_task_table, load_sweep_tasks

    print("\ntask completion (trajectory instances ending in the steady window; docs/frontier.md):")
    print(format_task_table(load_sweep_tasks(args.directory)))
    print(f"\nreport: {write_html_report(args.directory, args.html)}")
    return 0
