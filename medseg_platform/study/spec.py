"""The study spec: what a :class:`Study` runs, frozen into validated trial configs before Ray starts.

A :class:`Study` is a base :class:`TrialConfig`, a list of *variants* (rows of a table: a tag dict plus dotted-key
overrides), grid axes (dotted key -> values), a seeds axis, optionally an Optuna TPE search space, the metric/mode,
an optional ASHA scheduler and the resources per trial. :meth:`Study.trial_params` expands and validates every trial
config (one-line :class:`ConfigError`), :meth:`Study.spec_hash` names the Tune experiment (a changed spec gets a
new experiment; trials whose configs did not change are still reused from their result files) and
:meth:`Study.description` is ``study.json``. :meth:`Study.run` hands the study to :mod:`medseg_platform.study.runner`.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from medseg_platform.claims_spec import check_claim
from medseg_platform.config import MAX_SEED, TrialConfig, differing_fields, is_real, labelled_subset, resolve_path
from medseg_platform.dashboard import DEFAULT_DASHBOARD_HOST
from medseg_platform.errors import ConfigError
from medseg_platform.protocol import PROTOCOLS
from medseg_platform.results import trial_key
from medseg_platform.study.distributed import TUNE_FUNCTION_CPU

if TYPE_CHECKING:
    from medseg_platform.study.runner import StudyRun

METRIC = "best_val_dice"
#: ASHA's time attribute: the evaluations a trial reported (one per validation, one for the final test report).
#: Not ``training_iteration``: the progress-only reports between validations advance that, and carry no new metric.
ASHA_TIME = "evaluations"
#: What every report of a trial carries, its validations' and its final, skipped and errored ones
#: (medseg_platform.engine.train_trial, medseg_platform.study.trainable): Tune checks a search's metric on every result,
#: so a metric reported only at some of them ("val_dice", "test_dice") or a typo failed inside Ray
REPORTED_METRICS = (METRIC,)


@dataclass(frozen=True)
class Variant:
    """One row of a study: ``tags`` (``row`` = its table label) and dotted-key config ``overrides``."""

    tags: Mapping[str, Any]
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Study:
    """A study: trials of ``base`` per variant x grid point x seed (or Optuna samples of ``search_space``), how Tune
    runs them and where their folders go (``results_dir / name``); see the module docstring."""

    name: str
    base: TrialConfig
    results_dir: Path
    variants: Sequence[Variant] = (Variant({}),)
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    seeds: Sequence[int] = (1337,)
    search_space: Mapping[str, Any] | None = None  # Ray Tune domains, sampled by Optuna TPE
    num_samples: int = 1
    metric: str = METRIC
    mode: str = "max"
    asha: bool = False
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    num_workers: int = 1  # > 1: each trial is a data-parallel Ray Train run (cpus/gpus_per_trial are per worker)
    max_concurrent: int | None = None
    address: str | None = None
    dashboard: bool = True
    num_cpus: int | None = None  # for a local Ray; None = all cores
    dashboard_host: str = DEFAULT_DASHBOARD_HOST  # local Ray only; not loopback = a warning (medseg_platform.dashboard)
    optuna_storage: Path | None = None  # search only: Optuna journal file the searched trials go to (optuna-dashboard PATH)
    max_retries: int = 2  # Tune retries of a trial whose worker died (infrastructure failures only; study.trainable)
    claims: Sequence[Mapping[str, Any]] = ()  # papers' claims the report tests (medseg_platform.claims_spec.claim); not in spec_hash
    claims_left_out: int = 0  # declared claims that --rows left out (not between two kept rows); in study.json for the report
    test_root: Path | None = None  # external test set: each trial's selected weights are also scored on its test split
    # the evaluation protocol the trial configs were built with (PROTOCOLS; set by the study command's --protocol):
    # recorded in study.json for the report, not in spec_hash (the protocol's configs already differ)
    protocol: str = "corrected"
    # the command whose runs the folder collects ("medseg train"): study.json also lists the earlier runs' trials whose
    # folders are still there, and a folder that holds another kind of study is refused (check_accumulating_folder)
    accumulate: str | None = None
    # the study script that runs the study (e.g. "ablation_tailness"): in study.json from the run's start, so a folder
    # whose run was killed before its settings.json is still its script's (check_script_folder; the studies review)
    script: str | None = None

    def check_settings(self) -> None:
        """The study's own fields (not the trial configs), checked before anything is expanded, written or started;
        a one-line :class:`ConfigError` naming the field. The command line's argparse types check the same values."""
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
            raise ConfigError(f"study name {self.name!r}: use letters, digits, '-' and '_' only")
        if not isinstance(self.base, TrialConfig):
            raise ConfigError(f"base: a TrialConfig (e.g. PROFILES['quick'].trial.replace(...)), got {type(self.base).__name__}")
        if not isinstance(self.seeds, (list, tuple)) or not self.seeds:
            raise ConfigError(f"seeds {self.seeds!r}: give a list of at least one seed, e.g. [1, 2, 3]")
        if any(not _count(s) or not 0 <= s <= MAX_SEED for s in self.seeds) or len(set(self.seeds)) < len(self.seeds):
            raise ConfigError(f"seeds {list(self.seeds)}: whole numbers in [0, 2**32 - 1], each once")
        if not isinstance(self.variants, (list, tuple)) or not self.variants:
            raise ConfigError(f"variants {self.variants!r}: give a list of at least one Variant (a table row)")
        for i, variant in enumerate(self.variants):
            if not isinstance(variant, Variant) or not isinstance(variant.tags, Mapping) or not isinstance(variant.overrides, Mapping):
                raise ConfigError(f"variants[{i}] {variant!r}: give Variant(tags: dict, overrides: dict), e.g. "
                                  "Variant({'row': 'MONA'}, {'objective': 'mona'})")
        if not isinstance(self.grid, Mapping):
            raise ConfigError(f"grid {self.grid!r}: give a dict of config key -> list of values")
        for key, values in self.grid.items():
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(f"grid[{key!r}] {values!r}: give a non-empty list of values, e.g. [{values!r}]")
        if self.search_space is not None and not isinstance(self.search_space, Mapping):
            raise ConfigError(f"search_space: give a dict of config key -> Ray Tune domain, got {type(self.search_space).__name__}")
        if self.search_space is not None:
            for key, domain in self.search_space.items():
                if hasattr(domain, "categories") and not list(domain.categories):
                    raise ConfigError(f"search_space[{key!r}]: tune.choice([]) has nothing to choose; give at least one value")
            if not any(hasattr(domain, "sample") for domain in self.search_space.values()):
                raise ConfigError(f"search_space {dict(self.search_space)!r}: no Ray Tune domain to search (give at least one, e.g. "
                                  "{'optim.lr': tune.loguniform(1e-3, 1e-1)}; fixed values belong in the base config or --set)")
        if not _count(self.num_samples) or self.num_samples < 1:
            raise ConfigError(f"num_samples {self.num_samples!r}: must be a whole number >= 1")
        if self.metric not in REPORTED_METRICS or self.mode != "max":
            # a Dice is maximised: mode 'min' had TPE and ASHA minimise it while best_config.json and the tables still took
            # the highest (the search review)
            raise ConfigError(f"metric {self.metric!r} / mode {self.mode!r}: a metric every report of a trial carries "
                              f"({' or '.join(map(repr, REPORTED_METRICS))}), with mode 'max' (a Dice is maximised)")
        if not _count(self.num_workers) or self.num_workers < 1:
            raise ConfigError(f"num_workers {self.num_workers!r}: must be a whole number >= 1")
        if self.num_cpus is not None and (not _count(self.num_cpus) or self.num_cpus < 1):  # 0 started a Ray that ran nothing
            raise ConfigError(f"num_cpus {self.num_cpus!r}: must be None (every core) or a whole number >= 1")
        if self.max_concurrent is not None and (not _count(self.max_concurrent) or self.max_concurrent < 1):
            raise ConfigError(f"max_concurrent {self.max_concurrent!r}: must be None or a whole number >= 1")
        for name, value, positive in (("cpus_per_trial", self.cpus_per_trial, True), ("gpus_per_trial", self.gpus_per_trial, False)):
            if not is_real(value) or not math.isfinite(value) or value < 0 or (positive and value == 0):
                raise ConfigError(f"{name} {value!r}: must be a finite number {'> 0' if positive else '>= 0'}")
        if self.num_workers > 1 and self.cpus_per_trial <= TUNE_FUNCTION_CPU:  # a negative request crashed Ray's raylet
            raise ConfigError(f"--cpus-per-trial {self.cpus_per_trial:g} with --num-workers {self.num_workers}: each worker of a "
                              f"multi-worker trial needs more than {TUNE_FUNCTION_CPU:g} CPUs (the trial's Tune function holds "
                              "that much of one; docs/ray.md, 'CPU reservations of multi-worker trials')")
        if self.num_workers > 1 and 0 < self.gpus_per_trial < 1:
            raise ConfigError(f"--num-workers {self.num_workers} with --gpus-per-trial {self.gpus_per_trial:g}: Ray may pack fractional "
                              "GPUs onto one device, and NCCL refuses two ranks of a data-parallel trial on one GPU; give each "
                              "worker a whole GPU (--gpus-per-trial 1), or run one worker per trial")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"study protocol {self.protocol!r}: use one of {', '.join(PROTOCOLS)}")
        if self.asha and self.search_space is None:
            raise ConfigError("asha: early stopping prunes trials for good; use it with a search space, not a grid")
        if self.search_space is not None and (len(self.variants) != 1 or len(self.seeds) != 1 or any(len(v) != 1 for v in self.grid.values())):
            raise ConfigError(f"an Optuna search runs over one variant and one seed (this one: {len(self.variants)} variant(s), seeds "
                              f"{', '.join(map(str, self.seeds))}; --seeds takes one); move other axes into the search space")
        if self.asha and {"optim.max_steps", "eval.val_every"} & set(self.search_space or {}):
            raise ConfigError("asha: do not search optim.max_steps or eval.val_every (they set ASHA's time budget)")
        for i, spec in enumerate(self.claims):
            check_claim(spec, f"claims[{i}]")

    def trial_params(self) -> list[dict]:
        """Every grid trial as ``{"config": dict, "tags": dict, "key": str}``, validated, in :func:`start_order`."""
        self.check_settings()
        axes = list(self.grid.items())
        trials, seen, slots = [], {}, {}
        variant_of: list[int] = []  # per trial: the index of its variant (an error about one row names it)
        for index, variant in enumerate(self.variants):
            for values in itertools.product(*(v for _, v in axes)) if axes else [()]:
                for seed in self.seeds:
                    grid_values = dict(zip((k for k, _ in axes), values))
                    overrides = {**variant.overrides, **grid_values, "seed": int(seed), "workers": self.num_workers}
                    cfg = _canonical_inputs(self.base.replace(**overrides))
                    tags = dict(variant.tags)
                    # the analysis reads "variant" (the row label before grid suffixes) and "axes" (every
                    # grid axis, plus the non-grid axes a study script puts in the variant's own "axes")
                    tags["variant"] = str(variant.tags.get("variant") or variant.tags.get("row", cfg.objective))
                    tags["axes"] = {**dict(variant.tags.get("axes") or {}), **grid_values}
                    # grid axes other than the label fraction (the tables' columns) are part of the row label,
                    # so different settings are never averaged into one cell
                    extra = [f"{k}={v}" for k, v in grid_values.items() if k != "data.labelled"]
                    if extra:
                        tags["row"] = f"{tags.get('row', cfg.objective)} ({', '.join(extra)})"
                    config = cfg.to_dict()
                    key = trial_key(config)
                    row = str(tags.get("row", cfg.objective))
                    if key in seen:
                        raise ConfigError(f"study {self.name}: rows {seen[key]!r} and {row!r} resolve to the same configuration "
                                          f"({key}); remove one (medseg_platform.variants.VariantTable merges such rows)")
                    seen[key] = row
                    # one table cell per (row, label fraction) and seed: a label shared by two configurations averaged
                    # two methods into one cell
                    slot = (row, json.dumps(config["data"]["labelled"]), int(seed))
                    if slot in slots:
                        differ = differing_fields([slots[slot], config])
                        raise ConfigError(f"study {self.name}: two rows are labelled {row!r} but train different configurations "
                                          f"(they differ in {', '.join(differ[:4])}{' and more' if len(differ) > 4 else ''}); "
                                          "give each row its own label")
                    slots[slot] = config
                    trials.append({"config": config, "tags": tags, "key": key})
                    variant_of.append(index)
        checked = set()
        for trial, index in zip(trials, variant_of):  # validation: data checks once per distinct data/labelled setting
            cfg = TrialConfig.from_dict(trial["config"])
            data_key = json.dumps([trial["config"]["data"], cfg.seed if cfg.data.labelled_strategy == "random" else 0], sort_keys=True)
            try:
                cfg.validate(check_data=data_key not in checked)
            except ConfigError as exc:  # name the row: a study script's overrides are wrong for it
                if len(self.variants) < 2 or str(exc).startswith("row "):
                    raise
                error = ConfigError(f"row {trial['tags'].get('row')!r}: {exc}")
                error.variant_index = index  # which row (the study CLI's --rows hint; its label may be escaped)
                raise error from None
            checked.add(data_key)
        self._check_distinct_fractions(trials)
        if self.search_space is not None:
            check_search_space_ends(self.search_space, trials[0]["config"])
        self._check_claim_rows(trials)
        return start_order(trials)

    def _check_distinct_fractions(self, trials: list[dict]) -> None:
        """Two label fractions of one row that select the same patients ('1' and '5%' on a dataset of 6 training
        patients) would train it twice and average the copies as two seeds of one table column. Rows differ: the
        full-supervision row's '100%' and a row's fraction of every patient are two rows of the table."""
        lists: dict = {}
        seen: dict = {}
        for trial in trials:
            config = trial["config"]
            subset = labelled_subset(TrialConfig.from_dict(config), lists)
            rest = {**config, "data": {k: v for k, v in config["data"].items() if k != "labelled"}}
            slot = (str(trial["tags"].get("row")), json.dumps(rest, sort_keys=True, default=str), subset.patients)
            first = seen.setdefault(slot, config["data"]["labelled"])
            if first != config["data"]["labelled"]:
                raise ConfigError(f"study {self.name}, row {trial['tags'].get('row')!r}: label fractions {first!r} and "
                                  f"{config['data']['labelled']!r} select the same {subset.count.patients} of the "
                                  f"{subset.count.available} training patients; give each fraction once")

    def _check_claim_rows(self, trials: list[dict]) -> None:
        """Every claim names rows the study has (a typo or a row merged away made it "not run" after training)."""
        rows = list(dict.fromkeys(str(t["tags"].get("row")) for t in trials))
        for i, spec in enumerate(self.claims):
            missing = [spec[side] for side in ("a", "b") if spec[side] not in rows]
            if missing:
                raise ConfigError(f"claims[{i}] ({spec['a']} vs {spec['b']}): study {self.name} has no row "
                                  f"{' and no row '.join(map(repr, missing))} (its rows: {', '.join(map(repr, rows))}; a row "
                                  "label is written as the tables print it, and VariantTable keeps the first label of merged rows)")

    def spec_hash(self, trials: list[dict]) -> str:
        """Names the Tune experiment: everything that changes what Tune would run or how."""
        search = {key: describe_domain(domain) for key, domain in (self.search_space or {}).items()}
        spec = {"trials": [t["key"] for t in trials], "search": search, "n": self.num_samples, "metric": self.metric,
                "mode": self.mode, "asha": self.asha, "workers": self.num_workers, "cpus": self.cpus_per_trial,
                "gpus": self.gpus_per_trial}
        if self.optuna_storage is not None:  # a restored experiment keeps its searcher: with its storage, or without
            spec["optuna_storage"] = str(resolve_path(self.optuna_storage, "--optuna-storage"))
        if self.test_root is not None:  # a new external test set: a new experiment, whose finished trials only evaluate it
            spec["test_root"] = str(resolve_path(self.test_root, "--test-root"))
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]

    def description(self, trials: list[dict]) -> dict:
        """``study.json``: what the analysis needs besides the trial files (axes, variants, search, seeds, claims, protocol).
        With ``accumulate``, the trials and seeds of the folder's earlier runs come first (those whose folders exist)."""
        keys, seeds = [t["key"] for t in trials], list(self.seeds)
        if self.accumulate:
            earlier = earlier_trials(self.study_dir)
            keys = [k for k in earlier["trials"] if k not in keys] + keys
            seeds = sorted(set(seeds) | set(earlier["seeds"]))
        return {"name": self.name, "trials": keys, "seeds": seeds, **({"accumulates": self.accumulate} if self.accumulate else {}),
                **({"script": self.script} if self.script else {}),
                "spec_hash": self.spec_hash(trials), "search": self.search_space is not None,
                "grid": {key: list(values) for key, values in self.grid.items()},
                "variants": [dict(v.tags) for v in self.variants],
                "search_space": {key: describe_domain(d) for key, d in (self.search_space or {}).items()},
                "num_samples": self.num_samples if self.search_space is not None else 1,
                "metric": self.metric, "mode": self.mode, "asha": self.asha,
                "claims": [dict(c) for c in self.claims], "protocol": self.protocol,
                **({"claims_left_out": self.claims_left_out} if self.claims_left_out else {}),
                **({"optuna_storage": str(self.optuna_storage) if self.optuna_storage is not None else None}
                   if self.search_space is not None else {})}

    @property
    def study_dir(self) -> Path:
        return resolve_path(self.results_dir, "results dir") / self.name

    def run(self, after: Callable[["StudyRun"], None] | None = None) -> "StudyRun":
        """Validate, run (or restore) on Ray, and return what finished (:func:`medseg_platform.study.runner.run_study`);
        ``after(run)`` runs while the study folder is still locked (writing the report)."""
        from medseg_platform.study.runner import run_study

        return run_study(self, after)


