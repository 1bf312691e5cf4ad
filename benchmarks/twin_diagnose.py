"""Diagnose where a digital twin and its real server part ways (the causes in docs/simulator.md).

Three probes, one sub-command each (each prints its figures and the 1-minute load average):

    # in situ: regress each request's decode span on what happened during it, in a measured level and
    # in the twin's level of the same N (two level directories of twin_validate.py's --out)
    python benchmarks/twin_diagnose.py insitu DIR/measured/levels/n00016_e0 DIR/twin-mid/levels/n00016_e0

    # arrivals: a short request's cost to B decoding streams beyond the twin's per-token form (its
    # admit_s, finish_s and end_s left out), at several B
    python benchmarks/twin_diagnose.py arrivals --target http://127.0.0.1:8300/v1 --model M --twin twin.toml

    # restore: TTFT of a prompt on a prefix the server still holds in a slot, and of the same prompt once
    # other prompts pushed it out (restored from a host prompt cache, or prefilled again)
    python benchmarks/twin_diagnose.py restore --target http://127.0.0.1:8200/v1 --model M

The in-situ regression: ``span = steps x (a + b x other streams) + c x prefills + d x their new tokens``,
with ``steps`` the request's output tokens - 1, ``other streams`` the mean number of other requests
decoding during its span (overlap time / span), ``prefills`` the other requests whose first token came
during it and ``their new tokens`` their prompt tokens not served from cache. Least squares, no intercept.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from agentperf_kit.client.http import open_session
from agentperf_kit.results import read_requests_file
from agentperf_kit.twin.fit import COLUMNS, _predict
from agentperf_kit.twin.profile import ProfileConfig, _arrival, _Prober


def _load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def insitu(level_dir: str) -> dict[str, float]:
    """The regression of the module docstring over the ok requests of one level directory."""
    d = read_requests_file(Path(level_dir) / "requests.parquet")  # every column, derived ones included
    d = d[d.ok & (d.output_tokens >= 2)].copy()
    d["new"] = d.prompt_tokens - d.cached_prompt_tokens.fillna(0)
    first, end = d.t_first_s.to_numpy(), d.t_end_s.to_numpy()
    conc, pre, pre_tok = [], [], []
    for k in range(len(d)):
        a, b = first[k], end[k]
        others = np.arange(len(d)) != k
        ov = (np.minimum(end[others], b) - np.maximum(first[others], a)).clip(min=0).sum() / (b - a)
        inside = others & (first > a) & (first < b)
        conc.append(ov)
        pre.append(inside.sum())
        pre_tok.append(d.new.to_numpy()[inside].sum())
    steps = (d.output_tokens - 1).to_numpy(float)
    a = np.column_stack([steps, steps * np.asarray(conc), pre, pre_tok])
    coef, *_ = np.linalg.lstsq(a, end - first, rcond=None)
    step_ms = (end - first) / steps * 1e3
    return {
        "requests": len(d),
        "step_ms_p50": float(np.median(step_ms)),
        "other_streams": float(np.mean(conc)),
        "prefills_per_request": float(np.mean(pre)),
        "per_step_ms": coef[0] * 1e3,
        "per_other_stream_step_ms": coef[1] * 1e3,
        "per_prefill_ms": coef[2] * 1e3,
        "per_prefill_token_ms": coef[3] * 1e3,
    }


async def arrivals(args: argparse.Namespace) -> None:
    data = tomllib.loads(Path(args.twin).read_text())
    coef = dict(data["step"])
    names = [n for n in COLUMNS if n in coef and n not in ("admit_s", "finish_s", "end_s")]
    theta = np.array([coef[n] for n in names])
    cfg = ProfileConfig(args.target, args.model)
    chunk = int(data["engine"]["max_num_batched_tokens"])
    async with open_session(max(args.batches) + 8) as session:
        p = _Prober(cfg, session, 1.0)
        await p.send(p.ids(32), 2)
        for b in args.batches:
            excess = []
            for _ in range(args.repeats):
                row = await _arrival(p, b, args.prefill, args.out_tokens, args.stream_tokens, chunk)
                if row is None:
                    continue
                x = np.array([[row.x.get(c, 0.0) for c in COLUMNS]])
                excess.append((row.seconds - float(_predict(theta, names, x)[0])) * 1e3)
            med = statistics.median(excess) if excess else float("nan")
            print(f"B={b:3d}: excess over the per-token form (ms) {[round(e, 1) for e in excess]}, "
                  f"median {med:.1f} ({_load()})")  # fmt: skip


async def restore(args: argparse.Namespace) -> None:
    cfg = ProfileConfig(args.target, args.model)
    async with open_session(8) as session:
        p = _Prober(cfg, session, 1.0)
        await p.send(p.ids(32), 2)
        for n in args.sizes:
            for _ in range(args.repeats):
                base = p.ids(n)
                await p.send(base, 2)
                hit, _ = await p.send(base + p.ids(64), 2)
                for _ in range(args.push):
                    await p.send(p.ids(200), 2)
                back, _ = await p.send(base + p.ids(64), 2)
                print(f"prefix {n:5d}: slot hit TTFT {p.ttft(hit) * 1e3:6.2f} ms (cached "
                      f"{hit.cached_prompt_tokens}); after {args.push} other prompts "
                      f"{p.ttft(back) * 1e3:6.2f} ms (cached {back.cached_prompt_tokens}) "
                      f"({_load()})")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("insitu")
    s.add_argument("levels", nargs="+", help="level directories (with requests.parquet)")
    for name in ("arrivals", "restore"):
        s = sub.add_parser(name)
        s.add_argument("--target", required=True)
        s.add_argument("--model", required=True)
        s.add_argument("--repeats", type=int, default=4)
    sa = sub.choices["arrivals"]
    sa.add_argument("--twin", required=True, help="the twin whose per-token form is the baseline")
    sa.add_argument("--batches", type=lambda t: [int(x) for x in t.split(",")], default=[1, 4, 16, 32])
    sa.add_argument("--prefill", type=int, default=128, help="new prompt tokens of the arriving request")
    sa.add_argument("--out-tokens", type=int, default=32, help="its output tokens")
    sa.add_argument("--stream-tokens", type=int, default=128, help="output tokens of each decoding stream")
    sr = sub.choices["restore"]
    sr.add_argument("--sizes", type=lambda t: [int(x) for x in t.split(",")], default=[255, 767, 1279, 1791])
    sr.add_argument("--push", type=int, default=6, help="other prompts sent between (more than the slots)")
    args = ap.parse_args()
    if args.cmd == "insitu":
        print(_load())
        for lv in args.levels:
            r = insitu(lv)
            print(f"{lv}: " + ", ".join(f"{k} {v:.3g}" for k, v in r.items()))
    elif args.cmd == "arrivals":
        asyncio.run(arrivals(args))
    else:
        asyncio.run(restore(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
