"""Command-line changes to a built study: ``--set KEY=VALUE`` config overrides and ``--rows`` row selection.

``--set`` takes a dotted key of :class:`~medseg_platform.config.TrialConfig` (``optim.lr``, ``data.patch_size``,
``eval.val_every``, ``threads``, ``objective``) or an objective parameter (``objective_params.temperature``).
The value is parsed with the type of the field it sets: the dataclass field types of
:mod:`medseg_platform.config`, and for ``objective_params.NAME`` the field of the objective's config class
(:func:`methods.registry.objective_config`) of each row it applies to. Booleans are ``true``/``false``,
tuples comma-separated (``data.patch_size=64,64``), optional values ``none``; an untyped field (e.g.
``nn_pool_resolution``) takes a JSON value or else the text.

An override applies to every trial of the study. It must not fight with what the study itself decides, so
each of these is a one-line :class:`~medseg_platform.errors.ConfigError` before anything starts:

* an unknown key (with the close matches), a section instead of a field (``--set optim``), a pretraining
  stage's field (a row's ``pretrain`` list sets those), a value of the wrong type;
* a key a command-line flag sets (``seed``: ``--seeds``, ...), a grid axis or a searched key of the study;
* a key a row sets itself (its variant's overrides: the row would silently win), or an objective parameter
  that a row's objective does not have; the message names the row (``--rows`` can leave it out).

Fields of the config sections (``data``, ``model``, ``optim``, ``eval`` and the top-level numbers) change the
study's base config, so everything that reads the base (an ASHA budget) sees them (study scripts and
``medseg train`` also apply them to the profile before the rows are built:
:func:`medseg_platform.profiles.profile_with_overrides`); ``objective`` and ``objective_params.*`` go into every
row's overrides, on top of the row's own objective parameters.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from collections import Counter
from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

from medseg_platform.config import TrialConfig
from medseg_platform.errors import ConfigError

#: The objective of the recipes' pretraining stages (:func:`medseg_platform.recipes.isd_stage`).
PRETRAIN_OBJECTIVE = "isd_pretrain"
#: Where a pretraining stage's parameters are set instead of --set.
STAGE_REMEDY = "edit the study script, e.g. with medseg_platform.variants.with_stage_params"

#: Keys a study's own command-line flags set -> what sets them (an override of them is an error pointing there).
STUDY_FLAG_KEYS = {"seed": "the flag --seeds", "workers": "the flag --num-workers", "data.root": "the flag --data-root",
                   "optim.amp": "the flag --amp", "data.labelled": "the flag --labelled"}
#: ``TrialConfig`` fields that are dataclass sections (their leaves are ``section.field``).
_SECTIONS = ("data", "model", "optim", "eval")
_OBJECTIVE_PREFIX = "objective_params."


def parse_set_options(items: Sequence[str] | None) -> dict[str, str]:
    """``["optim.lr=0.02", ...]`` -> ``{"optim.lr": "0.02"}`` in the order given; malformed or repeated keys are errors."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=0.02")
        if key in out:
            raise ConfigError(f"--set {key}: given twice ({out[key]!r} and {text!r}); give it once")
        out[key] = text.strip()
    return out


@lru_cache(maxsize=None)
def config_fields() -> dict[str, Any]:
    """Every settable dotted key of :class:`TrialConfig` (not ``objective_params`` / ``pretrain``) -> its type."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(TrialConfig)
    for f in dataclasses.fields(TrialConfig):
        if f.name in _SECTIONS:
            section = hints[f.name]
            sub = typing.get_type_hints(section)
            out.update({f"{f.name}.{g.name}": sub[g.name] for g in dataclasses.fields(section)})
        elif f.name not in ("objective_params", "pretrain"):
            out[f.name] = hints[f.name]
    return out


def objective_param_types(objective: str) -> dict[str, Any]:
    """The parameters of ``objective``'s config class -> their types (empty for an unknown objective)."""
    from methods.registry import OBJECTIVES

    cls = OBJECTIVES.get(objective)
    if cls is None:
        return {}
    hints = typing.get_type_hints(cls.config_class)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls.config_class)}


