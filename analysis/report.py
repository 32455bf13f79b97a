"""A study's ``report.md``, tables and plots, regenerated from the files on disk only.

:func:`write_report` reads a study folder (``<results>/<study>/``) and writes:

* the tables (:func:`analysis.table_files.write_tables`: ``table_<metric>.md/.tex``, ``table.csv``, and
  ``table_external.csv`` where a trial was scored on an external test set);
* the plots (:func:`analysis.plots.write_plots`) under ``plots/``;
* ``report.md``: the settings (study, profile, command, evaluation protocol, dataset, seeds, iterations, label
  fractions, the machines that computed the trials, trials finished / errored / corrupt / missing, wall time), the
  Dice table, the study's claims tested (:mod:`analysis.claims`), the trial health (trials whose validation Dice was
  still rising or collapsed at the end, or never learned: :mod:`analysis.health`), links to every table and plot, and
  the problems found (one line sums up the flagged trials, if any).

Inputs, all optional except the trial folders: ``study.json`` (written by :meth:`Study.run`: the trial
keys, seeds, grid axes, variants, whether it is a search, the ``--protocol``), ``settings.json`` (written by
:func:`analysis.study_cli.run_study_main` and ``medseg train``: profile, dataset root, command line, ``--protocol``),
``last_run.json``
(the wall time of the last run of the study command, the trials it had to run and those it scored from finished
trials' checkpoints) and every ``trials/<key>/`` folder. Nothing is
timestamped, so regenerating an unchanged study rewrites identical files.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from analysis.claims import claim_results, claims_section, read_claims, verdict_counts
from analysis.plots import is_plot_name, natural_key, PlotFile, write_plots
from analysis.health import TrialHealth, health_problems, health_section, record_health
from analysis.markdown import code_span, escape_markdown
from analysis.table_files import (EXTERNAL_TABLE_CSV, external_test_sets, incomplete_note, print_summary, table_file_names,
                                   write_tables)
from analysis.table_render import recipe_sentence, set_option_items
from analysis.tables import (DEFAULT_METRICS, build_table, column_label, column_order, duplicate_seeds, identical_rows,
                             row_label, row_order, study_class_names, trial_seed)
from medseg_platform.data.layout import patient_of_case
from medseg_platform.environment import NOT_RECORDED, environment_text
from medseg_platform.errors import MedsegError
from medseg_platform.io import check_folder_writable, other_holder, write_text_atomic
from medseg_platform.results import (ERROR_FILE, LAST_RUN_FILE, RESULT_FILE, SETTINGS_FILE, STUDY_FILE, TRIALS_DIR, TrialRecord,
                                     scan_study, trial_folder)

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"


@dataclass
class StudyReport:
    """What :func:`write_report` wrote and found."""

    study_dir: Path
    report: Path
    tables: list[Path] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    records: list[TrialRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # trial keys of study.json without a result
    claims: str = ""  # the claims' verdicts in one line (analysis.claims.verdict_counts); "" without claims
    unfinished: bool = False  # a search with samples still to end: its command's rerun finishes it (exit code 1)

    @property
    def paths(self) -> list[Path]:
        return [self.report, *self.tables, *self.plots]


def is_study_dir(path: Path) -> bool:
    """A study folder has ``study.json`` or a ``trials/`` folder holding at least one trial folder."""
    trials = path / TRIALS_DIR
    return (path / STUDY_FILE).is_file() or (trials.is_dir() and any(p.is_dir() for p in trials.iterdir()))


def _json_object(path: Path) -> tuple[dict, str]:
    """A JSON object file and "" ({} when missing), or {} and what is wrong with it ("<path>: not valid JSON (...)",
    "<path>: holds an array, not a JSON object")."""
    if not path.is_file():
        return {}, ""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        return {}, f"{path}: not valid JSON ({exc})"
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
        return {}, f"{path}: holds {kind}, not a JSON object"
    return value, ""


def _read_json(path: Path) -> dict:
    """``study.json``: a JSON object file, {} when missing; MedsegError when present but unreadable or not an object."""
    value, wrong = _json_object(path)
    if wrong:
        raise MedsegError(f"{wrong}; rerun the study command, which writes it again (without it a report would table "
                          "every trial in the folder, whatever command trained it)")
    return value


def _read_record(path: Path, lost: str) -> tuple[dict, list[str]]:
    """A JSON object file the report only describes the run with (``settings.json``, ``last_run.json``): {} when
    missing, and {} with one problem line (``lost``: what the report leaves out) when damaged. A damaged one stopped
    the whole report with study.json's reason (the concurrency review); only study.json decides which trials belong."""
    value, wrong = _json_object(path)
    return value, [f"{wrong}; {lost} (the study command writes it again)"] if wrong else []


def _problem_trial(problem: str) -> str | None:
    """The trial key a :func:`scan_study` problem line is about (None if it names none)."""
    match = re.match(r"errored trial (\S+):", problem) or re.search(r"/trials/([^/]+)/", problem)
    return match.group(1) if match else None


#: How a missing trial's problem line says that the study is still running (the Settings line counts such trials apart)
STUDY_RUNNING = "the study is running"


