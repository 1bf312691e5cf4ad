"""Telemetry of live runs: the Prometheus parser, /metrics scraping of the simulated server, measured power
from a DCGM-exporter style server and from a fake NVML, gaps, and the sweep's agents/MW from it.

Servers are real aiohttp apps on loopback; NVML (absent on CI machines) is an injected fake module.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time

import numpy as np
import pandas as pd
import pytest
from aiohttp import web

from agentperf_kit.agents import RunRules
from agentperf_kit.replay import Endpoint, run_live
from agentperf_kit.results import load_run
from agentperf_kit.sim.server import SimServer
from agentperf_kit.sweep import SweepConfig, SweepConfigError, run_sweep
from agentperf_kit.telemetry import (
    DcgmPower,
    NvmlPower,
    PrometheusParseError,
    TelemetryConfig,
    TelemetrySampler,
    derive_metrics_url,
    load_telemetry,
    parse_gpu_indices,
    parse_power_source,
    parse_prometheus_text,
    server_metrics,
    summarize_telemetry,
)
from agentperf_kit.telemetry.sampler import TELEMETRY_COLUMNS, TELEMETRY_JSONL, _frame
from agentperf_kit.trajectories.model import Trajectory, Turn
from tests.conftest import assert_live_run_measured
from tests.sse_servers import SSEServer, serving

RULES = RunRules(
    warmup_s=0.3,
    duration_s=1.5,
    min_trajectories=0,
    min_trajectories_per_agent=0,
    ramp_s=0.1,
    drain_timeout_s=3,
    random_start_turn=False,
)


def _trajs(n=4, turns=6, out=60, delay=0.1):
    res = []
    for i in range(n):
        ts, prev = [], 0
        for k in range(turns):
            ts.append(Turn(0, prev, 50 + 5 * k, out, tool_delay_s=delay))
            prev += 50 + 5 * k
        res.append(Trajectory(f"t{i}", ts))
    return res


# -- the parser ----------------------------------------------------------------------------------------

# from vLLM's docs (Production Metrics), V1 engine with two data-parallel engines
VLLM_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B"} 3.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B"} 1.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B"} 0.25
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="meta-llama/Llama-3.1-8B"} 10000.0
vllm:prefix_cache_queries_total{engine="1",model_name="meta-llama/Llama-3.1-8B"} 6000.0
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="meta-llama/Llama-3.1-8B"} 8000.0
vllm:prefix_cache_hits_total{engine="1",model_name="meta-llama/Llama-3.1-8B"} 4000.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="meta-llama/Llama-3.1-8B"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="meta-llama/Llama-3.1-8B"} 42.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="meta-llama/Llama-3.1-8B"} 42.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="meta-llama/Llama-3.1-8B"} 3.5
"""