def _all_objective_params() -> set[str]:
    from methods.registry import OBJECTIVES

    return {name for objective in OBJECTIVES for name in objective_param_types(objective)}


def check_key(key: str, flags: Mapping[str, str] = STUDY_FLAG_KEYS, objective: str | Sequence[str] | None = None) -> None:
    """A one-line :class:`ConfigError` unless ``key`` is a settable leaf of the config that no flag sets. ``objective``:
    the objective every row trains, or the rows' objectives; an objective parameter that no objective has is then
    answered with their parameters (close matches among every objective's named other methods' parameters: the
    extension review, in a study of two objectives)."""
    if key in flags:  # "the flag --seed", or a reason the command has no way to set it ("not settable ...")
        why = flags[key]
        raise ConfigError(f"--set {key}: {why}" if why.startswith("not settable") else f"--set {key}: set by {why}; use that instead")
    if key == "pretrain" or key.startswith("pretrain.") or key.startswith("pretrain["):
        raise ConfigError(f"--set {key}: pretraining stages cannot be set from the command line (each row's 'pretrain' list "
                          f"sets them; {STAGE_REMEDY})")
    if key in _SECTIONS or key == "objective_params":
        example = "objective_params.temperature" if key == "objective_params" else next(k for k in config_fields() if k.startswith(key + "."))
        raise ConfigError(f"--set {key}: name one field of it, e.g. --set {example}=...")
    if key.startswith(_OBJECTIVE_PREFIX):
        name = key[len(_OBJECTIVE_PREFIX):]
        if name in _all_objective_params():
            return
        if objective is not None:  # close matches among their own parameters first, else among every key but others'
            names = (objective,) if isinstance(objective, str) else tuple(objective)
            params = list(dict.fromkeys(param for one in names for param in objective_param_types(one)))
            close = difflib.get_close_matches(name, params, n=3, cutoff=0.6)
            matches = (f"close matches: {', '.join(_OBJECTIVE_PREFIX + c for c in close)}" if close
                       else _close_matches(key, params))
            whose = f"objective {names[0]}'s parameters" if len(names) == 1 else f"the parameters of objectives {', '.join(names)}"
            raise ConfigError(f"--set {key}: unknown key; {matches} ({whose}: {', '.join(params) or 'none'})" + _stage_hint(key))
    elif key in config_fields():
        return
    raise ConfigError(f"--set {key}: unknown key; {_close_matches(key)}" + _stage_hint(key))


def _stage_hint(key: str) -> str:
    """Where a parameter that only the pretraining stages have is set (``--set isd.tau_teacher``): the close matches
    alone named ``objective_params.tau_teacher``, which is refused in turn; "" for any other key (``ema_momentum`` is
    also a fine-tuning objective's parameter, which ``objective_params.ema_momentum`` does reach)."""
    from methods.registry import OBJECTIVES

    leaf = key.rsplit(".", 1)[-1]
    fine_tuning = any(leaf in objective_param_types(name) for name in OBJECTIVES if name != PRETRAIN_OBJECTIVE)
    if fine_tuning or leaf not in objective_param_types(PRETRAIN_OBJECTIVE):
        return ""
    return (f"; {leaf} is a parameter of the ISD pretraining stages, which --set cannot reach ({STAGE_REMEDY}, as "
            "studies/ablation_temperature.py does)")


