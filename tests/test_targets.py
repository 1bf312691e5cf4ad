"""The target seam: parse_target reads every spec form (and refuses the wrong ones), built-in targets
satisfy the Target protocol, run_sweep runs any Target through one path, and both drivers start their
manifests with the same builder."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from agentperf_kit.agents import RunRules
from agentperf_kit.errors import ConfigError, TargetError, UnknownNameError
from agentperf_kit.results import RunResult, run_manifest
from agentperf_kit.sim.presets import DEFAULT_DEPLOYMENT, list_deployments
from agentperf_kit.sweep import SweepConfig, run_sweep
from agentperf_kit.targets import LiveTarget, SimTarget, Target, parse_target
from agentperf_kit.telemetry import TelemetryConfig
from agentperf_kit.trajectories import default_trajectories


@pytest.mark.parametrize("spec", ["sim", "sim:", " sim "])
def test_sim_alone_is_the_default_deployment(spec):
    t = parse_target(spec)
    assert isinstance(t, SimTarget) and isinstance(t, Target)
    assert t.deployment.name == DEFAULT_DEPLOYMENT and t.spec == f"sim:{DEFAULT_DEPLOYMENT}"
    assert t.virtual_time and t.power_scope == "modelled"
    assert t.accelerators == t.deployment.accelerator_count >= 1
    assert DEFAULT_DEPLOYMENT in t.description


@pytest.mark.parametrize("name", list_deployments())
def test_every_deployment_preset_parses(name):
    t = parse_target(f"sim:{name}", efficiency="low", accelerators=3, accelerator_type="X1")
    assert t.deployment.name == name and t.efficiency == "low"
    assert (t.accelerators, t.accelerator_type) == (3, "X1")  # overrides win over the preset's
    assert parse_target(f"sim:{name}").accelerators == t.deployment.accelerator_count


def test_a_url_is_a_live_target_with_its_options():
    tel = TelemetryConfig(power="nvml")
    t = parse_target(
        "http://127.0.0.1:8000/v1",
        model="m",
        accelerators=8,
        accelerator_type="H200",
        endpoint_options={"api": "completions", "first_token_timeout_s": 7.0},
        telemetry=tel,
        api_key="sk-not-written",
    )
    assert isinstance(t, LiveTarget) and isinstance(t, Target) and not t.virtual_time
    assert t.endpoint.model == "m" and t.endpoint.api == "completions"
    assert t.endpoint.first_token_timeout_s == 7.0
    assert (t.accelerators, t.accelerator_type, t.power_scope) == (8, "H200", "measured")
    assert "sk-not-written" not in repr(t) and "sk-not-written" not in t.description
    assert parse_target("https://api.example.com/v1", model="m").power_scope is None
    assert parse_target("https://api.example.com/v1", model="m").accelerators is None


@pytest.mark.parametrize(
    ("spec", "kw", "error", "text"),
    [
        ("sim:nope", {}, UnknownNameError, "unknown deployment preset 'nope'"),
        ("sim:missing-twin.toml", {}, ConfigError, "missing-twin.toml"),
        ("sim", {"efficiency": "best"}, ConfigError, "efficiency"),
        ("", {}, ConfigError, "empty"),
        ("http://127.0.0.1:8000/v1", {}, ConfigError, "needs model"),
        ("htp:/nohost", {"model": "m"}, TargetError, "sim:PATH.toml"),
        ("http://127.0.0.1:99999/v1", {"model": "m"}, TargetError, "99999"),
        (
            "http://127.0.0.1:8000/v1",
            {"model": "m", "endpoint_options": {"api": "grpc"}},
            ConfigError,
            "grpc",
        ),
        (5, {}, ConfigError, "int"),
    ],
)
def test_wrong_specs_are_refused_naming_the_value(spec, kw, error, text):
    with pytest.raises(error, match=text):
        parse_target(spec, **kw)


def test_a_target_object_is_returned_as_it_is():
    t = parse_target("sim")
    assert parse_target(t) is t


# -- a custom target through run_sweep -----------------------------------------------------------------


@dataclass
class RelabelledSim:
    """A test double that is a real target: the simulator under another description, counting levels."""

    inner: SimTarget
    calls: int = 0
    description: str = "bench rig 7 (the simulator, relabelled)"
    virtual_time: bool = True

    @property
    def accelerators(self) -> int:
        return self.inner.accelerators

    @property
    def accelerator_type(self) -> str | None:
        return self.inner.accelerator_type

    @property
    def power_scope(self) -> str | None:
        return self.inner.power_scope

    def run_level(
        self, trajectories, n_agents, rules, *, seed, out_dir, level, run_id, progress
    ) -> RunResult:
        self.calls += 1
        return self.inner.run_level(
            trajectories,
            n_agents,
            rules,
            seed=seed,
            out_dir=out_dir,
            level=level,
            run_id=run_id,
            progress=progress,
        )


QUICK = dict(level_duration_s=30, warmup_s=5, min_trajectories=3, min_trajectories_per_agent=1, max_agents=4)


def test_run_sweep_runs_a_custom_target_through_the_same_path(tmp_path):
    # a target without ``supports_early_stop`` runs every level in full: as the plain sweep without it
    cfg = SweepConfig(out=str(tmp_path / "plain"), early_stop=False, **QUICK)
    plain = run_sweep(cfg, progress=False)
    custom = RelabelledSim(parse_target("sim"))
    assert isinstance(custom, Target)
    lines: list[str] = []
    res = run_sweep(SweepConfig(out=str(tmp_path / "custom"), **QUICK), progress=lines.append, target=custom)
    assert custom.calls == len(res.levels) == res.summary["levels_measured_this_run"] >= 1
    assert res.summary["target_description"] == custom.description
    assert (
        json.loads((tmp_path / "custom" / "sweep.json").read_text())["target_description"]
        == custom.description
    )
    assert any(custom.description in line for line in lines)  # the progress callable got the lines
    assert any(custom.description in n for n in res.summary["notes"])  # virtual time: a model's prediction
    # the same levels, seeds and verdicts as the sweep of the target it wraps
    cols = ["concurrency", "n_requests", "p25_output_speed_tps", "p95_ttft_s"]
    assert res.levels[cols].equals(plain.levels[cols])
    assert res.summary["n_levels_stopped_early"] == 0
    assert res.summary["accelerators"] == plain.summary["accelerators"]


def test_a_sweep_refuses_a_target_without_accelerators(tmp_path):
    class NoCount(RelabelledSim):
        @property
        def accelerators(self):
            return None

    with pytest.raises(ConfigError, match="accelerator"):
        run_sweep(
            SweepConfig(out=str(tmp_path / "s"), **QUICK), progress=False, target=NoCount(parse_target("sim"))
        )
    assert not (tmp_path / "s").exists()


# -- one manifest builder ----------------------------------------------------------------------------------


def test_both_drivers_start_from_the_same_manifest_keys(tmp_path):
    rules = RunRules(warmup_s=1, duration_s=5, min_trajectories=0, min_trajectories_per_agent=0)
    res = parse_target("sim").run_level(
        default_trajectories()[:5],
        2,
        rules,
        seed=1,
        out_dir=tmp_path / "r",
        level=0,
        run_id="x",
        progress=False,
    )
    base = run_manifest(run_id="x", level=0, config={}, target={}, clock={})
    assert set(base) <= set(res.manifest)
    assert len(res.manifest["config_hash"]) == 16  # simulated runs have a config hash too
    assert "aborted_reason" in res.manifest and res.manifest["meets_aa_rules"] is False
    again = parse_target("sim").run_level(
        default_trajectories()[:5],
        2,
        rules,
        seed=1,
        out_dir=tmp_path / "r2",
        level=0,
        run_id="x",
        progress=False,
    )
    assert again.manifest["config_hash"] == res.manifest["config_hash"]


def test_a_twin_preset_file_is_a_sim_target(tmp_path):
    """``sim:PATH.toml``: a preset file (a twin from ``agentperf profile``) through the same loader."""
    from tests.test_twin import _write_twin

    step = {"step_s": 0.01, "prefill_token_s": 1e-4, "decode_seq_s": 2e-3, "context_token_s": 1e-6}
    path = _write_twin(tmp_path / "rig.toml", step)
    t = parse_target(f"sim:{path}")
    assert isinstance(t, SimTarget) and t.virtual_time and t.model == "m"
    rules = RunRules(warmup_s=1, duration_s=5, min_trajectories=0, min_trajectories_per_agent=0)
    res = t.run_level(
        default_trajectories()[:3], 1, rules, seed=0, out_dir=None, level=0, run_id="t", progress=False
    )
    assert res.requests["ok"].any()
    with pytest.raises(ConfigError, match="not found"):
        parse_target(f"sim:{tmp_path / 'gone.toml'}")


def test_a_live_and_a_simulated_target_replay_the_same_agents_for_one_seed(tmp_path):
    """The same level seed gives the same trajectories, start turns and order of first sends on a live
    target (a loopback server) as on a simulated one, so that a twin's sweep and the measured sweep it
    is checked against replay one workload (a live target used to cut the seed to 32 bits)."""
    from tests.sse_servers import SSEServer, serving

    trajs = default_trajectories()[:12]
    rules = RunRules(warmup_s=0, duration_s=1.0, min_trajectories=0, min_trajectories_per_agent=0,
                     drain_timeout_s=2.0)  # fmt: skip
    seed = 2**40 + 12345  # a sweep's level seeds are 48-bit
    sim = parse_target("sim").run_level(trajs, 4, rules, seed=seed, out_dir=tmp_path / "sim", progress=False)
    server = SSEServer(ttft_s=0.005, itl_s=0.001)
    with serving(server):
        live = parse_target(server.base_url, model="m").run_level(
            trajs, 4, rules, seed=seed, out_dir=tmp_path / "live", progress=False
        )

    def first_sends(res):
        df = res.requests.sort_values("t_scheduled_s")
        return [tuple(r) for r in df.groupby("agent").head(1)[["agent", "trajectory_id", "turn"]].to_numpy()]

    assert first_sends(live) == first_sends(sim)
    assert live.manifest["config"]["seed"] == sim.manifest["config"]["seed"] == seed
