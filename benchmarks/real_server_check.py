"""Check the live client against a real OpenAI-compatible server (``../shared/real-servers``).

Runs a short closed-loop level (``run_live``, the default trajectory set scaled to ``--max-context``)
against ``--target`` on both endpoints and prints what the issue asks to see: prompt sizes against the
server's ``usage.prompt_tokens``, exact output lengths, prefix-cache hits (``cached_tokens``) on the first
turn of a phase (a new marker: should be ~0) and on later turns (share of the previous turn's prompt),
``first_chunk_tokens``, chunk rows, failures and the client self-check.

    bash ../shared/real-servers/start_llama_server.sh &      # port 8200
    python benchmarks/real_server_check.py --target http://127.0.0.1:8200/v1
    bash ../shared/real-servers/start_vllm_cpu.sh &          # port 8300
    python benchmarks/real_server_check.py --target http://127.0.0.1:8300/v1 --continuous-usage
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import pandas as pd

from agentperf_kit.agents import RunRules
from agentperf_kit.replay import Endpoint, run_live
from agentperf_kit.trajectories import default_trajectories, fit_context


def _cache_shares(df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Cached tokens on each phase's first turn, and cached share of the previous prompt on later turns."""
    df = df[df.ok].sort_values(["phase_id", "turn"])
    prev = df.groupby("phase_id").prompt_tokens.shift(1)
    first = df[prev.isna()].cached_prompt_tokens
    later = (df.cached_prompt_tokens / prev)[prev.notna()]
    return first.astype(float), later.astype(float)


def check(target: str, model: str, api: str, args: argparse.Namespace) -> dict:
    trajs = fit_context(default_trajectories(), args.max_context)
    rules = RunRules(
        warmup_s=args.warmup,
        duration_s=args.duration,
        min_trajectories=0,
        min_trajectories_per_agent=0,
        drain_timeout_s=60,
    )
    ep = Endpoint(target, model, api=api, continuous_usage=args.continuous_usage)
    with tempfile.TemporaryDirectory() as tmp:
        res = asyncio.run(
            run_live(ep, trajs, args.concurrency, rules, out_dir=tmp, progress=False, record_chunks=True)
        )
        n_chunk_rows = len(pd.read_parquet(Path(tmp) / "chunks.parquet"))
    df = res.requests
    for _, r in df[~df.ok].iterrows():
        print(
            f"  {api}: failed request agent {r.agent} turn {r.turn} at {r.t_send_s:.2f} s: {r.error}: "
            f"{r.error_detail}"
        )
    ok = df[df.ok]
    dev = (ok.prompt_tokens - ok.target_prompt_tokens) / ok.target_prompt_tokens
    first, later = _cache_shares(df)
    cc = res.manifest["client_check"]
    row = {
        "endpoint": api,
        "requests": len(df),
        "failed": int((~df.ok).sum()),
        "errors": ", ".join(sorted(set(df.error[~df.ok]))) or "-",
        "prompt dev mean / max": f"{dev.mean():+.1%} / {dev.abs().max():.1%}",
        "outputs exact": f"{(ok.output_tokens == ok.target_output_tokens).mean():.1%}",
        "cached, first turn of a phase (max)": f"{first.max():.0f}",
        "cached share of previous prompt, later turns": f"{later.mean():.1%} / {later.min():.1%}",
        "first_chunk_tokens": ", ".join(
            f"{'None' if pd.isna(k) else k}: {v}"
            for k, v in ok.first_chunk_tokens.value_counts(dropna=False).items()
        ),
        "chunks.parquet rows / visible chunks": f"{n_chunk_rows} / {int(df.n_chunks.sum())}",
        "client_ok": res.manifest["client_ok"],
        "body reader": cc["body_reader"],
        "TTFT P50 ms": round(float(ok.ttft_s.median()) * 1e3, 1),
        "server": (res.manifest.get("server") or {}).get("models", "?"),
    }
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--model", default="tiny-random-llama")
    ap.add_argument("--endpoints", default="completions,chat")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--max-context", type=int, default=3500)
    ap.add_argument("--continuous-usage", action="store_true")
    args = ap.parse_args()
    rows = [check(args.target, args.model, api, args) for api in args.endpoints.split(",")]
    pd.set_option("display.width", 200, "display.max_colwidth", 80)
    print(
        f"target {args.target}, {args.concurrency} agents, {args.duration:g} s window, continuous usage "
        f"{args.continuous_usage}"
    )
    print(pd.DataFrame(rows).set_index("endpoint").T.to_string())


if __name__ == "__main__":
    main()