def _close_matches(key: str, objective_params: Iterable[str] | None = None) -> str:
    """The known keys close to ``key``: config fields and ``objective_params.NAME`` for the names of ``objective_params``
    (every objective's parameters when None)."""
    params = _all_objective_params() if objective_params is None else set(objective_params)
    known = sorted(set(config_fields()) | {_OBJECTIVE_PREFIX + name for name in params})
    leaf = key.rsplit(".", 1)[-1]
    close = [k for k in known if k.rsplit(".", 1)[-1] == leaf]  # the right name in another section first (optim.lr)
    if not key.startswith(_OBJECTIVE_PREFIX):  # whole keys sharing that long prefix match at 0.6 whatever their names
        close += [k for k in difflib.get_close_matches(key, known, n=5, cutoff=0.6) if k not in close]
    close += [k for k in known if k not in close and difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], n=1, cutoff=0.8)]
    if close:
        return "close matches: " + ", ".join(close[:6])
    return ("no close match; keys are " + ", ".join(f"{s}.NAME" for s in _SECTIONS)
            + ", objective_params.NAME, objective, threads (see medseg_platform/config.py)")


def parse_value(key: str, text: str, kind: Any) -> Any:
    """``text`` as a value of type ``kind`` (a field type); a one-line :class:`ConfigError` naming ``key`` if it is not one."""
    where = f"--set {key}={text}"
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if type(None) in args and text.strip().lower() in ("none", "null"):
            return None
        if len(options) == 1:
            return parse_value(key, text, options[0])
        return _json_or_text(text)
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false")
    plain = text.strip().isascii() and "_" not in text  # Python's int() and float() also read "1_000" and other digits
    if kind is int:
        if not plain:
            raise ConfigError(f"{where}: expected a whole number (ASCII digits, no separators)")
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if math.isfinite(number) and number.is_integer():  # "32.0", "1e3": whole numbers written as reals
            return int(number)
        raise ConfigError(f"{where}: expected a whole number") from None
    if kind is float:
        if not plain:
            raise ConfigError(f"{where}: expected a number (ASCII digits, no separators)")
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{where}: expected a number") from None
    if kind is str:
        return text
    if origin is tuple:
        parts = [p.strip() for p in text.strip().strip("[]()").split(",")]
        if len(parts) > 1 and parts[-1] == "":  # a trailing comma, as Python and JSON5 write lists: "4,8,16,"
            parts.pop()
        if parts == [""]:
            parts = []
        if "" in parts:  # "48,,48": a value left out, not two
            raise ConfigError(f"{where}: an empty value between commas; give each value once, e.g. 48,48")
        fixed = args and args[-1] is not Ellipsis
        if fixed and len(parts) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} comma-separated values, e.g. "
                              f"{','.join('64' if a is int else 'x' for a in args)}")
        if not parts:
            raise ConfigError(f"{where}: expected comma-separated values")
        return tuple(parse_value(key, p, args[i] if fixed else (args[0] if args else Any)) for i, p in enumerate(parts))
    return _json_or_text(text)


def _json_or_text(text: str) -> Any:
    """An untyped field's value: a JSON number / boolean / null / list, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _row_name(variant) -> str:
    return str(variant.tags.get("row") or "(unnamed row)")


def _keys_set_by(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A row's overrides as dotted leaf keys -> values (``{"objective_params": {"a": 1}}`` -> ``objective_params.a``)."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if (key in _SECTIONS or key == "objective_params") and isinstance(value, Mapping):
            out.update({f"{key}.{name}": v for name, v in value.items()})
        else:
            out[key] = value
    return out


def _row_keys(variant) -> dict[str, Any]:
    """The keys a row sets: its overrides' (:func:`_keys_set_by`) and the axes its tags name (``tags["axes"]``). A row
    whose label states an axis value it leaves at the default (docs/studies.md's template: "unsup weight = 1") took a
    --set of that key and was tabled and plotted under the stated value (the extension review)."""
    axes = variant.tags.get("axes") if isinstance(variant.tags.get("axes"), Mapping) else {}
    return {**{str(k): v for k, v in axes.items()}, **_keys_set_by(variant.overrides)}


def _refuse_stage_parameters(resolved: Sequence, texts: Mapping[str, str], objective: str | None) -> None:
    """A one-line :class:`ConfigError` for an ``objective_params.NAME`` that no row's fine-tuning objective has but a
    row's pretraining stage does (``tau_teacher``: the ISD stages'), which no ``--set`` reaches; checked over every row
    before the per-row "has no parameter" errors, whose "leave the row out" hint would lead nowhere for it.
    ``resolved``: every row's configuration (:class:`~medseg_platform.config.TrialConfig`) before ``--set``."""
    fine_tuning = {name for cfg in resolved for name in objective_param_types(objective or cfg.objective)}
    for key in texts:
        name = key[len(_OBJECTIVE_PREFIX):] if key.startswith(_OBJECTIVE_PREFIX) else None
        if name is None or name in fine_tuning:
            continue
        stages = [stage.objective for cfg in resolved for stage in cfg.pretrain if name in objective_param_types(stage.objective)]
        if stages:
            raise ConfigError(f"--set {key}: a parameter of the pretraining stages ({stages[0]}), not of any row's fine-tuning "
                              f"objective; stages cannot be set from the command line ({STAGE_REMEDY})")


