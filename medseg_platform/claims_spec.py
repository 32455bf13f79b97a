"""Claims a study checks: "row A beats row B at this label fraction", declared next to the rows.

A study script lists the papers' claims its table can test (``Study.claims``); :meth:`Study.description`
writes them into ``study.json`` and the report tests them (:mod:`analysis.claims`, ``docs/analysis.md``).
A claim is a plain JSON-able dict, built and checked by :func:`claim`:

* ``a``, ``b``: table row labels as printed (``tags["row"]``, e.g. "ARCO-SG", "Supervised only");
* ``column``: the label fraction of row ``a`` as ``data.labelled`` writes it ("1", "3", "100%");
  ``b_column``: that of row ``b`` when it differs (a method against itself with fewer labels);
* ``direction``: ``">"`` (A is better) or ``">="`` (A is not worse, up to a small margin);
* ``metric``: the per-case value compared (default ``"dice"``: a test case's mean foreground Dice,
  the average over its classes);
* ``paper``: which paper and table make the claim, in a few words;
* ``published_rows``: the rows' names in the published tables when the study's labels differ (e.g. a
  sampling-ablation row that is ARCO-SG's setting).

Claims are documentation of what a study is for: they never change what runs (the Tune experiment's
spec hash leaves them out), so editing one never restarts an experiment.
"""

from __future__ import annotations

from typing import Any

from medseg_platform.errors import ConfigError

DIRECTIONS = (">", ">=")
CLAIM_METRICS = ("dice", "jaccard")  # per-case metrics where higher is better
CLAIM_KEYS = ("a", "b", "column", "b_column", "direction", "metric", "paper", "published_rows")


def claim(a: str, b: str, column: str, paper: str, *, direction: str = ">", b_column: str | None = None,
          metric: str = "dice", published_rows: tuple[str, str] | None = None) -> dict:
    """The claim "row ``a`` ``direction`` row ``b`` at label fraction ``column``" as a dict; see the module docstring."""
    spec = {"a": str(a), "b": str(b), "column": str(column), "direction": direction, "metric": metric, "paper": str(paper)}
    if b_column is not None and str(b_column) != str(column):
        spec["b_column"] = str(b_column)
    if published_rows is not None:
        spec["published_rows"] = [str(name) for name in published_rows]
    return check_claim(spec, "claim")


def check_claim(spec: Any, where: str) -> dict:
    """``spec`` if it is a valid claim dict, else a one-line :class:`ConfigError` naming ``where``."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: a claim must be a dict (build it with medseg_platform.claims_spec.claim)")
    unknown = sorted(set(spec) - set(CLAIM_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown claim key(s) {', '.join(unknown)}; known: {', '.join(CLAIM_KEYS)}")
    for key in ("a", "b", "column", "paper"):
        if not isinstance(spec.get(key), str) or not spec[key].strip():
            raise ConfigError(f"{where}: claim needs a non-empty text '{key}' (rows as printed, column as data.labelled writes it)")
    if "b_column" in spec and (not isinstance(spec["b_column"], str) or not spec["b_column"].strip()):
        raise ConfigError(f"{where}: claim b_column must be a non-empty text (a label fraction as data.labelled writes it)")
    if spec["a"] == spec["b"] and spec.get("b_column", spec["column"]) == spec["column"]:
        raise ConfigError(f"{where}: claim compares {spec['a']!r} at {spec['column']} with itself; give another row or b_column")
    if spec.get("direction", ">") not in DIRECTIONS:
        raise ConfigError(f"{where}: claim direction {spec.get('direction')!r}: use one of {', '.join(DIRECTIONS)}")
    if spec.get("metric", "dice") not in CLAIM_METRICS:
        raise ConfigError(f"{where}: claim metric {spec.get('metric')!r}: use one of {', '.join(CLAIM_METRICS)}")
    rows = spec.get("published_rows")
    if rows is not None and (not isinstance(rows, list) or len(rows) != 2 or not all(isinstance(r, str) for r in rows)):
        raise ConfigError(f"{where}: claim published_rows must be two row names [a, b]")
    return spec
