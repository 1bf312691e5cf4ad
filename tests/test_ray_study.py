"""``agentperf study`` / ``run_study``: a grid of tiny simulated sweeps on a process pool and on a local Ray
head (the same table both ways), resume, failed points, and the checks of a bad study.toml.

The Ray tests share one local Ray head per module (loopback only, 2 CPUs, no dashboard; starting it takes
10-40 s on the loaded 2-core machine) and are marked slow, as is everything that runs sweeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pandas as pd
import pytest

from agentperf_kit.cli import main
from agentperf_kit.errors import OutputError
from agentperf_kit.study import RUN_COLUMNS, STUDY_COLUMNS, check_study_dir, load_study, run_study
from agentperf_kit.study_config import StudyConfig, StudyConfigError
from agentperf_kit.sweep import load_sweep

# tiny sweeps: short levels, a low cap (each sweep takes a few seconds)
TINY = {
    "level_duration_s": 30,
    "warmup_s": 5,
    "min_trajectories": 2,
    "min_trajectories_per_agent": 1,
    "max_agents": 8,
    "max_extensions": 0,
}


def _tiny(**axes) -> StudyConfig:
    return StudyConfig(
        **{"deployments": ["h200x8-dsv4pro"], "efficiency": ["low", "high"], **axes}, sweep=TINY
    )


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "study.toml"
    p.write_text(textwrap.dedent(text))
    return p


# Ray drops the handles of its processes (a failed start's, and at shutdown) while they are still exiting;
# the ResourceWarning that raises when one is collected names Ray's process, not the code under test
RAY_PROCESS_HANDLES = pytest.mark.filterwarnings(r"ignore:subprocess \d+ is still running:ResourceWarning")


def _measured(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=list(RUN_COLUMNS))


# -- running -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool_study(tmp_path_factory):
    """``_tiny()`` run once on a process pool of 2: (its directory, its table, its progress lines). Checked
    as it is, and copied by the resume test (no test writes into this directory)."""
    out = tmp_path_factory.mktemp("pool") / "s"
    lines: list[str] = []
    df = run_study(_tiny(), out, workers=2, executor="process", progress=lines.append)
    return out, df, lines


@pytest.mark.slow
def test_process_pool_study_is_one_row_per_sweep_and_tier_from_its_sweeps(pool_study):
    study_dir, df, lines = pool_study
    assert list(df.columns) == list(STUDY_COLUMNS)
    assert df.attrs["directory"] == str(study_dir.resolve())
    # 2 points x the preset's 3 tiers, in grid order, each row as its sweep's summary says
    assert list(df["point"]) == ["p0000"] * 3 + ["p0001"] * 3
    assert list(df["efficiency"]) == ["low"] * 3 + ["high"] * 3
    assert df["error"].isna().all()
    for point, rows in df.groupby("point"):
        s = load_sweep(study_dir / "sweeps" / point)
        assert s.summary["config"]["efficiency"] == rows["efficiency"].iloc[0]
        tiers = pd.DataFrame(s.summary["tiers"])
        assert list(rows["tier"]) == list(tiers["name"])
        assert list(rows["max_agents"]) == list(tiers["max_agents"])
        for col in ("agents_per_accelerator", "agents_per_mw", "power_w"):
            got = rows[col].astype(float).to_numpy()
            assert got == pytest.approx(tiers[col].astype(float).to_numpy(), nan_ok=True), col
        assert rows["valid"].tolist() == [s.summary["meets_aa_rules"] and s.summary["client_ok"]] * len(rows)
    # the low set never serves more agents than the high set, tier by tier
    low = df[df["efficiency"] == "low"].set_index("tier")["max_agents"]
    high = df[df["efficiency"] == "high"].set_index("tier")["max_agents"]
    assert (low <= high).all()
    # the files hold the same table
    pd.testing.assert_frame_equal(load_study(study_dir), df, check_like=False)
    doc = json.loads((study_dir / "results.json").read_text())
    assert doc["columns"] == list(STUDY_COLUMNS) and len(doc["rows"]) == len(df)
    assert lines[0].startswith("study: 2 sweeps (0 already done) on process, 2 workers")
    assert sum("[" in ln and "/2]" in ln for ln in lines) == 2


@pytest.mark.slow
@RAY_PROCESS_HANDLES
def test_ray_and_the_process_pool_give_the_same_table(tmp_path, ray_head):
    cfg = _tiny(what_if=["none", "tool_delay=0.5"], efficiency=["mid"])
    on_ray = run_study(cfg, tmp_path / "ray", executor="ray", progress=False)
    on_pool = run_study(cfg, tmp_path / "pool", workers=2, executor="process", progress=False)
    assert len(on_ray) == 6 and on_ray["error"].isna().all()
    pd.testing.assert_frame_equal(_measured(on_ray), _measured(on_pool))
    assert ray_head.is_initialized()  # a runtime it did not start is left running


@pytest.mark.slow
@RAY_PROCESS_HANDLES
def test_a_study_runs_on_an_existing_ray_cluster_by_address(tmp_path, ray_head):
    """The CLI in another process connects to the module's head by its address (``--ray-address``)."""
    address = ray_head.get_runtime_context().gcs_address
    toml = _write(
        tmp_path,
        f"""
        [study]
        deployments = ["b300x8-dsv4pro"]
        [sweep]
        {chr(10).join(f"{k} = {v}" for k, v in TINY.items())}
        """,
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "agentperf_kit.cli", "study", "--config", str(toml), "--out", str(out)]
    proc = subprocess.run(
        [*cmd, "--ray-address", address], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"on Ray ({address})" in proc.stderr
    df = load_study(out)
    assert len(df) == 3 and df["error"].isna().all() and df["worker"].notna().all()


@pytest.mark.slow
def test_resume_runs_only_the_unfinished_points_and_gives_the_same_table(tmp_path, pool_study):
    import shutil

    cfg = _tiny()
    out = tmp_path / "s"
    shutil.copytree(pool_study[0], out)  # a copy of the finished study (same config), and its table
    full = pool_study[1]
    # a study killed after its first sweep: the table holds p0000 only, p0001's sweep directory is gone
    pd.read_parquet(out / "results.parquet").query("point == 'p0000'").to_parquet(out / "results.parquet")
    shutil.rmtree(out / "sweeps" / "p0001")
    assert check_study_dir(cfg, out) == 1
    lines: list[str] = []
    again = run_study(cfg, out, workers=2, executor="process", progress=lines.append)
    assert "(1 already done)" in lines[0]
    assert [ln for ln in lines if "/1]" in ln] and all("p0000" not in ln for ln in lines[1:])
    pd.testing.assert_frame_equal(_measured(again), _measured(full))
    # nothing left to do: no sweep runs, the same table comes back
    lines.clear()
    same = run_study(cfg, out, executor="process", progress=lines.append)
    assert "(2 already done)" in lines[0] and len(lines) == 1
    pd.testing.assert_frame_equal(same, again)


@pytest.mark.slow
def test_a_failed_sweep_is_a_row_with_its_error_and_a_rerun_retries_it(tmp_path):
    from agentperf_kit.study import _open_study_dir

    cfg = _tiny()
    out = tmp_path / "s"
    _open_study_dir(cfg, out, overwrite=False)  # the study's directory, before any sweep
    blocker = out / "sweeps" / "p0001"
    blocker.parent.mkdir()
    blocker.write_text("not a directory")  # p0001's sweep directory is a file: its sweep raises
    with pytest.warns(UserWarning, match="1 of the study's sweeps failed"):
        df = run_study(cfg, out, workers=2, executor="process", progress=False)
    bad = df[df["point"] == "p0001"]
    assert len(bad) == 1 and "is a file" in bad["error"].iloc[0]
    assert bad["efficiency"].iloc[0] == "high" and pd.isna(bad["max_agents"].iloc[0])
    assert len(df[df["point"] == "p0000"]) == 3 and df[df["point"] == "p0000"]["error"].isna().all()
    assert check_study_dir(cfg, out) == 1  # the failed point is not done
    blocker.unlink()
    lines: list[str] = []
    df = run_study(cfg, out, workers=2, executor="process", progress=lines.append)
    assert "(1 already done)" in lines[0]
    assert len(df) == 6 and df["error"].isna().all()


def test_a_changed_study_is_refused_unless_overwrite(tmp_path):
    cfg = _tiny()
    out = tmp_path / "s"
    check_study_dir(cfg, out)  # new: nothing written
    assert not out.exists()
    out.mkdir()
    from agentperf_kit.study import _open_study_dir

    _open_study_dir(cfg, out, overwrite=False)
    assert check_study_dir(cfg, out) == 0
    other = StudyConfig(deployments=["h200x8-dsv4pro"], efficiency=["low", "high"], sweep={**TINY, "seed": 3})
    with pytest.raises(StudyConfigError, match=r"different configuration.*'seed': 3.*overwrite"):
        check_study_dir(other, out)
    assert check_study_dir(other, out, overwrite=True) == 0
    _open_study_dir(other, out, overwrite=True)
    assert json.loads((out / "study.json").read_text())["config"]["sweep"]["seed"] == 3
    (out / "mine.txt").write_text("a user's file")
    with pytest.raises(OutputError, match=r"files a study does not write \(mine.txt\)"):
        check_study_dir(other, out, overwrite=True)


# -- configuration checks (fast) ---------------------------------------------------------------------


def test_grid_is_the_product_of_the_axes_in_order(tmp_path):
    traj = tmp_path / "t.jsonl"
    from agentperf_kit.trajectories import default_trajectories, save_trajectories

    save_trajectories(default_trajectories()[:3], traj)
    path = _write(
        tmp_path,
        """
        [study]
        deployments = ["h200x8-dsv4pro", "b300x8-dsv4pro"]
        tiers = ["aa-dsv4pro", "nvidia-blog-dsv4pro"]
        trajectories = ["default", "t.jsonl"]
        efficiency = ["low", "mid", "high"]
        what_if = ["none", "output=2, tool_delay=0.5"]
        [sweep]
        level_duration_s = 60
        """,
    )
    cfg = StudyConfig.from_toml(path)
    pts = cfg.points()
    assert len(pts) == 2 * 2 * 2 * 3 * 2
    assert [p.point_id for p in pts[:2]] == ["p0000", "p0001"]
    first, last = pts[0], pts[-1]
    assert (first.deployment, first.tiers, first.trajectories, first.efficiency, first.what_if) == (
        "h200x8-dsv4pro", "aa-dsv4pro", "default", "low", "none",
    )  # fmt: skip
    assert last.what_if == "output=2,tool_delay=0.5"  # canonical form
    assert last.sweep["trajectories"] == str(tmp_path / "t.jsonl")  # relative to the study file
    assert last.sweep["target"] == "sim:b300x8-dsv4pro" and last.sweep["band"] is False
    assert first.sweep["level_duration_s"] == 60
    assert cfg.config_hash() == StudyConfig.from_toml(path).config_hash()


BAD = [
    ("[study]\ndeployments = 3\n", r"\[study\] deployments must be a list of strings .*got 3"),
    ("[study]\ndeployments = []\n", r"\[study\] deployments is empty"),
    (
        '[study]\ndeployments = ["nope"]\n',
        r"\[study\] deployments 'nope': unknown deployment preset 'nope'; known",
    ),
    ('[study]\ntiers = ["nope"]\n', r"\[study\] tiers 'nope': .*nope"),
    (
        '[study]\nefficiency = ["medium"]\n',
        r"\[study\] efficiency: 'medium' is not an efficiency set; use low",
    ),
    ('[study]\nefficiency = ["low", "low"]\n', r"lists 'low' twice"),
    ('[study]\nwhat_if = ["speed=2"]\n', r"\[study\] what_if 'speed=2': what_if: bad knob 'speed=2'"),
    (
        '[study]\nwhat_if = ["deployment=b300x8-dsv4pro"]\n',
        r"deployment knob is an axis.*deployments instead",
    ),
    (
        '[study]\ntrajectories = ["missing.jsonl"]\n',
        r"\[study\] trajectories 'missing.jsonl': cannot load it",
    ),
    ("[study]\ndeployment = ['x']\n", r"\[study\] unknown key\(s\) deployment; known: deployments"),
    ("[studies]\n", r"unknown table or key\(s\) studies"),
    (
        "[sweep]\ntarget = 'sim'\n",
        r"\[sweep\] target: a study sets it per grid point; .*\[study\] deployments",
    ),
    ("[sweep]\nout = 'x'\n", r"\[sweep\] out: a study writes each sweep"),
    (
        "[sweep]\nlevel_duraton_s = 60\n",
        r"\[sweep\] unknown key 'level_duraton_s'; known: .*level_duration_s",
    ),
    ("[sweep]\nmax_agents = 'ten'\n", r"\[sweep\] max_agents must be an integer, got 'ten' \(str\)"),
    ("[sweep]\nlevel_duration_s = -1\n", r"\[sweep\] level_duration_s must be > 0, got -1"),
    ("[sweep]\npower_source = 'nvml'\n", r"\[sweep\] --power-source nvml measures a live target"),
    ("[study\n", r"not valid TOML"),
]


@pytest.mark.parametrize(("text", "match"), BAD, ids=[b[1][:30] for b in BAD])
def test_bad_study_file_names_file_key_value_and_fix(tmp_path, text, match):
    path = _write(tmp_path, text)
    with pytest.raises(StudyConfigError, match=match) as err:
        cfg = StudyConfig.from_toml(path)
        run_study(cfg, tmp_path / "out", executor="process", progress=False)  # the trajectory files
    assert str(err.value).startswith(str(path))
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_cli_bad_study_is_one_line_exit_2_also_in_dry_run(tmp_path, capsys):
    path = _write(tmp_path, "[sweep]\nmax_agents = 'ten'\n")
    assert main(["study", "--config", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {path}: [sweep] max_agents must be an integer")
    assert main(["study", "--config", str(tmp_path / "none.toml")]) == 2
    assert "cannot read the study config" in capsys.readouterr().err
    path = _write(tmp_path, '[study]\nefficiency = ["low", "high"]\n')
    assert main(["study", "--config", str(path), "--dry-run", "--workers", "0"]) == 2
    assert "--workers: must be >= 1, got 0" in capsys.readouterr().err


def test_cli_dry_run_prints_the_grid_and_what_out_holds(tmp_path, capsys):
    path = _write(tmp_path, '[study]\nefficiency = ["low", "high"]\n[sweep]\nmax_agents = 8\n')
    out = tmp_path / "out"
    assert (
        main(["study", "--config", str(path), "--dry-run", "--executor", "process", "--out", str(out)]) == 0
    )
    text = capsys.readouterr().out
    assert (
        "study: 2 sweeps (1 deployments x 1 tiers x 1 trajectories x 2 efficiency x 1 what_if) on process"
        in text
    )
    assert "p0001  h200x8-dsv4pro  aa-dsv4pro  default  high  none" in text
    assert f"output: {out} (new)" in text
    assert not out.exists()
    out.mkdir()
    (out / "x.csv").write_text("")
    assert main(["study", "--config", str(path), "--dry-run", "--out", str(out)]) == 2
    assert "holds no study" in capsys.readouterr().err


def test_executor_choice_and_its_errors(monkeypatch):
    from agentperf_kit.errors import ConfigError
    from agentperf_kit.study_exec import resolve_executor

    assert resolve_executor("process", None) == "process"
    with pytest.raises(ConfigError, match="ray_address 'auto' needs the Ray executor"):
        resolve_executor("process", "auto")
    with pytest.raises(ConfigError, match="executor must be one of auto, ray, process, got 'dask'"):
        resolve_executor("dask", None)
    # auto: Ray only where there is a cluster to use (an address, RAY_ADDRESS, a runtime started here)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    started = [False]
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: started[0]))
    assert resolve_executor("auto", None) == "process"
    started[0] = True  # a notebook that ran ray.init()
    assert resolve_executor("auto", None) == "ray"
    started[0] = False
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert resolve_executor("auto", None) == "ray"
    monkeypatch.delenv("RAY_ADDRESS")
    assert resolve_executor("auto", "ray://head:10001") == "ray"
    assert resolve_executor("ray", None) == "ray"
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    assert resolve_executor("auto", None) == "process"
    with pytest.raises(ConfigError, match=r"pip install 'agentperf-kit\[ray\]'"):
        resolve_executor("ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'agentperf-kit\[ray\]'"):
        resolve_executor("auto", "ray://head:10001")


def test_the_sample_study_file_is_valid():
    path = Path(__file__).resolve().parents[1] / "sample_data" / "study_example.toml"
    cfg = StudyConfig.from_toml(path)
    assert len(cfg.points()) == 4
    assert {p.efficiency for p in cfg.points()} == {"low", "high"}


@pytest.mark.slow
def test_a_script_without_a_main_guard_runs_a_process_pool_study(tmp_path):
    """``spawn`` would re-run such a script's top level in every worker; the workers skip ``__main__``."""
    script = tmp_path / "noguard.py"
    out = tmp_path / "out"
    script.write_text(
        "from agentperf_kit import StudyConfig, run_study\n"
        f"cfg = StudyConfig(sweep={{**{TINY!r}, 'max_agents': 2}})\n"
        f"df = run_study(cfg, {str(out)!r}, executor='process', workers=1, progress=print)\n"
        "print('rows', len(df))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("already done") == 1  # the script's top level ran once, in the driver only
    assert proc.stdout.count("rows 3") == 1
