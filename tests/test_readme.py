"""The README's "In a notebook" recipes run as written, against a small simulated sweep."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

README = Path(__file__).resolve().parents[1] / "README.md"


def notebook_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("## In a notebook", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_has_the_notebook_recipes():
    blocks = notebook_blocks()
    code = "\n".join(blocks)
    assert len(blocks) >= 4
    for needed in ("load_sweep(", ".plot()", ".retier(", ".level(", ".compare("):
        assert needed in code


def test_readme_notebook_recipes_run(small_sweep):
    import matplotlib.pyplot as plt
    import pandas as pd

    ns: dict = {}
    for block in notebook_blocks():
        code = block.replace('"runs/h200"', repr(str(small_sweep)))
        exec(compile(code, "README.md", "exec"), ns)
    plt.close("all")
    assert ns["sweep"].directory == Path(small_sweep)
    assert isinstance(ns["run"].requests, pd.DataFrame) and len(ns["run"].requests) > 0
