"""Building a study's rows (:class:`~medseg_platform.study.Variant`) when an ablation axis is not a grid axis.

A :class:`~medseg_platform.study.Study` crosses every variant with every grid axis. An ablation that varies
different settings for different rows (one factor at a time around the released setting, a sampler whose
group count only some rows have, a temperature inside a pretraining stage) is therefore written as a list
of variants. :class:`VariantTable` collects them:

* each row has a table label (``tags["row"]``), its position (``tags["order"]``, insertion order), the line
  it belongs to in the plots (``tags["variant"]``, e.g. "ARCO-SG" for all ARCO-SG temperature rows) and the
  values of the ablation axes it sits on (``tags["axes"]``: numbers, e.g. ``{"isd.tau_teacher": 0.01}``,
  or for ``data.labelled`` the fraction as the config writes it, e.g. ``"3"`` or ``"100%"``, as a grid
  axis records it). An axis named after a config key (a dotted path into the resolved configuration, e.g.
  ``objective_params.temperature``, ``data.labelled``) must exist there and hold the row's own value: an axis
  scaled for display, or a misspelt one, was plotted silently (the extension review). Other names
  (``isd.tau_teacher``) are labels;
* two rows that resolve to the same configuration (the base config with their overrides; an override
  equal to a default counts as that default) are one row: the second is merged into the first (its axes
  are added), so the study never trains the same configuration twice. The released setting, which every
  one-factor-at-a-time axis passes through, thereby appears once, carrying every axis. The kept row's overrides
  stay as written, and a trial's key hashes them (:func:`medseg_platform.results.trial_key`): a default written out
  gives another key than the same row without it (its results are not shared with such a row of another study);
* a whole number given to a real-valued objective or stage parameter (``unsup_weight=1``) is stored as a float
  (``1.0``), as ``--set`` parses it, so the two spellings are one configuration with one key.

:func:`with_objective_params` and :func:`with_stage_params` copy a row's overrides (from
:func:`medseg_platform.recipes.method_overrides`) with some objective / pretraining-stage parameters changed.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from typing import Any, Mapping

from medseg_platform.config import TrialConfig
from medseg_platform.errors import ConfigError
from medseg_platform.study import Variant


class VariantTable:
    """Ordered, de-duplicated study rows; see the module docstring."""

    def __init__(self, base: TrialConfig) -> None:
        self.base = base
        self._rows: dict[str, dict[str, Any]] = {}

    def add(self, row: str, overrides: Mapping[str, Any], *, variant: str | None = None,
            axes: Mapping[str, Any] | None = None) -> str:
        """Add a row (or merge it into the row of the same configuration); returns the label that is kept.

        ``variant`` defaults to ``row``. Merging a row whose axis value contradicts the kept row's value
        for the same axis is a :class:`ConfigError` (two labels would claim one configuration). The overrides are
        resolved against ``base`` here: an invalid key or value is a ConfigError before anything runs.
        """
        overrides = _declared_types(self.base, overrides)
        try:
            resolved = _resolved(self.base, overrides)
            key = json.dumps(resolved, sort_keys=True, default=repr)
        except ValueError as exc:
            raise ConfigError(f"row {row!r}: {exc}") from None
        axes = dict(axes or {})
        for name, value in axes.items():
            _check_axis_value(row, name, value, resolved)
        kept = self._rows.get(key)
        if kept is None:
            self._rows[key] = {"row": row, "variant": variant or row, "axes": axes, "overrides": overrides}
            return row
        for name, value in axes.items():
            if kept["axes"].get(name, value) != value:
                raise ConfigError(f"rows {kept['row']!r} and {row!r} are the same configuration but give {name} = "
                                  f"{kept['axes'][name]} and {value} (a row's overrides do not set the axis it names)")
        kept["axes"].update(axes)
        return kept["row"]

    def resolved(self, overrides: Mapping[str, Any]) -> dict:
        """The full configuration of a row with ``overrides`` (objective and stage parameters with their defaults)."""
        return _resolved(self.base, overrides)

    def variants(self) -> list[Variant]:
        """The rows as variants, ``tags["order"]`` = insertion order."""
        return [Variant({"row": r["row"], "order": i, "variant": r["variant"], "axes": dict(r["axes"])}, r["overrides"])
                for i, r in enumerate(self._rows.values())]


def with_objective_params(overrides: Mapping[str, Any], **params: Any) -> dict:
    """A deep copy of ``overrides`` with ``params`` merged into its ``objective_params``."""
    out = copy.deepcopy(dict(overrides))
    out["objective_params"] = {**out.get("objective_params", {}), **params}
    return out


def with_stage_params(overrides: Mapping[str, Any], stage: int, **params: Any) -> dict:
    """A deep copy of ``overrides`` with ``params`` merged into pretraining stage ``stage``'s objective_params."""
    out = copy.deepcopy(dict(overrides))
    stages = out.get("pretrain") or []
    if not 0 <= stage < len(stages):
        raise ConfigError(f"pretraining stage {stage}: the row has {len(stages)} stage(s)")
    stages[stage]["objective_params"] = {**stages[stage].get("objective_params", {}), **params}
    return out