# from SGLang's docs (Production Metrics)
SGLANG_TEXT = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="meta-llama/Llama-3.1-8B"} 28.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="meta-llama/Llama-3.1-8B"} 0.28
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="meta-llama/Llama-3.1-8B"} 3.0
# HELP sglang:cache_hit_rate The prefix cache hit rate.
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{model_name="meta-llama/Llama-3.1-8B"} 0.007507552643049313
# HELP sglang:gen_throughput The generation throughput (token/s).
# TYPE sglang:gen_throughput gauge
sglang:gen_throughput{model_name="meta-llama/Llama-3.1-8B"} 355.0
"""

LLAMACPP_TEXT = """\
# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.125
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 1
"""

TRICKY = (
    "# A plain comment\n"
    '# HELP odd A help text with a \\\\ backslash and a \\n newline "and quotes".\n'
    "# TYPE odd gauge\n"
    'odd{path="C:\\\\dir",msg="say \\"hi\\"",multi="a\\nb",empty=""} NaN\n'
    'odd{path="x" , trailing="comma",} +Inf 1712345678000\n'
    "odd\t-Inf\n"
    "  indented_metric 1e-3\n"
    "\r\n"
    "bare 42\r\n"
    'exemplar_total{a="1"} 7 # {trace_id="abc"} 1.0 1712345678.001\n'
    '{"dotted.name", label="v"} 5\n'
    "# EOF\n"
)


def test_parser_reads_label_escapes_special_values_and_metadata():
    page = parse_prometheus_text(TRICKY)
    odd = page.by_name("odd")
    assert odd[0].labels == {"path": "C:\\dir", "msg": 'say "hi"', "multi": "a\nb", "empty": ""}
    assert math.isnan(odd[0].value)
    assert odd[1].value == math.inf and odd[1].timestamp_ms == 1712345678000
    assert odd[1].labels == {"path": "x", "trailing": "comma"}
    assert odd[2].value == -math.inf
    assert page.by_name("indented_metric")[0].value == pytest.approx(0.001)
    assert page.by_name("bare")[0].value == 42
    assert page.by_name("exemplar_total")[0].value == 7
    assert page.by_name("dotted.name")[0].labels == {"label": "v"}
    assert page.types["odd"] == "gauge"
    assert page.help["odd"] == 'A help text with a \\ backslash and a \n newline "and quotes".'
    assert odd[0].key == 'odd{empty="",msg="say \\"hi\\"",multi="a\\nb",path="C:\\\\dir"}'


def test_parser_agrees_with_prometheus_client_on_server_pages():
    parser = pytest.importorskip("prometheus_client.parser")
    for text in (VLLM_TEXT, SGLANG_TEXT, LLAMACPP_TEXT):
        ours = {
            (s.name, tuple(sorted(s.labels.items()))): s.value for s in parse_prometheus_text(text).samples
        }
        theirs = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in parser.text_string_to_metric_families(text)
            for s in fam.samples
        }
        assert ours == theirs


@pytest.mark.parametrize(
    "bad",
    [
        'm{a="unterminated} 1',
        "m{a=1} 1",
        'm{="x"} 1',
        "m notanumber",
        "m",
        'm{a="1"}2',
        "m 1 2 3",
    ],
)
def test_parser_names_the_bad_line(bad):
    with pytest.raises(PrometheusParseError, match=r"line 2: "):
        parse_prometheus_text("ok 1\n" + bad + "\n")


def test_name_filter_skips_other_lines_cheaply():
    text = "<html>garbage { not prometheus</html>\n" + VLLM_TEXT
    page = parse_prometheus_text(text, names={"vllm:num_requests_running"})
    assert [s.value for s in page.samples] == [3.0, 2.0]
    big = VLLM_TEXT + "".join(
        f'vllm:e2e_request_latency_seconds_bucket{{le="{i}",model_name="m"}} {i}\n' for i in range(20000)
    )
    t = time.perf_counter()
    parse_prometheus_text(big, names={"vllm:num_requests_running", "vllm:num_requests_waiting"})
    assert time.perf_counter() - t < 0.05  # 20,000 histogram lines skipped in well under the 1 s interval


def test_known_series_of_each_engine_map_to_common_columns():
    v = server_metrics(parse_prometheus_text(VLLM_TEXT))
    assert (v["engine"], v["running"], v["waiting"], v["kv_usage"]) == ("vllm", 5.0, 1.0, 0.375)
    assert (v["prefix_queries"], v["prefix_hits"]) == (16000.0, 12000.0)
    assert 'vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B"}' in v["raw"]
    s = server_metrics(parse_prometheus_text(SGLANG_TEXT))
    assert (s["engine"], s["running"], s["waiting"], s["kv_usage"]) == ("sglang", 28.0, 3.0, 0.28)
    assert s["prefix_hit_rate_gauge"] == pytest.approx(0.0075, abs=1e-4) and math.isnan(s["prefix_queries"])
    ll = server_metrics(parse_prometheus_text(LLAMACPP_TEXT))
    assert (ll["engine"], ll["running"], ll["waiting"], ll["kv_usage"]) == ("llamacpp", 2.0, 1.0, 0.125)
    old = server_metrics(parse_prometheus_text('vllm:gpu_cache_usage_perc{model_name="m"} 0.75\n'))
    assert old["engine"] == "vllm" and old["kv_usage"] == 0.75
    assert server_metrics(parse_prometheus_text("process_cpu_seconds_total 3\n"))["engine"] is None


def test_metrics_url_and_power_source_specs():
    assert derive_metrics_url("http://h:8000/v1") == "http://h:8000/metrics"
    assert derive_metrics_url("http://h:8000/v1/") == "http://h:8000/metrics"
    assert derive_metrics_url("http://h:30000") == "http://h:30000/metrics"
    assert parse_gpu_indices("0, 2,3") == [0, 2, 3] and parse_gpu_indices("all") is None
    with pytest.raises(ValueError, match="--gpu-indices"):
        parse_gpu_indices("0,x")
    assert parse_power_source("none") is None and isinstance(parse_power_source("nvml"), NvmlPower)
    d = parse_power_source("dcgm:http://a:9400/metrics,http://b:9400/metrics", [0])
    assert isinstance(d, DcgmPower) and d.urls == ["http://a:9400/metrics", "http://b:9400/metrics"]
    with pytest.raises(ValueError, match="nvml, amdsmi, dcgm:URL"):
        parse_power_source("ipmi")


# -- loopback servers -------------------------------------------------------------------------------------


def _dcgm_text(watts, t0, energy=True, extra_gpu_w=None):
    lines = [
        "# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).",
        "# TYPE DCGM_FI_DEV_POWER_USAGE gauge",
    ]
    gpus = list(enumerate(watts)) + ([(len(watts), extra_gpu_w)] if extra_gpu_w else [])
    for i, w in gpus:
        lab = (
            f'gpu="{i}",UUID="GPU-{i:04d}",device="nvidia{i}",modelName="NVIDIA H200",Hostname="node1",'
            'DCGM_FI_DRIVER_VERSION="550.54.15"'
        )
        lines.append(f"DCGM_FI_DEV_POWER_USAGE{{{lab}}} {w:.6f}")
    if energy:
        lines += [
            "# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).",
            "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter",
        ]
        dt = time.monotonic() - t0
        for i, w in gpus:
            lab = f'gpu="{i}",UUID="GPU-{i:04d}",device="nvidia{i}",modelName="NVIDIA H200",Hostname="node1"'
            lines.append(f"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{lab}}} {int(5e9 + w * dt * 1000)}")
    return "\n".join(lines) + "\n"


class MetricsServer:
    """``/metrics`` with a chosen behaviour: ``dcgm`` (2 x 350 W by default), ``http500``, ``garbage``."""

    def __init__(self, mode="dcgm", watts=(350.0, 350.0), energy=True, extra_gpu_w=None):
        self.mode, self.watts, self.energy, self.extra_gpu_w = mode, watts, energy, extra_gpu_w
        self.t0 = time.monotonic()
        self.hits = 0
        self.runner = None
        self.port = 0

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/metrics"

    async def start(self):
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self):
        await self.runner.cleanup()

    async def _metrics(self, request):
        self.hits += 1
        if self.mode == "http500":
            return web.Response(status=500, text="internal error")
        if self.mode == "garbage":
            return web.Response(text="<html><body>Not Prometheus { at all</body></html>")
        if self.mode == "broken":
            return web.Response(text='vllm:num_requests_running{model_name="m" 3\n')
        return web.Response(text=_dcgm_text(self.watts, self.t0, self.energy, self.extra_gpu_w))


def _live(tmp_path, telemetry, *, server=None, extra=(), n=4, trajs=None, rules=RULES):
    async def go():
        srv = server or await SimServer(time_scale=10).start()
        if server is not None:
            await srv.start()
        for e in extra:
            await e.start()
        try:
            model = getattr(srv, "model", "test-model")
            ep = Endpoint(srv.base_url, model, api="completions", request_timeout_s=10)
            return await run_live(
                ep, trajs or _trajs(), n, rules, out_dir=tmp_path, progress=False, telemetry=telemetry
            )
        finally:
            for e in extra:
                await e.stop()
            await srv.stop()

    return asyncio.run(go())


# -- /metrics of the simulated server -----------------------------------------------------------------------


def test_scraped_queue_lengths_line_up_with_requests_in_flight(tmp_path):
    trajs = _trajs(n=6, turns=8, out=300, delay=0.3)
    res = _live(tmp_path, TelemetryConfig(interval_s=0.05), n=6, trajs=trajs)
    df = res.requests
    assert df.ok.all()
    tel = pd.read_parquet(tmp_path / "telemetry.parquet")
    assert list(tel.columns) == list(TELEMETRY_COLUMNS)
    m = tel[tel.source == "metrics"]
    assert m.ok.all() and (m.engine == "vllm").all() and len(m) >= 20
    assert m.t_s.is_monotonic_increasing and m.read_s.median() < 0.05
    # the client's own count of requests in flight at each sample time (same clock)
    send, end = df.t_send_s.to_numpy(), df.t_end_s.to_numpy()
    inside = m[(m.t_s > send.min()) & (m.t_s < end.max())]
    client = np.array([((send <= t) & (t < end)).sum() for t in inside.t_s])
    server = (inside.running + inside.waiting).to_numpy()
    assert np.mean(np.abs(server - client) <= 1) >= 0.9, list(zip(client, server))
    assert np.mean(server == client) >= 0.8
    # negative control: the same comparison with the client's count taken 0.15 s late agrees less
    late = np.array([((send <= t + 0.15) & (t + 0.15 < end)).sum() for t in inside.t_s])
    assert np.mean(late == server) < np.mean(client == server)
    assert client.max() >= 4 and server.max() >= 4
    after = m[m.t_s > end.max() + 0.05]
    assert (after.running == 0).all()  # the server saw the drain too
    # prefix-cache hits: counter deltas over each interval; within-phase prefixes do hit
    summ = res.manifest["telemetry"]
    assert summ["metrics"]["engine"] == "vllm" and 0 < summ["metrics"]["prefix_hit_rate"] < 1
    assert summ["metrics"]["mean_running"] > 0 and summ["gaps"]["metrics"] == 0
    assert res.manifest["config"]["telemetry"]["scrape_metrics"] is True
    assert "power_scope" not in res.manifest  # nothing measured power
    assert (m.prefix_hits_delta.dropna() >= 0).all()


def test_gaps_are_rows_with_the_reason(tmp_path):
    async def go():
        bad = await MetricsServer("http500").start()
        garbage = await MetricsServer("garbage").start()
        broken = await MetricsServer("broken").start()
        srv = await SimServer(time_scale=10).start()
        try:
            ep = Endpoint(srv.base_url, srv.model, api="completions")
            out = {}
            for name, url in (("500", bad.url), ("garbage", garbage.url), ("broken", broken.url)):
                cfg = TelemetryConfig(interval_s=0.1, metrics_url=url)
                out[name] = await run_live(
                    ep, _trajs(), 2, RULES, out_dir=tmp_path / name, progress=False, telemetry=cfg
                )
            return out
        finally:
            for s in (bad, garbage, broken, srv):
                await s.stop()

    runs = asyncio.run(go())
    for name, want in (("500", "HTTP 500"), ("garbage", "no known"), ("broken", "unparseable")):
        res = runs[name]
        assert res.requests.ok.all() and len(res.requests) > 0
        tel = load_telemetry(tmp_path / name)
        assert len(tel) >= 10 and not tel.ok.any()
        assert tel.note.str.contains(want).all(), tel.note.iloc[0]
        summ = res.manifest["telemetry"]
        assert summ["gaps"]["metrics"] == len(tel) and summ["metrics"]["reads_in_window"] == 0
        assert any("failed" in n for n in summ["notes"])


def test_an_unreachable_metrics_url_is_a_gap(tmp_path):
    res = _live(tmp_path, TelemetryConfig(interval_s=0.2, metrics_url="http://127.0.0.1:9/metrics"))
    tel = load_telemetry(tmp_path)
    assert res.requests.ok.all() and len(tel) >= 3 and not tel.ok.any()
    assert tel.note.str.contains("Error").all()


# -- measured power: DCGM exporter --------------------------------------------------------------------------


@pytest.mark.parametrize("energy", [True, False])
def test_dcgm_power_of_the_selected_gpus(tmp_path, energy):
    dcgm = MetricsServer(watts=(350.0, 350.0), energy=energy, extra_gpu_w=120.0)

    async def go():
        await dcgm.start()
        srv = await SimServer(time_scale=10).start()
        try:
            ep = Endpoint(srv.base_url, srv.model, api="completions")
            tc = TelemetryConfig(
                interval_s=0.1, scrape_metrics=False, power=f"dcgm:{dcgm.url}", gpu_indices=[0, 1]
            )
            return await run_live(ep, _trajs(), 2, RULES, out_dir=tmp_path, progress=False, telemetry=tc)
        finally:
            await srv.stop()
            await dcgm.stop()

    res = asyncio.run(go())
    m = res.manifest
    assert m["power_scope"] == "measured" and m["power_w"] == pytest.approx(700, rel=0.03)
    p = m["telemetry"]["power"]
    assert p["source"] == "dcgm" and p["n_devices"] == 2
    assert p["power_method"] == ("energy_counter" if energy else "power_samples")
    w = m["window"]
    assert p["energy_j"] == pytest.approx(700 * (w["window_end_s"] - w["window_start_s"]), rel=0.03)
    tel = load_telemetry(tmp_path)
    assert set(tel.source) == {"dcgm"} and tel.ok.all()
    assert (tel.power_w == 700).all()
    assert json.loads(tel.raw.iloc[0]) == {"gpu0": 350.0, "gpu1": 350.0}
    if energy:
        assert tel.power_from_energy_w.dropna().median() == pytest.approx(700, rel=0.1)


def _fast_trajectory_file(tmp_path):
    from agentperf_kit.trajectories import SynthConfig, fit_context, save_trajectories, synthesize

    cfg = SynthConfig(tool_delay_median_s=0.01, tool_delay_range_s=(0.005, 0.02))
    return str(save_trajectories(fit_context(synthesize(cfg, count=8, seed=2), 1500), tmp_path / "t.jsonl"))


def test_sweep_uses_the_measured_power_for_agents_per_mw(tmp_path):
    llm = SSEServer(ttft_s=0.02, itl_s=0.005)
    dcgm = MetricsServer(watts=(350.0, 350.0), energy=False)
    with serving(llm, dcgm):
        cfg = SweepConfig(
            target=llm.base_url,
            model="m",
            accelerators=2,
            accelerator_type="H200",
            trajectories=_fast_trajectory_file(tmp_path),
            level_duration_s=1.5,
            warmup_s=0.2,
            min_trajectories=0,
            min_trajectories_per_agent=0,
            max_agents=2,
            drain_timeout_s=2,
            confidence=0.5,
            max_extensions=0,
            power_source=f"dcgm:{dcgm.url}",
            gpu_indices="0,1",
            telemetry_interval_s=0.1,
            out=str(tmp_path / "sweep"),
            endpoint="completions",
            tiers="easy=1/60",
        )
        res = run_sweep(cfg, progress=False)
    lv = res.levels
    assert list(lv.concurrency) == [1, 2]
    assert (lv.power_scope == "measured").all() and np.allclose(lv.power_w, 700)
    assert "energy_j" in lv and (lv.power_method == "power_samples").all()
    assert (lv.metrics_gaps > 0).all()  # the SSE test server has no /metrics: gaps, not failures
    tier = res.summary["tiers"][0]
    assert tier["max_agents"] == 2 and tier["power_w"] == pytest.approx(700)
    assert tier["agents_per_mw"] == pytest.approx(2 / 700e-6) and tier["power_scope"] == "measured"
    s = res.summary
    assert s["power_scope"] == "measured" and s["power_source"].startswith("dcgm:") and s["power_w"] is None
    assert any("power measured by dcgm" in n for n in s["notes"])
    run = load_run(tmp_path / "sweep" / "levels" / "n00002_e0")
    assert run.manifest["power_detail"]["source"] == "dcgm"


def test_sweep_falls_back_to_declared_power_when_nothing_is_measured(tmp_path):
    llm = SSEServer(ttft_s=0.02, itl_s=0.005)
    with serving(llm):
        cfg = SweepConfig(
            target=llm.base_url,
            model="m",
            accelerators=1,
            trajectories=_fast_trajectory_file(tmp_path),
            level_duration_s=1.5,
            warmup_s=0.2,
            min_trajectories=0,
            min_trajectories_per_agent=0,
            max_agents=1,
            drain_timeout_s=2,
            confidence=0.5,
            max_extensions=0,
            power_source="dcgm:http://127.0.0.1:9/metrics",
            power_w=500,
            power_scope="declared",
            scrape_metrics=False,
            telemetry_interval_s=0.2,
            out=str(tmp_path / "s"),
            endpoint="completions",
            tiers="easy=1/60",
        )
        res = run_sweep(cfg, progress=False)
    tier = res.summary["tiers"][0]
    assert tier["power_scope"] == "declared" and tier["agents_per_mw"] == pytest.approx(1 / 500e-6)
    assert res.summary["power_scope"] == "declared"
    assert any("N=1: power not measured" in n for n in res.summary["notes"])
    assert any("gave no measurement" in n for n in res.summary["notes"])


def test_sweep_config_checks_and_keeps_old_hashes():
    base = SweepConfig()
    assert "power_source" not in base.measurement_dict()  # defaults left out: older sweeps still resume
    with pytest.raises(SweepConfigError, match="simulator's power is modelled"):
        SweepConfig(power_source="nvml")
    with pytest.raises(SweepConfigError, match="expected nvml, amdsmi"):
        SweepConfig(target="http://h/v1", model="m", accelerators=1, power_source="ipmi")
    with pytest.raises(SweepConfigError, match="--gpu-indices needs --power-source"):
        SweepConfig(target="http://h/v1", model="m", accelerators=1, gpu_indices="0")
    c = SweepConfig(target="http://h/v1", model="m", accelerators=8, power_source="nvml", gpu_indices=[0, 1])
    assert c.gpu_indices == "0,1" and c.measurement_dict()["power_source"] == "nvml"
    assert c.telemetry().gpu_indices == [0, 1] and c.telemetry().power == "nvml"
    assert c.config_hash() != SweepConfig(target="http://h/v1", model="m", accelerators=8).config_hash()


# -- measured power: NVML (injected fake) -------------------------------------------------------------------


class FakeNvml:
    """An NVML-like module: GPUs with constant power; energy counters that integrate it in real time."""

    class NVMLError(Exception):
        pass

    def __init__(self, watts=(300.0, 400.0), energy=True, fail_init=False):
        self.watts = watts
        self.energy = energy
        self.fail_init = fail_init
        self.t0 = time.monotonic()
        self.threads: set[int] = set()
        self.calls: list[str] = []

    def _call(self, name):
        self.threads.add(threading.get_ident())
        self.calls.append(name)

    def nvmlInit(self):
        self._call("init")
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self):
        self._call("shutdown")

    def nvmlDeviceGetCount(self):
        return len(self.watts)

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("handle", i)

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H200"

    def nvmlDeviceGetPowerUsage(self, h):
        self._call("power")
        return int(self.watts[h[1]] * 1000)  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        self._call("energy")
        if not self.energy:
            raise self.NVMLError("Not Supported")
        return int(1e9 + self.watts[h[1]] * (time.monotonic() - self.t0) * 1000)  # mJ


@pytest.mark.parametrize(("energy", "indices", "watts"), [(True, None, 700), (False, [1], 400)])
def test_nvml_power_off_the_event_loop(tmp_path, energy, indices, watts):
    nv = FakeNvml(energy=energy)
    loop_threads = set()

    async def go():
        loop_threads.add(threading.get_ident())
        srv = await SimServer(time_scale=10).start()
        try:
            ep = Endpoint(srv.base_url, srv.model, api="completions")
            cfg = TelemetryConfig(interval_s=0.1, power=NvmlPower(indices, nvml=nv))
            return await run_live(ep, _trajs(), 2, RULES, out_dir=tmp_path, progress=False, telemetry=cfg)
        finally:
            await srv.stop()

    res = asyncio.run(go())
    assert nv.threads and not (nv.threads & loop_threads)  # every NVML call ran in the executor thread
    assert nv.calls[0] == "init" and nv.calls[-1] == "shutdown"
    m = res.manifest
    assert m["power_scope"] == "measured" and m["power_w"] == pytest.approx(watts, rel=0.03)
    p = m["telemetry"]["power"]
    assert p["power_method"] == ("energy_counter" if energy else "power_samples")
    src = next(s for s in m["telemetry"]["sources"] if s["kind"] == "nvml")
    assert src["energy_counter"] is energy and src["gpu_names"][0] == "NVIDIA H200"
    tel = load_telemetry(tmp_path)
    assert set(tel.source) == {"metrics", "nvml"} and tel[tel.source == "nvml"].ok.all()


def test_nvml_unavailable_is_a_note_and_the_run_goes_on(tmp_path):
    res = _live(tmp_path, TelemetryConfig(interval_s=0.2, power=NvmlPower(nvml=FakeNvml(fail_init=True))))
    assert res.requests.ok.all() and "power_scope" not in res.manifest
    notes = res.manifest["telemetry"]["notes"]
    assert any("power not measured: nvml: cannot initialise NVML" in n for n in notes)
    try:
        import pynvml  # noqa: F401
    except ImportError:  # this machine: the real path says what to install
        res = _live(tmp_path / "real", TelemetryConfig(interval_s=0.2, power="nvml", scrape_metrics=False))
        assert any("pip install nvidia-ml-py" in n for n in res.manifest["telemetry"]["notes"])
        assert "power_w" not in res.manifest


def test_bad_gpu_index_names_what_exists(tmp_path):
    res = _live(tmp_path, TelemetryConfig(interval_s=0.2, power=NvmlPower([5], nvml=FakeNvml())))
    assert any("GPU index 5 does not exist" in n for n in res.manifest["telemetry"]["notes"])


# -- files and the window summary ---------------------------------------------------------------------------


def test_an_interrupted_run_keeps_its_telemetry_rows(tmp_path):
    async def go():
        srv = await MetricsServer().start()
        s = TelemetrySampler(
            TelemetryConfig(interval_s=0.05, scrape_metrics=False, power=f"dcgm:{srv.url}"), out_dir=tmp_path
        )
        await s.start()
        await asyncio.sleep(0.5)
        await s.stop()  # no finalize: as if the run had been killed
        await srv.stop()

    asyncio.run(go())
    assert not (tmp_path / "telemetry.parquet").exists()
    with open(tmp_path / TELEMETRY_JSONL, "a") as fh:
        fh.write('{"source": "dcgm", "t_s": 9.9, "ok": tr')  # a line cut by the kill
    tel = load_telemetry(tmp_path)
    assert len(tel) >= 5 and tel.ok.all() and (tel.power_w == 700).all()
    assert list(tel.columns) == list(TELEMETRY_COLUMNS)


def test_window_mean_power_from_energy_counters_by_hand():
    rows = [
        {"source": "nvml", "t_s": t, "ok": True, "power_w": 999.0, "energy_j": e, "n_devices": 2}
        for t, e in ((0.0, 0.0), (1.0, 500.0), (2.0, 1100.0), (3.0, 1700.0), (4.0, 2000.0))
    ]
    rows.insert(2, {"source": "nvml", "t_s": 1.5, "ok": False, "note": "timeout"})
    summ = summarize_telemetry(_frame(rows), 0.5, 3.5)
    p = summ["power"]
    # E(0.5) = 250, E(3.5) = 1850 -> 1600 J over 3 s
    assert p["power_method"] == "energy_counter" and p["mean_power_w"] == pytest.approx(1600 / 3)
    assert p["energy_j"] == pytest.approx(1600) and p["gaps_in_window"] == 1 and p["reads_in_window"] == 3
    no_energy = _frame([{**r, "energy_j": None} for r in rows if r.get("ok")])
    p2 = summarize_telemetry(no_energy, 0.5, 3.5)["power"]
    assert p2["power_method"] == "power_samples" and p2["mean_power_w"] == 999.0
    assert p2["energy_j"] == pytest.approx(999 * 3)
    empty = summarize_telemetry(no_energy, 10, 20)
    assert empty["power"]["mean_power_w"] is None and "no successful read" in empty["notes"][0]


def test_cli_run_measures_power_from_a_dcgm_url(tmp_path, capsys):
    from agentperf_kit.cli import main

    llm = SSEServer(ttft_s=0.02, itl_s=0.001)
    dcgm = MetricsServer(watts=(350.0, 350.0))
    with serving(llm, dcgm):
        rc = main(
            [
                "run",
                "--target",
                llm.base_url,
                "--model",
                "m",
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
                "--drain-timeout",
                "2",
                "--max-context",
                "1500",
                "--endpoint",
                "completions",
                "--power-source",
                f"dcgm:{dcgm.url}",
                "--gpu-indices",
                "0,1",
                "--no-scrape-metrics",
                "--telemetry-interval",
                "0.1",
                "--quiet",
                "--out",
                str(tmp_path / "r"),
            ]
        )
    assert_live_run_measured(rc, tmp_path / "r")
    text = capsys.readouterr().out
    found = re.search(r"power \(dcgm, energy_counter\): mean ([\d,]+) W over the window", text)
    assert found, text
    # Each energy read is stamped at its midpoint, so an end of the window is off by at most half its
    # read's duration: the tolerance comes from this run's own reads (slow under load), never a fixed one.
    power = pd.read_parquet(tmp_path / "r" / "telemetry.parquet").query("source == 'dcgm' and ok")
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    covered = manifest["telemetry"]["power"]["covered_s"]
    timing_rel = float(power["read_s"].max()) / covered
    assert float(found.group(1).replace(",", "")) == pytest.approx(700, rel=0.03 + timing_rel)
    res = load_run(tmp_path / "r")
    assert res.manifest["power_scope"] == "measured"
    assert set(load_telemetry(tmp_path / "r").source) == {"dcgm"}
