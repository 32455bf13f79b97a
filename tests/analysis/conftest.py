"""Fixtures of the analysis tests."""

import pytest


@pytest.fixture
def no_plots(monkeypatch):
    """Reports without their plots, for tests of report.md's text only (drawing them is most of a report's 2-3 s)."""
    import analysis.report as report_module

    monkeypatch.setattr(report_module, "write_plots", lambda *args, **kwargs: ([], []))
