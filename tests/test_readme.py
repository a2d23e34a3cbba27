"""The README's and docs/'s Python blocks run as pasted (on the embedded default models), so they stay true;
their relative links resolve; the README stays a short guide."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README] + DOCS
MAX_README_LINES = 300
FORBIDDEN = ("Issue ", "issue-", "aimed at", "lent GPU")


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def run_blocks(path: Path) -> dict:
    """Every ```python block of ``path``, in order, in one namespace."""
    namespace: dict = {"__name__": f"doc_{path.stem}"}
    for block in python_blocks(path):
        exec(compile(block, str(path), "exec"), namespace)   # noqa: S102 (our own documentation)
    return namespace


def test_readme_has_a_runnable_example():
    assert python_blocks(README), "the README's Use section must have a ```python block"


def test_readme_python_blocks_run(capsys):
    namespace = run_blocks(README)
    printed = capsys.readouterr().out
    assert "torch.Size([2," in printed and namespace["out"].rewards.shape[0] == 2


@pytest.mark.parametrize("page", [p for p in DOCS if python_blocks(p)], ids=lambda p: p.name)
def test_docs_python_blocks_run(page):
    run_blocks(page)


def test_docs_exist():
    assert DOCS, "docs/*.md is missing"


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES}): move detail to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_internal_wording(page):
    text = page.read_text()
    found = [s for s in FORBIDDEN if s in text]
    assert not found, f"{page.name} contains {found}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)   # links in code blocks don't count
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):   # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    result = set()
    for heading in re.findall(r"^#+\s+(.*)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        result.add(slug)
    return result
