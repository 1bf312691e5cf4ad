"""Importing AIPerf and vLLM-bench per-request exports (spec-shaped fixtures) into our table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from agentperf_kit.cli import main
from agentperf_kit.external import ImportFormatError, import_results
from agentperf_kit.results import load_run
from agentperf_kit.slo import Tier, level_verdicts

FIX = Path(__file__).parent / "fixtures" / "external"
AIPERF = FIX / "aiperf_profile_export.jsonl"
VLLM = FIX / "vllm_bench_detailed.json"


def test_aiperf_records_become_rows_with_our_definitions(tmp_path):
    res = import_results(AIPERF, "aiperf", tmp_path / "a", concurrency=3)
    df = res.requests.set_index(res.requests["trajectory_id"] + "/" + res.requests["turn"].astype(str))
    assert len(df) == 5  # every record is a row, failures included
    assert list(res.requests["in_window"]) == [False, True, True, True, True]  # warm-up is out of window
    ok1 = df.loc["conv-1/1"]
    assert ok1["ttft_s"] == pytest.approx(0.25)
    assert ok1["output_speed_tps"] == pytest.approx(100 / 1.0)  # (101 - 1) / (1.25 - 0.25)
    assert ok1["prompt_tokens"] == 1000 and ok1["cached_prompt_tokens"] == 800  # server usage wins
    assert ok1["n_chunks"] == 4 and ok1["e2e_s"] == pytest.approx(1.25)
    reasoning = df.loc["conv-2/0"]
    assert reasoning["ttft_s"] == pytest.approx(0.1) and reasoning["ttfo_s"] == pytest.approx(0.6)
    assert reasoning["reasoning_tokens"] == 50 and reasoning["output_speed_tps"] == pytest.approx(100.0)
    failed = df.loc["conv-2/1"]
    assert not failed["ok"] and failed["error"] == "aiperf:HTTPError" and failed["http_status"] == 500
    assert math.isinf(failed["ttft_s"]) and failed["output_speed_tps"] == 0
    assert failed["prompt_tokens"] == 3500  # error_isl
    cancelled = df.loc["conv-3/0"]
    assert not cancelled["ok"] and cancelled["error"] == "aiperf:RequestCancellationError"
    assert res.requests["agent"].nunique() == 3 and (res.requests["concurrency"] == 3).all()
    # a run directory like any other
    again = load_run(tmp_path / "a")
    assert again.manifest["kind"] == "agentperf-import" and not again.manifest["meets_aa_rules"]
    assert any("t_scheduled_s" in m for m in again.manifest["missing_fields"])
    assert len(again.requests) == 5


def test_vllm_bench_detailed_json_becomes_rows(tmp_path):
    res = import_results(VLLM, "vllm-bench", tmp_path / "v")
    df = res.requests
    assert len(df) == 4 and (df["concurrency"] == 2).all()  # max_concurrency from the file
    assert df.loc[0, "ttft_s"] == pytest.approx(0.5)
    assert df.loc[0, "output_speed_tps"] == pytest.approx(99 / 0.99)  # 99 gaps of 10 ms
    assert df.loc[1, "t_send_s"] == pytest.approx(0.1)
    assert df.loc[2, "output_speed_tps"] == pytest.approx(49 / (49 * 0.005))
    assert not df.loc[3, "ok"] and math.isinf(df.loc[3, "ttft_s"]) and df.loc[3, "output_speed_tps"] == 0
    assert "maximum context" in df.loc[3, "error_detail"]
    assert df["in_window"].all()
    assert res.manifest["config"]["model"] == "Qwen/Qwen3-8B"


def test_imported_runs_are_judged_by_the_same_tier_code(tmp_path):
    res = import_results(VLLM, "vllm-bench", tmp_path / "v")
    # one of four requests failed: P95 TTFT is +inf, so any TTFT ceiling fails
    assert level_verdicts(res.requests, [Tier("t", "t", 1.0, 100.0)], confidence=None) == {"t": "fail"}
    ok_only = res.requests[res.requests["ok"]]
    assert level_verdicts(ok_only, [Tier("t", "t", 50.0, 1.0)], confidence=None) == {"t": "pass"}


def test_concurrency_is_estimated_and_noted_when_unknown(tmp_path):
    res = import_results(AIPERF, "aiperf", tmp_path / "a")
    assert res.manifest["config"]["concurrency"] >= 1
    assert any("estimated" in n for n in res.manifest["notes"])


def test_bad_files_name_file_line_field_and_fix(tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = AIPERF.read_text().splitlines()
    rec = json.loads(lines[1])
    rec["metadata"]["request_start_ns"] = "soon"
    bad.write_text("\n".join([lines[0], json.dumps(rec)]) + "\n")
    with pytest.raises(ImportFormatError, match=r"bad.jsonl line 2: metadata.request_start_ns .*'soon'"):
        import_results(bad, "aiperf", tmp_path / "x")
    summary = tmp_path / "summary.jsonl"
    summary.write_text('{"records": {}}\n')
    with pytest.raises(ImportFormatError, match=r"line 1: no 'metadata'.*profile_export\.jsonl"):
        import_results(summary, "aiperf", tmp_path / "x")
    unit = tmp_path / "unit.jsonl"
    rec = json.loads(lines[1])
    rec["metrics"]["time_to_first_token"]["unit"] = "fortnights"
    unit.write_text(json.dumps(rec) + "\n")
    with pytest.raises(ImportFormatError, match="time_to_first_token has unit 'fortnights'"):
        import_results(unit, "aiperf", tmp_path / "x")
    plain = tmp_path / "plain.json"
    data = json.loads(VLLM.read_text())
    plain.write_text(json.dumps({k: v for k, v in data.items() if k not in ("ttfts", "itls")}))
    with pytest.raises(ImportFormatError, match="--save-detailed"):
        import_results(plain, "vllm-bench", tmp_path / "x")
    short = tmp_path / "short.json"
    short.write_text(json.dumps({**data, "errors": data["errors"][:2]}))
    with pytest.raises(ImportFormatError, match="'errors' has 2 entries but 'ttfts' has 4"):
        import_results(short, "vllm-bench", tmp_path / "x")
    with pytest.raises(ImportFormatError, match="unknown format 'genai-perf'"):
        import_results(VLLM, "genai-perf", tmp_path / "x")


def test_cli_import_results_prints_verdicts(tmp_path, capsys):
    out = tmp_path / "imp"
    args = ["import-results", "--from", "aiperf", str(AIPERF), "--out", str(out), "--concurrency", "3"]
    assert main([*args, "--tiers", "easy=1/100"]) == 0
    text = capsys.readouterr().out
    assert (
        "imported 5 requests" in text
        and ": 4 (2 failed" in text
        and "easy" in text
        and "missing in this format" in text
    )
    assert (out / "requests.parquet").exists()
    assert main(["import-results", "--from", "vllm-bench", str(AIPERF), "--out", str(out)]) == 2
    assert "not JSON" in capsys.readouterr().err