def study_records(study_dir: Path, info: dict, search_keys: set[str] | None = None) -> tuple[list[TrialRecord], list[str], list[str]]:
    """The study's finished trials, its problems and the keys of expected trials without a result.

    A grid study keeps only the trials listed in ``study.json``, a search the samples of its current Tune
    experiment (``search_keys``, from :func:`analysis.search.load_samples`; every trial folder when that
    experiment cannot be read); trials and problems of other folders are left over from an earlier spec.
    """
    records, problems = scan_study(study_dir)
    search = bool(info.get("search"))
    wanted = [str(k) for k in info.get("trials") or []]
    missing: list[str] = []
    if search and search_keys is not None:
        records = [r for r in records if r.path.name in search_keys]
        problems = [p for p in problems if _problem_trial(p) in search_keys or _problem_trial(p) is None]
    if wanted and not search:
        keep = set(wanted)
        others = sorted(r.path.name for r in records if r.path.name not in keep)
        records = [r for r in records if r.path.name in keep]
        problems = [p for p in problems if _problem_trial(p) in keep or _problem_trial(p) is None]
        found = {r.path.name for r in records}
        missing = [k for k in wanted if k not in found]
        listed = {k for k in missing if any((trial_folder(study_dir, k) / f).is_file() for f in (ERROR_FILE, RESULT_FILE))}
        holder = other_holder(study_dir) if missing else None  # a report beside a running study: its trials are not lost
        why = (f"yet: {STUDY_RUNNING} there ({holder}); this report is a snapshot" if holder
               else "(not run yet or interrupted; rerun the study command to resume)")
        problems += [f"trial {k} has no result {why}" for k in missing if k not in listed]  # errored, corrupt: scan_study's
        if others:  # e.g. a run with --rows or other --seeds into the folder of a larger study
            named = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            problems.append(f"{len(others)} finished trial(s) in {TRIALS_DIR}/ ({named}) are not part of this study as its last command "
                            "defined it (other rows, seeds, label fractions or settings, or configurations of an earlier "
                            "version of the code) and are left out of the tables; if a command with other --rows, --seeds, "
                            "--labelled, --set or --protocol made them, rerun it to table them again (finished trials are "
                            "not trained again)")
    if not search:
        problems += duplicate_seeds(records) + identical_rows(records)
    return records, problems, missing


# --------------------------------------------------------------------------------------------- settings


def _distinct(values) -> list:
    out = []
    for value in values:
        if value not in out:
            out.append(value)
    return out


def _pretraining_phrase(records: Sequence[TrialRecord]) -> str:
    """Pretraining stages per method, e.g. "ACTION: 2 stages (3 + 3 steps); MONA: 1 stage (3 steps)"."""
    by_chain: dict[str, list[str]] = {}
    for row in row_order(records):
        chains = _distinct(tuple(int(s.get("max_steps", 0)) for s in (r.result.get("config") or {}).get("pretrain") or [])
                           for r in records if row_label(r) == row)
        for chain in chains:
            text = ("none" if not chain else
                    f"{len(chain)} stage{'s' if len(chain) > 1 else ''} ({' + '.join(str(s) for s in chain)} steps)")
            by_chain.setdefault(text, []).append(row)
    return "; ".join(f"{text}: {_row_list(rows)}" for text, rows in by_chain.items()) or "unknown"


def _stage_reuse_phrase(records: Sequence[TrialRecord]) -> str:
    """"; 3 stages trained, 9 read from the cache" from ``result.json``'s ``pretrain_stages`` (trials written before it was
    recorded record none, and so does a trial that resumed its fine-tuning where its earlier attempt's code recorded no
    stage; a retried trial counts a stage an earlier attempt of it trained as trained; a trial scored from
    a finished one, ``scored_from``, ran no stage and keeps its source's record, which is not counted): a report review
    could not tell that the ARCO rows reused MONA's stage (their pretraining took 0.0 s)."""
    runs = [stage for r in records if not r.result.get("scored_from")
            for stage in (r.result.get("pretrain_stages") or []) if isinstance(stage, dict)]
    if not runs:
        return ""
    cached = sum(bool(stage.get("cached")) for stage in runs)
    return (f"; {len(runs) - cached} stage{'s' * (len(runs) - cached != 1)} trained, {cached} read from the pretraining "
            "cache (a stage is shared by the trials of the same chain, seed and labelled patients: the first trains it)")


def _row_list(rows: Sequence[str]) -> str:
    """Row labels joined by commas; each in backticks when a label has a comma itself ("ARCO-SG, τ = 0.5")."""
    return ", ".join(map(code_span, rows)) if any("," in row for row in rows) else ", ".join(map(escape_markdown, rows))


def _seconds(value: Any) -> str:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return "unknown"
    if not math.isfinite(seconds):
        return "unknown"
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h ({seconds:.0f} s)"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min ({seconds:.0f} s)"
    return f"{seconds:.1f} s"


def _batch_phrase(config: dict) -> str:
    """A config's batch as trained: "4 labelled + 4 unlabelled", and for a multi-worker trial each worker's batch with
    the step's whole one (each of N workers draws the full batch: docs/ray.md, 'Multi-worker trials'; the report gave
    the worker's batch alone, as if one process had trained: the multi-worker review)."""
    data, workers = config.get("data") or {}, int(config.get("workers") or 1)
    labelled, unlabelled = data.get("labelled_batch"), data.get("unlabelled_batch")
    phrase = f"{labelled} labelled + {unlabelled} unlabelled"
    if workers > 1 and isinstance(labelled, int) and isinstance(unlabelled, int):  # no comma: the phrases are joined by them
        phrase += f" per worker × {workers} workers ({labelled * workers} + {unlabelled * workers} per step)"
    return phrase


def _join(values: Sequence[Any]) -> str:
    return ", ".join(str(v) for v in values) if values else "unknown"


#: How the report words each evaluation choice of the trials' configs (docs/evaluation.md).
SELECTION_TEXT = {"best_val": "model selected on val", "final": "final-iteration weights tested"}
EMPTY_POLICY_TEXT = {"nan": "undefined values of empty masks left out (NaN)",
                     "released": "an empty prediction scored as distance 0"}
