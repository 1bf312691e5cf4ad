"""The simulator's compiled core (setup.py, agentperf_kit/_compiled.py): the install compiles it, it gives
exactly the pure-Python tables, and an edited source is never shadowed by a stale compiled module.

tests/test_sim_golden.py runs its cases on whatever this process imports (compiled after a normal
install); here the same cases run in a subprocess with ``AGENTPERF_PURE_PYTHON=1`` and must give the same
hashes, so the two modes agree bit for bit on every engine path they cover, plus a digital twin's engine
(a pure-Python subclass of the compiled engine)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agentperf_kit._compiled import COMPILED_MODULES, core_status

ROOT = Path(__file__).resolve().parents[1]
COMPILED = core_status().startswith("compiled")
needs_compiled = pytest.mark.skipif(not COMPILED, reason=f"simulator core here: {core_status()}")

# a twin level (TwinEngine subclasses the compiled Engine in pure Python) and three golden cases, as
# table hashes; run in this process and in a pure-Python one
_SCRIPT = r"""
import json, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from agentperf_kit._compiled import core_status
from agentperf_kit.agents import RunRules
from agentperf_kit.sim.virtual import run_sim_level
from agentperf_kit.trajectories import default_trajectories
from tests.test_sim_golden import _tables, table_hash
from tests.test_twin import _write_twin

out = {"core": core_status()}
with tempfile.TemporaryDirectory() as tmp:
    for name in ("gb300", "h200-pd", "h200-preempt-tight-kv"):
        out[name] = table_hash(_tables(name, Path(tmp))["memory"])
    step = {"step_s": 0.004, "prefill_token_s": 2e-5, "decode_seq_s": 3e-4, "context_token_s": 1e-8}
    twin = _write_twin(Path(tmp) / "t.toml", step, request_s=0.002)
    rules = RunRules(warmup_s=5, duration_s=60, max_duration_s=60, min_trajectories=0,
                     min_trajectories_per_agent=0, drain_timeout_s=0.5)
    res = run_sim_level(default_trajectories(), 12, rules, deployment=twin, seed=4)
    out["twin"] = table_hash(res.requests.drop(columns=["run_id"]))  # a fresh id per run
    out["twin_rows"] = len(res.requests)
print(json.dumps(out))
"""


def _python(code: str, path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter with ``path`` as its first argument (and working directory)."""
    cmd = [sys.executable, "-c", code, str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=path, timeout=600)


def _hashes(env: dict[str, str]) -> dict:
    got = _python(_SCRIPT, ROOT, env)
    assert got.returncode == 0, got.stderr[-3000:]
    return json.loads(got.stdout.strip().splitlines()[-1])


def test_the_ci_install_compiles_the_simulator_core():
    """README's install compiles the core where a C compiler is present (CI's machine has one): a build
    that silently fell back to pure Python would leave every sweep ~1.7x slower."""
    if os.environ.get("CI", "").lower() not in ("1", "true"):
        pytest.skip("checked in CI only (a developer's checkout may be edited since its build)")
    assert COMPILED, core_status()


@needs_compiled
def test_compiled_and_pure_python_give_the_same_tables():
    env = {k: v for k, v in os.environ.items() if k != "AGENTPERF_PURE_PYTHON"}
    compiled = _hashes(env)
    pure = _hashes({**env, "AGENTPERF_PURE_PYTHON": "1"})
    assert compiled.pop("core") == "compiled (mypyc)"
    assert pure.pop("core") == "pure Python (AGENTPERF_PURE_PYTHON is set)"
    assert compiled["twin_rows"] > 30
    assert compiled == pure
    from tests.test_sim_golden import GOLDEN

    for name in ("gb300", "h200-pd", "h200-preempt-tight-kv"):
        assert pure[name] == GOLDEN[name]


@needs_compiled
def test_an_edited_source_is_imported_from_source_not_from_its_stale_build(tmp_path):
    """A checkout edited after its build: every compiled module comes from its source (all or none), and
    the reason names the edited module; the untouched copy runs compiled."""
    pkg = tmp_path / "agentperf_kit"
    shutil.copytree(ROOT / "agentperf_kit", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import agentperf_kit.sim.engine as e, agentperf_kit.agents as a;"
        "from agentperf_kit._compiled import core_status;"
        "print(core_status()); print(e.__file__); print(a.__file__)"
    )
    env = {k: v for k, v in os.environ.items() if k != "AGENTPERF_PURE_PYTHON"}

    def run() -> list[str]:
        got = _python(probe, tmp_path, env)
        assert got.returncode == 0, got.stderr
        return got.stdout.strip().splitlines()

    status, engine_file, agents_file = run()
    assert status == "compiled (mypyc)" and not engine_file.endswith(".py")
    source = pkg / "sim" / "engine.py"
    source.write_text(source.read_text() + "\n# edited after the build\n")
    status, engine_file, agents_file = run()
    assert status.startswith("pure Python (the sources of agentperf_kit.sim.engine changed"), status
    assert engine_file == str(source) and agents_file == str(pkg / "agents.py")  # all of them from source
    assert len(COMPILED_MODULES) == 4
