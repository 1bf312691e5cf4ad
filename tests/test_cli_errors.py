"""The CLI's contract with a user who makes a mistake (docs/cli.md): one line on stderr, exit 2, no
traceback, nothing written; a target that cannot be used fails its preflight the same way; a run that
could not be measured exits 3; Ctrl-C exits 130 keeping the files; a closed stdout pipe is not an error."""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web

from agentperf_kit.cli import main
from agentperf_kit.trajectories import default_trajectories, save_trajectories
from tests.conftest import assert_live_run_measured
from tests.sse_servers import SSEServer, serving

ROOT = Path(__file__).resolve().parents[1]

# a short live run: small contexts, no AA counts, a brief window
SHORT = [
    "-n",
    "2",
    "--duration",
    "1",
    "--warmup",
    "0.2",
    "--min-trajectories",
    "0",
    "--min-trajectories-per-agent",
    "0",
    "--max-context",
    "2000",
    "--quiet",
    "--no-scrape-metrics",
]


class ModelServer:
    """Serves one model, as vLLM does: ``/v1/models`` lists it; a request for any other model is a 404
    with vLLM's error body."""

    def __init__(self, model: str = "real-model") -> None:
        self.model = model
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        msg = f"The model `{body.get('model')}` does not exist."
        return web.json_response(
            {"object": "error", "message": msg, "type": "NotFoundError", "code": 404}, status=404
        )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _files(path: Path) -> dict[str, bytes]:
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