def _canonical_inputs(cfg: TrialConfig) -> TrialConfig:
    """``cfg`` with its data root absolute (user-expanded and resolved, as the CLI's roots are) and its
    label fraction in one spelling (:func:`medseg_platform.data.splits.canonical_fraction`), so that the trial key
    names what trains (the API review): a relative root passed the driver's checks and failed in every trial (Tune
    runs each in its own working folder), a ``Path`` failed the key's JSON, and ``1``, ``"01"`` or a root with a
    trailing slash keyed the CLI's ``"1"`` trials again. Values that are neither are left to validation."""
    from medseg_platform.data.splits import canonical_fraction

    changes: dict[str, Any] = {}
    root = cfg.data.root
    if isinstance(root, (str, os.PathLike)) and str(root):
        try:
            absolute = str(resolve_path(root, "data.root"))
        except ConfigError:  # a link loop, an unknown ~user: left to validation, which names the root
            absolute = os.path.abspath(os.fspath(root))
        if absolute != root:
            changes["data.root"] = absolute
    labelled = cfg.data.labelled
    if isinstance(labelled, (str, int)) and not isinstance(labelled, bool):
        with contextlib.suppress(ConfigError):  # not a fraction: validation names it
            canonical = canonical_fraction(labelled)
            if canonical != labelled:
                changes["data.labelled"] = canonical
    return cfg.replace(**changes) if changes else cfg


