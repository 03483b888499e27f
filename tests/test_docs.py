"""The documentation holds together: every relative link in README.md, docs/ and results/ points
at a file or folder that exists (and, into a Markdown file, at a heading it has), the README
stays a short way in that names the two set-up commands, and no diary words (what changed when)
are left in the docs, the results, the package's comments and docstrings or the shipped configs.

Plain file reads: no MNIST, no MLflow, no model.
"""

import ast
import io
import re
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target), with an optional "title"; target in <…> or bare.
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)"
)
# [label]: target   (a reference-style definition)
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)  # http:, mailto:, …
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")


def markdown_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in ("docs", "results"):
        files += sorted((ROOT / folder).glob("*.md"))
    return [f for f in files if f.exists()]


def prose_lines(text: str, keep_code: bool = False) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, inline code spans blanked out unless
    `keep_code` (a heading's code is part of its anchor)."""
    out, fence = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)[0] * len(opened.group(1))
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            continue
        out.append((number, line if keep_code else INLINE_CODE.sub("", line)))
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link in a Markdown file, inline or reference-style."""
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        targets = [m.group(1) for m in INLINE_LINK.finditer(line)]
        reference = REFERENCE.match(line)
        if reference:
            targets.append(reference.group(1))
        found += [(number, t[1:-1] if t.startswith("<") else t) for t in targets]
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation but `-` and `_`
    removed, spaces made hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file, repeats numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8"), keep_code=True):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def broken_links(path: Path) -> list[str]:
    """A message for each relative link of `path` whose file, folder or heading is missing."""
    problems = []
    for number, target in links(path):
        if EXTERNAL.match(target):
            continue
        file_part, _, fragment = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT)}:{number}: {target}"
        if not resolved.exists():
            problems.append(f"{where}: no such file or folder")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            problems.append(f"{where}: no heading #{fragment} in {resolved.name}")
    return problems


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path) -> None:
    assert broken_links(path) == []


def test_the_docs_are_found() -> None:
    names = {str(p.relative_to(ROOT)) for p in markdown_files()}
    assert {"README.md", "docs/comparisons.md", "results/README.md"} <= names


def test_the_readme_is_a_short_way_in() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "make train" in text
    assert "make test" in text


def test_the_checker_catches_a_broken_link(tmp_path: Path, monkeypatch) -> None:
    """A missing file, a missing heading and a missing folder are each reported once; code,
    external links and good links are not."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# A guide\n\n## `--seeds N`: repeats\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# Title\n\n"
        "[good](docs/guide.md) [anchor](docs/guide.md#--seeds-n-repeats) [self](#title)\n"
        "[web](https://example.com) [mail](mailto:a@b.c) `[code](nowhere.md)`\n"
        "```\n[fenced](nowhere.md)\n```\n"
        "[gone](docs/missing.md) [bad anchor](docs/guide.md#nope) ![img](pics/)\n"
        "[ref]: results/\n"
    )
    problems = broken_links(page)
    assert [p.split(": ")[1] for p in problems] == [
        "docs/missing.md",
        "docs/guide.md#nope",
        "pics/",
        "results/",
    ]


def test_slugs_follow_github() -> None:
    assert slug("Repeats: `--seeds N`") == "repeats---seeds-n"
    assert slug("How `cnn_fast` was found") == "how-cnn_fast-was-found"
    assert slug("Several objectives, budgets, the defaults as trial 0") == (
        "several-objectives-budgets-the-defaults-as-trial-0"
    )


# Words that date a text: they say what changed when, which the git history says, and they go
# stale the day they are written. A text states what is.
DIARY = re.compile(
    r"\bissue #?\d+\b|\bthe old\b|\btoday\b|\btoday's\b|\bno longer\b|\bused to be\b"
    r"|\bearlier measurement|\bnow (?:comes?|lives?|uses?|takes?)\b|\bas before\b"
    r"|\bbefore this (?:change|commit|version|release)\b|\bwas changed to\b",
    re.IGNORECASE,
)


def code_prose(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of a Python file's comments and docstrings: its prose, not its code
    or its messages."""
    source = path.read_text(encoding="utf-8")
    found = [
        (token.start[0], token.string)
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                found += [
                    (value.lineno + i, line) for i, line in enumerate(value.value.split("\n"))
                ]
    return found


def prose_files() -> list[tuple[Path, list[tuple[int, str]]]]:
    """Every text a reader takes as a statement of what is: the docs and results (Markdown), the
    package's comments and docstrings, and the shipped run configs and search spaces."""
    out = [
        (p, list(enumerate(p.read_text(encoding="utf-8").splitlines(), 1)))
        for p in markdown_files()
    ]
    out += [(p, code_prose(p)) for p in sorted((ROOT / "mnist_lab").rglob("*.py"))]
    for p in sorted((ROOT / "mnist_lab" / "shipped").rglob("*.yaml")):
        out.append((p, list(enumerate(p.read_text(encoding="utf-8").splitlines(), 1))))
    return out


def diary_words(files: list[tuple[Path, list[tuple[int, str]]]]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{number}: {match.group(0)!r}"
        for path, lines in files
        for number, line in lines
        for match in DIARY.finditer(line)
    ]


def test_no_diary_words() -> None:
    assert diary_words(prose_files()) == []


def test_the_diary_check_reads_comments_and_docstrings_not_messages(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    module = tmp_path / "module.py"
    module.write_text(
        '"""The loader now lives elsewhere."""\n\n'
        "def f():\n"
        '    """As in issue 13."""\n'
        '    return "the file was changed; no longer valid"  # the old way\n'
    )
    words = [w.split(": ", 1)[1] for w in diary_words([(module, code_prose(module))])]
    assert words == ["'the old'", "'now lives'", "'issue 13'"]
    assert not DIARY.search("the model is now on the GPU; an interval used to compare two runs")
