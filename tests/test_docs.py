"""The code cites the project's own ``docs/`` pages, and every citation resolves.

Two forms of section citation are recognised (``docs/README.md``, "Citing these pages from code"):

* ``docs/<page>.md, '<Section title>'`` (the current form; the comma may be followed by a line break and
  a ``#`` comment marker);
* the path in double backticks followed by ``"<Section title>"`` on the same line (older comments).

A title matches a Markdown heading of the page (any level, outside code fences) exactly, or the part of a
heading before ``": "``. A bare ``docs/<page>.md`` must name an existing page.
"""

from __future__ import annotations

import re
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCANNED = ("medseg_platform", "methods", "analysis", "studies", "benchmarks", "tests", "docs", "README.md")
SUFFIXES = {".py", ".md", ".cfg", ".toml", ".sh"}
SKIPPED_PARTS = {"__pycache__", ".venv", "results"}

# Citations of a reference document that is not in the repository.
# Spelled in pieces so that this file does not match itself; the last alternative is a bare section number
# (a section sign followed by a digit), which points at the same document. A "§" used as the tables'
# footnote mark ("§ 4 of 16 cells ...") is fine.
FORBIDDEN = re.compile("|".join([re.escape(s) for s in ("methods" + "-spec", "spec" + " §", "ray" + "-stack.md",
                                                        "shared" + "/reference")] + ["§" + r"\d"]), re.IGNORECASE)

PAGE = r"docs/(?P<page>[\w./-]+\.md)"
# docs/mona.md, 'Negative mask'   (optionally with backticks around the path, a line break and "#" after the comma)
QUOTED_SINGLE = re.compile(PAGE + r"`{0,2},[\s#]*'(?P<title>[^'\n]+(?:\n[ \t]*#?[ \t]*[^'\n]+)*)'")
# ``docs/methods.md`` "Sparse representations"   (a comma after the path is allowed too)
QUOTED_DOUBLE = re.compile(PAGE + r"`{0,2},?[ \t]*\"(?P<title>[^\"\n]+)\"")
BARE = re.compile(PAGE)
HEADING = re.compile(r"^#{1,6}[ \t]+(?P<title>.+?)[ \t]*#*[ \t]*$")


def scanned_files() -> list[Path]:
    files = []
    for name in SCANNED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [p for p in candidates if p.is_file() and p.suffix in SUFFIXES and not SKIPPED_PARTS & set(p.parts)
                  and not any(part.endswith(".egg-info") for part in p.parts)]
    return files


def headings(page: Path) -> set[str]:
    """Every heading title of a Markdown page (code fences skipped), and the part before ": " of each."""
    titles, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            title = match["title"]
            titles.add(title)
            if ": " in title:
                titles.add(title.split(": ", 1)[0])
    return titles


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def citations(text: str) -> list[tuple[int, str, str | None]]:
    """(line, page, section title or None) of every docs citation in ``text``."""
    found, sectioned = [], set()
    for pattern in (QUOTED_SINGLE, QUOTED_DOUBLE):
        for match in pattern.finditer(text):
            title = re.sub(r"\s*\n[ \t]*#?[ \t]*", " ", match["title"]).strip()
            found.append((_line(text, match.start()), match["page"], title))
            sectioned.add(match.start())
    found += [(_line(text, m.start()), m["page"], None) for m in BARE.finditer(text) if m.start() not in sectioned]
    return found


def unresolved(text: str, pages: dict[str, set[str]]) -> list[str]:
    """``"line N: <problem>"`` for every citation in ``text`` whose page or section does not exist."""
    problems = []
    for line, page, title in citations(text):
        if page not in pages:
            problems.append(f"line {line}: docs/{page} does not exist")
        elif title is not None and title not in pages[page]:
            problems.append(f"line {line}: docs/{page} has no section '{title}'")
    return problems


def doc_pages() -> dict[str, set[str]]:
    return {str(p.relative_to(DOCS)): headings(p) for p in sorted(DOCS.rglob("*.md"))}