def earlier_trials(study_dir: Path) -> dict:
    """The ``trials`` (whose folders still exist) and ``seeds`` that ``study_dir``'s ``study.json`` lists (:meth:`Study.description`
    with ``accumulate``). A study.json that cannot be read gives every trial folder with a ``config.json`` instead, so a
    rewrite does not drop them; no study.json gives nothing."""
    from medseg_platform.results import CONFIG_FILE, STUDY_FILE, TRIALS_DIR, trial_folder

    path = study_dir / STUDY_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict):
        folders = sorted((study_dir / TRIALS_DIR).glob(f"*/{CONFIG_FILE}")) if path.exists() else []
        return {"trials": [p.parent.name for p in folders], "seeds": []}
    keys = [k for k in info.get("trials") or [] if isinstance(k, str) and trial_folder(study_dir, k).is_dir()]
    return {"trials": [k for k in keys if not _of_an_earlier_revision(trial_folder(study_dir, k))],
            "seeds": [s for s in info.get("seeds") or [] if _count(s)]}


def _of_an_earlier_revision(folder: Path) -> bool:
    """Whether the trial in ``folder`` is keyed by an earlier key revision of its objective (``KEY_REVISIONS``): its
    replacement under this code's key trains beside it, and both were tabled as runs of one seed (the extension
    review). A folder whose config cannot be read stays (its result decides)."""
    from medseg_platform.results import keyed_by_this_code, read_trial_config

    try:
        config = read_trial_config(folder)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return isinstance(config, dict) and not keyed_by_this_code(folder.name, config)