# -- the bad-input table ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("bad")
    good = save_trajectories(default_trajectories()[:3], d / "good.jsonl.gz")
    data = good.read_bytes()
    (d / "truncated.jsonl.gz").write_bytes(data[: len(data) // 2])
    with gzip.open(good, "rt") as f:
        (d / "header_only.jsonl").write_text(f.readline())
    (d / "a_directory").mkdir()
    (d / "a_file").write_text("x")
    for name, text in {
        "ten.toml": '[sweep]\nmax_agents = "ten"\n',
        "tiers5.toml": "[sweep]\ntiers = 5\n",
        "target5.toml": "[sweep]\ntarget = 5\n",
        "body5.toml": "[sweep]\nextra_body = 5\n",
        "neg.toml": "[sweep]\nlevel_duration_s = -1\n",
    }.items():
        (d / name).write_text(text)
    return {"dir": str(d)}


URL9 = ["--target", "http://127.0.0.1:9/v1", "--model", "m"]

RUN_CASES = {
    "truncated .jsonl.gz": (["--trajectories", "{dir}/truncated.jsonl.gz"], "truncated"),
    "directory as trajectory file": (["--trajectories", "{dir}/a_directory"], "is a directory"),
    "header-only set": (["--trajectories", "{dir}/header_only.jsonl"], "no trajectory"),
    "missing trajectory file": (["--trajectories", "{dir}/nope.jsonl"], "not found"),
    "concurrency 0": (["-n", "0"], "--concurrency"),
    "concurrency not a number": (["-n", "many"], "--concurrency"),
    "out under a file": (["--out", "{dir}/a_file/out"], "not a directory"),
    "max-context 0": (["--max-context", "0"], "--max-context"),
    "max-context too small": (["--max-context", "10"], "max_context 10"),
    "duration 0": (["--duration", "0"], "--duration"),
    "duration nan": (["--duration", "nan"], "--duration"),
    "warmup negative": (["--warmup", "-1"], "--warmup"),
    "request-timeout 0": ([*URL9, "--request-timeout", "0"], "--request-timeout"),
    "stall-timeout -1": ([*URL9, "--stall-timeout", "-1"], "--stall-timeout"),
    "unset api-key-env": ([*URL9, "--api-key-env", "AGENTPERF_TEST_UNSET_KEY"], "AGENTPERF_TEST_UNSET_KEY"),
    "unknown sim preset": (["--target", "sim:nope"], "unknown deployment preset 'nope'"),
    "invalid URL": (["--target", "htp:/nohost", "--model", "m"], "not an http(s) URL"),
    "port out of range": (["--target", "http://127.0.0.1:99999/v1", "--model", "m"], "99999"),
    "URL without model": (["--target", "http://127.0.0.1:9/v1"], "--model"),
    "header without colon": ([*URL9, "--header", "no colon"], "Name: value"),
    "header twice": ([*URL9, "--header", "X-A: 1", "--header", "x-a: 2"], "given twice"),
    "extra-body not an object": ([*URL9, "--extra-body", "[1, 2]"], "JSON object"),
    "extra-body not JSON": ([*URL9, "--extra-body", "{nope"], "not JSON"),
    "telemetry interval 0": ([*URL9, "--telemetry-interval", "0"], "--telemetry-interval"),
    "unknown power source": ([*URL9, "--power-source", "bogus"], "bogus"),
    "metrics URL not a URL": ([*URL9, "--metrics-url", "foo"], "metrics_url 'foo'"),
    "seed negative": (["--seed", "-1"], "--seed"),
    "secret and public header of one name": (
        [*URL9, "--header", "X-A: 1", "--public-header", "x-a: 2"],
        "both as secret and as public",
    ),
}

SWEEP_CASES = {
    "max_agents = 'ten'": (["--config", "{dir}/ten.toml"], "max_agents must be an integer"),
    "tiers = 5": (["--config", "{dir}/tiers5.toml"], "tiers must be a string"),
    "target = 5": (["--config", "{dir}/target5.toml"], "target must be a string"),
    "extra_body = 5": (["--config", "{dir}/body5.toml"], "extra_body must be a JSON object"),
    "level_duration_s = -1": (["--config", "{dir}/neg.toml"], "level_duration_s must be > 0"),
    "unknown sim preset": (["--target", "sim:nope"], "unknown deployment preset 'nope'"),
    "unknown tier preset": (["--tiers", "nope"], "unknown tier preset 'nope'; known"),
    "duplicate tier names": (["--tiers", "fast=100/2,fast=20/10"], "given more than once"),
    "accelerators -8": (["--accelerators", "-8"], "--accelerators"),
    "max-context 0": (["--max-context", "0"], "--max-context"),
    "request-timeout 0": (["--request-timeout", "0"], "--request-timeout"),
    "stall-timeout -1": (["--stall-timeout", "-1"], "--stall-timeout"),
    "truncated .jsonl.gz": (["--trajectories", "{dir}/truncated.jsonl.gz"], "truncated"),
    "directory as trajectory file": (["--trajectories", "{dir}/a_directory"], "is a directory"),
    "header-only set": (["--trajectories", "{dir}/header_only.jsonl"], "no trajectory"),
    "out under a file": (["--out", "{dir}/a_file/out"], "not a directory"),
    "unset api-key-env": (
        [*URL9, "--accelerators", "1", "--api-key-env", "AGENTPERF_TEST_UNSET_KEY"],
        "AGENTPERF_TEST_UNSET_KEY",
    ),
    "live target without accelerators": (URL9, "accelerators"),
    "invalid URL": (["--target", "http//x", "--model", "m", "--accelerators", "1"], "not an http(s) URL"),
    "power-w without scope": (["--power-w", "700"], "power_scope"),
    "metrics URL not a URL": ([*URL9, "--accelerators", "1", "--metrics-url", "foo"], "metrics_url 'foo'"),
    "header without colon": ([*URL9, "--accelerators", "1", "--header", "nocolon"], "Name: value"),
}


def _fill(args: list[str], files: dict[str, str]) -> list[str]:
    return [a.replace("{dir}", files["dir"]) for a in args]


@pytest.mark.parametrize("case", sorted(RUN_CASES))
def test_run_refuses_bad_input_with_one_line(case, bad_files, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("AGENTPERF_TEST_UNSET_KEY", raising=False)
    args, expect = RUN_CASES[case]
    out = tmp_path / "out"
    argv = ["run", "-n", "2", "--quiet", "--out", str(out), *_fill(args, bad_files)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert expect in line, line
    assert captured.out == ""
    assert not out.exists()


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize("case", sorted(SWEEP_CASES))
def test_sweep_refuses_bad_input_with_one_line_also_in_dry_run(
    case, dry_run, bad_files, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("AGENTPERF_TEST_UNSET_KEY", raising=False)
    args, expect = SWEEP_CASES[case]
    out = tmp_path / "out"
    argv = ["sweep", "--out", str(out), *_fill(args, bad_files), *(["--dry-run"] if dry_run else [])]
    assert main(argv) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert expect in line, line
    assert not out.exists()


def test_unknown_preset_message_has_no_stray_quotes(capsys):
    assert main(["sweep", "--tiers", "nope", "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown tier preset 'nope'")


# -- results never overwritten or mixed -------------------------------------------------------------


def _sim_run(out: Path, *extra: str) -> int:
    args = ["run", "--target", "sim", "-n", "2", "--duration", "30", "--min-trajectories", "0"]
    return main([*args, "--min-trajectories-per-agent", "0", "--warmup", "5", "--out", str(out), *extra])


def test_run_out_refuses_a_non_empty_directory_and_overwrite_replaces_only_a_run(tmp_path, capsys):
    out = tmp_path / "r"
    assert _sim_run(out) == 0
    before = _files(out)
    capsys.readouterr()
    assert _sim_run(out) == 2  # a finished run is not overwritten...
    assert "not empty" in _one_error_line(capsys.readouterr().err)
    assert _files(out) == before
    assert _sim_run(out, "--overwrite", "--seed", "1") == 0  # ...unless asked
    assert _files(out)["requests.parquet"] != before["requests.parquet"]
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    capsys.readouterr()
    assert _sim_run(user, "--overwrite") == 2  # a directory that is not a run is never replaced
    assert "not an agentperf run" in _one_error_line(capsys.readouterr().err)
    assert (user / "notes.txt").read_text() == "keep me"


def test_a_run_reads_only_the_rows_it_wrote(tmp_path):
    """An older run's raw streams left in the directory (what --out used to merge) stay out of the table."""
    from agentperf_kit.agents import RunRules
    from agentperf_kit.errors import OutputError
    from agentperf_kit.sim.virtual import run_sim_level

    trajs = default_trajectories()[:20]
    rules = RunRules(warmup_s=5, duration_s=30, min_trajectories=0, min_trajectories_per_agent=0)
    clean = run_sim_level(trajs, 2, rules, seed=3, out_dir=tmp_path / "clean")
    old = run_sim_level(trajs, 4, rules, seed=9, out_dir=tmp_path / "old")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "requests.1.arrow").write_bytes((tmp_path / "old" / "requests.arrow").read_bytes())
    (mixed / "requests.old.arrow").write_bytes((tmp_path / "old" / "requests.arrow").read_bytes())
    # the library refuses a directory holding other files, as the CLI does (overwrite or not)
    with pytest.raises(OutputError, match="not empty"):
        run_sim_level(trajs, 2, rules, seed=3, out_dir=mixed)
    with pytest.raises(OutputError, match="not an agentperf run"):
        run_sim_level(trajs, 2, rules, seed=3, out_dir=mixed, overwrite=True)
    # and an interrupted run (raw rows only) read back takes only the stream it wrote
    import shutil

    from agentperf_kit.results import load_run

    shutil.copytree(tmp_path / "clean", mixed, dirs_exist_ok=True)
    (mixed / "requests.parquet").unlink()
    assert len(old.requests) > 0
    assert len(load_run(mixed).requests) == len(clean.requests)
    # overwrite=True replaces a previous run
    res = run_sim_level(trajs, 2, rules, seed=3, out_dir=tmp_path / "clean", overwrite=True)
    assert len(res.requests) == len(clean.requests)


def test_sweep_out_resumes_only_its_own_sweep(tmp_path, capsys):
    out = tmp_path / "s"
    flags = ["--level-duration", "30", "--max-agents", "2", "--json"]
    assert main(["sweep", "--out", str(out), *flags]) == 0
    assert main(["sweep", "--out", str(out), *flags]) == 0  # its own sweep: resumed
    capsys.readouterr()
    assert main(["sweep", "--out", str(out), *flags, "--seed", "5"]) == 2  # another configuration
    assert "different configuration" in _one_error_line(capsys.readouterr().err)
    (out / "my-notes.txt").write_text("mine")
    assert main(["sweep", "--out", str(out), *flags]) == 2  # holds something a sweep does not write
    assert "my-notes.txt" in _one_error_line(capsys.readouterr().err)
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("1,2\n")
    assert main(["sweep", "--out", str(other), *flags]) == 2
    assert "holds no sweep" in _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in other.iterdir()) == ["data.csv"]


# -- preflight -----------------------------------------------------------------------------------------


def test_preflight_names_an_unknown_model_and_what_the_server_said(tmp_path, capsys):
    with serving(ModelServer("real-model")) as srv:
        out = tmp_path / "o"
        rc = main(["run", "--target", srv.base_url, "--model", "wrong-model", *SHORT, "--out", str(out)])
        line = _one_error_line(capsys.readouterr().err)
        assert rc == 2
        assert srv.base_url in line and "wrong-model" in line
        assert "404" in line and "does not exist" in line and "real-model" in line
        assert not out.exists()
        rc = main(["sweep", "--target", srv.base_url, "--model", "wrong-model", "--accelerators", "1"])
        assert rc == 2 and "does not exist" in _one_error_line(capsys.readouterr().err)


def test_preflight_refuses_a_closed_port_in_seconds(tmp_path, capsys):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    t0 = time.monotonic()
    rc = main(["run", "--target", url, "--model", "m", *SHORT, "--out", str(tmp_path / "o")])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and url in line and "cannot reach" in line
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "o").exists()


class StuckModelServer(ModelServer):
    """Accepts connections, never answers ``/v1/models`` (a server stuck or still loading) until it is
    stopped; then the stuck handler ends, so that the server's cleanup need not wait for it."""

    async def start(self) -> None:
        self.stopping = asyncio.Event()
        await super().start()

    async def stop(self) -> None:
        self.stopping.set()
        await super().stop()

    async def _models(self, request: web.Request) -> web.Response:
        await self.stopping.wait()
        return web.json_response({"object": "list", "data": []})


def test_preflight_says_a_stuck_server_answered_nothing_not_that_it_cannot_be_reached(tmp_path, capsys):
    # found by benchmarks/fault_matrix.py: a /models that never answers was reported as "cannot reach"
    with serving(StuckModelServer()) as srv:
        out = tmp_path / "o"
        rc = main(
            [
                "run",
                "--target",
                srv.base_url,
                "--model",
                "m",
                *SHORT,
                "--request-timeout",
                "2",
                "--out",
                str(out),
            ]
        )
        line = _one_error_line(capsys.readouterr().err)
        assert rc == 2 and srv.base_url in line
        assert "accepted the connection but sent no answer within 2 s" in line and "cannot reach" not in line
        assert not out.exists()


def test_no_preflight_skips_it_and_a_run_with_no_success_exits_3(tmp_path, capsys):
    with serving(SSEServer(fault="http500")) as srv:
        out = tmp_path / "o"
        args = ["run", "--target", srv.base_url, "--model", "m", *SHORT, "--out", str(out)]
        assert main(args) == 2  # the preflight sees the 500
        assert "HTTP 500" in _one_error_line(capsys.readouterr().err)
        assert main([*args, "--no-preflight"]) == 3
        captured = capsys.readouterr()
        assert "requests in window" in captured.out  # the results are printed and kept
        kept = [x for x in captured.err.splitlines() if not x.startswith(("plan:", "warning:"))]
        line = _one_error_line("\n".join(kept))
        assert "could not be measured validly" in line and "failed" in line
        assert (out / "requests.parquet").exists()


def test_an_always_failing_server_ends_the_level_early_with_exit_3(tmp_path, capsys):
    """``--no-preflight`` against a server that answers every request with 500, a 60 s window and
    ``--abort-after 1``: the level ends within seconds with the reason, exit 3; every agent waited its
    turn's tool delay after each failure (no burst of requests), and every request is a row."""
    from agentperf_kit.results import load_run

    with serving(SSEServer(fault="http500")) as srv:
        out = tmp_path / "o"
        args = ["run", "--target", srv.base_url, "--model", "m", *SHORT, "--out", str(out)]
        args[args.index("--duration") + 1] = "60"
        t0 = time.monotonic()
        assert main([*args, "--no-preflight", "--abort-after", "1"]) == 3
        wall = time.monotonic() - t0
        seen = len(srv.bodies)  # the streamed requests (the chat filler's probes are not streamed)
    err = capsys.readouterr().err.splitlines()
    line = _one_error_line("\n".join(x for x in err if x.startswith("error:")))
    assert "ended early" in line and "every request failed" in line and "abort_after_s=1" in line
    assert wall < 30  # not the 60 s window
    res = load_run(out)
    assert res.manifest["aborted_reason"]
    df = res.requests
    sent = df[df["error"] != "cancelled_at_end"]  # cancelled at the end: may not have reached the server
    assert len(sent) == seen and not df["ok"].any() and df["t_end_s"].notna().all()
    waited = df.dropna(subset=["tool_wait_s"])
    assert (waited["tool_wait_s"] >= waited["tool_delay_s"]).all()


def test_a_sweep_level_that_ended_early_is_a_failed_level_with_the_reason(tmp_path, capsys):
    import json

    import pandas as pd

    with serving(SSEServer(fault="http500")) as srv:
        out = tmp_path / "s"
        args = ["sweep", "--target", srv.base_url, "--model", "m", "--accelerators", "1", "--max-agents", "2"]
        args += ["--max-context", "2000", "--level-duration", "60", "--no-scrape-metrics", "--no-preflight"]
        assert main([*args, "--abort-after", "1", "--out", str(out)]) == 3
    levels = pd.read_csv(out / "levels.csv")
    assert levels["aborted_reason"].str.contains("every request failed").all()
    assert (levels.filter(like="verdict_") == "fail").all().all()
    assert (levels["extensions"] == 0).all()  # an aborted level is never extended
    notes = json.loads((out / "summary.json").read_text())["notes"]
    assert any("ended early" in n and "N=1" in n for n in notes)


def test_abort_after_and_first_token_timeout_are_validated_and_reach_the_config():
    from agentperf_kit.sweep_config import SweepConfig, SweepConfigError

    assert main(["run", "-n", "1", "--out", "x", "--abort-after", "-1"]) == 2
    assert main(["run", "-n", "1", "--out", "x", "--first-token-timeout", "0"]) == 2
    with pytest.raises(SweepConfigError, match="first_token_timeout_s"):
        SweepConfig(first_token_timeout_s=0)
    with pytest.raises(SweepConfigError, match="abort_after_s"):
        SweepConfig(abort_after_s=-1)
    base = SweepConfig()
    assert SweepConfig(abort_after_s=30, first_token_timeout_s=120).config_hash() == base.config_hash()
    assert "abort_after_s" not in base.measurement_dict()  # at its default: older sweeps still resume
    cfg = SweepConfig(abort_after_s=0, first_token_timeout_s=5)
    assert cfg.config_hash() != base.config_hash()
    assert cfg.rules().abort_after_s == 0
    live = SweepConfig(target="http://127.0.0.1:9/v1", model="m", accelerators=1, first_token_timeout_s=5)
    assert live.endpoint_for().first_token_timeout_s == 5


def test_preflight_passes_against_a_working_server(tmp_path, capsys):
    with serving(SSEServer(ttft_s=0.01, itl_s=0.001)) as srv:
        out = tmp_path / "o"
        rc = main(["run", "--target", srv.base_url, "--model", "test-model", *SHORT, "--out", str(out)])
        assert_live_run_measured(rc, out)
        assert "preflight: " in capsys.readouterr().err
        assert srv.bodies[0]["max_tokens"] <= 4  # the preflight's short request came first


# -- secrets end to end ----------------------------------------------------------------------------------

SECRET_HEADER = "tok-9f8e7d6c5b4a-secret"
SECRET_AUTH = "sk-headerauth-123456789"
SECRET_KEY = "sk-envkey-abcdef987654"


def _assert_nowhere(path: Path, *texts: str) -> None:
    files = _files(path)
    assert files, path
    for name, data in files.items():
        for s in texts:
            assert s.encode() not in data, f"{s} in {name}"


# The CLI prints the key-over-header warning to stderr (checked below): shown, not raised.
@pytest.mark.filterwarnings("default:an Authorization header was given:UserWarning")
def test_no_header_value_or_key_reaches_any_file_or_output(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AGENTPERF_TEST_KEY", SECRET_KEY)
    hdrs = [
        "--header",
        f"X-Auth-Token: {SECRET_HEADER}",
        "--header",
        f"authorization: Bearer {SECRET_AUTH}",
        "--public-header",
        "X-Bench-Source: cli-test",
        "--api-key-env",
        "AGENTPERF_TEST_KEY",
    ]
    with serving(SSEServer(ttft_s=0.01, itl_s=0.001)) as srv:
        out = tmp_path / "run"
        rc = main(["run", "--target", srv.base_url, "--model", "m", *SHORT, *hdrs, "--out", str(out)])
        assert_live_run_measured(rc, out)  # exit 3 only for a failed self-check on a busy machine
        sweep = tmp_path / "sweep"
        sweep_args = ["sweep", "--target", srv.base_url, "--model", "m", "--accelerators", "1"]
        sweep_args += ["--level-duration", "1", "--max-agents", "1", "--max-context", "2000", "--json"]
        with pytest.MonkeyPatch.context() as mp:  # a short level: sweep takes these from a config file
            cfg = tmp_path / "c.toml"
            cfg.write_text("[sweep]\nwarmup_s = 0.2\nmin_trajectories = 0\nmin_trajectories_per_agent = 0\n")
            mp.setenv("AGENTPERF_TEST_KEY", SECRET_KEY)
            assert main([*sweep_args, *hdrs, "--config", str(cfg), "--out", str(sweep)]) == 0
        seen = list(srv.headers)
    captured = capsys.readouterr()
    for stream in (captured.out, captured.err):
        for s in (SECRET_HEADER, SECRET_AUTH, SECRET_KEY):
            assert s not in stream
    _assert_nowhere(out, SECRET_HEADER, SECRET_AUTH, SECRET_KEY)
    _assert_nowhere(sweep, SECRET_HEADER, SECRET_AUTH, SECRET_KEY)
    # sent, once each: the key won over the Authorization header, with a warning
    for h in seen:
        auth = [v for k, v in h.items() if k.lower() == "authorization"]
        assert auth == [f"Bearer {SECRET_KEY}"], h
        assert h.get("X-Auth-Token") == SECRET_HEADER and h.get("X-Bench-Source") == "cli-test"
    assert "Authorization header was given" in captured.err
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"]["headers"] == {"X-Auth-Token": "***", "X-Bench-Source": "cli-test"}
    sweep_cfg = json.loads((sweep / "sweep.json").read_text())["config"]
    assert sweep_cfg["headers"] == ["X-Auth-Token: ***", "authorization: ***"]
    assert sweep_cfg["public_headers"] == ["X-Bench-Source: cli-test"]


def test_secret_header_values_do_not_change_the_sweep_config_hash():
    from agentperf_kit.sweep_config import SweepConfig

    base = dict(target="http://127.0.0.1:9/v1", model="m", accelerators=1)
    a = SweepConfig(**base, headers=("X-Auth-Token: value-one-xyz",))
    b = SweepConfig(**base, headers=("X-Auth-Token: value-two-xyz",))
    assert a.config_hash() == b.config_hash()
    assert "value-one-xyz" not in str(a.measurement_dict())


# -- honest duration ----------------------------------------------------------------------------------------


def test_expected_window_names_the_rule_that_stretches_it():
    from agentperf_kit.agents import RunRules
    from agentperf_kit.window_estimate import expected_window

    trajs = default_trajectories()
    rules = RunRules(duration_s=20)
    est = expected_window(trajs, 16, rules, speed_tps=20, ttft_s=10)
    assert est.stretched and est.stretched_by == "min_trajectories_per_agent"
    # 2.5 mean trajectories at 20 tok/s: tool waits + output time + a TTFT per turn
    mean_s = sum(sum(t.tool_delay_s + 10 + t.output_tokens / 20 for t in tr.turns) for tr in trajs) / len(
        trajs
    )
    assert est.window_s == pytest.approx(2.5 * mean_s)
    assert "min_trajectories_per_agent" in est.describe()
    relaxed = RunRules(duration_s=20, min_trajectories=0, min_trajectories_per_agent=0)
    assert not expected_window(trajs, 16, relaxed, speed_tps=20, ttft_s=10).stretched


def test_run_warns_when_the_window_will_exceed_twice_the_duration(capsys):
    from agentperf_kit.agents import RunRules
    from agentperf_kit.cli.run import _print_expected_window

    _print_expected_window(default_trajectories(), 16, RunRules(duration_s=20), virtual_time=False)
    err = capsys.readouterr().err
    assert "plan: " in err and "expected steady window" in err
    assert "warning: the steady window will last about" in err and "--min-trajectories-per-agent" in err
    _print_expected_window(
        default_trajectories(),
        16,
        RunRules(duration_s=20, min_trajectories=0, min_trajectories_per_agent=0),
        virtual_time=False,
    )
    assert "warning" not in capsys.readouterr().err


# -- Ctrl-C and closed pipes (real processes) ------------------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _ctrl_c_reaches_the_child() -> None:
    """In the child before it runs: Ctrl-C handled as at a terminal. A suite started in the background of
    a shell without job control ignores SIGINT, and a child inherits an ignored signal (Python then keeps
    ignoring it), so the run under test would never see the interrupt and go on to its window's end."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_is_one_line_exit_130_and_keeps_the_files(tmp_path):
    with serving(SSEServer(ttft_s=0.02, itl_s=0.01)) as srv:
        out = tmp_path / "o"
        args = ["run", "--target", srv.base_url, "--model", "m", *SHORT, "--out", str(out)]
        args[args.index("--duration") + 1] = "300"
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentperf_kit.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            preexec_fn=_ctrl_c_reaches_the_child,
        )
        deadline = time.monotonic() + 120
        while len(srv.bodies) < 5 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)  # agents are sending
        assert len(srv.bodies) >= 5
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "interrupted: the files written so far are kept"
    from agentperf_kit.results import load_run

    assert len(load_run(out).requests) > 0  # rows written so far are readable


def test_report_into_a_closed_pipe_is_not_an_error(tmp_path):
    out = tmp_path / "s"
    assert main(["sweep", "--out", str(out), "--level-duration", "30", "--max-agents", "2", "--json"]) == 0
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first byte: every write fails with EPIPE
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "agentperf_kit.cli", "report", str(out)],
            stdout=w,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            timeout=120,
        )
    finally:
        os.close(w)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
