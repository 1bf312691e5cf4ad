"""``agentperf profile``: measure a live server for a few minutes and write its twin preset."""

from __future__ import annotations

import argparse
import sys

from ._common import positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="profile a live server and write its digital twin (a preset for --target sim:PATH.toml)",
        description=(
            "Measure prefill (cold and on a cached prefix), decode step time against batch size, mixed "
            "steps (a prefill arriving while streams decode) and the "
            "engine limits of an OpenAI-compatible server (streaming /v1/completions with token-id "
            "prompts), fit a step-time model with standard errors and write a twin preset TOML that "
            "'agentperf sweep --target sim:PATH.toml' runs in virtual time (docs/simulator.md)."
        ),
    )
    p.add_argument("--target", help="base URL, e.g. http://127.0.0.1:8200/v1 (not with --refit)")
    p.add_argument("--model", help="model name the server answers to (not with --refit)")
    p.add_argument(
        "--refit",
        metavar="TWIN.toml",
        help="measure nothing: fit the current step-time model again to the observations stored in "
        "TWIN.toml (a profile taken under an earlier form of the model) and write it to --out",
    )
    p.add_argument(
        "--insitu",
        metavar="DIR",
        nargs="+",
        help="fit the per-request engine work (admit_s, finish_s, end_s, release_s) in situ, from the "
        "decode spans of a replay of your workload against the same server (the directory of "
        "'agentperf run --out DIR' or of a sweep level); several replays (e.g. at a low and a high load) "
        "are pooled into one fit; with --refit or after profiling (docs/simulator.md, 'In situ')",
    )
    p.add_argument("--out", required=True, help="twin preset to write (a path ending in .toml)")
    p.add_argument("--max-context", type=positive_int, help="largest prompt + output to send (tokens)")
    p.add_argument("--repeats", type=positive_int, default=3, help="repeats per prefill size (default 3)")
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32", help="decode batch sizes (default 1,2,...,32)")
    p.add_argument(
        "--decode-tokens", type=positive_int, default=128, help="tokens per decode stream (default 128)"
    )
    p.add_argument(
        "--stream-tokens",
        type=positive_int,
        default=32,
        help="output tokens of the short streams and arrivals (an agent's short answer; default 32)",
    )
    p.add_argument("--chunk-tokens", type=positive_int, help="the server's prefill chunk (tokens)")
    p.add_argument("--max-batch", type=positive_int, help="largest batch (skips the probe)")
    p.add_argument("--kv-capacity", type=positive_int, help="KV capacity in tokens (skips the probe)")
    p.add_argument("--budget", type=positive_float, default=240.0, help="seconds before optional parts stop")
    p.set_defaults(func=_profile)


def _profile(args: argparse.Namespace) -> int:
    from ..client.preflight import check_base_url
    from ..errors import ConfigError
    from ..twin.profile import ProfileConfig, profile_sync, refit_twin, write_twin

    if not args.out.lower().endswith(".toml"):
        raise ConfigError(f"profile: --out must end in .toml (sweep reads sim:PATH.toml), got {args.out!r}")
    if args.insitu:
        from ..twin.insitu import replay_file

        for replay in args.insitu:  # before anything is measured or written
            replay_file(replay)
    if args.refit:
        path, f = refit_twin(args.refit, args.out)
        print(f"wrote {path} (refit of {args.refit}: {len(f.predicted)} observations)")
        _print_fit(f)
        _apply_insitu(args, path)
        print(f"sweep it: agentperf sweep --target sim:{path}", file=sys.stderr)
        return 0
    if not args.target or not args.model:
        raise ConfigError("profile: --target and --model are required (or --refit TWIN.toml)")
    try:
        batches = tuple(int(b) for b in args.batch_sizes.split(","))
        if not batches or min(batches) < 1:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"profile: --batch-sizes must be integers >= 1 like 1,2,4, got {args.batch_sizes!r}"
        ) from None
    cfg = ProfileConfig(
        base_url=check_base_url(args.target),
        model=args.model,
        max_context=args.max_context,
        repeats=args.repeats,
        decode_tokens=args.decode_tokens,
        stream_tokens=args.stream_tokens,
        batch_sizes=batches,
        chunk_tokens=args.chunk_tokens,
        max_batch=args.max_batch,
        kv_capacity=args.kv_capacity,
        budget_s=args.budget,
    )
    res = profile_sync(cfg)
    path = write_twin(res, args.out)
    print(f"wrote {path} ({len(res.observations)} observations in {res.wall_s:.0f} s)")
    _print_fit(res.fit)
    for k, v in res.limits.items():
        print(f"  {k} = {v}  ({res.limit_sources.get(k, '')})")
    for n in res.notes:
        print(f"  note: {n}")
    _apply_insitu(args, path)
    print(f"sweep it: agentperf sweep --target sim:{path}", file=sys.stderr)
    return 0


def _apply_insitu(args: argparse.Namespace, path) -> None:
    from ..twin.insitu import insitu_twin

    if not args.insitu:
        return
    _, f = insitu_twin(path, args.insitu, path)
    print(
        f"in situ ({f.spans} decode spans of {', '.join(args.insitu)}; {f.arrivals_per_span:.2f} arrivals "
        f"and {f.finishes_per_span:.2f} finishes per span; a request's end costs the others "
        f"{f.other_finish_s:.3g} s, itself {f.own_end_s:.3g} s):"
    )
    print(f"  {'admit_s':16s} {f.admit_s:.4g} +- {f.admit_s_se:.2g}")
    for name in ("finish_s", "end_s", "release_s", "queued_step_s"):
        print(f"  {name:16s} {getattr(f, name):.4g} +- {getattr(f, name + '_se'):.2g}")
    print(f"  {'':16s} (queued_step_s: per step while a request waits; {f.queued_steps_share:.0%} of steps)")
    print(f"  left per step    {f.leftover_per_step_s:.3g} s (not used; > 0: slower steps in situ)")


def _print_fit(f) -> None:
    for t in f.coef:
        print(f"  {t:16s} {f.coef[t]:.4g} +- {f.se[t]:.2g}")
    print(
        f"  fit: {f.form} form (F test p {f.overlap_p_value:.3g}), RMS relative residual {f.rms_rel:.3f}, "
        f"max {f.max_abs_rel:.3f}"
    )
