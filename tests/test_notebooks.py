"""Every notebook in notebooks/ runs top to bottom on a fresh kernel (found by globbing)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted(Path(__file__).resolve().parent.parent.joinpath("notebooks").glob("*.ipynb"))
TIME_LIMIT_S = 240  # per cell
KERNELS_AT_ONCE = 2


def test_notebooks_exist():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict[str, tuple[nbformat.NotebookNode, BaseException | None]]:
    """Every notebook executed top to bottom, each on a fresh kernel of its own in a folder of its own,
    ``KERNELS_AT_ONCE`` kernels at a time: {file name: (the executed notebook, what its execution raised or
    None)}. A notebook's kernel is one process that keeps one core busy; the 2-core CI machine runs two."""

    async def one(path: Path, slots: asyncio.Semaphore):
        nb = nbformat.read(path, as_version=4)
        where = tmp_path_factory.mktemp(path.stem)
        client = NotebookClient(
            nb, timeout=TIME_LIMIT_S, kernel_name="python3", resources={"metadata": {"path": str(where)}}
        )
        async with slots:
            try:
                await client.async_execute()
            except Exception as exc:  # raised by the notebook's own test, below
                return nb, exc
        return nb, None

    async def run_all():
        slots = asyncio.Semaphore(KERNELS_AT_ONCE)
        return await asyncio.gather(*(one(p, slots) for p in NOTEBOOKS))

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPLBACKEND", "Agg")
        done = asyncio.run(run_all())
    return {p.name: d for p, d in zip(NOTEBOOKS, done)}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, executed):
    nb, exc = executed[path.name]
    if exc is not None:
        raise exc
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    ]
    assert not errors