def _folder_record(study_dir: Path) -> tuple[dict | None, str]:
    """A study folder's ``study.json`` (None when absent, {} when unreadable) and the command its ``settings.json``
    records ("" when none)."""
    from medseg_platform.io import read_json_object
    from medseg_platform.results import SETTINGS_FILE, STUDY_FILE

    command = (read_json_object(study_dir / SETTINGS_FILE) or {}).get("command", "")
    return read_json_object(study_dir / STUDY_FILE), command if isinstance(command, str) else ""


def _made_by(command: str) -> str:
    """", made by medseg train mona" from a recorded command line (its flags left out), "" without one."""
    return f", made by {command.split(' --')[0]}" if command else ""


def check_accumulating_folder(study_dir: Path, command: str) -> None:
    """Refuse to add trials to a folder whose ``study.json`` belongs to another kind of study (a study script's or a
    search's): ``command`` would otherwise replace its record, and its tables with it. A folder written by ``command``
    (``"accumulates": command`` in its study.json, or ``settings.json``'s command, for folders from before that key) is
    fine."""
    from medseg_platform.results import STUDY_FILE

    info, made_by = _folder_record(study_dir)
    if info is None or info.get("accumulates") == command:
        return
    if made_by.startswith(command + " ") and not info.get("search"):
        return
    what = "an Optuna search" if info.get("search") else "another study"
    raise ConfigError(f"{study_dir}: holds {what} ({STUDY_FILE}{_made_by(made_by)}); {command} would replace its record and "
                      "tables. Give --name a new folder name")


