"""Importers of aa-agentperf-local, Mooncake and mini-swe-agent files (fixtures shaped like public samples).

Counts and totals are computed here from the fixture files themselves (not from the importer), so an
importer that loses, invents or miscounts a call fails.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
from pathlib import Path

import pytest

from agentperf_kit.cli import main
from agentperf_kit.trajectories import TrajectoryFormatError, load_trajectories, save_trajectories
from agentperf_kit.trajectories.importers import (
    IMPORTERS,
    import_aa_local,
    import_mini_swe_agent,
    import_mooncake,
    import_trajectories,
)

FIX = Path(__file__).parent / "fixtures" / "trajectories"
AA = FIX / "aa_local"
MOONCAKE = FIX / "mooncake" / "conversation_trace.jsonl"
MINI = FIX / "mini_swe_agent"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _all_turns(trajs):
    return [t for tr in trajs for t in tr.turns]


# ------------------------------------------------------------------ aa-local


def test_aa_local_keeps_every_call_and_its_recorded_numbers():
    trajs = import_aa_local(AA)
    manifest = json.loads((AA / "manifest.json").read_text())
    assert [t.trajectory_id for t in trajs] == [task["task_id"] for task in manifest["tasks"]]
    for tr, task in zip(trajs, manifest["tasks"]):
        rows = _jsonl(AA / task["trace"])
        assert len(tr.turns) == len(rows) == task["model_calls"]
        assert [t.output_tokens for t in tr.turns] == [r["target_output_tokens"] for r in rows]
        assert [t.tool_delay_s for t in tr.turns] == [r["simulated_tool_delay_ms_after"] / 1000 for r in rows]
        assert [t.tool_calls for t in tr.turns] == [bool(r["recorded_tool_calls_after"]) for r in rows]
        assert [t.messages for t in tr.turns] == [r["messages"] for r in rows]
        assert [t.tools for t in tr.turns] == [r["tools"] for r in rows]
        if all("recorded_prompt_tokens" in r for r in rows):
            assert [t.input_tokens for t in tr.turns] == [r["recorded_prompt_tokens"] for r in rows]
            assert tr.meta["prompt_tokens_estimated"] == 0
        else:
            assert tr.meta["prompt_tokens_estimated"] == len(rows)
            assert "characters" in tr.meta["prompt_tokens_estimate"]


def test_aa_local_phases_follow_conversations_and_message_prefixes():
    weather, swe = import_aa_local(AA / "manifest.json")
    # fx-swe-01: turns 0-2 one conversation whose messages grow; turn 3 opens a sub-agent conversation
    assert [t.phase for t in swe.turns] == [0, 0, 0, 1, 1]
    assert [t.prefix_tokens for t in swe.turns] == [0, 1830, 2210, 0, 1490]
    # the weather task drops its tools on the last turn: the rendered prompt changes at its start
    assert [t.phase for t in weather.turns] == [0, 0, 0, 1]
    for prev, t in zip(weather.turns, weather.turns[1:]):
        if t.phase == prev.phase:
            assert t.prefix_tokens == prev.input_tokens and t.new_tokens > 0


def test_aa_local_round_trip_keeps_messages(tmp_path):
    trajs = import_aa_local(AA)
    back = load_trajectories(save_trajectories(trajs, tmp_path / "aa.jsonl.gz"))
    assert [t.turns for t in back] == [t.turns for t in trajs]
    assert [t.messages for t in _all_turns(back)] == [t.messages for t in _all_turns(trajs)]
    assert back[0].source == "aa-local" and back[1].meta["task_id"] == "fx-swe-01"


def _aa_copy(tmp_path) -> Path:
    dst = tmp_path / "replay"
    shutil.copytree(AA, dst)
    return dst


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("simulated_tool_delay_ms_after", -5),
        ("recorded_prompt_tokens", "lots"),
        ("messages", []),
        ("target_output_tokens", -1),
        ("conversation_idx", 0),
    ],
)
def test_aa_local_bad_field_names_file_line_and_field(tmp_path, field, value):
    dst = _aa_copy(tmp_path)
    trace = dst / "traces" / "fx-swe-01.jsonl"
    rows = _jsonl(trace)
    rows[2][field] = value
    trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TrajectoryFormatError) as err:
        import_aa_local(dst)
    assert "fx-swe-01.jsonl line 3" in str(err.value) and repr(field) in str(err.value)
    assert err.value.field == field and err.value.line == 3


def test_aa_local_missing_output_length_and_manifest_problems(tmp_path):
    dst = _aa_copy(tmp_path)
    trace = dst / "traces" / "fx-weather-01.jsonl"
    rows = _jsonl(trace)
    for key in ("target_output_tokens", "max_output_tokens"):
        del rows[0][key]
    trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TrajectoryFormatError, match=r"line 1: 'target_output_tokens' is needed"):
        import_aa_local(dst)
    (dst / "manifest.json").unlink()
    with pytest.raises(TrajectoryFormatError, match=r"no manifest\.json"):
        import_aa_local(dst)
    manifest = json.loads((AA / "manifest.json").read_text())
    manifest["tasks"][0]["trace"] = "../outside.jsonl"
    (dst / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TrajectoryFormatError, match=r"tasks\[0\]\.trace"):
        import_aa_local(dst)
    manifest["tasks"][0]["trace"] = "traces/missing.jsonl"
    (dst / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        import_aa_local(dst)
    manifest["version"] = 2
    (dst / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TrajectoryFormatError, match="'version' must be 1"):
        import_aa_local(dst)


# ------------------------------------------------------------------ Mooncake

# sessions of the fixture worked out by hand from its hash_ids (source line numbers):
# L5 shares only the common block 0 with L3, so it is not linked; L7 and L8 both extend L4, the later (L8)
# continues, L7 starts its own session which L11 continues; L12-L14 share a 3-block system prompt that
# four requests continue differently (common), so they are separate; L16 extends L15 past it.
EXPECTED_SESSIONS = [[1, 4, 8, 9], [2, 6], [3], [5], [7, 11], [10], [12], [13], [14], [15, 16]]


def test_mooncake_rebuilds_sessions_by_the_linking_rules():
    trajs = import_mooncake(MOONCAKE)
    assert [t.meta["lines"] for t in trajs] == EXPECTED_SESSIONS
    assert all(t.source == "mooncake" and t.n_phases == 1 for t in trajs)


def test_mooncake_every_request_exactly_once_with_its_token_counts():
    rows = _jsonl(MOONCAKE)
    trajs = import_mooncake(MOONCAKE)
    lines = [line for t in trajs for line in t.meta["lines"]]
    assert sorted(lines) == list(range(1, len(rows) + 1))
    for tr in trajs:
        for line, turn in zip(tr.meta["lines"], tr.turns):
            assert turn.input_tokens == rows[line - 1]["input_length"]
            assert turn.output_tokens == rows[line - 1]["output_length"]
        for prev, turn in zip(tr.turns, tr.turns[1:]):
            assert turn.prefix_tokens == min(prev.input_tokens, turn.input_tokens)
    turns = _all_turns(trajs)
    assert sum(t.input_tokens for t in turns) == sum(r["input_length"] for r in rows)
    assert sum(t.output_tokens for t in turns) == sum(r["output_length"] for r in rows)


def test_mooncake_think_time_options():
    capped = {t.meta["lines"][0]: t for t in import_mooncake(MOONCAKE)}
    kept = {t.meta["lines"][0]: t for t in import_mooncake(MOONCAKE, think_time="keep")}
    # L1 -> L4 is 3 s; L4 -> L8 is 6 s (capped at 5 s); the last turn of a session waits 0
    assert [t.tool_delay_s for t in kept[1].turns] == [3.0, 6.0, 3.0, 0.0]
    assert [t.tool_delay_s for t in capped[1].turns] == [3.0, 5.0, 3.0, 0.0]
    assert [t.tool_delay_s for t in import_mooncake(MOONCAKE, max_think_s=2)[0].turns] == [2, 2, 2, 0]
    a = [t.tool_delay_s for t in _all_turns(import_mooncake(MOONCAKE, think_time="resample", seed=1))]
    b = [t.tool_delay_s for t in _all_turns(import_mooncake(MOONCAKE, think_time="resample", seed=1))]
    c = [t.tool_delay_s for t in _all_turns(import_mooncake(MOONCAKE, think_time="resample", seed=2))]
    assert a == b and a != c
    assert all(0.1 <= d <= 5.0 for d, t in zip(a, _all_turns(import_mooncake(MOONCAKE))) if d)
    with pytest.raises(ValueError, match="think_time"):
        import_mooncake(MOONCAKE, think_time="sometimes")


def test_mooncake_recovers_generated_interleaved_sessions(tmp_path):
    """A generated trace of 60 interleaved chat sessions sharing a system-prompt block comes back whole."""
    rng = random.Random(7)
    next_id = iter(range(1, 10**6))
    requests, truth = [], []
    for _ in range(60):
        blocks = [0] + [next(next_id) for _ in range(rng.randint(2, 6))]
        t = rng.uniform(0, 600_000)
        session = []
        for _ in range(rng.randint(1, 12)):
            partial = next(next_id)
            inp = 512 * len(blocks) + rng.randint(1, 511)
            session.append(
                {
                    "timestamp": int(t),
                    "input_length": inp,
                    "output_length": rng.randint(1, 900),
                    "hash_ids": [*blocks, partial],
                }
            )
            blocks = blocks + [next(next_id) for _ in range(rng.randint(1, 4))]
            t += rng.uniform(1_000, 60_000)
        requests += session
        truth.append(session)
    requests.sort(key=lambda r: r["timestamp"])
    path = tmp_path / "trace.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in requests)
    line_of = {id(r): i + 1 for i, r in enumerate(requests)}
    expected = sorted([line_of[id(r)] for r in session] for session in truth)
    got = sorted(t.meta["lines"] for t in import_mooncake(path))
    assert got == expected


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('{"timestamp": 0, "input_length": -1, "output_length": 3, "hash_ids": [0]}', "input_length"),
        ('{"timestamp": 0, "input_length": 10, "output_length": 3, "hash_ids": "0,1"}', "hash_ids"),
        ('{"timestamp": -4, "input_length": 10, "output_length": 3, "hash_ids": [0]}', "timestamp"),
        ('{"timestamp": 0, "input_length": 10, "hash_ids": [0]}', "output_length"),
    ],
)
def test_mooncake_bad_line_names_it(tmp_path, line, field):
    path = tmp_path / "t.jsonl"
    path.write_text(MOONCAKE.read_text().splitlines()[0] + "\n" + line + "\n")
    with pytest.raises(TrajectoryFormatError) as err:
        import_mooncake(path)
    assert "t.jsonl line 2" in str(err.value) and err.value.field == field


def test_mooncake_not_json(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("{oops\n")
    with pytest.raises(TrajectoryFormatError, match="line 1: not valid JSON"):
        import_mooncake(path)


# ------------------------------------------------------------------ mini-swe-agent


def _assistant_usages(path: Path) -> list[dict]:
    doc = json.loads(path.read_text())
    return [m["extra"]["response"]["usage"] for m in doc["messages"] if m["role"] == "assistant"]


def test_mini_swe_agent_one_turn_per_call_with_recorded_usage():
    trajs = import_mini_swe_agent(MINI)
    files = sorted(MINI.glob("*.traj.json"))
    assert [t.trajectory_id for t in trajs] == [p.name.removesuffix(".traj.json") for p in files]
    for tr, path in zip(trajs, files):
        usages = _assistant_usages(path)
        assert (
            len(tr.turns) == len(usages) == json.loads(path.read_text())["info"]["model_stats"]["api_calls"]
        )
        assert [t.input_tokens for t in tr.turns] == [u["prompt_tokens"] for u in usages]
        assert [t.output_tokens for t in tr.turns] == [u["completion_tokens"] for u in usages]
        assert [t.reasoning_tokens for t in tr.turns] == [
            (u["completion_tokens_details"] or {}).get("reasoning_tokens") for u in usages
        ]
        assert tr.meta["recorded_cached_tokens"] == sum(
            u["prompt_tokens_details"]["cached_tokens"] for u in usages
        )
        assert all(t.messages is None for t in tr.turns)  # token counts only unless asked
        for prev, t in zip(tr.turns, tr.turns[1:]):
            assert t.phase == prev.phase and t.prefix_tokens == prev.input_tokens
        assert tr.turns[-1].tool_delay_s == 0


def test_mini_swe_agent_tool_delays_measured_or_sampled_and_labelled():
    text, tool = import_mini_swe_agent(MINI)
    # 2.x file: delays from extra.timestamp of the call and of its observation
    assert tool.meta["tool_delay_source"] == "timestamps"
    assert [t.tool_delay_s for t in tool.turns] == pytest.approx([1.231, 0.412, 6.75, 0.0], abs=1e-6)
    assert [t.tool_calls for t in tool.turns] == [True] * 4
    # 1.x text-based file: no timestamps, so delays are sampled (seeded) and the meta says so
    assert (
        text.meta["tool_delay_source"] == "sampled" and "1 s resolution" in text.meta["tool_delay_sampling"]
    )
    sampled = [t.tool_delay_s for t in text.turns[:-1]]
    assert all(0.1 <= d <= 5.0 for d in sampled)
    assert sampled == [t.tool_delay_s for t in import_mini_swe_agent(MINI)[0].turns[:-1]]
    assert sampled != [t.tool_delay_s for t in import_mini_swe_agent(MINI, seed=5)[0].turns[:-1]]
    forced = import_mini_swe_agent(MINI / "fixture__toolcall-1.traj.json", tool_delay="sample")[0]
    assert forced.meta["tool_delay_source"] == "sampled"


def test_mini_swe_agent_with_messages_keeps_the_history_without_extras():
    tr = import_mini_swe_agent(MINI / "fixture__toolcall-1.traj.json", with_messages=True)[0]
    doc = json.loads((MINI / "fixture__toolcall-1.traj.json").read_text())
    calls = [i for i, m in enumerate(doc["messages"]) if m["role"] == "assistant"]
    for turn, i in zip(tr.turns, calls):
        assert len(turn.messages) == i and all("extra" not in m for m in turn.messages)
        assert turn.messages[-1]["role"] in ("user", "tool")


def test_mini_swe_agent_missing_usage_is_a_located_error(tmp_path):
    doc = json.loads((MINI / "fixture__textbased-2.traj.json").read_text())
    del doc["messages"][4]["extra"]["response"]["usage"]["prompt_tokens"]
    path = tmp_path / "broken.traj.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(TrajectoryFormatError) as err:
        import_mini_swe_agent(path)
    assert "broken.traj.json" in str(err.value)
    assert err.value.field == "messages[4].extra.response.usage.prompt_tokens"
    with pytest.raises(TrajectoryFormatError, match=r"no \*\.traj\.json"):
        import_mini_swe_agent(_empty(tmp_path))


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d


# ------------------------------------------------------------------ dispatch and CLI


def test_import_dispatch_names_the_formats():
    assert set(IMPORTERS) == {"aa-local", "mooncake", "mini-swe-agent"}
    with pytest.raises(ValueError, match="aa-local, mooncake, mini-swe-agent"):
        import_trajectories("sharegpt", MOONCAKE)


@pytest.mark.parametrize(
    ("fmt", "src", "suffix"),
    [("aa-local", AA, ".jsonl.gz"), ("mooncake", MOONCAKE, ".parquet"), ("mini-swe-agent", MINI, ".jsonl")],
)
def test_import_cli_writes_a_loadable_set(tmp_path, capsys, fmt, src, suffix):
    out = tmp_path / f"set{suffix}"
    assert main(["trajectories", "import", "--from", fmt, str(src), "--out", str(out)]) == 0
    direct = import_trajectories(fmt, src)
    back = load_trajectories(out)
    assert [t.turns for t in back] == [t.turns for t in direct]
    assert f"{sum(len(t.turns) for t in direct)} model calls" in capsys.readouterr().out


def test_import_cli_error_is_one_line_with_exit_2(tmp_path, capsys):
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": 0, "output_length": 1, "hash_ids": []}\n')
    rc = main(["trajectories", "import", "--from", "mooncake", str(bad), "--out", str(tmp_path / "o.jsonl")])
    assert rc == 2
    assert "line 1: 'input_length' must be a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
