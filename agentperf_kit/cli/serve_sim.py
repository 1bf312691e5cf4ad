"""``agentperf serve-sim``: the simulated inference system as an OpenAI-compatible server, in real time."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from ..errors import AgentperfError, ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve-sim",
        help="serve the simulated system over HTTP (OpenAI-compatible, streams like vLLM)",
        description=(
            "Serve a simulated deployment on /v1/models, /v1/chat/completions, /v1/completions and "
            "/metrics. Token times follow the simulated engine; with --time-scale X > 1 the server runs "
            "X times faster than real time, so every latency a client measures is the simulated one / X."
        ),
    )
    p.add_argument("--preset", default=None, help="deployment preset (default h200x8-dsv4pro; see --list)")
    p.add_argument("--list", action="store_true", help="list the deployment presets and exit")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--time-scale", type=float, default=1.0, help="virtual seconds per wall second (default 1)"
    )
    p.add_argument("--efficiency", choices=["low", "mid", "high"], default="mid", help="efficiency set")
    p.add_argument("--served-model-name", help="model id to answer to (default: the preset's model)")
    p.add_argument(
        "--max-model-len", type=int, help="context limit, tokens (default: model context or KV capacity)"
    )
    p.add_argument(
        "--reasoning-share", type=float, default=0.0, help="share of chat output sent as reasoning_content"
    )
    p.add_argument("--default-max-tokens", type=int, default=256, help="answer length without max_tokens")
    p.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="count text prompts with this local Hugging Face tokenizer (a tokenizer.json file or a "
        "directory holding one; needs the 'tokenizers' or 'transformers' package; nothing is downloaded)",
    )
    p.add_argument(
        "--lag-warn",
        type=float,
        default=0.05,
        metavar="S",
        help="log a warning when an engine step is released more than S wall seconds late (default 0.05)",
    )
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from ..sim.presets import DEFAULT_DEPLOYMENT, list_deployments
    from ..sim.server import SimServer
    from ..sim.tokens import load_tokenizer

    if args.list:
        print("\n".join(list_deployments()))
        return 0
    try:
        if not 0 <= args.port <= 65535:
            raise ConfigError(f"port must be within 0-65535 (0 picks a free one), got {args.port}")
        count = load_tokenizer(args.tokenizer) if args.tokenizer else None
        server = SimServer(
            args.preset or DEFAULT_DEPLOYMENT,
            efficiency_set=args.efficiency,
            time_scale=args.time_scale,
            served_model_name=args.served_model_name,
            max_model_len=args.max_model_len,
            reasoning_share=args.reasoning_share,
            default_max_tokens=args.default_max_tokens,
            lag_warn_s=args.lag_warn,
            count_prompt=count,
        )
    except AgentperfError:
        raise  # one line and its exit code, from agentperf_kit.cli
    except (KeyError, ValueError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    return asyncio.run(_main(server, args.host, args.port))


async def _main(server, host: str, port: int) -> int:
    try:
        await server.start(host, port)
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 2
    print(
        f"serving {server.model} (simulated {server.dep.label}, efficiency {server.eff.name}, "
        f"time scale {server.time_scale:g}, max_model_len {server.max_model_len}, prompt tokens counted "
        f"by {getattr(server.count_prompt, 'name', 'the built-in approximation')}) on {server.base_url}",
        file=sys.stderr,
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    return 0
