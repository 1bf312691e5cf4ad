"""Shared pytest configuration."""

import gc
import os
import sys
import warnings

import pytest

# A simulated sweep's side jobs (the band's searches, the unloaded task baseline) run inline in the tests,
# not in worker processes: on the 2-core CI machine every sweep's worker would re-import the toolkit (~5 s
# wall under load) for jobs that take about a second, and the suite runs many sweeps. Both ways
# give the same results and files (agentperf_kit/sweep_jobs.py); the worker path stays under test where a
# test sets the variable itself (tests/test_sweep_jobs.py; tests/test_sweep_band.py compares a sweep with
# workers against the same sweep inline). An AGENTPERF_SWEEP_WORKERS already set by the caller is kept.
# Set here, at import, so that subprocesses (the CLI, notebook kernels, pool workers) inherit it.
os.environ.setdefault("AGENTPERF_SWEEP_WORKERS", "0")


@pytest.fixture(scope="session")
def small_sweep(tmp_path_factory):
    """A small simulated sweep (short levels, N <= 32) shared by the task and frontier tests."""
    from agentperf_kit.sweep import SweepConfig, run_sweep

    out = tmp_path_factory.mktemp("beyond") / "sweep"
    cfg = SweepConfig(
        out=str(out),
        level_duration_s=60,
        warmup_s=10,
        min_trajectories=5,
        min_trajectories_per_agent=1,
        max_agents=32,
    )
    run_sweep(cfg, progress=False)
    return out


def assert_live_run_measured(rc: int, out) -> None:
    """``agentperf run`` against a loopback server either measured (exit 0) or, on a machine too busy for
    the client's self-check, ended with exit 3 and the reason in the manifest (``client_ok`` False with
    reasons): both are correct behaviour of the tool, and what a test checks after that (files, headers,
    credentials, power) holds for both. Any other exit status fails."""
    from agentperf_kit.results import load_run

    if rc == 3:
        manifest = load_run(out).manifest
        assert manifest.get("client_ok") is False, f"exit 3 without a failed self-check: {manifest}"
        assert manifest["client_check"]["reasons"]
        return
    assert rc == 0


# The fast lane (README, docs/ARCHITECTURE.md): ``pytest -m "not slow and not browser"`` runs in under a
# minute on the CI machine. Besides the tests marked ``@pytest.mark.slow`` in their files, these are slow:
# whole modules that run sweeps, subprocesses or many live requests, tests that use the session sweep, and the
# tests that took 0.8 s or more (measured with ``pytest --durations=0`` on the 2-core CI machine under load).
# A new test that takes more than about a second: mark it ``@pytest.mark.slow`` in its file.
SLOW_MODULES = {
    "test_live_faults.py",
    "test_live_fuzz.py",
    "test_notebooks.py",
    "test_sweep_extend.py",
    "test_frontier.py",
    "test_tasks.py",
    "test_whatif.py",
    "test_report.py",
    "test_run_cli.py",
    "test_client_outside.py",
    "test_sweep.py",
    "test_cli_sweep.py",
    "test_sweep_serve_sim.py",
}
SLOW_TESTS = {
    "test_targets.py": {
        "test_run_sweep_runs_a_custom_target_through_the_same_path",
    },
    "test_sweep_band.py": {
        "test_simulated_sweep_carries_its_band_and_prints_it",
    },
    "test_chunks.py": {
        "test_a_cancelled_request_row_agrees_with_its_chunk_rows",
        "test_chunk_times_give_the_servers_inter_token_latency",
        "test_chunks_are_off_by_default",
    },
    "test_cli_errors.py": {
        "test_a_sweep_level_that_ended_early_is_a_failed_level_with_the_reason",
        "test_an_always_failing_server_ends_the_level_early_with_exit_3",
        "test_ctrl_c_is_one_line_exit_130_and_keeps_the_files",
        "test_no_header_value_or_key_reaches_any_file_or_output",
        "test_no_preflight_skips_it_and_a_run_with_no_success_exits_3",
        "test_preflight_passes_against_a_working_server",
        "test_report_into_a_closed_pipe_is_not_an_error",
        "test_sweep_out_resumes_only_its_own_sweep",
    },
    "test_client_session.py": {
        "test_a_large_body_that_waits_for_the_socket_is_sent_whole_and_stamped_when_written",
        "test_idle_connections_are_dropped_before_the_server_would_close_them",
        "test_request_and_stall_limits_share_one_timer",
    },
    "test_plots.py": {
        "test_tier_lines_only_at_the_tiers_own_percentile",
        "test_level_metric_draws_sorted_data_and_tier_limits",
        "test_plot_levels_returns_a_two_panel_figure",
        "test_report_figures_feed_the_html_report",
    },
    "test_recorder.py": {
        "test_sigkilled_writer_leaves_readable_rows",
    },
    "test_replay.py": {
        "test_api_key_never_reaches_files",
        "test_chat_filler_is_sized_in_the_servers_own_tokens",
        "test_chat_filler_without_calibration_misses_by_the_tokenizer_ratio",
        "test_clean_run_passes_the_self_check",
        "test_connect_error_is_a_row",
        "test_dialects_measure_ttft_speed_and_usage",
        "test_each_fault_is_a_row_with_its_class",
        "test_in_flight_reaches_n_beyond_aiohttp_default_pool",
        "test_prompts_have_exact_prefixes_within_a_phase_and_none_across",
        "test_repeated_runs_with_one_seed_never_find_their_prompts_cached",
        "test_self_check_flags_a_blocked_event_loop",
        "test_self_check_flags_a_capped_connection_pool",
        "test_tool_delays_are_respected",
    },
    "test_serve_sim.py": {
        "test_first_token_at_the_end_of_prefill",
        "test_kv_pressure_shows_as_waiting_requests",
        "test_live_replay_against_the_simulated_server",
        "test_non_streaming_client_that_hangs_up_is_aborted",
        "test_openai_sdk_against_the_simulated_server",
    },
    "test_sim.py": {
        "test_conservation_under_random_workloads",
    },
    "test_sink_flow.py": {
        "test_a_huge_burst_through_the_sink_is_read_whole",
    },
    "test_sse_fastpath.py": {
        "test_send_request_fast_and_full_give_the_same_outcome",
    },
    "test_stats.py": {
        "test_a_level_where_many_requests_hang_fails_the_tier",
        "test_clustered_interval_holds_the_value_and_the_independent_interval",
        "test_edge_cases_measured_like_the_reference_through_the_real_client",
        "test_levels_csv_and_summary_store_each_tiers_own_statistics",
    },
    "test_telemetry.py": {
        "test_an_unreachable_metrics_url_is_a_gap",
        "test_bad_gpu_index_names_what_exists",
        "test_cli_run_measures_power_from_a_dcgm_url",
        "test_dcgm_power_of_the_selected_gpus",
        "test_gaps_are_rows_with_the_reason",
        "test_nvml_power_off_the_event_loop",
        "test_nvml_unavailable_is_a_note_and_the_run_goes_on",
        "test_scraped_queue_lengths_line_up_with_requests_in_flight",
        "test_sweep_falls_back_to_declared_power_when_nothing_is_measured",
        "test_sweep_uses_the_measured_power_for_agents_per_mw",
    },
    "test_trajectories_api.py": {
        "test_default_set_regenerates_byte_for_byte",
    },
    "test_trajectories_fit.py": {
        "test_fit_cli",
    },
    "test_widgets.py": {
        "test_explorer_reproduces_a_simulated_sweep",
        "test_frontier_explorer_on_a_sweep_gives_its_tiers",
        "test_frontier_explorer_reads_the_table_at_the_slider_point",
        "test_level_picker_shows_the_chosen_level",
        "test_random_tables_agree_with_slo",
        "test_trajectory_browser_tables_one_agent",
        "test_widget_contract_for_the_browser_test",
    },
}