def _rows_that(clauses: list[str], several: str = "cannot take it") -> str:
    """``"row <clause>"`` for one row, ``"<n> rows <several>: <clause>; <clause>"`` for more (a refusal names every row
    it is about: ``--rows`` can then leave them all out in one try)."""
    return f"row {clauses[0]}" if len(clauses) == 1 else f"{len(clauses)} rows {several}: " + "; ".join(clauses)


def _hint_for(rows_hint: str, count: int) -> str:
    """``rows_hint`` ("leave the row out with --rows") for ``count`` rows."""
    return rows_hint if count == 1 else rows_hint.replace("the row", "those rows")


def apply_overrides(study, texts: Mapping[str, str], flags: Mapping[str, str] = STUDY_FLAG_KEYS,
                    rows_hint: str = "leave the row out with --rows") -> dict[str, Any]:
    """Apply ``--set`` overrides (``{key: text}``) to every trial of ``study`` (a :class:`~medseg_platform.study.Study`,
    changed in place: its ``base`` and ``variants``); returns ``{key: parsed value}`` for the study's settings.

    Raises a one-line :class:`ConfigError` for every case of the module docstring; ``flags`` maps the keys that a
    command-line flag sets to that flag; ``rows_hint`` ends the messages about a row ("" for none).
    """
    from medseg_platform.study import Variant

    values: dict[str, Any] = {}
    row_defaults: list[dict[str, Any]] = []  # per variant: the objective parameters it trains with before --set
    from methods.registry import OBJECTIVES

    rows = [study.base.replace(**variant.overrides) for variant in study.variants]  # each row's config before --set
    objectives = {texts["objective"]} if "objective" in texts else {row.objective for row in rows}
    trained = tuple(sorted(objectives)) if objectives and objectives <= set(OBJECTIVES) else None
    for key in texts:
        check_key(key, flags, trained)
        if key in study.grid:
            raise ConfigError(f"--set {key}: study {study.name} varies it as a grid axis ({', '.join(map(str, study.grid[key]))}); "
                              "it cannot be fixed for every trial")
        if key in (study.search_space or {}):
            raise ConfigError(f"--set {key}: study {study.name} searches it; it cannot be fixed for every trial")
        if not key.startswith(_OBJECTIVE_PREFIX):
            values[key] = parse_value(key, texts[key], config_fields()[key])
    _refuse_stage_parameters(rows, texts, values.get("objective"))
    set_by_rows = [_row_keys(variant) for variant in study.variants]
    for key in texts:
        if len(study.variants) > 1 and all(key in keys for keys in set_by_rows):  # "leave the row out" would leave none
            shown = ", ".join(dict.fromkeys(repr(keys[key]) for keys in set_by_rows))
            raise ConfigError(f"--set {key}: every row of study {study.name} sets it itself (to {shown}): it is what the "
                              "rows vary; drop the --set")
    for key in texts:  # every row that sets it in one message: naming the first alone took one more try per row
        setters = [(_row_name(variant), keys[key]) for variant, keys in zip(study.variants, set_by_rows) if key in keys]
        if setters:
            named = (f"row {setters[0][0]!r} sets it itself (to {setters[0][1]!r})" if len(setters) == 1 else
                     _rows_that([f"{name!r} (to {value!r})" for name, value in setters], "set it themselves"))
            raise ConfigError(f"--set {key}: {named}; drop the --set" + (f" or {_hint_for(rows_hint, len(setters))}" if rows_hint else ""))
    lacking: dict[str, list[str]] = {}  # key -> the rows whose objective has no such parameter
    for variant, resolved in zip(study.variants, rows):
        objective = values.get("objective") or resolved.objective
        params = objective_param_types(objective)
        for key in texts:
            if not key.startswith(_OBJECTIVE_PREFIX):
                continue
            name = key[len(_OBJECTIVE_PREFIX):]
            if name not in params:
                lacking.setdefault(key, []).append(f"{_row_name(variant)!r} (objective {objective}) has no parameter {name!r} "
                                                   f"(its parameters: {', '.join(params) or 'none'})")
                continue
            values.setdefault(key, parse_value(key, texts[key], params[name]))
        row_defaults.append(_objective_values(objective, resolved.objective_params))
    for key, reasons in lacking.items():
        raise ConfigError(f"--set {key}: {_rows_that(reasons)}" + (f"; {_hint_for(rows_hint, len(reasons))}" if rows_hint else ""))
    base_values = {k: v for k, v in values.items() if k != "objective" and not k.startswith(_OBJECTIVE_PREFIX)}
    row_values = {k: v for k, v in values.items() if k not in base_values}
    if base_values:
        study.base = study.base.replace(**base_values)
        validate_with_sets(study.base, base_values, quiet=True)
    if row_values:
        study.variants = [Variant(v.tags, {**v.overrides, **_changing(row_values, defaults)})
                          for v, defaults in zip(study.variants, row_defaults)]
    return {key: values[key] for key in texts}