def check_script_folder(study_dir: Path, script: str) -> None:
    """Refuse a study script's run into a folder that another study script (``settings.json``'s ``script``, else
    ``study.json``'s, written as its run starts) or
    ``medseg train`` (study.json's ``accumulates``) wrote: ``--name`` can point anywhere, and the run would replace the
    folder's record, tables and report with its own (the reports probe: ablation_temperature.py ``--name
    ablation_tailness-smoke`` exited 0 with the temperature study's report under the tailness study's title)."""
    from medseg_platform.io import read_json_object
    from medseg_platform.results import SETTINGS_FILE, STUDY_FILE

    info, made_by = _folder_record(study_dir)
    if info and info.get("accumulates"):
        raise ConfigError(f"{study_dir}: holds the trials of {info['accumulates']} ({STUDY_FILE}); {script} would replace its record "
                          "and tables. Give --name a new folder name")
    settings = read_json_object(study_dir / SETTINGS_FILE) or {}
    recorded, source = settings.get("script"), SETTINGS_FILE
    if recorded is None and (info or {}).get("script") is not None:  # study.json's, written as the run starts
        recorded, source = info["script"], STUDY_FILE
    if recorded is None and isinstance(settings.get("command"), str):  # written before 'script' was: the command's script
        import shlex

        with contextlib.suppress(ValueError):  # an unbalanced quote: nothing recognised
            words = shlex.split(settings["command"])
            named = Path(words[1]).stem if len(words) > 1 and words[1].endswith(".py") else None
            recorded = named if named != "__main__" else None  # `python -m pytest` and the like name no study script
    if info and isinstance(recorded, str) and recorded != script:
        raise ConfigError(f"{study_dir}: holds a study of {recorded} ({source}{_made_by(made_by)}); {script} would replace "
                          "its record, tables and report. Give --name a new folder name")


