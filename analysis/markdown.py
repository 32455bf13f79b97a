"""Markdown text helpers shared by the tables, the report and trial health (a leaf module: it imports nothing of
the analysis, so every other module may use it)."""

from __future__ import annotations

import re

#: "<" where HTML would start a tag or comment ("<img", "</", "<!--"); "p < 0.001" stays as written
_HTML_START = re.compile(r"<(?=[A-Za-z!/?])")


def escape_markdown(text: str) -> str:
    """``text`` safe inside a Markdown table cell: backslashes, pipes, asterisks and backticks escaped, then
    :func:`neutralise_markup`."""
    for char in ("\\", "|", "*", "`"):
        text = text.replace(char, "\\" + char)
    return neutralise_markup(text)


def neutralise_markup(text: str) -> str:
    """``text`` as plain words in Markdown: an HTML tag's "<" written as ``&lt;``, a link's "](" broken and line breaks
    made spaces (names from a dataset's manifest or lists reached report.md as raw HTML, links and headings: the
    security review). For prose that may name them (a table's caption); its own backticks keep their meaning."""
    text = _HTML_START.sub("&lt;", text).replace("](", "]\\(")
    return re.sub(r"[\r\n]+", " ", text)
