"""The documentation matches the code and can be navigated.

docs/config.md is exactly the generated key reference and names every config key; docs/run-dir.md has a
row for every HDF5 column, and its "Checkpoint and resume" section names every key a resume may change;
README.md stays at most 300 lines; every relative link in README.md and docs/*.md points to a file that
exists (and, for a ``#fragment`` into a markdown file, to one of its headings); every docs/*.md is
linked from README.md."""
import re
from pathlib import Path

import pytest

from lbfl_mpi.config import reference
from lbfl_mpi.config.docs import REGENERATE, config_markdown
from lbfl_mpi.run.rundir import RESUME_MAY_CHANGE
from lbfl_mpi.telemetry import EVAL_COLUMNS, STEP_COLUMNS

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 300
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.M)


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for h in HEADING.findall(FENCE.sub("", text)):
        slug = _slug(h)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(page: Path) -> list[str]:
    """Relative links of ``page`` whose file is missing, or whose ``#fragment`` names no heading there."""
    bad = []
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, frag = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target} (no such file)")
        elif frag and dest.suffix == ".md" and frag not in anchors(dest.read_text()):
            bad.append(f"{target} (no heading #{frag} in {dest.relative_to(ROOT)})")
    return bad


def section(text: str, heading: str) -> str:
    """From ``heading`` up to the next heading of the same or a higher level."""
    start = text.index(heading + "\n")
    level = heading.split(" ", 1)[0]
    blanked = FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), text)  # a "# comment" in code is no heading
    nxt = re.compile(rf"^#{{1,{len(level)}}} ", re.M).search(blanked, start + len(heading))
    return text[start:nxt.start() if nxt else len(text)]


# ----------------------------------------------------------------------------- config keys
def test_config_doc_is_the_generated_reference():
    assert (DOCS / "config.md").read_text() == config_markdown(), \
        f"docs/config.md is out of date: regenerate with `{REGENERATE}`"


def test_every_config_key_is_in_the_config_doc():
    text = (DOCS / "config.md").read_text()
    missing = [key for key, *_ in reference() if f"| `{key}` |" not in text]
    assert not missing, f"config keys missing from docs/config.md: {missing}"


# ----------------------------------------------------------------------------- run directory
def test_every_hdf5_column_is_in_the_run_dir_doc():
    text = (DOCS / "run-dir.md").read_text()
    missing = [c for c in (*STEP_COLUMNS, *EVAL_COLUMNS) if f"| `{c}` |" not in text]
    assert not missing, f"HDF5 columns without a row in docs/run-dir.md: {missing}"


def test_resume_rules_are_in_the_checkpoint_section():
    pages = [p for p in _pages() if "## Checkpoint and resume\n" in p.read_text()]
    assert len(pages) == 1, f"'## Checkpoint and resume' should be in one page, found in {pages}"
    text = section(pages[0].read_text(), "## Checkpoint and resume")
    missing = [k for k in sorted(RESUME_MAY_CHANGE - {"run.resume", "run.overwrite"}) if f"`{k}`" not in text]
    assert not missing, f"keys a resume may change, not named under 'Checkpoint and resume': {missing}"


# ----------------------------------------------------------------------------- navigation
def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines, at most {README_MAX_LINES}: move sections to docs/"


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    bad = broken_links(page)
    assert not bad, f"{page.relative_to(ROOT)}: broken links {bad}"


def test_every_doc_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(_prose(README.read_text()))}
    unlinked = [p.name for p in DOCS.glob("*.md") if p.resolve() not in linked]
    assert not unlinked, f"docs/ pages not linked from README.md: {unlinked}"