def check_study_folder(study, trials: list[dict]) -> None:
    """Refuse a study script's run that would silently replace what its folder holds (``--name`` can point anywhere):
    a grid study's folder taken by a search or the reverse, or a search's folder by a search with other settings.

    Tune cannot extend or change a search in place: another ``--num-samples`` (or search space, method, ``--set``)
    names another experiment, whose sampler proposes the same first samples again (the same seed), and the tables and
    report would then show only the new experiment's samples. Under another ``--name`` that is a new search, whose
    samples that train as finished ones did are scored from their checkpoints (:mod:`medseg_platform.rescore`). A grid
    study may run other rows or seeds in its folder: its trials are found again by their keys."""
    from medseg_platform.results import STUDY_FILE, tune_storage

    info, made_by = _folder_record(study.study_dir)
    if not info or study.accumulate:
        return
    was_search, is_search = bool(info.get("search")), study.search_space is not None
    if was_search != is_search:
        held = "an Optuna search" if was_search else "a grid study"
        raise ConfigError(f"{study.study_dir}: holds {held} ({STUDY_FILE}{_made_by(made_by)}); this "
                          f"{'search' if is_search else 'study'} would replace its record and tables. Give --name a new folder name")
    old_hash = info.get("spec_hash")
    if (is_search and old_hash and old_hash != study.spec_hash(trials)
            and (tune_storage(study.study_dir) / f"{study.name}-{old_hash}").exists() and _any_sample_ended(study.study_dir)):
        samples = info.get("num_samples")
        more = samples != study.num_samples
        if not more and _samples_of_earlier_code(study.study_dir):  # the same command: its keys changed, not its flags
            raise ConfigError(f"{study.study_dir}: holds a search whose samples an earlier version of the platform trained: "
                              "their trial keys changed since (a key revision, e.g. results.STREAMS_REVISION; docs/methods.md, "
                              "'Adding a method'), and a search cannot go on under other keys in place. Give --name a new "
                              "folder name (this folder's tables and report stay as they were written)")
        other = (f"--num-samples {samples} (this run: {study.num_samples})" if more
                 else f"other settings: {_search_differences(info, study.description(trials))}")
        reuse = (": that search proposes the same first samples (the same seed) and scores those this one completed from "
                 "their checkpoints instead of training them" if more else "")
        raise ConfigError(f"{study.study_dir}: holds a search with {other}; a search cannot be extended or changed in place "
                          "(the report would show only the new one's samples). Rerun with that search's settings to resume or "
                          f"rebuild it, or give --name a new folder name{reuse}")


