"""README.md and docs/*.md as the docs tests read them: fenced blocks with their `docs-test` markers,
answers shown after a command, relative links, and headings' anchors as GitHub makes them.

docs/README.md says how to write a page so that these tests can run it.
"""
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^\s*<!--\s*docs-test:(.*?)-->\s*$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^\s`]*)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)[^)]*\)")
STATUS_LINE = re.compile(r"^HTTP/[\d.]+\s+(\d{3})")
HEADER_LINE = re.compile(r"^([A-Za-z0-9-]+):\s")
# What the docs put where they leave something out of a JSON answer: `...`, `...,`, `...14 values`.
ELLIPSIS_TEXT = re.compile(r"\.\.\.[^,\]}\n]*")
ELLIPSIS = "\u2026"  # the key standing for `...` in an object once parsed; None stands for it in a list


def pages() -> List[Path]:
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def page_name(page: Path) -> str:
    return str(page.relative_to(REPO_ROOT)) if page.is_relative_to(REPO_ROOT) else str(page)


@dataclass(frozen=True)
class Marker:
    kind: str                      # "skip", "expect" or "prelude"
    reason: str = ""               # skip's, in its parentheses
    statuses: Tuple[int, ...] = ()  # expect's

    @classmethod
    def parse(cls, text: str) -> "Marker":
        """`skip (why)`, `expect 400` (or one status per curl call: `expect 200 400`), `prelude`."""
        words = text.split()
        skip = re.fullmatch(r"skip\s*\((.+)\)", text.strip())
        if skip:
            return cls("skip", reason=skip.group(1).strip())
        if words and words[0] == "expect" and len(words) > 1 and all(re.fullmatch(r"[1-5]\d\d", w) for w in words[1:]):
            return cls("expect", statuses=tuple(int(w) for w in words[1:]))
        if words == ["prelude"]:
            return cls("prelude")
        raise ValueError(f"unknown docs-test marker {text.strip()!r}: use 'skip (why)', 'expect 400' "
                         "(one status for every curl call, or one per call in order) or 'prelude'")


@dataclass
class Block:
    page: Path
    line: int       # the opening fence's line, from 1
    end: int        # the closing fence's line
    info: str       # the fence's language: "bash", "json", "" ...
    text: str       # the content, the fence's indentation removed
    marker: Optional[Marker]

    @property
    def name(self) -> str:
        return f"{page_name(self.page)}:{self.line}"

    @property
    def talks_to_server(self) -> bool:
        return self.info == "bash" and re.search(r"(^|[\s|(])curl\s", self.text, re.M) is not None

    @property
    def runs(self) -> bool:
        """A bash block that calls curl and is neither skipped nor a prelude."""
        return self.talks_to_server and (self.marker is None or self.marker.kind == "expect")


class PageError(ValueError):
    pass


def _lines_outside_fences(page: Path):
    """(line number, text) of every line that is not inside a fenced block."""
    fence = None
    for number, line in enumerate(page.read_text().splitlines(), 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(2)
        elif fence is not None and line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
            fence = None
        elif fence is None:
            yield number, line


def blocks(page: Path) -> List[Block]:
    """Every fenced block of the page, with the marker on the line right before it. A marker anywhere
    else, or one that does not parse, is a PageError."""
    lines = page.read_text().splitlines()
    found, index = [], 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            if MARKER.match(lines[index]) and not (index + 1 < len(lines) and FENCE.match(lines[index + 1])):
                raise PageError(f"{page_name(page)}:{index + 1}: a docs-test marker must stand on the line "
                                "right before a block's opening fence")
            index += 1
            continue
        indent, fence, info = match.groups()
        end = index + 1
        while end < len(lines) and not (lines[end].strip().startswith(fence) and lines[end].strip().strip(fence[0]) == ""):
            end += 1
        marker_line = MARKER.match(lines[index - 1]) if index > 0 else None
        try:
            marker = Marker.parse(marker_line.group(1)) if marker_line else None
        except ValueError as error:
            raise PageError(f"{page_name(page)}:{index}: {error}") from None
        text = "\n".join(line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[index + 1:end])
        found.append(Block(page, index + 1, end + 1, info, text, marker))
        index = end + 1
    return found


def answer_to(page_blocks: List[Block], block: Block) -> Optional[Block]:
    """The json or plain block right after `block` (blank lines between at most): what the docs show it answers."""
    following = [b for b in page_blocks if b.line > block.end]
    if not following or following[0].info not in ("json", ""):
        return None
    between = block.page.read_text().splitlines()[block.end:following[0].line - 1]
    return following[0] if all(not line.strip() for line in between) else None


def parse_shown_json(text: str):
    """JSON as the docs show it: `...` stands for what is left out (None in a list, a key ELLIPSIS in an object)."""
    out, stack, index, in_string = [], [], 0, False
    while index < len(text):
        char = text[index]
        if in_string:
            out.append(text[index:index + 2] if char == "\\" else char)
            index += 2 if char == "\\" else 1
            in_string = char != '"'
            continue
        if text.startswith("...", index):
            out.append(f'"{ELLIPSIS}": null' if stack and stack[-1] == "{" else "null")
            index = ELLIPSIS_TEXT.match(text, index).end()
            continue
        if char in "[{":
            stack.append(char)
        elif char in "]}":
            stack.pop()
        in_string = char == '"'
        out.append(char)
        index += 1
    return json.loads("".join(out))


@dataclass
class ShownAnswer:
    status: Optional[int]
    header_names: List[str]
    body: object  # parsed JSON, None when the docs show none


def parse_shown_answer(block: Block) -> ShownAnswer:
    """A json block, or a plain one of an optional status line and headers, a blank line, and JSON."""
    status, names, lines = None, [], block.text.strip().splitlines()
    if block.info == "" and lines and (STATUS_LINE.match(lines[0]) or HEADER_LINE.match(lines[0])):
        while lines and lines[0].strip():
            line = lines.pop(0)
            status_match, header_match = STATUS_LINE.match(line), HEADER_LINE.match(line)
            if status_match:
                status = int(status_match.group(1))
            elif header_match:
                names.append(header_match.group(1))
    body = "\n".join(lines).strip()
    try:
        return ShownAnswer(status, names, parse_shown_json(body) if body else None)
    except ValueError as error:
        raise PageError(f"{block.name}: the answer shown is not JSON ({error})") from None


def _is_top_k(value) -> bool:
    """A prediction: labels to probabilities."""
    numbers = [v for k, v in value.items() if k != ELLIPSIS]
    return bool(numbers) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in numbers)


def differences(shown, real, where: str = "answer") -> List[str]:
    """Where the answer the docs show has another shape than the real one: keys, recursively. Values are
    the model's and not compared; of a top-k prediction, the top label and the number of labels are
    (labels further down, at probabilities near zero, may swap between machines)."""
    if isinstance(shown, dict):
        if not isinstance(real, dict):
            return [f"{where}: the docs show an object, the server answered {json.dumps(real)[:200]}"]
        partial, keys = ELLIPSIS in shown, [k for k in shown if k != ELLIPSIS]
        if _is_top_k(shown) and _is_top_k(real):
            top = next(iter(real), None)
            problems = [] if not keys or keys[0] == top else [f"{where}: top label {keys[0]!r}, the server's is {top!r}"]
            if not partial and len(keys) != len(real):
                problems.append(f"{where}: {len(keys)} labels shown, the server answered {len(real)}")
            return problems
        problems = [f"{where}: {k!r} is not in the server's answer (it has {sorted(real)})" for k in keys if k not in real]
        if not partial:
            problems += [f"{where}: the server's answer has {k!r}, which the docs do not show" for k in real if k not in shown]
        for key in keys:
            if key in real:
                problems += differences(shown[key], real[key], f"{where}.{key}")
        return problems
    if isinstance(shown, list):
        if not isinstance(real, list):
            return [f"{where}: the docs show a list, the server answered {json.dumps(real)[:200]}"]
        problems = []
        for index, item in enumerate(shown):
            if item is None:  # `...`: what follows does not line up by position
                break
            if index >= len(real):
                return problems + [f"{where}: {len(shown)} items shown, the server answered {len(real)}"]
            problems += differences(item, real[index], f"{where}[{index}]")
        return problems
    return []


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (links and code marks dropped), lower case, punctuation
    other than - and _ removed, each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> List[str]:
    """The page's heading anchors; a repeated one gets -1, -2 ... as on GitHub."""
    seen: Dict[str, int] = {}
    found = []
    for _, line in _lines_outside_fences(page):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(1))
            found.append(f"{base}-{seen[base]}" if base in seen else base)
            seen[base] = seen.get(base, 0) + 1
    return found


def links(page: Path) -> List[Tuple[int, str]]:
    """(line, target) of every link and image outside fenced blocks and code spans."""
    return [(number, match.group(1)) for number, line in _lines_outside_fences(page)
            for match in LINK.finditer(re.sub(r"`[^`]*`", "", line))]