DISTANCE_UNITS_TEXT = {"mm": "HD95/ASD in mm where the volumes have a spacing (else voxels)", "voxel": "HD95/ASD in voxels"}
AMP_TEXT = {"off": "full precision (float32)", "bf16": "mixed precision, bfloat16 (`--amp bf16`)",
            "fp16": "mixed precision, float16 with a loss scaler (`--amp fp16`)"}
LABELLED_TEXT = {"published": "whole patients in the published order", "random": "random whole patients per seed",
                 "released_slices": "the released slice counts (23 slices for 1 ACDC patient)"}


def _config_phrase(configs: Sequence[dict], section: str, key: str, default: str, texts: dict[str, str]) -> str:
    """How the trials set ``section.key`` (configs without it count as ``default``), in words; "mixed: ..." if they differ."""
    values = _distinct(str((c.get(section) or {}).get(key, default)) for c in configs) or [default]
    words = [texts.get(v, v) for v in values]
    return words[0] if len(words) == 1 else "mixed: " + "; ".join(words)


def protocol_line(info: dict, settings: dict, configs: Sequence[dict]) -> str:
    """The "Protocol" bullet: ``--protocol`` (``study.json``, else ``settings.json``; "corrected" when neither says) and
    what the trials' configs did: model selection, empty masks, distance units, labelled slices."""
    protocol = info.get("protocol") or settings.get("protocol") or "corrected"
    labelled = _config_phrase(configs, "data", "labelled_strategy", "published", LABELLED_TEXT)
    if protocol == "released" and LABELLED_TEXT["released_slices"] not in labelled:
        labelled += " (the released slice counts exist only for the SSL4MIS ACDC list)"
    parts = [_config_phrase(configs, "eval", "selection", "best_val", SELECTION_TEXT),
             _config_phrase(configs, "eval", "empty_policy", "nan", EMPTY_POLICY_TEXT),
             _config_phrase(configs, "eval", "distance_units", "mm", DISTANCE_UNITS_TEXT), f"labelled: {labelled}"]
    return (f"- **Protocol**: {protocol} (`--protocol {protocol}`; docs/evaluation.md, 'Released evaluation protocol'): "
            + "; ".join(parts))


def machines_line(records: Sequence[TrialRecord]) -> str:
    """The "Machines" bullet: what computed the trials (``result.json``'s ``environment``: accelerator, processor,
    torch), with counts and a warning when the trials ran on more than one (docs/analysis.md, 'Reproducibility across
    machines')."""
    counts: dict[str, int] = {}
    unrecorded = 0  # results written before environments were recorded: no evidence of another machine
    for record in records:
        text = environment_text(record.result.get("environment"))
        if text == NOT_RECORDED:
            unrecorded += 1
        else:
            counts[text] = counts.get(text, 0) + 1
    if not records:
        return "- **Machines**: no finished trial"
    rest = [f"{unrecorded} trial{'s' * (unrecorded != 1)} {NOT_RECORDED}"] if unrecorded else []
    if len(counts) <= 1:
        return "- **Machines**: " + "; ".join([*counts, *rest])
    groups = [f"{text} ({count} trial{'s' * (count != 1)})" for text, count in counts.items()]
    return ("- **Machines**: mixed: " + "; ".join([*groups, *rest]) + ". The same configuration and seed "
            "trains to other numbers on another processor or torch version (float rounding, amplified by training), so a "
            "difference between rows computed on different machines is partly the machines' (docs/analysis.md, "
            "'Reproducibility across machines')")


