"""Markdown text helpers shared by the tables, the report and trial health (a leaf module: it imports nothing of
the analysis, so every other module may use it)."""

from __future__ import annotations

import re

#: "<" where HTML would start a tag or comment ("<img", "</", "<!--"); "p < 0.001" stays as written
_HTML_START = re.compile(r"<(?=[A-Za-z!/?])")


def escape_markdown(text: str) -> str:
    """``text`` safe inside a Markdown table cell: backslashes, pipes, asterisks, backticks, tildes and dollars escaped,
    and an underscore that could open or close emphasis (one not inside a word: "mean_teacher" stays as it is), then
    :func:`neutralise_markup`. GitHub rendered a row "lr $2e-3$" as math and "~~old~~ _tuned_" struck through and in
    italics (the tables review)."""
    for char in ("\\", "|", "*", "`", "~", "$"):
        text = text.replace(char, "\\" + char)
    return neutralise_markup(_EMPHASIS_UNDERSCORE.sub(r"\\_", text))


def code_span(text: str) -> str:
    """``text`` as a Markdown code span, verbatim: fenced by one backtick more than its longest run of backticks (padded
    with a space where it starts or ends with one), line breaks made spaces. A command or path with a backtick closed
    the single-backtick span of report.md's Command line and rendered the rest as Markdown (the security review)."""
    text = re.sub(r"[\r\n]+", " ", str(text))
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


#: An underscore not between two letters or digits (GitHub's emphasis needs one at a word's edge).
_EMPHASIS_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def neutralise_markup(text: str) -> str:
    """``text`` as plain words in Markdown: an HTML tag's "<" written as ``&lt;``, a link's "](" broken and line breaks
    made spaces (names from a dataset's manifest or lists reached report.md as raw HTML, links and headings: the
    security review). For prose that may name them (a table's caption); its own backticks keep their meaning."""
    text = _HTML_START.sub("&lt;", text).replace("](", "]\\(")
    return re.sub(r"[\r\n]+", " ", text)
