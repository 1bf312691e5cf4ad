"""``agentperf sweep`` on the command line: the README command, config files, dry runs, refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agentperf_kit.cli import main

FAST_FLAGS = ["--level-duration", "30", "--max-agents", "8", "--no-band"]  # band: test_sweep_band.py


@pytest.mark.slow
def test_the_readme_command_prints_a_table_per_tier(tmp_path):
    # `agentperf sweep` exactly as README runs it (only --out added, to keep runs/ clean); ~20 s
    out = subprocess.run(
        [sys.executable, "-m", "agentperf_kit.cli", "sweep", "--out", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for tier in ("slo1", "slo2", "slo3"):
        assert f"\n{tier} " in text
    assert "agents/accel" in text and "agents/MW" in text and "meets AA validity rules: yes" in text
    assert "simulated requests:" in text and "levels measured:" in text
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    maxes = [t["max_agents"] for t in summary["tiers"]]
    assert maxes == sorted(maxes, reverse=True) and maxes[0] > 0
    assert summary["meets_aa_rules"] and summary["accelerators"] == 8
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("slo")}
    for t in summary["tiers"]:
        assert str(t["max_agents"]) in rows[t["name"]]


def test_config_file_and_flags(tmp_path, capsys):
    cfg = tmp_path / "sweep.toml"
    cfg.write_text('[sweep]\ntarget = "sim:h200x8-gptoss120b"\ntiers = "aa-gpt-oss-120b"\nwarmup_s = 5\n')
    assert main(["sweep", "--config", str(cfg), "--out", str(tmp_path / "s"), *FAST_FLAGS, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["target"] == "sim:h200x8-gptoss120b" and summary["config"]["warmup_s"] == 5
    assert summary["config"]["max_agents"] == 8  # the flag overrides the file's default


def test_config_file_errors_name_the_file_and_key(tmp_path, capsys):
    cfg = tmp_path / "sweep.toml"
    cfg.write_text("[sweep]\nlevel_duration = 30\n")
    assert main(["sweep", "--config", str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "level_duration" in err and "level_duration_s" in err
    cfg.write_text("[sweep\n")
    assert main(["sweep", "--config", str(cfg), "--dry-run"]) == 2
    assert "cannot read the sweep config" in capsys.readouterr().err


def test_dry_run_of_a_live_target_estimates_wall_time(capsys):
    args = ["sweep", "--target", "http://127.0.0.1:9/v1", "--model", "m", "--accelerators", "8", "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "estimated wall time" in out and "up to 46 levels in all" in out


def test_resuming_with_other_settings_is_refused_with_the_reason(tmp_path, capsys):
    out = str(tmp_path / "s")
    assert main(["sweep", "--out", out, *FAST_FLAGS, "--json"]) == 0
    capsys.readouterr()
    assert main(["sweep", "--out", out, *FAST_FLAGS, "--seed", "7"]) == 2
    err = capsys.readouterr().err
    assert "refusing to resume" in err and "'seed': (0, 7)" in err
    # the same settings resume: nothing is measured again
    assert main(["sweep", "--out", out, *FAST_FLAGS, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["levels_measured_this_run"] == 0


def test_resuming_after_the_trajectory_file_changed_is_refused(tmp_path, capsys):
    from agentperf_kit.trajectories import SynthConfig, save_trajectories, synthesize

    path = save_trajectories(synthesize(SynthConfig(), count=6, seed=1), tmp_path / "t.jsonl")
    args = ["sweep", "--out", str(tmp_path / "s"), "--trajectories", str(path), *FAST_FLAGS, "--json"]
    args[args.index("8")] = "2"
    assert main(args) == 0
    capsys.readouterr()
    save_trajectories(synthesize(SynthConfig(), count=6, seed=2), path)
    assert main(args) == 2
    assert "changed since this sweep started" in capsys.readouterr().err


def test_max_context_fits_the_trajectories_of_every_level(tmp_path, capsys):
    args = ["sweep", "--out", str(tmp_path / "s"), "--max-context", "8192", *FAST_FLAGS, "--json"]
    args[args.index("8")] = "2"
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["config"]["max_context"] == 8192
    from agentperf_kit.sweep import load_sweep

    req = load_sweep(tmp_path / "s").requests  # read from the level files (one copy of the rows)
    assert (req["target_prompt_tokens"] + req["target_output_tokens"] <= 8192).all()
