"""``agentperf import-results --from aiperf|vllm-bench FILE --out DIR``: judge another tool's run."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-results",
        help="import AIPerf or vLLM-bench per-request results and judge them with our SLO tiers",
        description="Writes DIR/requests.parquet + manifest.json (one run) and prints the tier verdicts.",
    )
    p.add_argument("--from", dest="source", required=True, choices=["aiperf", "vllm-bench"])
    p.add_argument("file", help="AIPerf profile_export.jsonl, or vllm bench serve --save-detailed JSON")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--concurrency", type=int, help="N of the run (default: from the file, else estimated)")
    p.add_argument("--tiers", default="aa-dsv4pro", help="tier preset or spec (default aa-dsv4pro)")
    p.add_argument("--accelerators", type=int, help="accelerator count, for per-accelerator rates")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence of the verdicts (default 0.95)")
    p.set_defaults(func=_import)


def _import(args: argparse.Namespace) -> int:
    from ..external import ImportFormatError, import_results
    from ..metrics import level_stats
    from ..slo import evaluate_level, get_tier_preset

    try:
        preset = get_tier_preset(args.tiers)
        res = import_results(args.file, args.source, args.out, concurrency=args.concurrency)
    except (ImportFormatError, KeyError, ValueError, OSError) as exc:
        from ._common import as_error

        raise as_error(exc) from None
    w = res.manifest["window"]
    stats = level_stats(
        res.requests,
        window_start_s=w["window_start_s"],
        window_end_s=w["window_end_s"],
        accelerators=args.accelerators,
    )
    phase = " (AIPerf's profiling phase)" if args.source == "aiperf" else ""
    print(
        f"imported {len(res.requests):,} requests -> {args.out}; in the window{phase}: "
        f"{stats['n_requests']:,} ({stats['n_failed']:,} failed, error rate {stats['error_rate']:.1%}) "
        f"at concurrency {res.manifest['config']['concurrency']}"
    )
    ev = evaluate_level(res.requests, preset, confidence=args.confidence)
    cols = ["tier", "label", "statistic", "percentile", "observed", "ci_low", "ci_high", "threshold", "n"]
    print(ev[[*cols, "verdict", "tier_verdict"]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for note in res.manifest.get("notes", []):
        print(f"note: {note}")
    print("missing in this format: " + "; ".join(res.manifest["missing_fields"]))
    return 0
