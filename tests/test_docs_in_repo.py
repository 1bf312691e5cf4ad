"""The package and the docs never point at files outside the repository (the project's ../shared notes
are not shipped): every reference is an in-repo doc (docs/*.md) or a public source."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# References to files that live outside the repository.
OUTSIDE = re.compile(r"\.\./shared|/work/shared|METHODOLOGY\.md|SIMULATOR\.md")


def _files():
    yield ROOT / "README.md"
    yield from sorted((ROOT / "docs").rglob("*.md"))
    for ext in ("*.py", "*.toml", "*.md", "*.json"):
        yield from sorted((ROOT / "agentperf_kit").rglob(ext))


def test_no_reference_outside_the_repo():
    hits = []
    for path in _files():
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    assert not hits, "references to files outside the repository:\n" + "\n".join(hits)


def test_in_repo_doc_references_exist():
    """Every ``docs/NAME.md`` named in the package or the docs exists."""
    missing = []
    for path in _files():
        for name in set(re.findall(r"docs/([A-Za-z0-9_\-]+\.md)", path.read_text(encoding="utf-8"))):
            if not (ROOT / "docs" / name).exists():
                missing.append(f"{path.relative_to(ROOT)}: docs/{name}")
    assert not missing, "\n".join(missing)


def test_the_check_can_fail(tmp_path):
    assert OUTSIDE.search("see ../shared/SIMULATOR.md")
    assert OUTSIDE.search("(METHODOLOGY.md section 2)")
    assert not OUTSIDE.search("docs/simulator.md and docs/sources.md")
