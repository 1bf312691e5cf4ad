"""``agentperf`` command line: one module per command group, registered here.

Each command module exposes ``register(subparsers)`` which adds its parser(s) and sets
``func=callable(args) -> int`` as the default. Modules are imported lazily by name so a missing optional
dependency of one command does not break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .._version import __version__

# command modules under agentperf_kit.cli, in the order their commands appear in --help
_COMMAND_MODULES = (
    "sweep",
    "run",
    "serve_sim",
    "trajectories",
    "report",
    "compare",
    "frontier",
    "import_results",
    "presets",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (all command groups that import)."""
    parser = argparse.ArgumentParser(
        prog="agentperf",
        description="Measure how many concurrent AI coding agents an inference system serves within SLOs.",
    )
    parser.add_argument("--version", action="version", version=f"agentperf-kit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(f"{__name__}.{name}"):
                continue  # command group not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``agentperf`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
