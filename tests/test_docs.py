"""Every relative link in the project's Markdown resolves: the file exists and, with a #fragment,
the heading does (GitHub's anchor rule: lower case, punctuation dropped, spaces to hyphens)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".venv", ".git", "build", "bench-results", ".artifacts", ".pytest_cache"}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _docs() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.md") if not SKIP & set(p.relative_to(ROOT).parts))


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    heads = re.findall(r"^#{1,6}\s+(.*?)\s*$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def _broken(doc: Path) -> list[str]:
    broken = []
    text = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", doc.read_text(), flags=re.S))
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not ours to check offline
        file, _, fragment = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(target)
        elif fragment and dest.suffix == ".md" and fragment not in _anchors(dest):
            broken.append(target)
    return broken


@pytest.mark.parametrize("doc", _docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    broken = _broken(doc)
    assert not broken, f"{doc.relative_to(ROOT)}: links that do not resolve: {broken}"


def test_the_checker_sees_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "A.md").write_text("# Top\n## Two words\n[ok](#two-words) [ok](A.md#top) "
                                   "[gone](SERVING.md) [bad](#three) `[code](x.md)` [web](https://x.y)\n")
    assert _broken(tmp_path / "A.md") == ["SERVING.md", "#three"]