def named_by_set(exc: ConfigError, keys: Iterable[str]) -> ConfigError:
    """``exc`` named as the ``--set`` of ``keys`` that it is about: "--set optim.lr -1.0: must be ..." where the message
    starts with the key (the message did not name the flag: the workflow probe), "--set KEY: <message>" where it names
    the key elsewhere or, for an objective parameter, its config field ("MonaConfig.temperature: must be in (0, inf)"
    for ``objective_params.temperature``: a row's error named the row, as if the row were wrong, the CLI review).
    ``exc`` itself otherwise."""
    message, keys = str(exc), tuple(keys)
    for key in keys:  # the key the message is about first, then one it mentions
        if message.startswith((f"{key} ", f"{key}:", f"{key}.")):
            return ConfigError(f"--set {message}")
    for key in keys:
        field_name = key.rsplit(".", 1)[-1]
        named = re.search(rf"(?<![\w.]){re.escape(key)}(?!\w)", message)  # whole: optim.lr is not optim.lr_step (the review)
        if named or (key.startswith("objective_params.") and f"Config.{field_name}:" in message):
            return ConfigError(f"--set {key}: {message}")
    return exc


def validate_with_sets(base: TrialConfig, keys: Iterable[str], quiet: bool = False) -> None:
    """``base.validate(check_data=False)``, its error named as a ``--set`` one when it is about one of ``keys`` (the
    ``--set`` keys, :func:`named_by_set`). ``quiet``: another error of ``base`` is left to the trials' checks, which
    name their row."""
    try:
        base.validate(check_data=False)
    except ConfigError as exc:
        named = named_by_set(exc, keys)
        if named is not exc or not quiet:
            raise named from None