def _samples_of_earlier_code(study_dir: Path) -> bool:
    """Whether the search folder's samples (trial folders with a readable config) are all keyed by an earlier key
    revision (:func:`_of_an_earlier_revision`): the same command then found "other settings" it could not name, and
    told the user to rerun with the settings they had given (the diff review)."""
    from medseg_platform.results import TRIALS_DIR, keyed_by_this_code, read_trial_config

    keyed = []  # per sample folder with a readable config: whether this code's key names it
    for folder in sorted((study_dir / TRIALS_DIR).glob("*")):
        try:
            config = read_trial_config(folder)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(config, dict):
            keyed.append(keyed_by_this_code(folder.name, config))
    return bool(keyed) and not any(keyed)


def _any_sample_ended(study_dir: Path) -> bool:
    """Whether a trial of the folder ended, finished, errored or stopped by ASHA (its ``result.json`` or ``error.json``, or
    the search history's status, which the report writes after a run: a driver killed mid-search leaves none): a search that
    crashed before any sample ended (in Ray, say) has nothing a changed search would hide, so its corrected rerun may
    start a new one in the folder."""
    from medseg_platform.results import ERROR_FILE, RESULT_FILE, TRIALS_DIR, search_history_statuses

    trials = study_dir / TRIALS_DIR
    if trials.is_dir() and any((folder / RESULT_FILE).exists() or (folder / ERROR_FILE).exists()
                               for folder in trials.iterdir() if folder.is_dir()):
        return True
    ended = {"completed", "stopped early", "errored", "result missing"}  # a sample ASHA stopped writes no result files
    return bool(ended & set(search_history_statuses(study_dir).values()))


def _search_differences(old: dict, new: dict) -> str:
    """What differs between a search folder's ``study.json`` (``old``) and this run's description (``new``), in the
    words of the flags that set it; what study.json does not record (resources, --test-root) when nothing it records
    differs."""
    found = []
    named = [f"{flag} ({before} before, {now} now)" for flag, before, now in (
        ("--protocol", old.get("protocol", "corrected"), new.get("protocol", "corrected")),
        ("--seeds", " ".join(map(str, old.get("seeds") or [])), " ".join(map(str, new.get("seeds") or []))))
        if before != now]  # the ones study.json records apart (the search walkthrough: it listed every flag)
    if named:  # they change the trials' keys too: other differences cannot be told apart from them (the review)
        found.append(", ".join(named) + (" (perhaps also --method, --labelled, --set values or the data root)"
                                         if old.get("trials") != new.get("trials") else ""))
    elif old.get("trials") != new.get("trials"):
        found.append("the searched configuration (--method, --labelled, --set values or the data root)")
    if old.get("search_space") != new.get("search_space"):
        found.append("the search space")
    if (old.get("metric"), old.get("mode"), old.get("asha")) != (new.get("metric"), new.get("mode"), new.get("asha")):
        found.append("the metric or ASHA")
    if old.get("optuna_storage") != new.get("optuna_storage"):
        found.append(f"--optuna-storage ({old.get('optuna_storage') or 'none'} before, {new.get('optuna_storage') or 'none'} now)")
    return "; ".join(found) or ("resources (--cpus-per-trial, --gpus-per-trial, --num-workers) or --test-root (a search "
                                "scores a test root only when it runs with it from its start)")


