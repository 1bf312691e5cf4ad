"""Incremental raw-row storage survives kills; results round-trip through Parquet and the manifest."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from agentperf_kit.recorder import RunWriter, read_raw_rows
from agentperf_kit.results import load_run, write_manifest
from agentperf_kit.schema import RAW_COLUMNS, SCHEMA_VERSION, UnknownSchemaVersionError


def _row(i: int, ok: bool = True) -> tuple:
    return (
        "r",
        0,
        2,
        i % 2,
        f"t{i}",
        0,
        i,
        i,
        float(i),
        float(i),
        float(i) + 0.1,
        math.nan,
        float(i) + 0.5,
        float(i) + 0.6,
        100,
        80,
        10,
        1,
        None,
        100,
        10,
        10,
        "length",
        False,
        1.0,
        ok,
        200,
        "" if ok else "http_error",
        "",
        math.nan,
        False,
        "",
    )


def test_rows_round_trip_with_schema_dtypes(tmp_path):
    with RunWriter(tmp_path, flush_rows=3) as w:
        for i in range(10):
            w(_row(i, ok=i != 4))
    df = read_raw_rows(tmp_path)
    assert list(df.columns) == list(RAW_COLUMNS)
    assert len(df) == 10
    assert df.ok.dtype == bool and not df.ok[4]
    assert df.reasoning_tokens.isna().all() and str(df.reasoning_tokens.dtype) == "Int64"
    assert math.isnan(df.t_first_answer_s[0])


def test_append_mode_keeps_earlier_rows(tmp_path):
    with RunWriter(tmp_path) as w:
        w(_row(0))
    with RunWriter(tmp_path, append=True) as w:
        w(_row(1))
    assert sorted(read_raw_rows(tmp_path).turn) == [0, 1]


def test_truncated_stream_keeps_complete_batches(tmp_path):
    with RunWriter(tmp_path, flush_rows=2) as w:
        for i in range(6):
            w(_row(i))
    path = tmp_path / "requests.arrow"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # cut into the last batch
    df = read_raw_rows(tmp_path)
    assert 2 <= len(df) < 6 and len(df) % 2 == 0


def test_sigkilled_writer_leaves_readable_rows(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from agentperf_kit.recorder import RunWriter
        from tests.test_recorder import _row
        w = RunWriter({str(tmp_path)!r}, flush_rows=5)
        i = 0
        while True:
            w(_row(i)); i += 1
            if i % 5 == 0:
                print(i, flush=True)
            time.sleep(0.002)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    seen = 0
    deadline = time.monotonic() + 30
    while seen < 40 and time.monotonic() < deadline:
        seen = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.communicate()  # waits and closes the stdout pipe
    df = read_raw_rows(tmp_path)
    assert len(df) >= 40
    assert list(df.turn) == list(range(len(df)))


def test_manifest_is_strict_json_and_unknown_versions_are_refused(tmp_path):
    write_manifest(tmp_path, {"x": float("inf"), "y": float("nan")})
    text = (tmp_path / "manifest.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text)["schema_version"] == SCHEMA_VERSION
    write_manifest(tmp_path, {"schema_version": 999})
    with pytest.raises(UnknownSchemaVersionError, match="999"):
        load_run(tmp_path)


def test_values_that_do_not_fit_are_recorded_as_invalid_with_a_note(tmp_path):
    """An int beyond int64, an object where a string belongs, a string where a number belongs: the row is
    written with those values invalid (NA) and named in ``note``; the other rows of the batch are intact."""
    bad = list(_row(1))
    names = list(RAW_COLUMNS)
    bad[names.index("output_tokens")] = 2**70
    bad[names.index("finish_reason")] = {"reason": "length"}
    bad[names.index("t_last_s")] = "late"
    with RunWriter(tmp_path, flush_rows=10) as w:
        w(_row(0))
        w(tuple(bad))
        w(_row(2))
    df = read_raw_rows(tmp_path)
    assert len(df) == 3
    assert df.output_tokens.isna().tolist() == [False, True, False]
    assert df.finish_reason.isna().tolist() == [False, True, False]
    assert math.isnan(df.t_last_s[1])
    assert df.note[1] == "invalid: t_last_s=str, output_tokens=1180591620717411303424, finish_reason=dict"
    assert (df.note[[0, 2]] == "").all()


def test_an_unwritable_directory_is_one_output_error(tmp_path):
    from agentperf_kit.errors import OutputError

    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"cannot write .*file/run/requests.arrow: Not a directory"):
        RunWriter(tmp_path / "file" / "run")
