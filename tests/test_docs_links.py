"""Every relative link and image in README.md and docs/*.md points at a file that exists, and every
#anchor names a heading of the markdown file it points into (GitHub's heading ids)."""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# [text](target) and ![alt](target); the target ends at whitespace or ")" (titles are not used here)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def github_anchor(heading: str) -> str:
    """GitHub's id for a heading: the rendered text lower-cased, punctuation other than '-' and '_'
    removed, spaces turned into '-' (so "`zhtune eval` — scores" becomes "zhtune-eval--scores")."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # a link in a heading keeps its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    kept = [c for c in text if c in "-_ " or unicodedata.category(c)[0] in "LNM"]
    return "".join(kept).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The ids of a page's headings, duplicates numbered as GitHub numbers them (-1, -2, ...)."""
    seen: dict[str, int] = {}
    ids = set()
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        base = github_anchor(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        ids.add(base if n == 0 else f"{base}-{n}")
    return ids


def links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every link outside code blocks and inline code."""
    text = page.read_text(encoding="utf-8")
    # blank out code, keeping line numbers
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    text = INLINE_CODE.sub(lambda m: " " * len(m.group(0)), text)
    out = []
    for m in LINK.finditer(text):
        out.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    return out


def broken_links(page: Path) -> list[str]:
    problems = []
    for line, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):   # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / unquote(path_part)).resolve() if path_part else page
        where = f"{page.relative_to(ROOT)}:{line}: {target}"
        if not dest.exists():
            problems.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading with that anchor")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_images_resolve(page):
    assert links(page) or page.name != "README.md", "README.md has no links: the parser broke"
    assert broken_links(page) == []


def test_the_checker_finds_broken_links(tmp_path):
    """A missing file, a missing anchor and a missing image are reported; code is not a link."""
    (tmp_path / "other.md").write_text("# Other page\n## `zhtune eval` — scores\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text("# Top\n[ok](other.md#zhtune-eval--scores) [self](#top)\n"
                    "[gone](missing.md) [bad anchor](other.md#nope) ![img](pic.png)\n"
                    "`[code](not-a-file.md)`\n```\n[fenced](nor-this.md)\n```\n"
                    "[web](https://example.com/x.md)\n", encoding="utf-8")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        problems = broken_links(page)
    finally:
        ROOT = saved
    assert problems == ["page.md:3: missing.md: no such file",
                        "page.md:3: other.md#nope: no heading with that anchor",
                        "page.md:3: pic.png: no such file"]


def test_github_anchor_matches_known_ids():
    assert github_anchor("What we found (the CPU study)") == "what-we-found-the-cpu-study"
    assert github_anchor("`zhtune train` — LoRA fine-tuning") == "zhtune-train--lora-fine-tuning"
    assert github_anchor("The original project's commands") == "the-original-projects-commands"