def pytest_collection_modifyitems(config, items):
    # Real-server tests start llama.cpp / vLLM CPU (../shared/real-servers) and take minutes: they run only
    # when asked for with a marker expression that names them (`pytest -m realserver`), also where the
    # servers are built, so that the plain test command stays within CI's budget.
    asked_real = "realserver" in (config.option.markexpr or "")
    skip_real = pytest.mark.skip(reason="real-server test: run it with `pytest -m realserver`")
    for item in items:
        if "realserver" in item.keywords and not asked_real:
            item.add_marker(skip_real)
        module = item.path.name
        name = getattr(item, "originalname", None) or item.name
        if (
            module in SLOW_MODULES
            or name in SLOW_TESTS.get(module, ())
            or "small_sweep" in getattr(item, "fixturenames", ())
        ):
            item.add_marker(pytest.mark.slow)


# -- one local Ray head for the Ray test modules ------------------------------------------------------------
# Starting one takes 10-40 s on the 2-core CI machine, so the Ray modules (test_ray_*.py, adjacent in
# the run's order) share it; it is shut down after the last test of the last of them, so that its processes
# do not run beside the rest of the suite.
RAY_MODULES = ("test_ray_scaleout.py", "test_ray_study.py")


@pytest.fixture
def ray_head():
    """A local Ray head (loopback, 2 CPUs, no dashboard), started on first use. Skips, with the load
    average, when Ray's own fixed start-up limits are missed three times (an overloaded machine)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        from agentperf_kit.errors import AgentperfError
        from agentperf_kit.scaleout.runtime import start_local_ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        with warnings.catch_warnings():
            # a retried start leaves the first attempt's Popen handles, still exiting, to be collected
            warnings.simplefilter("ignore", ResourceWarning)
            try:
                start_local_ray(2)
            except AgentperfError as exc:
                pytest.skip(f"no local Ray head (load average {os.getloadavg()}): {exc}")
            finally:
                gc.collect()
    return ray


def pytest_runtest_teardown(item, nextitem):
    ray = sys.modules.get("ray")
    if ray is None or item.path.name not in RAY_MODULES:
        return
    if (nextitem is None or nextitem.path.name not in RAY_MODULES) and ray.is_initialized():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            ray.shutdown()
            gc.collect()
