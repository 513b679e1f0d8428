"""The project stands on its own: files cite only what a clone contains.

Two rules (docs/contributing.md, rule 15):

* no tracked file names the background notes that lived outside the repository, nor a path
  into the shared folder beside it (the names are spelled in pieces below so that this file
  does not match itself);
* every relative link in the Markdown pages (README.md, docs/, models/) points at a file or
  folder that exists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Names that must not appear in any tracked file (case-sensitive: docs/physics.md is fine).
FORBIDDEN = tuple(name.encode() for name in ("PHYSICS" + ".md", "DESIGN" + ".md", "STYLE" + ".md", "../" + "shared"))

#: Inline links and images ``[text](target "title")`` and reference definitions ``[id]: target``.
_INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_EXTERNAL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*:|#|//)")


def tracked_files(root: Path) -> list[Path]:
    """The files git tracks under ``root`` that exist in the working tree (a file being moved is absent)."""
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True).stdout.decode()
    return [root / name for name in out.split("\0") if name and (root / name).is_file()]


def forbidden_mentions(paths: list[Path], root: Path) -> list[str]:
    """``path:line: name`` for every line of ``paths`` that contains a :data:`FORBIDDEN` name."""
    hits = []
    for path in paths:
        data = path.read_bytes()
        if not any(name in data for name in FORBIDDEN):
            continue
        for number, line in enumerate(data.splitlines(), start=1):
            for name in FORBIDDEN:
                if name in line:
                    hits.append(f"{path.relative_to(root)}:{number}: {name.decode()}")
    return hits


def relative_links(text: str) -> list[str]:
    """The relative link targets of a Markdown text, anchors and titles dropped, code ignored."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", text))
    targets = _INLINE.findall(text) + _REFERENCE.findall(text)
    return [t.split("#", 1)[0] for t in targets if not _EXTERNAL.match(t) and t.split("#", 1)[0]]


def broken_links(page: Path, root: Path) -> list[str]:
    """``page: target`` for every relative link of ``page`` whose file or folder does not exist."""
    return [
        f"{page.relative_to(root)}: {target}"
        for target in relative_links(page.read_text(encoding="utf-8"))
        if not (page.parent / target).exists()
    ]


def markdown_pages(root: Path) -> list[Path]:
    """README.md and every Markdown page under docs/ and models/."""
    pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    return pages + sorted((root / "models").glob("*.md"))


def test_no_tracked_file_cites_files_outside_the_repository() -> None:
    hits = forbidden_mentions(tracked_files(ROOT), ROOT)
    assert not hits, "cite the in-repo page instead (docs/physics.md, README.md, ...):\n" + "\n".join(hits)


def test_every_relative_markdown_link_resolves() -> None:
    pages = markdown_pages(ROOT)
    assert ROOT / "docs" / "physics.md" in pages
    broken = [b for page in pages for b in broken_links(page, ROOT)]
    assert not broken, "links to missing files:\n" + "\n".join(broken)


def test_readme_links_the_physics_page() -> None:
    assert "docs/physics.md" in relative_links((ROOT / "README.md").read_text(encoding="utf-8"))


# The checkers themselves, on small files, so that a checker that finds nothing cannot pass
# the two tests above by accident.


@pytest.mark.parametrize(
    "line",
    ["see " + "PHYSICS" + ".md", "(" + "DESIGN" + ".md, Flow)", "STYLE" + ".md asks", "via ../" + "shared/x"],
    ids=["physics", "design", "style", "shared"],
)
def test_forbidden_mentions_finds_each_name(tmp_path: Path, line: str) -> None:
    path = tmp_path / "a.py"
    path.write_text(f"ok\n{line}\n")
    assert forbidden_mentions([path], tmp_path) == [f"a.py:2: {n.decode()}" for n in FORBIDDEN if n.decode() in line]


def test_forbidden_mentions_allows_the_in_repo_pages(tmp_path: Path) -> None:
    path = tmp_path / "a.md"
    path.write_text("docs/physics.md, docs/contributing.md, shared/ and ../other\n")
    assert forbidden_mentions([path], tmp_path) == []


def test_relative_links_skips_external_anchors_and_code() -> None:
    text = (
        '[a](docs/a.md#part) ![b](img/b.png "title") [c](https://x.org/c.md) [d](#top)\n'
        "`[e](e.md)`\n```\n[f](f.md)\n```\n[g]: ../g.md\n[h](mailto:x@y.z)\n"
    )
    assert relative_links(text) == ["docs/a.md", "img/b.png", "../g.md"]


def test_broken_links_reports_missing_targets(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("x\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text("[ok](there.md) [up](../docs/there.md#a) [gone](missing.md) [dir](.)\n")
    assert broken_links(page, tmp_path) == ["docs/page.md: missing.md"]


# README is read to the end by a newcomer: a few screens, the user's path first, the rest in docs/.

#: README's sections, in order: set-up, the user's three ways in, the headline figures, links
README_SECTIONS = ("Set-up: two commands", "A night's work", "From micrographs", "From Python", "Measured", "More")

#: where the content that left README lives, and a heading each page keeps
MOVED = {
    "docs/architecture.md": ("## The flow", "## The code", "## Scaling", "## Errors, reruns and reliability"),
    "docs/formats.md": ("## The artefacts", "## Opening them with other tools"),
    "docs/results.md": ("## Measured on the development machine", "## Range-energy calibration", "## Reproducing the paper"),
}


def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_is_a_few_screens() -> None:
    lines = _readme().splitlines()
    table_rows = [ln for ln in lines if ln.startswith("|")]
    assert len(lines) <= 200, f"README has {len(lines)} lines; move detail to docs/"
    assert len(table_rows) <= 20, f"README has {len(table_rows)} table rows; measured tables live in docs/results.md"


def test_readme_sections_come_in_the_newcomers_order() -> None:
    headings = [ln[3:].strip() for ln in _readme().splitlines() if ln.startswith("## ")]
    assert headings == list(README_SECTIONS)


def test_readme_links_every_page_its_content_moved_to() -> None:
    links = set(relative_links(_readme()))
    for page, headings in MOVED.items():
        assert page in links, f"README does not link {page}"
        text = (ROOT / page).read_text(encoding="utf-8")
        missing = [h for h in headings if not re.search(rf"^{re.escape(h)}$", text, re.MULTILINE)]
        assert not missing, f"{page} lost {missing}"


def test_readme_keeps_the_headline_figures_in_its_measured_section() -> None:
    """The held-out table with its basis, the shifted sheets and the end-to-end figures."""
    text = _readme()
    measured = text[text.index("\n## Measured\n"):text.index("\n## More\n")]
    for anchor in ("46,948 objects, 255 alpha decays", "| **shipped cascade, wide draw**", "| far: pale, foggy",
                   "From micrographs the picture is worse", "docs/results.md"):
        assert anchor in measured, anchor