def _count(value) -> bool:
    """An integer (Python's or NumPy's), not a bool: a count or a seed (a float 2.0 is not one)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


#: the most combinations of the search space's ends :func:`check_search_space_ends` validates (2 ends of 9 keys)
MAX_SEARCH_CORNERS = 512


def check_search_space_ends(search_space: Mapping[str, Any], config: dict) -> None:
    """Before Ray starts, a :class:`ConfigError` when a value the search can sample gives an invalid trial config:
    every combination of all keys' ends (or categories, :func:`domain_extremes`) on the study's ``config``, since keys
    constrain each other (``sampler_allocation`` needs the spatial grouping; ``negative_rank_low`` the class count only
    while ``contrast_weight`` > 0); beyond :data:`MAX_SEARCH_CORNERS` combinations, each key's ends with the others at
    their first. Deterministic: the other keys used to sit at one random sample, so the same command was refused on
    some runs and lost samples to errors on others (the diff review). A continuous domain valid at its ends is taken
    as valid between them (a quantised domain's rounded upper end and ``sample_from`` are not covered)."""
    extremes = {key: domain_extremes(key, domain) for key, domain in search_space.items()}

    def valid(values: dict) -> None:
        TrialConfig.from_dict({**config, **values}).validate(check_data=False)

    if math.prod(len(values) for values in extremes.values()) > MAX_SEARCH_CORNERS:
        # each key's ends with the others at their first ends: values their own domains give, never the study's value,
        # which a domain may leave out (the second diff review)
        first = {key: values[0] for key, values in extremes.items()}
        for key, values in extremes.items():
            for value in values:
                try:
                    valid({**first, key: value})
                except ConfigError as exc:
                    raise ConfigError(f"search_space[{key!r}] at {value!r}: {exc}") from None
        return
    for corner in itertools.product(*extremes.values()):
        values = dict(zip(extremes, corner))
        try:
            valid(values)
        except ConfigError as exc:
            error = exc
            for key in list(values):  # name only the keys that make it invalid: a key whose study value fails alike is not
                fewer = {k: v for k, v in values.items() if k != key}
                try:
                    valid(fewer)
                except ConfigError as still:
                    if str(still) == str(error):
                        values = fewer
            if len(values) == 1:
                key, value = next(iter(values.items()))
                raise ConfigError(f"search_space[{key!r}] at {value!r}: {error}") from None
            at = ", ".join(f"{key}={value!r}" for key, value in values.items())
            raise ConfigError(f"search_space at {at} (values the search can sample together): {error}") from None


def domain_extremes(key: str, domain: Any) -> list[Any]:
    """The values of a search-space entry that bound what it can sample: a Ray Tune ``Float``/``Integer`` domain's
    ends (ConfigError if empty or reversed), a ``Categorical``'s categories, a constant itself."""
    if isinstance(domain, (str, bytes, numbers.Number)):  # a constant (a str has .lower and .upper methods)
        return [domain]
    if hasattr(domain, "categories"):
        return list(domain.categories)
    if hasattr(domain, "lower") and hasattr(domain, "upper"):
        from ray.tune.search.sample import Integer

        integer = isinstance(domain, Integer)
        # Tune's randint and uniform exclude their upper end: check the last value they can draw
        lower, upper = domain.lower, (domain.upper - 1 if integer else math.nextafter(domain.upper, -math.inf))
        if not lower <= upper:
            raise ConfigError(f"search_space[{key!r}]: empty range [{domain.lower}, {domain.upper}"
                              f"{')' if integer else ']'}; give lower < upper")
        return [lower, upper]
    return [domain.sample() if hasattr(domain, "sample") else domain]


def start_order(trials: list[dict]) -> list[dict]:
    """The trials in the order Tune should start them (it starts a grid in list order).

    Trials that share a first pretraining stage wait for each other on its cache lock (the first trains it,
    the others then load it), so two of them started side by side leave a slot idle for the whole stage.
    The order therefore starts the first trial of every distinct first stage (and every trial without
    pretraining) before the second trial of any stage, keeping the study's order otherwise. The stage is
    recognised by its settings, model, data, seed and workers (a superset of the cache key's fields: at
    worst two trials that could share a stage are treated as distinct, which only costs ordering).
    """
    seen: dict[str, int] = {}
    ranked = []
    for index, trial in enumerate(trials):
        config = trial["config"]
        rank = 0
        if config.get("pretrain"):
            stage = json.dumps([config["pretrain"][0], config.get("model"), config.get("data"), config.get("seed"),
                                config.get("workers")], sort_keys=True, default=str)
            rank = seen[stage] = seen.get(stage, -1) + 1
        ranked.append((rank, index, trial))
    return [trial for _, _, trial in sorted(ranked, key=lambda item: item[:2])]


def describe_domain(domain: Any) -> str:
    """A stable text for a Tune search domain (type, bounds, sampler), for the experiment's name."""
    if not hasattr(domain, "sample"):
        return repr(domain)
    parts = [type(domain).__name__] + [f"{k}={getattr(domain, k)!r}" for k in ("lower", "upper", "categories") if hasattr(domain, k)]
    sampler = getattr(domain, "sampler", None)
    if sampler is not None:
        parts.append(type(sampler).__name__ + repr(sorted(vars(sampler).items(), key=str)))
    return " ".join(parts)