def _declared_types(base: TrialConfig, overrides: Mapping[str, Any]) -> dict:
    """A deep copy of ``overrides`` whose objective and stage parameters that are declared real-valued hold floats where
    they were given whole numbers (a bool stays: it is no number here)."""
    from medseg_platform.overrides import objective_param_types

    def typed(objective: str, params: Mapping[str, Any]) -> dict:
        types = objective_param_types(objective)
        return {k: float(v) if types.get(k) is float and isinstance(v, int) and not isinstance(v, bool) else v
                for k, v in params.items()}

    out = copy.deepcopy(dict(overrides))
    if isinstance(out.get("objective_params"), Mapping):
        out["objective_params"] = typed(str(out.get("objective", base.objective)), out["objective_params"])
    if isinstance(out.get("pretrain"), (list, tuple)):
        out["pretrain"] = [{**stage, "objective_params": typed(str(stage.get("objective")), stage["objective_params"])}
                           if isinstance(stage, Mapping) and isinstance(stage.get("objective_params"), Mapping) else stage
                           for stage in out["pretrain"]]
    return out


def _check_axis_value(row: str, name: str, value: Any, resolved: Mapping[str, Any]) -> None:
    """A :class:`ConfigError` when axis ``name`` is a dotted path into the row's ``resolved`` configuration (its first
    part a config field) that does not exist there or holds another value than ``value`` (module docstring)."""
    parts = str(name).split(".")
    if parts[0] not in resolved:
        return  # a label of the study's own (isd.tau_teacher: a pretraining stage's parameter)
    node: Any = resolved
    for depth, part in enumerate(parts):
        if not isinstance(node, Mapping) or part not in node:
            where = ".".join(parts[:depth]) or "the configuration"
            choices = sorted(node) if isinstance(node, Mapping) else []
            raise ConfigError(f"row {row!r}: axis {name!r} names no key of the row's configuration ({where} has "
                              f"{', '.join(choices) if choices else 'no keys'}); name the key the axis varies, or give it a "
                              "name outside the configuration's sections for a label")
        node = node[part]
    same = (list(node) == list(value) if isinstance(node, (list, tuple)) and isinstance(value, (list, tuple))
            else node == value and isinstance(node, bool) == isinstance(value, bool))  # 1 is not True
    if not same:
        raise ConfigError(f"row {row!r}: axis {name} = {value!r}, but the row trains {name} = {node!r}; an axis records the "
                          "row's own value (plots place the row there): give that value, and scale it in a plot of your own")


def _resolved(base: TrialConfig, overrides: Mapping[str, Any]) -> dict:
    """``base`` with ``overrides``, objective and stage parameters filled in with their defaults."""
    from methods.registry import objective_config

    config = base.replace(**overrides).to_dict()
    config["objective_params"] = asdict(objective_config(config["objective"], dict(config["objective_params"])))
    for stage in config.get("pretrain") or []:
        stage["objective_params"] = asdict(objective_config(stage["objective"], dict(stage["objective_params"])))
    return config