def _val_split_phrase(roots: Sequence[str], val_cases: Sequence[int] = (0,)) -> str:
    """", 8 val cases of 4 patients (model selection: ...)" from the one dataset root's ``val.list``, and how many of
    them the trials validate on (``eval.val_cases``: 0 is all, n the first n); "" when the study has several roots or
    the list cannot be read (the dataset moved). A reader compared a trial's best validation with its test Dice and
    could not find what the validation ran on."""
    from medseg_platform.data.layout import VAL_LIST

    if len(roots) != 1:
        return ""
    try:
        cases = [line.strip() for line in (Path(roots[0]) / VAL_LIST).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        return ""
    patients = len({patient_of_case(case) for case in cases})
    used = _distinct(min(int(n), len(cases)) if n else len(cases) for n in val_cases) or [len(cases)]
    which = ("these" if used == [len(cases)] else f"the first {used[0]} of them (`eval.val_cases`)" if len(used) == 1
             else "the first `eval.val_cases` of them, " + " or ".join(str(n) for n in used) + " by trial")
    return (f", {len(cases)} val case{'s' * (len(cases) != 1)}" + (f" of {patients} patient{'s' * (patients != 1)}" if patients != len(cases) else "")
            + f" (model selection: a trial's val Dice is on {which}, its test Dice on the test cases)")


def code_line(records: Sequence[TrialRecord]) -> str:
    """The "Code" bullet: which code computed the trials (``environment.code``, :func:`medseg_platform.environment.
    code_version`), with counts when they differ; "" when no result records it (written before it was recorded)."""
    counts: dict[str, int] = {}
    for record in records:
        code = (record.result.get("environment") or {}).get("code")
        if code:
            counts[str(code)] = counts.get(str(code), 0) + 1
    unrecorded = len(records) - sum(counts.values())
    if not counts:
        return ""
    if len(counts) == 1 and not unrecorded:
        return f"- **Code**: {next(iter(counts))}"
    groups = [f"{code} ({n} trial{'s' * (n != 1)})" for code, n in counts.items()]
    groups += [f"{unrecorded} trial{'s' * (unrecorded != 1)} {NOT_RECORDED}"] if unrecorded else []
    return ("- **Code**: mixed: " + "; ".join(groups) + ". A change of the training code can move every number of the rows "
            "it touches; trials of one code version compare like for like")


#: How the report names a trial's convolution kernels (``result.json``'s ``conv_kernels``;
#: docs/methods.md, 'CPU convolution kernels').
KERNELS_TEXT = {"onednn": "oneDNN", "pytorch": "PyTorch's own", "cuda": "CUDA (cuDNN)"}


def kernels_line(records: Sequence[TrialRecord]) -> str:
    """The "Convolution kernels" bullet: which rows ran which kernels; "" when no result records them. The baselines
    and the contrastive rows run different CPU kernels at the quick size, which round differently (a report review
    found it in result.json only)."""
    rows_by_kernels: dict[str, list[str]] = {}
    for row in row_order(records):
        for kernels in _distinct(r.result.get("conv_kernels") for r in records if row_label(r) == row):
            if kernels:
                rows_by_kernels.setdefault(KERNELS_TEXT.get(str(kernels), str(kernels)), []).append(row)
    if not rows_by_kernels:
        return ""
    scope = " (fine-tuning, validation and test; CPU pretraining stages run oneDNN)"
    if len(rows_by_kernels) == 1:
        return f"- **Convolution kernels**: {next(iter(rows_by_kernels))}{scope}"
    return ("- **Convolution kernels**: " + "; ".join(f"{kernels}: {_row_list(rows)}" for kernels, rows in rows_by_kernels.items())
            + f"{scope}; the two round differently (`conv_kernels`; docs/methods.md, 'CPU convolution kernels')")


def labelled_line(records: Sequence[TrialRecord]) -> str:
    """The "Labelled patients" bullet: which patients each label fraction trained on (``result.json``'s ``labelled``),
    which seeds share them, and which rows where the rows differ (two datasets, two selection rules); "" without
    finished trials. A reader could not tell that every seed of a published-order study trains on the same patient (the
    seeds vary the training only)."""
    parts = []
    order = {row: i for i, row in enumerate(row_order(records))}
    for column in column_order(records):
        groups: dict[tuple, dict[str, list]] = {}
        slices: dict[tuple, Any] = {}
        available = None
        at_column = sorted((r for r in records if column_label(r) == column),  # the table's row order, then seeds
                           key=lambda r: (order.get(row_label(r), len(order)), natural_key(str(trial_seed(r)))))
        for record in at_column:
            labelled = record.result.get("labelled") or {}
            patients = tuple(labelled.get("patients") or ())
            group = groups.setdefault(patients, {"seeds": [], "rows": []})
            for key, value in (("seeds", trial_seed(record)), ("rows", row_label(record))):
                if value not in group[key]:
                    group[key].append(value)
            slices[patients] = labelled.get("num_labelled_slices")
            available = labelled.get("available_patients", available)
        all_seeds = set(_distinct(trial_seed(r) for r in at_column))
        all_rows = set(_distinct(row_label(r) for r in at_column))
        texts = []
        for patients, group in groups.items():
            if not patients:
                names = "not recorded"
            elif available and len(patients) == available:
                names = f"all {available} training patients"
            elif len(patients) > 8:  # ids from the dataset's lists: escaped (the security review)
                names = ", ".join(map(escape_markdown, patients[:8])) + f", ... ({len(patients)} patients)"
            else:
                names = ", ".join(map(escape_markdown, patients))
            names += f" ({slices[patients]} slices)" if slices.get(patients) is not None and patients else ""
            rows = "" if set(group["rows"]) == all_rows else f", {_row_list(group['rows'])}"
            seeds = group["seeds"]
            who = ("every seed" if set(seeds) == all_seeds else
                   "seed" + "s" * (len(seeds) != 1) + " " + ", ".join(str(seed) for seed in seeds))
            texts.append(f"{names}{rows}, {who}")
        parts.append(f"{column}: " + "; ".join(texts))
    return "- **Labelled patients**: " + " | ".join(parts) if parts else ""


def settings_lines(study_dir: Path, info: dict, settings: dict, last_run: dict, records: Sequence[TrialRecord],
                   problems: Sequence[str], search_statuses: Mapping[str, int] | None = None) -> list[str]:
    """The "Settings" bullet list of the report (every value read from the study's files; before any trial finished,
    the configurations of those that started, where a stopped run's report said "unknown" for each: the search
    walkthrough)."""
    configs = [r.result.get("config") or {} for r in records] or started_configs(study_dir)
    data = [c.get("data") or {} for c in configs]
    labelled = [r.result.get("labelled") or {} for r in records]
    roots = _distinct(str(d.get("root")) for d in data if d.get("root")) or ([str(settings["data_root"])] if settings.get("data_root") else [])
    available = _distinct(int(lab["available_patients"]) for lab in labelled if "available_patients" in lab)
    test_cases = _distinct(int(r.result["num_test_cases"]) for r in records if "num_test_cases" in r.result)
    # a patient's frames are one unit of the significance tests (analysis.significance): the report says how many
    test_patients = _distinct(len({patient_of_case(str(row.get("case"))) for row in r.per_case}) for r in records if r.per_case)
    seeds = sorted(_distinct(trial_seed(r) for r in records), key=lambda seed: natural_key(str(seed))) or info.get("seeds") or []
    steps = _distinct(int((c.get("optim") or {}).get("max_steps", 0)) for c in configs)
    patches = _distinct("x".join(str(p) for p in d.get("patch_size", [])) for d in data)
    batches = _distinct(_batch_phrase(c) for c in configs)
    val_every = _distinct(int((c.get("eval") or {}).get("val_every", 0)) for c in configs)
    expected = len(info.get("trials") or []) if not info.get("search") else None
    errored = [p for p in problems if p.startswith("errored trial")]
    corrupt = [p for p in problems if p.startswith("corrupt result")]
    not_run = [p for p in problems if p.startswith("trial ") and "has no result" in p]
    compute = sum(float((r.result.get("timing") or {}).get("total_s", 0.0) or 0.0) for r in records)
    scored = sum(1 for r in records if r.result.get("scored_from"))  # medseg_platform.rescore: an evaluation, no training
    finished = f"{len(records)}" + (f" of {expected}" if expected else "")
    lines = [
        f"- **Study**: {info.get('name') or study_dir.name}" + (" (Optuna search)" if info.get("search") else ""),
        f"- **Profile**: {settings.get('profile', 'unknown (no readable settings.json)')}",
    ]
    collected = bool(info.get("accumulates"))  # a folder of several runs (medseg train): settings.json is the latest run's
    if settings.get("command"):
        lines.append(f"- **{'Latest command' if collected else 'Command'}**: {code_span(settings['command'])}"
                     + (f" (run in {code_span(settings['cwd'])}: relative paths and the default `./results` start there)"
                        if settings.get("cwd") else ""))
    if settings.get("overrides"):
        lines.append(("- **Overrides** (`--set` of the latest run; each row names its own): " if collected
                      else "- **Overrides** (`--set`, every trial): ") + ", ".join(map(code_span, set_option_items(settings["overrides"]))))
    lines += [
        protocol_line(info, settings, configs),
        f"- **Dataset**: {_join([escape_markdown(str(root)) for root in roots])}; {_join(available)} training patients, {_join(test_cases)} test cases"
        + (f" of {_join(test_patients)} patient{'' if test_patients == [1] else 's'}" if test_patients and test_patients != test_cases else "")
        + _val_split_phrase(roots, [int((c.get("eval") or {}).get("val_cases", 0) or 0) for c in configs])
        + (f"; classes {', '.join(map(escape_markdown, study_class_names(records).values()))}" if records else ""),
        *_external_lines(settings, records),
        f"- **Seeds**: {_join(seeds)}",
        f"- **Iterations**: {_join(steps)} fine-tuning steps (validation every {_join(val_every)}; "
        f"{_config_phrase(configs, 'eval', 'selection', 'best_val', SELECTION_TEXT)}); "
        f"pretraining: {_pretraining_phrase(records)}{_stage_reuse_phrase(records)}",
        f"- **Precision**: {_config_phrase(configs, 'optim', 'amp', 'off', AMP_TEXT)}",
        machines_line(records),
        *[line for line in (code_line(records), kernels_line(records)) if line],
        f"- **Patch size / batch**: {_join(patches)}; {_join(batches)}",
        f"- **Label fractions**: {_join(column_order(records) or _distinct(str(d['labelled']) for d in data if 'labelled' in d))}",
        *[line for line in (labelled_line(records),) if line],
        f"- **Trials**: {finished} finished, {len(errored)} errored, {len(corrupt)} corrupt"
        + (f", {len(not_run)} " + (f"still to finish ({STUDY_RUNNING})" if any(STUDY_RUNNING in p for p in not_run)
                                   else "not run or interrupted") if not_run else "") + " (see Problems)" * bool(problems)
        + (f"; {scored} of the finished scored from the checkpoint of a finished trial that trained alike "
           "(`scored_from` in result.json; docs/evaluation.md, 'Scoring a finished trial again')" if scored else ""),
        _last_run_phrase(last_run, bool(info.get("search")))
        + f"; trial time summed over the finished trials (pretraining, fine-tuning, validation and test) {_seconds(compute)}"
        + (" (a scored trial's is its evaluation's)" if scored else ""),
    ]
    if info.get("search"):
        space = info.get("search_space") or {}
        statuses = ", ".join(f"{count} {status}" for status, count in (search_statuses or {}).items() if count)
        lines.append(f"- **Search**: {info.get('num_samples', '?')} samples of {_join(sorted(space))} "
                     f"({info.get('metric', 'best_val_dice')}, {info.get('mode', 'max')}"
                     + (", ASHA early stopping" if info.get("asha") else "") + ")"
                     + (f": {statuses} (search_history.csv)" if statuses else ""))
    return lines


def _best_search_lines(records: Sequence[TrialRecord], top: int = 5, order: Mapping[str, int] | None = None,
                       study_dir: Path | None = None) -> list[str]:
    """A Markdown table of the best searched configurations by best val Dice (searches only); ties go to the earlier
    sample (``order``: trial folder -> proposal order), as ``best_config.json``'s do, else by folder name. Below it,
    which one the search chose, whether others tie with it, and the commands that use it (the console said so, the
    report did not: the search walkthrough)."""
    searched = [r for r in records if (r.result.get("tags") or {}).get("search")]
    searched = [r for r in searched if isinstance(r.result.get("best_val_dice"), (int, float))
                and math.isfinite(r.result["best_val_dice"])]
    if not searched:
        return []
    order = order or {}
    best = sorted(searched, key=lambda r: (-float(r.result["best_val_dice"]), order.get(r.path.name, math.inf), r.path.name))[:top]
    names = sorted({k for r in best for k in r.result["tags"]["search"]})
    lines = ["## Best configurations", "",
             "| trial | best val Dice (%) | test Dice (%) | " + " | ".join(escape_markdown(n) for n in names) + " |",
             "| --- | ---: | ---: | " + " | ".join("---:" for _ in names) + " |"]
    for r in best:
        test = ((r.result.get("test") or {}).get("mean") or {}).get("dice", math.nan)
        values = [r.result["tags"]["search"].get(n, "") for n in names]
        lines.append(f"| {r.path.name} | {100 * r.result['best_val_dice']:.1f} | {100 * float(test):.1f} | "
                     + " | ".join(f"{v:.4g}" if isinstance(v, float) else escape_markdown(str(v)) for v in values) + " |")
    if study_dir is None:
        return lines + [""]
    import shlex

    from analysis.search import BEST_FILE
    from medseg_platform.io import read_json_object

    chosen = (read_json_object(study_dir / BEST_FILE) or {}).get("trial_key")
    if chosen != best[0].path.name:  # no best_config.json, or an earlier report's (its summary could not be rewritten)
        return lines + [""]
    tied = sum(float(r.result["best_val_dice"]) == float(best[0].result["best_val_dice"]) for r in searched)
    seed = another_seed(trial_seed(best[0]))
    config, folder = shlex.quote(str(study_dir / BEST_FILE)), shlex.quote(str(best[0].path))
    return lines + [
        "", "The first row is the search's choice, `best_config.json`"
        + (f" ({tied} samples tie at its val Dice: the search could not tell them apart, and the earliest is chosen; a "
           "longer profile or more val cases separates them)" if tied > 1 else "") + ".",
        "", f"- train it with another seed: `medseg train --config {config} --seed {seed} --results-dir "
            f"{shlex.quote(str(study_dir.parent))}` (its own seed gives the trial above, which medseg train reuses)",
        f"- predict with its weights: `medseg predict --trial {folder} --out PREDICTIONS`", ""]


def another_seed(seed) -> int:
    """A seed other than a search's ``seed`` for the rerun its outputs suggest (the next one; 2 for a seed that is not an
    integer): with the search's own, ``medseg train`` reuses the trial instead of training it."""
    return seed + 1 if isinstance(seed, int) and not isinstance(seed, bool) else 2


def trial_health(records: Sequence[TrialRecord]) -> list[TrialHealth]:
    """Every trial's validation-curve verdict (:mod:`analysis.health`), in table order (method, label fraction,
    seed, key); flagged trials get their own report section and one line in the problems."""
    rows, columns = row_order(records), column_order(records)
    ordered = sorted(records, key=lambda r: (rows.index(row_label(r)), columns.index(column_label(r)),
                                             natural_key(str(trial_seed(r))), r.path.name))
    return [TrialHealth(r.path.name, row_label(r), column_label(r), trial_seed(r), record_health(r)) for r in ordered]


def model_selection(records: Sequence[TrialRecord]) -> str:
    """The trials' ``eval.selection`` ("best_val", the default, or "final"); "mixed" when they differ."""
    found = {str(((r.result.get("config") or {}).get("eval") or {}).get("selection", "best_val")) for r in records}
    if not found:
        return "best_val"
    return found.pop() if found in ({"best_val"}, {"final"}) else "mixed"


def started_configs(study_dir: Path) -> list[dict]:
    """The configurations of the study's trials that started (``trials/*/config.json``, written before a trial trains),
    for the settings of a report written before any trial finished; unreadable files are left out."""
    from medseg_platform.io import read_json_object
    from medseg_platform.results import CONFIG_FILE, TRIALS_DIR

    folder = study_dir / TRIALS_DIR
    found = [read_json_object(path) or {} for path in sorted(folder.glob(f"*/{CONFIG_FILE}"))] if folder.is_dir() else []
    return [record["config"] for record in found if isinstance(record.get("config"), dict)]


def _external_lines(settings: Mapping, records: Sequence[TrialRecord]) -> list[str]:
    """The "External test set" bullet: the latest run's ``--test-root``, else the roots the trials were scored on by an
    earlier run (their blocks stay in the tables: a run without the flag left them unexplained, the studies walkthrough)."""
    if settings.get("test_root"):
        return [f"- **External test set** (`--test-root`): {escape_markdown(str(settings['test_root']))}; each trial's selected weights scored on "
                "its test split, shown as its own block after each table"]
    roots = list(external_test_sets(records))
    if not roots:
        return []
    return [f"- **External test set** (`--test-root` of an earlier run of the study command): {', '.join(map(escape_markdown, roots))}; the trials' "
            "selected weights scored on its test split then, shown as its own block after each table"]


def _last_run_phrase(last_run: Mapping, search: bool) -> str:
    """The "Wall time" bullet's start: what the last run of the study command had to do (``last_run.json``: the trials
    to run, or a search's samples not yet ended, at its start, and those it scored from finished trials) and took."""
    scored = last_run.get("scored_from_finished") if isinstance(last_run.get("scored_from_finished"), int) else 0
    took = _seconds((last_run.get("timing") or {}).get("total_s"))
    test_root_only = last_run.get("test_root_only_at_start") if isinstance(last_run.get("test_root_only_at_start"), int) else 0
    if test_root_only and last_run.get("pending_at_start") == test_root_only:  # it said "7 trial(s) to run" (the walkthrough)
        also = f" ({scored} of them first from finished trials' checkpoints)" if scored else ""
        return (f"- **Wall time**: the last run of the study command had nothing to train; it scored {test_root_only} finished "
                f"trial(s) on --test-root{also} in {took}")
    if last_run.get("pending_at_start") == 0:
        return (f"- **Wall time**: the last run of the study command had nothing to train; it scored {scored} trial(s) from "
                f"finished trials' checkpoints in {took}" if scored else
                "- **Wall time**: the last run of the study command had nothing to train (every trial had finished)")
    if "pending_at_start" not in last_run:
        return f"- **Wall time**: last run of the study command {took}"
    scored_text = f"; {scored} scored from finished trials' checkpoints" if scored else ""
    scored_text += f"; {test_root_only} of them finished, to score on --test-root only" if test_root_only else ""
    return (f"- **Wall time**: last run of the study command {took} ({last_run['pending_at_start']} "
            f"{'sample(s) not yet ended' if search else 'trial(s) to run'} at its start{scored_text})")


def _distance_note(tables: Sequence[Path], records: Sequence[TrialRecord]) -> list[str]:
    """A paragraph under the table links when the distance tables leave out or zero the cases of an empty prediction,
    which favours a row that misses a structure: a report review found a failed seed's HD95 looking fine beside its
    Dice, with the dagger explained only in table_hd95.md. [] otherwise."""
    def policy(record) -> str:
        return str(((record.result.get("config") or {}).get("eval") or {}).get("empty_policy", "nan"))

    released = _distinct(row_label(r) for r in records if policy(r) == "released")
    daggers = any("\u2020" in p.read_text(encoding="utf-8") for p in tables if p.name in ("table_hd95.md", "table_asd.md"))
    if released:
        where = "" if len(released) == len(_distinct(row_label(r) for r in records)) else f" in rows {_row_list(released)}"
        text = (f"HD95 and ASD score an empty prediction as distance 0{where} (the released protocol's empty-mask policy): a "
                "row that misses a structure gets its best distance there. Read its distances beside its Dice.")
    elif daggers:
        text = ("HD95 and ASD leave out a case where a class's prediction or ground truth is empty (\u2020 in their tables): "
                "a row that misses a structure gets no distance for those cases rather than a bad one. Read its distances "
                "beside its Dice.")
    else:
        return []
    return [text, ""]


def render_report(study_dir: Path, info: dict, settings: dict, last_run: dict, records: Sequence[TrialRecord],
                  problems: Sequence[str], tables: Sequence[Path], plots: Sequence[PlotFile],
                  sample_order: Mapping[str, int] | None = None, search_statuses: Mapping[str, int] | None = None,
                  claims: Sequence | None = None) -> str:
    """The text of ``report.md``; links are relative to the study folder. ``sample_order``: a search's trial folders
    -> proposal order (ties in its best configurations); ``search_statuses``: its samples per status
    (:data:`analysis.search.STATUSES`); ``claims``: :func:`analysis.claims.claim_results` of ``records`` when
    already computed."""
    name = info.get("name") or study_dir.name
    lines = [f"# Report: {name}", "", "Regenerate tables, plots and this file with `medseg report` on this folder (no training).", "",
             "## Settings", "", *settings_lines(study_dir, info, settings, last_run, records, problems, search_statuses), ""]
    dice = next((p for p in tables if p.name == "table_dice.md"), None)
    if dice is not None:
        body = dice.read_text(encoding="utf-8").rstrip("\n")
        lines += ["## Results", "", body.replace("### Dice (%)", "### Test Dice (%)", 1), ""]
    lines += claims_section(info, settings, records, claims)
    lines += _best_search_lines(records, order=sample_order, study_dir=study_dir)
    lines += health_section(trial_health(records), model_selection(records))
    if tables:
        lines += ["## Tables", ""]
        for metric in DEFAULT_METRICS:
            files = [p for p in tables if p.stem == f"table_{metric}"]
            if files:
                lines.append(f"- {metric}: " + ", ".join(f"[{p.name}]({p.name})" for p in files))
        search = [p for p in tables if p.name in ("search_history.csv", "best_config.json")]
        if search:
            lines.append("- search: " + ", ".join(f"[{p.name}]({p.name})" for p in search))
        csv = [p for p in tables if p.name == "table.csv"]
        if csv:
            lines.append(f"- long form (every metric, class, method and label fraction, with p-values): [{csv[0].name}]({csv[0].name})")
        if any(p.name == EXTERNAL_TABLE_CSV for p in tables):
            lines.append(f"- the external test sets' long form (a first column `test_root`): [{EXTERNAL_TABLE_CSV}]({EXTERNAL_TABLE_CSV})")
        lines += ["", *_distance_note(tables, records)]
    if plots:
        lines += ["## Plots", ""]
        for plot in plots:
            rel = plot.path.relative_to(study_dir).as_posix()
            lines += [f"### {plot.description}", "", f"![{plot.description}]({rel})", ""]
    lines += ["## Problems", ""]
    lines += [f"- {p}" for p in problems] if problems else ["None."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- entry points


def report_outputs(study_dir: Path) -> list[Path]:
    """The files an earlier :func:`write_report` may have left in ``study_dir``: its tables, and the files in
    ``plots/`` named as :func:`analysis.plots.write_plots` names its plots (any other file there is the user's)."""
    plots_dir = study_dir / PLOTS_DIR
    plots = sorted(p for p in plots_dir.iterdir() if is_plot_name(p.name)) if plots_dir.is_dir() else []
    return [study_dir / name for name in (*table_file_names(), EXTERNAL_TABLE_CSV)] + plots


def remove_stale_outputs(study_dir: Path, written_tables: Sequence[Path], written_plots: Sequence[Path]) -> None:
    """Delete the tables and plots of an earlier report that this one did not write again (no finished trial any
    more, or a plot without data now, or ``table_external.csv`` once no trial has an external evaluation), so no file in
    the folder shows numbers its trials no longer give. The caller skips it while the study's command runs (that
    command's own report at its end removes them)."""
    keep = {Path(p).resolve() for p in [*written_tables, *written_plots]}
    for path in report_outputs(study_dir):
        if path.is_file() and path.resolve() not in keep:
            path.unlink(missing_ok=True)


def write_report(study_dir: str | Path, log=print) -> StudyReport:
    """Write the tables, the plots and ``report.md`` of one study folder; see the module docstring.

    Tables and plots are written only when at least one trial finished; ``report.md`` always (it then
    lists the problems). Tables and plots of an earlier report that this one does not write are removed
    (:func:`remove_stale_outputs`). MedsegError when ``study_dir`` is not a study folder, or when the report cannot
    be written there (a read-only folder, a full disk: every file is written atomically, so the earlier ones stay).
    """
    study_dir = Path(study_dir).resolve()
    if not is_study_dir(study_dir):
        raise MedsegError(f"{study_dir}: not a study folder (no study.json and no trial folder in trials/; run a study script first)")
    check_folder_writable(study_dir, "the study folder")  # a read-only copy failed in its first table's write
    try:
        return _write_report(study_dir, log)
    except BrokenPipeError:  # the reader of its progress lines went away (`medseg report | head`): not the disk
        raise
    except OSError as exc:
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        raise MedsegError(f"{study_dir}: the report could not be written ({exc.strerror or exc}{where}); the trials' results "
                          "and the files written before are intact: free space (or fix the folder) and write it again "
                          "(medseg report on the folder, or rerun the study command)") from None


def _write_report(study_dir: Path, log) -> StudyReport:
    """:func:`write_report` of a study folder that can be written to."""
    info = _read_json(study_dir / STUDY_FILE)
    if not isinstance(info.get("trials", []), list):  # an edited study.json: a TypeError deep in the tables (the report review)
        raise MedsegError(f"{study_dir / STUDY_FILE}: its 'trials' is not a list of trial keys; rerun the study command, "
                          "which writes it again")
    read_claims(info)  # a bad claim (an edited study.json) is an error before any table or plot is rewritten
    if (study_dir / PLOTS_DIR).exists() and not (study_dir / PLOTS_DIR).is_dir():
        raise MedsegError(f"{study_dir / PLOTS_DIR}: not a folder; the plots go there (move that file away)")
    settings, settings_problem = _read_record(study_dir / SETTINGS_FILE, "the report leaves out the command's settings it "
                                              "records (script, profile, command, --set)")
    last_run, last_run_problem = _read_record(study_dir / LAST_RUN_FILE, "the report leaves out the last run's wall time")
    tables: list[Path] = []
    plots: list[PlotFile] = []
    samples, search_problem, unfinished = None, [], ""
    if info.get("search"):
        from analysis.search import missing_results, unfinished_search, unrecorded_errors, write_search_summary

        try:
            search_files, _, samples = write_search_summary(study_dir)
            tables += search_files
        except MedsegError as exc:
            from analysis.search import BEST_FILE, HISTORY_FILE

            kept = [name for name in (HISTORY_FILE, BEST_FILE) if (study_dir / name).is_file()]
            search_problem = [f"search history: {exc}" + (f" ({' and '.join(kept)} in the folder are from an earlier report, "
                                                          "kept as they were)" if kept else "")]
        unfinished = unfinished_search(samples or [], int(info.get("num_samples") or 0)) if samples is not None else ""
        if unfinished:  # stopped (Ctrl-C, SIGTERM): best_config.json is the best so far
            search_problem.append(unfinished)
        search_problem += missing_results(samples or []) + unrecorded_errors(study_dir, samples or [])
    records, problems, missing = study_records(study_dir, info, {s.key for s in samples} if samples is not None else None)
    problems = [*settings_problem, *last_run_problem, *problems, *search_problem, *health_problems(trial_health(records))]
    if records:
        class_names = study_class_names(records)  # before any table: trials on datasets with other classes are an error
        df = build_table(records, class_names=class_names)
        expected = len(info.get("trials") or []) if not info.get("search") else 0
        note = incomplete_note(expected - len(missing), expected) if expected else ""
        # a folder of several `medseg train` runs: settings.json's overrides are only its latest run's
        recipe = "" if info.get("accumulates") else recipe_sentence(settings.get("overrides") or {})
        tables = write_tables(records, study_dir, class_names=class_names, incomplete=note, recipe=recipe, table=df) + tables
        plots, _ = write_plots(records, study_dir / PLOTS_DIR, df=df, log=log, search_samples=samples, class_names=class_names,
                               search_space=info.get("search_space") if info.get("search") else None)
    report = study_dir / REPORT_FILE
    order = {sample.key: sample.order for sample in samples or []}
    statuses = None
    if samples is not None:
        from analysis.search import STATUSES

        statuses = {status: sum(1 for sample in samples if sample.status == status) for status in STATUSES}
    claims = claim_results(info, records)
    write_text_atomic(report, render_report(study_dir, info, settings, last_run, records, problems, tables, plots, order, statuses,
                                            claims))
    if other_holder(study_dir) is None:  # beside a running study: its command's own report at its end removes them
        remove_stale_outputs(study_dir, tables, [p.path for p in plots])
    return StudyReport(study_dir, report, tables, [p.path for p in plots], records, problems, missing, verdict_counts(claims),
                       unfinished=bool(unfinished))


def print_report(report: StudyReport, file=None) -> str:
    """Print (and return) the Dice table, where the report, tables and plots are, and the problems."""
    text = print_summary(report.tables, report.problems, file=file)
    lines = [f"Plots ({len(report.plots)} files):", *(f"  {p}" for p in report.plots)] if report.plots else ["Plots: none"]
    if report.claims:
        lines.append(f"Claims: {report.claims} (report.md, 'Claims')")
    lines.append(f"Report: {report.report}")
    extra = "\n".join(lines) + "\n"
    print(extra, end="", file=file)
    return text + extra
