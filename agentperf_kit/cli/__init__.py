"""``agentperf`` command line: one module per command group, registered here.

Each command module exposes ``register(subparsers)`` which adds its parser(s) and sets
``func=callable(args) -> int`` as the default. Modules are imported lazily by name so a missing optional
dependency of one command does not break the others.

Exit codes (docs/cli.md): 0 measured; 2 bad usage, bad input or a failed preflight; 3 the run ended but
could not be measured validly; 130 interrupted (Ctrl-C; the files written so far are kept). Every
:class:`~agentperf_kit.errors.AgentperfError` becomes one line ``error: ...`` on stderr and its
``exit_code``; a user's mistake never prints a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from typing import NoReturn

from .._version import __version__
from ..errors import AgentperfError, ConfigError

# command modules under agentperf_kit.cli, in the order their commands appear in --help
_COMMAND_MODULES = (
    "sweep",
    "study",
    "run",
    "serve_sim",
    "profile",
    "trajectories",
    "report",
    "compare",
    "frontier",
    "import_results",
    "presets",
)

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NOT_MEASURED = 3
EXIT_INTERRUPTED = 130


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``error: agentperf run: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (all command groups that import)."""
    parser = OneLineParser(
        prog="agentperf",
        description="Measure how many concurrent AI coding agents an inference system serves within SLOs.",
        epilog="exit codes: 0 measured; 2 bad usage, bad input or failed preflight; 3 not validly "
        "measured; 130 interrupted (docs/cli.md)",
    )
    parser.add_argument("--version", action="version", version=f"agentperf-kit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(f"{__name__}.{name}"):
                continue  # command group not built yet
            raise
        module.register(sub)
    return parser


class _LowerLevelFormatter(logging.Formatter):
    """``warning: message``: the same shape as the CLI's ``error: ...`` lines."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        return msg if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {msg}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``agentperf`` console script; returns the exit status."""
    root = logging.getLogger("agentperf_kit")
    handler = logging.StreamHandler(sys.stderr)  # library log records: one line each on stderr
    handler.setFormatter(_LowerLevelFormatter())
    old_level, old_show = root.level, warnings.showwarning
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    warnings.showwarning = _show_warning
    try:
        return _main(argv)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        warnings.showwarning = old_show


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _main(argv: list[str] | None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_USAGE
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe raises here, inside this handler, not at interpreter exit
        return rc
    except AgentperfError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        # asyncio.run cancels the run's task: run_live closes its files, tasks and session on the way out
        print("interrupted: the files written so far are kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (``agentperf report DIR | head``): not an error; point stdout at
        # /dev/null so Python's exit-time flush does not raise again on the closed pipe
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_OK


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