def _objective_values(objective: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``objective``'s parameters as a row without ``--set`` trains them: ``{"objective_params.NAME": value}``."""
    from methods.registry import objective_config

    try:
        resolved = objective_config(objective, dict(params))
    except (ValueError, ConfigError):  # the row's own values are checked (with a better message) by TrialConfig.validate
        return {}
    return {_OBJECTIVE_PREFIX + f.name: getattr(resolved, f.name) for f in dataclasses.fields(resolved)}


def _changing(row_values: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """The ``--set`` values that change a row: an objective parameter set to the value the row already trains with
    is left out, so the trial keeps its key (``results.trial_key`` hashes the config as written) and a finished trial
    is found again instead of trained a second time."""
    return {key: value for key, value in row_values.items()
            if not (key.startswith(_OBJECTIVE_PREFIX) and key in current and _same_value(current[key], value))}


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    return isinstance(a, bool) == isinstance(b, bool) and a == b  # 1 == 1.0 trains the same; True == 1 is a typo


#: Greek letters of row names and the ASCII a shell user types for them (``--rows "ARCO-SG, tau = 0.1"``).
_ASCII_GREEK = {"τ": "tau", "λ": "lambda", "α": "alpha", "δ": "delta"}


def _typed(name: str) -> str:
    """A row name as it can be typed: its Greek letters spelt out (see :data:`_ASCII_GREEK`)."""
    for letter, ascii_name in _ASCII_GREEK.items():
        name = name.replace(letter, ascii_name)
    return name


def _row_holding(name: str, valid: Sequence[str]) -> str | None:
    """The one valid row whose name holds every comma-separated part of ``name`` ("ARCO-SG, tau = 0.5" for the merged
    "ARCO-SG, released: τ = 0.5, ISD τ_t = 0.1, τ_s = 0.1"; the closest spelling suggested τ = 0.1's row: the studies
    walkthrough); None when no row or several do."""
    parts = [part.strip().casefold() for part in _typed(name).split(",") if part.strip()]
    holding = [row for row in valid if all(part in _typed(row).casefold() for part in parts)]
    return holding[0] if len(holding) == 1 else None


def select_rows(study, names: Sequence[str]) -> None:
    """Keep only the rows (variants) of ``study`` named ``names`` (``tags["row"]``, as the tables print them, or with
    their Greek letters spelt out: "tau" for "τ") and the claims between two kept rows; an unknown name is a one-line
    :class:`ConfigError` listing the valid ones."""
    valid = list(dict.fromkeys(_row_name(v) for v in study.variants))
    spelt = {_typed(row): row for row in valid}
    names = [name if name in valid else spelt.get(_typed(name), name) for name in names]
    unknown = [name for name in names if name not in valid]
    if unknown:
        folded = {row.casefold(): row for row in valid}  # "Mona" for "MONA": the close match --set's keys get too
        close = [folded.get(name.casefold()) or _row_holding(name, valid)
                 or next(iter(difflib.get_close_matches(name, valid, n=1)), None) for name in unknown]
        hint = " (did you mean " + ", ".join(repr(c) for c in dict.fromkeys(close) if c) + "?)" if any(close) else ""
        searched = (" (a search has one row, the method it samples: pick another with --method)"
                    if getattr(study, "search_space", None) is not None else "")
        raise ConfigError(f"--rows {', '.join(map(repr, unknown))}: no such row in study {study.name}{hint}; valid rows: "
                          + ", ".join(map(repr, valid)) + (" (Greek letters may be spelt out: tau for τ)"
                                                           if any(_typed(row) != row for row in valid) else "") + searched)
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:  # as --seeds and --labelled refuse a value given twice
        raise ConfigError(f"--rows: each row once, got {', '.join(map(repr, repeated))} more than once")
    wanted = set(names)
    study.variants = [v for v in study.variants if _row_name(v) in wanted]
    kept = [c for c in study.claims if c.get("a") in wanted and c.get("b") in wanted]
    study.claims_left_out, study.claims = len(study.claims) - len(kept), kept