def test_citation_parser_finds_both_forms_and_checks_them():
    pages = {"mona.md": {"Negative mask", "Memory banks"}, "methods.md": {"Sparse representations"}}
    text = (
        "a = 1  # docs/mona.md, 'Negative mask'\n"
        "# see docs/mona.md,\n#   'Memory banks' and ``docs/methods.md`` \"Sparse representations\"\n"
        "x  # docs" "/mona.md, 'No such section'; docs" "/missing.md; `docs/mona.md`\n"  # split: not citations of this file
    )
    assert citations(text) == [
        (1, "mona.md", "Negative mask"), (2, "mona.md", "Memory banks"), (4, "mona.md", "No such section"),
        (3, "methods.md", "Sparse representations"), (4, "missing.md", None), (4, "mona.md", None),
    ]
    assert unresolved(text, pages) == ["line 4: docs" "/mona.md has no section 'No such section'",
                                       "line 4: docs" "/missing.md does not exist"]


def test_headings_skip_code_fences_and_allow_the_title_before_a_colon(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n## ISD pretraining: the released local term\n```\n# not a heading\n```\n### Small ###\n")
    assert headings(page) == {"Page", "ISD pretraining: the released local term", "ISD pretraining", "Small"}


def test_every_docs_citation_names_an_existing_page_and_section():
    pages = doc_pages()
    assert {"README.md", "mona.md", "arco.md", "action.md", "isd_pretraining.md", "evaluation.md"} <= set(pages)
    problems = [f"{path.relative_to(ROOT)} {problem}" for path in scanned_files()
                for problem in unresolved(path.read_text(encoding="utf-8"), pages)]
    assert not problems, "\n".join(problems)


# README, 'Running on a cluster'   (the repository's README.md; not docs/README.md, which the patterns above check)
README_CITATION = re.compile(r"(?<![\w/.`])README(?:\.md)?`{0,2},[\s#]*'(?P<title>[^'\n]+(?:\n[ \t]*#?[ \t]*[^'\n]+)*)'")


def test_every_readme_citation_names_an_existing_section():
    """An error message sent users to "README, 'Authentication'", a bold paragraph and no section (the docs probe)."""
    assert [m["title"] for m in README_CITATION.finditer("see README, 'Studies' and docs" "/README.md, 'Index'")] == ["Studies"]
    sections = headings(ROOT / "README.md")
    problems = []
    for path in scanned_files():
        text = path.read_text(encoding="utf-8")
        for match in README_CITATION.finditer(text):
            title = re.sub(r"\s*\n[ \t]*#?[ \t]*", " ", match["title"]).strip()
            if title not in sections:
                problems.append(f"{path.relative_to(ROOT)} line {_line(text, match.start())}: README.md has no section '{title}'")
    assert not problems, "\n".join(problems)


def test_forbidden_pattern_matches_the_old_citation_forms():
    for text in ("methods" + "-spec", "(spec" + " §" + "8 bug 3)", "(ray" + "-stack.md)", "../shared" + "/reference/x",
                 "(§" + "1.10)"):
        assert FORBIDDEN.search(text), text
    for text in ("docs/mona.md, 'Negative mask'", "| 40.0 ± 3.9§ |", "a section sign (§) marks a cell", "§ 4 of 16 cells"):
        assert not FORBIDDEN.search(text), text


def test_no_file_cites_the_reference_document_outside_the_repository():
    offenders = [f"{path.relative_to(ROOT)}:{_line(text, m.start())}: {m.group(0)}"
                 for path in scanned_files() for text in [path.read_text(encoding="utf-8")]
                 for m in FORBIDDEN.finditer(text)]
    assert not offenders, f"{len(offenders)} citations of a document outside the repository:\n" + "\n".join(offenders)


def _dotted_fields(cls, prefix: str = "") -> list[str]:
    """Every field of a config dataclass as a dotted key (nested sections expanded, as ``--set`` names them)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            keys += _dotted_fields(kind, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def test_every_trial_config_field_is_in_the_config_reference():
    from medseg_platform.config import TrialConfig

    text = (DOCS / "config.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([\w.]+)` \|", text, flags=re.MULTILINE))
    keys = _dotted_fields(TrialConfig)
    assert len(keys) > 30 and "optim.poly_power" in keys
    assert [key for key in keys if key not in listed] == []
    assert sorted(listed - set(keys)) == []  # and no field the config does not have
    # the default column is the dataclasses' default (as config.json writes it)
    import json

    defaults = TrialConfig().to_dict()
    for key, cell in re.findall(r"^\| `([\w.]+)` \| ([^|]+) \|", text, flags=re.MULTILINE):
        value = defaults
        for part in key.split("."):
            value = value[part]
        written = cell.strip().strip("`")
        try:
            documented = json.loads(written)
        except ValueError:
            documented = written
        assert documented == (list(value) if isinstance(value, tuple) else value), key
