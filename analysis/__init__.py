"""Paper-style tables and plots built from per-trial result files.

Modules: tables (the tables and ``table.csv``), markdown (cell escaping), plots, report (``report.md`` and what it reads), claims and
published (the papers' claims tested, the published numbers), significance, health (trial health), search (a search's
history and best configuration), study_cli (the study scripts' command line), cli and console (``medseg``). Tables,
plots and reports read result files only and never import Ray.
"""
