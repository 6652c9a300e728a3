"""README.md and docs/*.md without a server: every relative link reaches a file and, with #anchor, a
heading of it (GitHub's anchors); every docs-test marker parses and stands where it applies; every
bash block either talks to the server (tests/integration/test_docs_live.py runs it) or says why not;
every answer shown after a command is JSON the live test can compare; the README stays a front page,
and its Layout matches the tree."""
import glob
import re
import subprocess
from urllib.parse import unquote, urlparse

import pytest

from doc_pages import (REPO_ROOT, PageError, anchors, answer_to, blocks, links, page_name, pages, parse_shown_answer,
                       slug)

README_MAX_LINES = 250


@pytest.mark.parametrize("page", pages(), ids=page_name)
def test_every_relative_link_reaches_a_file_and_heading(page):
    problems = []
    for line, target in links(page):
        parsed = urlparse(target)
        if parsed.scheme or target.startswith("//"):
            continue  # a web address: not this test's to fetch
        destination = (page.parent / unquote(parsed.path)).resolve() if parsed.path else page
        if not destination.exists():
            problems.append(f"{page_name(page)}:{line}: {target}: no file {destination}")
        elif parsed.fragment and destination.suffix == ".md" and parsed.fragment not in anchors(destination):
            problems.append(f"{page_name(page)}:{line}: {target}: no heading #{parsed.fragment} in "
                            f"{page_name(destination)} (it has {', '.join(anchors(destination))})")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", pages(), ids=page_name)
def test_every_bash_block_runs_or_says_why_not(page):
    page_blocks = blocks(page)  # a misplaced or unknown marker raises PageError, naming the line
    problems = []
    for block in page_blocks:
        if block.marker is not None and block.info != "bash":
            problems.append(f"{block.name}: a docs-test marker on a {block.info or 'plain'} block: markers go on bash blocks")
        elif block.info == "bash" and block.marker is None and not block.talks_to_server:
            problems.append(f"{block.name}: a bash block that does not call the server needs "
                            "<!-- docs-test: skip (why) --> on the line before it")
        elif block.runs and answer_to(page_blocks, block) is not None:
            try:
                parse_shown_answer(answer_to(page_blocks, block))
            except PageError as error:
                problems.append(str(error))
    assert not problems, "\n".join(problems)


def test_one_prelude_sets_the_keys_for_every_page():
    preludes = [b for b in blocks(REPO_ROOT / "README.md") if b.marker and b.marker.kind == "prelude"]
    assert len(preludes) == 1 and "key_file.json" in preludes[0].text, preludes


def test_readme_is_a_front_page():
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines: move reference into docs/<topic>.md"
    for page in pages()[1:]:
        if page.name != "README.md":
            assert f"(docs/{page.name})" in "\n".join(lines), f"the README's Topics table does not link docs/{page.name}"


@pytest.mark.parametrize("heading, anchor", [
    ("ONNX Runtime and int8", "onnx-runtime-and-int8"),
    ("The answer, and errors", "the-answer-and-errors"),
    ("Against TorchServe's stock handler", "against-torchserves-stock-handler"),
    ("Management: describe and scale", "management-describe-and-scale"),
    ("`make serve` and [Keys](keys.md)", "make-serve-and-keys"),
    ("Goals of issue 9", "goals-of-issue-9"),
])
def test_anchors_follow_githubs_rules(heading, anchor):
    assert slug(heading) == anchor


def test_repeated_headings_get_numbered_anchors(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Page\n## Errors\n```bash\n# Errors\n```\n## Errors\n")
    assert anchors(page) == ["page", "errors", "errors-1"]


def test_markers_and_shown_answers_parse(tmp_path):
    page = tmp_path / "page.md"
    page.write_text('<!-- docs-test: expect 200 400 -->\n```bash\ncurl a\ncurl b\n```\n\n'
                    '```\nHTTP/1.1 400\nX-Thing: 1\n\n{"a": [1, ...3 values], "b": {"c": 1, ...}}\n```\n'
                    '<!-- docs-test: skip (training) -->\n```bash\npython -m train\n```\n')
    first, answer, skipped = blocks(page)
    assert first.marker.statuses == (200, 400) and first.runs and answer_to([first, answer, skipped], first) is answer
    shown = parse_shown_answer(answer)
    assert (shown.status, shown.header_names) == (400, ["X-Thing"])
    assert shown.body == {"a": [1, None], "b": {"c": 1, "\u2026": None}}
    assert skipped.marker.reason == "training" and not skipped.runs


@pytest.mark.parametrize("marker", ["skip", "expect", "expect 20", "run", "skip()"])
def test_a_marker_that_does_not_parse_names_the_valid_ones(tmp_path, marker):
    page = tmp_path / "page.md"
    page.write_text(f"<!-- docs-test: {marker} -->\n```bash\ncurl a\n```\n")
    with pytest.raises(PageError, match="use 'skip"):
        blocks(page)


def test_a_marker_away_from_its_block_is_refused(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- docs-test: expect 400 -->\n\n```bash\ncurl a\n```\n")
    with pytest.raises(PageError, match="right before"):
        blocks(page)


def readme_layout() -> str:
    """The fenced tree under README's `## Layout` heading."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def test_readme_layout_matches_the_tree():
    """Every path the Layout names exists, and every top-level folder and shared handler module is named:
    a module added, moved or renamed without the Layout fails here."""
    layout = readme_layout()
    named = [line.split()[0] for line in layout.splitlines() if line and not line.startswith(" " * 10)]
    missing = [path for path in named
               if not glob.glob(str(REPO_ROOT / re.sub(r"<[a-z]+>", "*", path.rstrip("/")).lstrip()))
               and not (REPO_ROOT / "handlers" / path.strip()).exists()]
    assert not missing, f"README's Layout names paths that do not exist: {missing}"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    folders = sorted({path.split("/")[0] for path in tracked.splitlines() if "/" in path and not path.startswith(".")})
    unnamed = [f"{folder}/" for folder in folders if not re.search(rf"^{folder}/", layout, re.MULTILINE)]
    modules = [p.name for p in (REPO_ROOT / "handlers").glob("*.py") if not p.name.endswith("_classifier_handler.py")]
    unnamed += [f"handlers/{module}" for module in sorted(modules) if f" {module} " not in layout]
    assert not unnamed, f"README's Layout does not name: {unnamed}"
