"""A study: a grid of simulated sweeps run in parallel, one tidy table of results.

``run_study(StudyConfig | "study.toml", out=DIR)`` (and ``agentperf study``) runs one sweep per grid point
(:mod:`agentperf_kit.study_config`) on Ray or a local process pool (:mod:`agentperf_kit.study_exec`) and
returns a DataFrame with one row per (sweep, tier): the grid coordinates, the tier, max agents, agents per
accelerator and per MW, validity and the band where measured (columns: :data:`STUDY_COLUMNS`,
``docs/schema.md``).

``DIR`` holds ``study.json`` (the configuration, its hash, the toolkit version, the trajectory files'
digests), ``results.parquet`` and ``results.json`` (the table, rewritten as each sweep finishes) and
``sweeps/pNNNN/`` (each point's sweep directory, ``docs/sweep.md``). Re-running with the same ``out``
skips the points already in the table (a point whose sweep failed is run again; a sweep cut short resumes
its own levels) and refuses a changed configuration unless ``overwrite=True``, which discards the study's
files and starts again. Files the study does not write are never removed: such a ``DIR`` is refused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ._version import __version__
from .errors import OutputError
from .schema import SCHEMA_VERSION, check_schema_version, strict_json_dumps
from .study_config import StudyConfig, StudyConfigError

log = logging.getLogger(__name__)

__all__ = [
    "STUDY_COLUMNS",
    "StudyConfig",
    "StudyConfigError",
    "check_study_dir",
    "load_study",
    "point_rows",
    "run_study",
]

#: the table's columns and their pandas dtypes, in order (meanings: docs/schema.md "Study directory")
STUDY_COLUMNS: dict[str, str] = {
    "point": "string",
    "deployment": "string",
    "tier_preset": "string",
    "trajectories": "string",
    "efficiency": "string",
    "what_if": "string",
    "tier": "string",
    "tier_label": "string",
    "min_output_speed_tps": "float64",
    "max_ttft_s": "float64",
    "max_agents": "Int64",
    "max_agents_is_lower_bound": "boolean",
    "lowest_failing_agents": "Int64",
    "binding_constraint": "string",
    "agents_per_accelerator": "float64",
    "agents_per_mw": "float64",
    "power_w": "float64",
    "power_scope": "string",
    "accelerators": "Int64",
    "accelerator_type": "string",
    "model": "string",
    "meets_aa_rules": "boolean",
    "client_ok": "boolean",
    "valid": "boolean",
    "band_low_agents": "Int64",
    "band_high_agents": "Int64",
    "band_high_is_lower_bound": "boolean",
    "band_low_agents_per_accelerator": "float64",
    "band_high_agents_per_accelerator": "float64",
    "published_agents_per_accelerator": "float64",
    "published_agents_per_mw": "float64",
    "n_levels": "Int64",
    "max_agents_cap": "Int64",
    "simulated_requests": "Int64",
    "notes": "string",
    "error": "string",
    "sweep_dir": "string",
    "config_hash": "string",
    "sweep_wall_s": "float64",
    "sweep_cpu_s": "float64",
    "worker": "string",
}

#: columns that say where and how fast a point ran, not what it measured (they differ between runs)
RUN_COLUMNS = ("sweep_wall_s", "sweep_cpu_s", "worker")

_STUDY_ENTRIES = {"study.json", "results.parquet", "results.json", "sweeps"}


def point_rows(
    coordinates: Mapping[str, Any],
    summary: Mapping[str, Any],
    sweep_dir: str | None = None,
    config_hash: str | None = None,
) -> list[dict[str, Any]]:
    """The table rows of one finished sweep (its ``summary.json``): one per tier, with the grid
    ``coordinates`` in front; ``config_hash``: the sweep's :meth:`~agentperf_kit.sweep.SweepConfig.
    config_hash`."""
    rows = []
    notes = "; ".join(summary.get("notes") or []) or None
    for t in summary["tiers"]:
        meets, ok = bool(summary.get("meets_aa_rules")), bool(summary.get("client_ok", True))
        rows.append(
            {
                **coordinates,
                "tier": t["name"],
                "tier_label": t.get("label"),
                "min_output_speed_tps": t.get("min_output_speed_tps"),
                "max_ttft_s": t.get("max_ttft_s"),
                "max_agents": t.get("max_agents"),
                "max_agents_is_lower_bound": t.get("max_agents_is_lower_bound"),
                "lowest_failing_agents": t.get("lowest_failing_agents"),
                "binding_constraint": t.get("binding_constraint"),
                "agents_per_accelerator": t.get("agents_per_accelerator"),
                "agents_per_mw": t.get("agents_per_mw"),
                "power_w": t.get("power_w"),
                "power_scope": t.get("power_scope"),
                "accelerators": summary.get("accelerators"),
                "accelerator_type": summary.get("accelerator_type"),
                "model": summary.get("model"),
                "meets_aa_rules": meets,
                "client_ok": ok,
                "valid": meets and ok,
                "band_low_agents": t.get("band_low_agents"),
                "band_high_agents": t.get("band_high_agents"),
                "band_high_is_lower_bound": t.get("band_high_is_lower_bound"),
                "band_low_agents_per_accelerator": t.get("band_low_agents_per_accelerator"),
                "band_high_agents_per_accelerator": t.get("band_high_agents_per_accelerator"),
                "published_agents_per_accelerator": t.get("published_agents_per_accelerator"),
                "published_agents_per_mw": t.get("published_agents_per_mw"),
                "n_levels": summary.get("n_levels"),
                "max_agents_cap": summary.get("max_agents_cap"),
                "simulated_requests": summary.get("simulated_requests"),
                "notes": notes,
                "error": None,
                "sweep_dir": sweep_dir,
                "config_hash": config_hash,
            }
        )
    return rows


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as the table: every column of :data:`STUDY_COLUMNS` in order, with its dtype."""
    df = pd.DataFrame(rows, columns=list(STUDY_COLUMNS))
    for col, dtype in STUDY_COLUMNS.items():
        s = df[col]
        if dtype in ("Int64", "float64"):
            s = pd.to_numeric(s, errors="coerce")
        df[col] = s.astype(dtype)
    return df


def _sorted(df: pd.DataFrame, order: Mapping[str, int]) -> pd.DataFrame:
    """Grid order (point index), then tier order within the point (as its preset lists them)."""
    key = df["point"].map(order).fillna(len(order)).astype(int)
    return df.assign(_k=key).sort_values("_k", kind="stable").drop(columns="_k").reset_index(drop=True)


def _write_table(out: Path, df: pd.DataFrame, cfg_hash: str) -> None:
    """``results.parquet`` and ``results.json`` (the same rows), each replaced atomically."""
    tmp = out / "results.parquet.tmp"
    df.to_parquet(tmp, index=False)
    os.replace(tmp, out / "results.parquet")
    records = json.loads(df.to_json(orient="records"))
    doc = {
        "schema_version": SCHEMA_VERSION,
        "kind": "agentperf-study-results",
        "toolkit_version": __version__,
        "config_hash": cfg_hash,
        "columns": list(STUDY_COLUMNS),
        "rows": records,
    }
    tmp = out / "results.json.tmp"
    tmp.write_text(strict_json_dumps(doc, indent=1) + "\n")
    os.replace(tmp, out / "results.json")


def _digests(cfg: StudyConfig) -> dict[str, str | None]:
    from .sweep import _file_digest

    return {label: _file_digest(path) for label, path in cfg.trajectory_files().items()}


def _study_manifest(cfg: StudyConfig) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "agentperf-study",
        "toolkit_version": __version__,
        "config": cfg.measurement_dict(),
        "config_hash": cfg.config_hash(),
        "trajectories_sha256": _digests(cfg),
        "points": [p.coordinates() for p in cfg.points()],
    }


def _inspect_study_dir(cfg: StudyConfig, out: Path, overwrite: bool) -> tuple[list[str], bool]:
    """Check ``out`` before anything is written: its entries, and whether it holds this same study to
    resume (True) or is new/empty or will be emptied by ``overwrite`` (False). Raises
    :class:`~agentperf_kit.errors.OutputError` for files a study does not write, and
    :class:`StudyConfigError` for another study unless ``overwrite``."""
    what = "study output directory"
    if out.exists() and not out.is_dir():
        raise OutputError(f"{what} {out} is a file; choose a directory")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and "study.json" not in entries:
        raise OutputError(
            f"{what} {out} is not empty and holds no study (no study.json: {', '.join(entries[:4])}"
            f"{', ...' if len(entries) > 4 else ''}); a study resumes only its own directory: choose a new "
            "one"
        )
    foreign = [e for e in entries if e not in _STUDY_ENTRIES and not e.endswith(".tmp")]
    if foreign:
        raise OutputError(
            f"{what} {out} holds files a study does not write ({', '.join(foreign[:4])}); refusing to use "
            "it: move them, or choose a new directory"
        )
    if not entries:
        return entries, False
    try:
        was = json.loads((out / "study.json").read_text())
    except (OSError, ValueError) as exc:
        raise OutputError(f"{out}/study.json cannot be read ({exc}); choose a new directory") from None
    why = _mismatch(was, _study_manifest(cfg))
    if why and not overwrite:
        raise StudyConfigError(
            f"{out} holds a study with {why}; refusing to resume. Use another out, the same settings, "
            "or overwrite=True (agentperf study --overwrite) to discard its results and start again"
        )
    return entries, not why


def check_study_dir(cfg: StudyConfig, out: str | os.PathLike, overwrite: bool = False) -> int:
    """Check a study directory before anything is written (as :func:`run_study` does): the number of grid
    points already finished there (0 for a new study, or one ``overwrite`` will discard)."""
    out = Path(out)
    _, resumes = _inspect_study_dir(cfg, out, overwrite)
    if not resumes or not (out / "results.parquet").exists():
        return 0
    df = pd.read_parquet(out / "results.parquet", columns=["point", "error"])
    return int(df.loc[df["error"].isna(), "point"].nunique())


def _open_study_dir(cfg: StudyConfig, out: Path, overwrite: bool) -> pd.DataFrame:
    """Check ``out`` and return the rows already measured (empty for a new study); write ``study.json``
    for a new one. A changed configuration, toolkit version or trajectory file is refused unless
    ``overwrite`` (the study's own files are then removed)."""
    entries, resumes = _inspect_study_dir(cfg, out, overwrite)
    if entries and not resumes:  # overwrite: only the study's own files are there (checked above)
        for e in entries:
            p = out / e
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    if not resumes:
        (out / "study.json").write_text(strict_json_dumps(_study_manifest(cfg), indent=2) + "\n")
        return _frame([])
    path = out / "results.parquet"
    return _frame(pd.read_parquet(path).to_dict(orient="records")) if path.exists() else _frame([])


def _mismatch(was: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    if was.get("toolkit_version") != now["toolkit_version"]:
        return f"agentperf-kit {was.get('toolkit_version')} (this is {now['toolkit_version']})"
    if was.get("config_hash") != now["config_hash"]:
        a, b = was.get("config", {}), now["config"]
        diff = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
        return f"a different configuration (was, now): {diff}"
    if was.get("trajectories_sha256") != now["trajectories_sha256"]:
        return (
            "trajectory files that changed since it started (sha256 was, now): "
            f"{was.get('trajectories_sha256')} -> {now['trajectories_sha256']}"
        )
    return None


def run_study(
    config: StudyConfig | str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    workers: int | None = None,
    executor: str = "auto",
    ray_address: str | None = None,
    overwrite: bool = False,
    progress: bool | Callable[[str], None] = True,
) -> pd.DataFrame:
    """Run (or resume) a study; return its table (one row per sweep and tier, :data:`STUDY_COLUMNS`).

    ``config``: a :class:`StudyConfig` or the path of a ``study.toml``. ``out``: the study directory
    (default: a new one under ``runs/``). ``workers``: sweeps run at once (default: this machine's CPUs;
    on a Ray cluster, as many as its CPUs allow). ``executor``: ``"auto"`` (Ray where there is a
    cluster to use, else a local process pool: :func:`~agentperf_kit.study_exec.resolve_executor`),
    ``"ray"`` or ``"process"``; ``ray_address``
    places the sweeps on an existing Ray cluster (``"auto"``, ``"ray://HOST:10001"``). ``overwrite``:
    a directory holding a study with another configuration is emptied of the study's files instead of
    refused. ``progress``: as :func:`~agentperf_kit.sweep.run_sweep` (True: one line per finished sweep
    to the ``agentperf_kit.study`` logger; a callable receives the lines; False: silent).

    The table is written to ``out`` as each sweep finishes; a sweep that raised is one row with ``error``
    set (and a warning at the end), run again on resume. ``df.attrs["directory"]`` is ``out``."""
    from .study_exec import execute, resolve_executor

    cfg = config if isinstance(config, StudyConfig) else StudyConfig.from_toml(config)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise StudyConfigError(f"workers must be an integer >= 1, got {workers!r}")
    kind = resolve_executor(executor, ray_address)
    _check_trajectory_files(cfg)
    out_dir = Path(out) if out is not None else Path("runs") / time.strftime("study-%Y%m%d-%H%M%S")
    out_dir = out_dir.resolve()  # workers (other processes, other hosts) get absolute paths
    table = _open_study_dir(cfg, out_dir, overwrite)
    say = progress if callable(progress) else (lambda line: log.info("%s", line)) if progress else None
    points = cfg.points()
    order = {p.point_id: p.index for p in points}
    finished = set(table.loc[table["error"].isna(), "point"])
    table = table[table["point"].isin(finished)]
    todo = _largest_first([p for p in points if p.point_id not in finished])
    where = f"Ray ({ray_address})" if kind == "ray" and ray_address else kind
    if kind == "process" or not ray_address:
        where += f", {workers or os.cpu_count()} workers"
    if say:
        say(f"study: {len(points)} sweeps ({len(points) - len(todo)} already done) on {where} -> {out_dir}")
    payloads = [
        {
            "point": p.point_id,
            "coordinates": p.coordinates(),
            "sweep": p.sweep,
            "out": str(out_dir / "sweeps" / p.point_id),
            "sweep_dir": f"sweeps/{p.point_id}",
        }
        for p in todo
    ]
    t0 = time.perf_counter()
    by_id = {p.point_id: p for p in todo}
    errors: list[str] = []
    for i, res in enumerate(execute(payloads, kind, workers=workers, ray_address=ray_address), 1):
        p = by_id[res["point"]]
        if res.get("toolkit_version") not in (None, __version__) and not res.get("error"):
            res["error"] = (
                f"the worker {res.get('worker')} runs agentperf-kit {res['toolkit_version']}, the driver "
                f"{__version__}: install the same version on every node"
            )
            res["rows"] = []
        failed_row = {**p.coordinates(), "error": res["error"], "sweep_dir": f"sweeps/{p.point_id}"}
        rows = res["rows"] or [failed_row]
        for r in rows:
            r.update(sweep_wall_s=res.get("wall_s"), sweep_cpu_s=res.get("cpu_s"), worker=res.get("worker"))
        new = _frame(rows)
        table = _sorted(pd.concat([table, new], ignore_index=True) if len(table) else new, order)
        _write_table(out_dir, table, cfg.config_hash())
        if res["error"]:
            errors.append(f"{p.point_id}: {res['error']}")
        if say:
            took = f"{_fmt_s(res.get('wall_s'))}, {res.get('worker')}"
            say(f"  [{i}/{len(todo)}] {_describe(p, new)}  ({took})")
    if not todo:
        _write_table(out_dir, _sorted(table, order), cfg.config_hash())
    if say and todo:
        say(f"study: {len(todo)} sweeps in {time.perf_counter() - t0:.1f} s")
    if errors:
        warnings.warn(
            f"{len(errors)} of the study's sweeps failed (rows with 'error'; run the study again to retry "
            f"them): {'; '.join(errors[:3])}{' ...' if len(errors) > 3 else ''}",
            stacklevel=2,
        )
    table = _sorted(table, order)
    table.attrs["directory"] = str(out_dir)
    return table


def _largest_first(points: list) -> list:
    """The points in the order they are handed to the workers: the largest expected sweeps first (the cap
    of each sweep's search, :func:`~agentperf_kit.sweep.resolve_max_agents`, estimated for the built-in
    trajectories: more agents, more simulated requests), so that a worker is not left running the
    biggest sweep alone at the end; grid order among equals. A cap that cannot be estimated counts as
    equal to the others."""
    from .sweep import resolve_max_agents
    from .sweep_config import SweepConfig

    def key(p) -> tuple:
        return (p.deployment, p.tiers, p.efficiency, p.sweep.get("max_agents"))

    caps: dict[tuple, int] = {}
    for p in points:
        if key(p) not in caps:
            try:
                caps[key(p)] = resolve_max_agents(SweepConfig(**{**p.sweep, "trajectories": None}))[0]
            except Exception:  # an estimate only: never a reason to fail
                caps[key(p)] = 0
    return sorted(points, key=lambda p: -caps[key(p)])


def _check_trajectory_files(cfg: StudyConfig) -> None:
    """Every trajectory file of the grid loads (before any sweep starts): the error names the file."""
    from .trajectories import load_trajectories

    for label, path in cfg.trajectory_files().items():
        try:
            if not load_trajectories(path):
                raise ValueError("the file holds no trajectory")
        except Exception as exc:
            src = f"{cfg.source}: " if cfg.source else ""
            raise StudyConfigError(
                f"{src}[study] trajectories {label!r}: cannot load it ({' '.join(str(exc).split())}); give "
                "a trajectory file (.jsonl, .jsonl.gz, .parquet; paths relative to the study file) or "
                "'default'"
            ) from None


def _describe(p, rows: pd.DataFrame) -> str:
    head = f"{p.point_id} {p.deployment} {p.tiers} {p.trajectories} {p.efficiency} {p.what_if}:"
    if rows["error"].notna().any():
        return f"{head} failed: {rows['error'].iloc[0]}"
    parts = [
        f"{r.tier} {'>=' if r.max_agents_is_lower_bound else ''}{r.max_agents}" for r in rows.itertuples()
    ]
    return f"{head} max agents {', '.join(parts)}"


def _fmt_s(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} s"


def load_study(directory: str | os.PathLike) -> pd.DataFrame:
    """The table of a study directory (``results.parquet``), finished or not."""
    directory = Path(directory)
    path = directory / "results.json"
    if not (directory / "study.json").exists() or not (directory / "results.parquet").exists():
        raise FileNotFoundError(f"{directory}: no study.json and results.parquet; is this a study directory?")
    if path.exists():
        check_schema_version(json.loads(path.read_text()).get("schema_version"), what=str(path))
    df = _frame(pd.read_parquet(directory / "results.parquet").to_dict(orient="records"))
    df.attrs["directory"] = str(directory)
    return df
