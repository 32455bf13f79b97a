"""Markdown text helpers shared by the tables, the report and trial health (a leaf module: it imports nothing of
the analysis, so every other module may use it)."""

from __future__ import annotations


def escape_markdown(text: str) -> str:
    """``text`` safe inside a Markdown table cell (backslashes, pipes, asterisks and backticks escaped)."""
    for char in ("\\", "|", "*", "`"):
        text = text.replace(char, "\\" + char)
    return text
