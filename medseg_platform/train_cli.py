"""``medseg train``: one configuration trained as one trial, without writing a study script.

The configuration is a method of :data:`medseg_platform.recipes.METHODS` at a profile's sizes
(:func:`~medseg_platform.recipes.method_overrides`) or a JSON file holding a ``TrialConfig`` dict (a trial's
``config.json`` or ``result.json``, a search's ``best_config.json``: their ``"config"`` is used; a partial dict is
laid over the profile's config), plus ``--set`` overrides (:mod:`medseg_platform.overrides`; here they may also
change what the method sets, since there is no table row to protect), ``--labelled`` and ``--seed``.

It is run as a one-row :class:`~medseg_platform.study.Study` named ``train-<method>-<profile>``, so it gets what a
study trial gets: the same folder ``<results>/<name>/trials/<key>/`` and result files, checkpoints, the shared
pretraining cache, resume by rerunning the same command, retries and the progress lines (through Ray Tune).
``--in-process`` calls :func:`medseg_platform.engine.train_trial` in this process instead (no Ray: a debugger
and ``breakpoint()`` work) and writes the same files (:func:`medseg_platform.results.write_trial_results`);
a rerun resumes from the trial's checkpoint as well.

The folder collects the runs: each run adds its trial to the folder's ``study.json`` (``Study.accumulate``), and a
run with ``--set`` overrides is its own table row (its label names them), so ``medseg report`` on the folder compares
them. A folder that holds a study script's study or a search is refused (``--name`` picks another).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
from pathlib import Path
from typing import Callable

from medseg_platform.errors import ConfigError, MedsegError

#: Keys the flags of ``medseg train`` set -> what sets them (``--set`` on them is an error pointing there).
TRAIN_FLAG_KEYS = {"seed": "the flag --seed", "data.labelled": "the flag --labelled", "data.root": "the flag --data-root",
                   "workers": "not settable in medseg train, which runs each trial in one process (data-parallel trials: "
                              "a study script's --num-workers)",
                   # it swapped the objective alone: the method's recipe (parameters at the profile's sizes, pretraining)
                   # was dropped and the trial tabled under the method's label (the docs review)
                   "objective": "not settable in medseg train: the METHOD argument names it with its recipe (parameters, "
                                "pretraining, row label); for another objective, give a --config file whose 'objective' it is"}
_SECTIONS = ("data", "model", "optim", "eval")


def add_cli(subparsers) -> None:
    from medseg_platform.cli import command_parser
    from medseg_platform.profiles import PROFILES
    from medseg_platform.recipes import METHODS
    from medseg_platform.study_flags import amount, seed_value

    parser = command_parser(
        subparsers,
        "train",
        help="train one configuration as one trial (a method plus --set overrides, or a JSON config)",
        example="medseg train mona --profile quick --labelled 3 --set optim.lr=0.05",
        description=(
            "Train one configuration as one trial: a method at a profile's sizes, or a JSON TrialConfig (a trial's\n"
            "config.json, a search's best_config.json), plus --set overrides, --labelled and --seed. It runs as a\n"
            "one-row study train-<method>-<profile> under --results-dir: the same result files, checkpoints, pretraining\n"
            "cache, resume (rerun the same command) and progress lines as a study trial, through Ray Tune; --in-process\n"
            "trains in this process without Ray (for a debugger). Each run adds its trial to the folder's study.json\n"
            "(medseg report compares them). Exit code 0 when the trial has a result, 1 when it errored or a Ctrl-C\n"
            "stopped it on Ray, 2 for bad input (nothing trained), 130 for a Ctrl-C with --in-process."
        ),
    )
    parser.add_argument("method", nargs="?", choices=METHODS, help="the method to train (or give --config)")
    parser.add_argument("--config", metavar="FILE.json", default=None,
                        help="a TrialConfig dict (or a file with one under \"config\", e.g. a trial's config.json) instead of a method")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config value, e.g. --set optim.lr=0.02 --set objective_params.temperature=0.2 (repeatable; "
                             "the keys of docs/config.md but those a flag sets)")
    parser.add_argument("--profile", choices=tuple(PROFILES), default=None,
                        help="problem size (default: quick; smoke: tiny; with --config, the profile whose patch size and UNet "
                             "widths the file has, else quick): the folder name, CPUs per trial, default dataset")
    parser.add_argument("--smoke-test", action="store_true", help="as --profile smoke (the study scripts' flag)")
    parser.add_argument("--labelled", default=None, metavar="FRACTION",
                        help="labelled patients ('3') or percent ('5%%') (default: the config file's, else the profile's first)")
    parser.add_argument("--seed", type=seed_value(), default=None,
                        help="seed in [0, 2**32 - 1] (default: the config file's, else the profile's first)")
    parser.add_argument("--data-root", default=None, help="dataset root (default: the config file's, else the embedded phantom)")
    parser.add_argument("--results-dir", default="results", help="where results go (default: ./results)")
    parser.add_argument("--name", default=None, help="study folder name (default: train-<method>-<profile>); give runs of "
                        "several methods one --name to table them together")
    parser.add_argument("--in-process", action="store_true",
                        help="train in this process without Ray (for debugging); same result files, resumes from the checkpoint; "
                        "a finished trial of the same configuration is reused, not trained again (delete its folder to retrain)")
    parser.add_argument("--address", default=None, help="join an existing Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard (local Ray only)")
    parser.add_argument("--gpus-per-trial", type=amount(positive=False), default=0.0, help="GPUs for the trial through Ray (default 0: CPU)")
    parser.set_defaults(func=run)


#: Keys of the other JSON files a results folder holds, which --config does not take (a hint names the right file).
_NOT_A_CONFIG = {"claims", "spec_hash", "trials", "command", "smoke_test", "pending_at_start", "prediction", "cases"}


def profile_of(values: dict) -> str:
    """The profile whose patch size and UNet widths a config file has (its folder name and CPUs per trial), else quick."""
    from medseg_platform.profiles import PROFILES

    data, model = values.get("data"), values.get("model")
    data, model = data if isinstance(data, dict) else {}, model if isinstance(model, dict) else {}  # checked when built
    patch, channels = data.get("patch_size"), model.get("channels")
    for name, profile in PROFILES.items():
        if (isinstance(patch, list) and isinstance(channels, list) and patch == list(profile.trial.data.patch_size)
                and channels == list(profile.trial.model.channels)):
            return name
    return "quick"


def read_config_file(path: Path) -> dict:
    """The TrialConfig dict of ``path``: the whole JSON object, or its ``"config"`` entry when it has one."""
    def refuse_repeats(pairs):  # --set refuses a key given twice; a file kept the last silently (the config review)
        keys = [key for key, _ in pairs]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise ConfigError(f"--config {path}: key(s) {', '.join(map(repr, repeated))} given twice in one object; give each once")
        return dict(pairs)

    try:
        # utf-8-sig: a byte-order mark (Windows editors write one) was "not valid JSON"
        values = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=refuse_repeats)
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    except ConfigError:  # a repeated key (a ValueError too)
        raise
    except ValueError as exc:
        raise ConfigError(f"--config {path}: not valid JSON ({exc})") from None
    if isinstance(values, dict) and isinstance(values.get("config"), dict):
        values = values["config"]
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a JSON object holding a TrialConfig dict")
    if _NOT_A_CONFIG & set(values) or "config" in values:
        raise ConfigError(f"--config {path}: not a trial config (give a trial's config.json or result.json, or a search's "
                          "best_config.json)")
    return values


def flat_config(values: dict) -> dict:
    """A (partial) TrialConfig dict as overrides of another config: section dicts become dotted keys, so a partial
    section keeps the other config's values; ``objective_params`` and ``pretrain`` are taken whole."""
    out = {}
    for key, value in values.items():
        if key in _SECTIONS and isinstance(value, dict):
            out.update({f"{key}.{name}": v for name, v in value.items()})
        else:
            out[key] = value
    return out


def build_study(args):
    """The one-row :class:`~medseg_platform.study.Study` of the command line, ``--set`` applied; returns (study, overrides)."""
    from medseg_platform.config import resolve_path
    from medseg_platform.data.splits import canonical_fraction
    from medseg_platform.overrides import apply_overrides, parse_set_options
    from medseg_platform.profiles import PROFILES, profile_with_overrides
    from medseg_platform.recipes import METHOD_LABELS, METHODS, method_overrides
    from medseg_platform.study_flags import dataset_num_classes, resolve_data_root
    from medseg_platform.study import Study, Variant

    where = ""  # the config file, named in its errors
    if (args.method is None) == (args.config is None):
        raise ConfigError(f"give a method ({', '.join(METHODS)}) or --config FILE.json" + (", not both" if args.method else ""))
    if getattr(args, "in_process", False) and (args.address or args.gpus_per_trial):
        raise ConfigError("--in-process trains in this process, on its GPU if it has one: --address and --gpus-per-trial "
                          "are for the Ray path (drop --in-process, or those flags)")
    if getattr(args, "smoke_test", False):  # with another --profile, the later flag won without a word (the CLI review)
        if args.profile not in (None, "smoke"):
            raise ConfigError(f"--smoke-test runs the smoke profile; drop --profile {args.profile} (or --smoke-test)")
        args.profile = "smoke"
    sets = parse_set_options(args.overrides)
    if args.config is not None:
        path = resolve_path(args.config, "--config")
        file_values = read_config_file(path)
    if args.profile is None:  # a search's best_config.json at smoke sizes used to land in train-<method>-quick
        args.profile = profile_of(file_values) if args.config is not None else "quick"
    profile = profile_with_overrides(PROFILES[args.profile], sets, TRAIN_FLAG_KEYS)
    if args.method is not None:
        file_values, chosen = {}, method_overrides(args.method, profile)
        name, row = args.method, METHOD_LABELS[args.method]
    else:
        chosen = flat_config(file_values)
        name = config_method(file_values)  # the folder is train-<method>-<profile>, as for `medseg train METHOD`
        row, where = f"{config_method_label(file_values)} ({path.name})", f"--config {path}: "
        check_config_file_values(path, file_values, seed_given=args.seed is not None)
    file_root = chosen.pop("data.root", None)
    chosen.pop("workers", None)  # checked above: one worker
    if args.data_root is not None:
        root = resolve_path(args.data_root, "--data-root")
    elif file_root is not None:
        root = resolve_path(file_root, f"{where}data.root")
    else:
        root = resolve_data_root(args, profile)
    try:
        base = profile.trial.replace(**{**chosen, "data.root": str(root),
                                        **dataset_num_classes(root, [*sets, *chosen], profile.trial.data.num_classes)})
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None
    labelled = canonical_fraction(args.labelled if args.labelled is not None
                                  else base.data.labelled if "data.labelled" in chosen else profile.labelled[0])
    seed = args.seed if args.seed is not None else int(file_values.get("seed", profile.seeds[0]))
    study = Study(name=args.name or f"train-{name}-{profile.name}", base=base, results_dir=resolve_path(args.results_dir, "--results-dir"),
                  variants=[Variant({"row": row, "order": 0}, {})], grid={"data.labelled": [labelled]}, seeds=(seed,),
                  cpus_per_trial=_cpus_per_trial(profile.cpus_per_trial, args.address), gpus_per_trial=args.gpus_per_trial,
                  address=args.address,
                  dashboard=not args.no_dashboard, accumulate="medseg train")
    plain = PROFILES[args.profile]  # the configuration without --set (built as base is), whose values a --set may repeat
    plain_chosen = method_overrides(args.method, plain) if args.method is not None else chosen
    before = plain.trial.replace(**{**plain_chosen, "data.root": str(root),
                                    **dataset_num_classes(root, list(plain_chosen), plain.trial.data.num_classes, note=False)}).to_dict()
    overrides = apply_overrides(study, sets, TRAIN_FLAG_KEYS, rows_hint="")
    after = study.base.replace(**study.variants[0].overrides).to_dict()
    # the values that change the configuration, written one way: a --set of the value the method already trains with
    # (or 0.050 for 0.05) relabelled the folder's earlier row of the same trial (the workflow probe)
    changed = [f"{key}={_shown(value)}" for key, value in overrides.items() if _value_at(before, key) != _value_at(after, key)]
    if changed:  # another configuration than the method's or the file's: its own table row, after the plain one
        study.variants = [Variant({**v.tags, "row": f"{row} [{', '.join(changed)}]", "order": 1}, v.overrides)
                          for v in study.variants]
    if after["data"].get("labelled_strategy") == "released_slices":  # as a study script warns (the splits review)
        from medseg_platform.protocol import released_cut_warnings

        for note in released_cut_warnings(root, [labelled]):
            print(f"warning: {note}", file=sys.stderr)
    return study, overrides


def _value_at(config: dict, dotted: str):
    """The value of ``dotted`` (``optim.lr``, ``objective_params.temperature``) in a config dict; None when absent."""
    value = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _shown(value) -> str:
    """A ``--set`` value as a row label writes it: numbers as Python prints them (0.05, not 0.050), lists with commas."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def config_method(values: dict) -> str:
    """The method (``medseg train METHOD``'s name) a config file trains: MONA/ARCO by their sampler (an ARCO-SAG
    search's best_config.json is ``arco_sag``, not its objective ``arco``), else the objective's name."""
    from medseg_platform.recipes import SAMPLER_METHODS
    from methods.registry import objective_config

    objective = str(values.get("objective", "supervised"))
    if objective not in ("mona", "arco"):
        return objective
    try:  # the sampler the file names, else the objective's default one (ARCO's: stratified, ARCO-SG)
        sampler = objective_config(objective, dict(values.get("objective_params") or {})).sampler
    except MedsegError:  # the file's own error is named when its config is validated
        sampler = ""
    return SAMPLER_METHODS.get(str(sampler), objective)


def config_method_label(values: dict) -> str:
    """The table label of the method a config file trains (:func:`config_method`; an ARCO-SAG search's best_config.json
    was tabled as "arco"), else the objective's name."""
    from medseg_platform.recipes import METHOD_LABELS

    return METHOD_LABELS.get(config_method(values), str(values.get("objective", "supervised")))


def check_config_file_values(path: Path, values: dict, seed_given: bool) -> None:
    """What ``medseg train`` cannot take over from a config file, named with the file: more than one worker (a
    data-parallel trial belongs to a study script's --num-workers) and a seed outside [0, 2**32 - 1]."""
    from medseg_platform.config import MAX_SEED

    workers = values.get("workers", 1)
    if workers != 1:
        raise ConfigError(f"--config {path}: workers={workers!r}; medseg train runs one worker per trial, so this config "
                          "would train with a smaller effective batch. Run it through a study script with --num-workers, "
                          "or set \"workers\": 1 in a copy")
    seed = values.get("seed", 0)
    if not seed_given and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise ConfigError(f"--config {path}: seed {seed!r} must be a whole number in [0, 2**32 - 1] (or pass --seed)")


def _setting(config: dict) -> str:
    """What makes two trials rows of one table apart: the config without its seed and label fraction (those are a row's
    seeds and columns)."""
    import hashlib

    data = {k: v for k, v in (config.get("data") or {}).items() if k not in ("labelled", "labelled_seed")}
    rest = {k: v for k, v in config.items() if k not in ("seed", "data")}
    return hashlib.sha256(json.dumps({"data": data, **rest}, sort_keys=True, default=str).encode()).hexdigest()[:6]


def settle_row(study, trial: dict) -> None:
    """Keep the folder's table honest as runs collect in it (``Study.accumulate``): a run on another dataset than the
    folder's earlier trials is refused (their classes could differ; ``--name`` gives it its own folder), and a run whose
    row label an earlier trial of another configuration already carries (two config files of the same name, or the
    same method on another setting) gets the label plus a short hash of its configuration, so the report never
    averages different configurations as seeds of one row. A run of the same row, setting and seed whose label fraction
    is spelt otherwise but selects the same patients as an earlier trial's ('25%' and '1' of 4 patients) is refused: the
    table averaged the two copies as two seeds (a study refuses such fractions up front: the splits review). Renames the
    study's variant in place."""
    from medseg_platform.config import TrialConfig, labelled_subset
    from medseg_platform.results import CONFIG_FILE, trial_folder
    from medseg_platform.study.spec import check_accumulating_folder, earlier_trials

    check_accumulating_folder(study.study_dir, study.accumulate)  # another study's folder: refused before anything else
    root, row, mine = trial["config"]["data"]["root"], trial["tags"]["row"], _setting(trial["config"])
    lists: dict = {}
    patients = None  # this trial's labelled patients, resolved on the first earlier trial that could share them
    clash = False
    for key in earlier_trials(study.study_dir)["trials"]:
        if key == trial["key"]:
            continue
        try:
            written = json.loads((trial_folder(study.study_dir, key) / CONFIG_FILE).read_text(encoding="utf-8"))
            config, tags = dict(written["config"]), dict(written.get("tags") or {})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if (config.get("data") or {}).get("root") != root:
            raise ConfigError(f"{study.study_dir}: its trials train on {config['data'].get('root')}, this run on {root}; "
                              "give --name a folder for runs on another dataset")
        clash = clash or (tags.get("row") == row and _setting(config) != mine)
        data, ours = config.get("data") or {}, trial["config"]["data"]
        if (tags.get("row") == row and _setting(config) == mine and config.get("seed") == trial["config"]["seed"]
                and data.get("labelled_seed") == ours.get("labelled_seed") and data.get("labelled") != ours["labelled"]):
            try:
                theirs = labelled_subset(TrialConfig.from_dict(config), lists)
            except (ConfigError, ValueError, TypeError, KeyError):
                continue  # a trial of another layout of the data: the dataset check above names a real change
            if patients is None:
                patients = labelled_subset(TrialConfig.from_dict(trial["config"]), lists).patients
            if theirs.patients == patients:
                raise ConfigError(f"--labelled {ours['labelled']}: selects the same {theirs.count.patients} of the "
                                  f"{theirs.count.available} training patients as the folder's trial {key} (--labelled "
                                  f"{data.get('labelled')}, the same seed): its result stands for this run (rerun with "
                                  f"--labelled {data.get('labelled')}, or give --name a folder of its own)")
    if clash:
        study.variants = [type(v)({**v.tags, "row": f"{row} #{mine}"}, v.overrides) for v in study.variants]


def _cpus_per_trial(profile_cpus: float, address: str | None) -> float:
    """The profile's CPUs per trial, at most this machine's on a local Ray (one trial: the paper profile's 4 on a 2-CPU
    machine would otherwise wait forever for CPUs; the trial still computes with the config's ``threads``)."""
    if address or os.environ.get("RAY_ADDRESS"):
        return profile_cpus
    from medseg_platform.plan import available_cpus

    return min(profile_cpus, float(available_cpus()))


def train_in_process(study, after: Callable[[Path], None] | None = None) -> Path:
    """Train the study's one trial in this process (no Ray) and write its result files; returns the trial folder.
    ``after(trial_dir)`` runs while the study folder is still locked, whether the trial trained, was reused or failed
    (as :meth:`Study.run`'s: the command's settings and the folder's report).

    The checks a study makes before Ray starts come first (the config, the folder, fp16 without a GPU, every data file
    the trial reads: :func:`medseg_platform.study.runner.check_before_ray`, :func:`medseg_platform.preflight.preflight_datasets`),
    so bad input is reported before anything is written. A finished trial is not trained again; one that differs from a
    finished trial of the folder only in how it is scored is scored from that trial's checkpoint
    (:mod:`medseg_platform.rescore`); an unfinished one resumes from its checkpoint (as in a study). An error while
    training is recorded in the trial's ``error.json`` (a :class:`MedsegError`, e.g. a non-finite loss, then ends the
    call normally: the folder has no result; anything else is raised).
    """
    from medseg_platform.io import check_folder_free, folder_lock
    from medseg_platform.preflight import datasets_of_trials, preflight_datasets
    from medseg_platform.study.runner import check_before_ray, check_trained_on_this_data

    import torch

    trials, _ = check_before_ray(study, in_process_cuda=torch.cuda.is_available(), in_process=True)
    check_folder_free(study.study_dir, f"study {study.name}")  # before the preflight's reads and its preflight.json
    preflight_datasets(datasets_of_trials(trials), study.study_dir)
    check_trained_on_this_data(study, trials)
    with folder_lock(study.study_dir, f"study {study.name}"):  # as a study run: one run of a folder at a time
        trial_dir = _train_locked(study, trials)
        if after is not None:
            after(trial_dir)
        return trial_dir


def _train_locked(study, trials: list[dict]) -> Path:
    """:func:`train_in_process`'s trial (``trials``: the study's one), with the study folder locked."""
    from medseg_platform.config import TrialConfig
    from medseg_platform.io import write_json_atomic
    from medseg_platform.rescore import score_from_sources
    from medseg_platform.results import (ERROR_FILE, STUDY_FILE, pretrain_cache_dir, start_attempt, trial_finished, trial_folder,
                                         write_trial_config, write_trial_error)
    from medseg_platform.study.trainable import train_and_record

    import torch

    trial, study_dir = trials[0], study.study_dir
    trial_dir = trial_folder(study_dir, trial["key"])
    write_json_atomic(study_dir / STUDY_FILE, study.description(trials))
    if trial_finished(trial_dir, log=lambda msg: print(msg, file=sys.stderr, flush=True)):
        print(f"trial {trial['key']}: already finished (delete its folder to train it again)", file=sys.stderr)
        return trial_dir
    if score_from_sources(study_dir, [trial], lambda msg: print(msg, file=sys.stderr, flush=True), "cuda" if torch.cuda.is_available() else "cpu"):
        return trial_dir  # it differs from a finished trial only in how it is scored: not trained
    cfg = TrialConfig.from_dict(trial["config"])
    start_attempt(trial_dir)
    write_trial_config(trial_dir, trial["config"], trial["tags"])
    (trial_dir / ERROR_FILE).unlink(missing_ok=True)
    try:
        train_and_record(trial["config"], trial["tags"], trial_dir, pretrain_cache_dir(study_dir),
                         log=lambda msg: print(f"[{trial['key']}] {msg}", file=sys.stderr, flush=True),
                         extra={"placement": {"hostname": socket.gethostname(), "pid": os.getpid(), "in_process": True}})
    except MedsegError as exc:  # recorded as a study's application error; run() reports it and exits 1
        step = getattr(exc, "step", None)
        details = {"step": step, "terms": list(getattr(exc, "terms", ()))} if step is not None else {}
        write_trial_error(trial_dir, config=trial["config"], tags=trial["tags"], seed=cfg.seed, error=str(exc), kind="application",
                          details=details)
    except Exception as exc:  # a bug or an unforeseen input: recorded as a study trial's would be, then shown in full
        write_trial_error(trial_dir, config=trial["config"], tags=trial["tags"], seed=cfg.seed,
                          error=f"{type(exc).__name__}: {exc}", kind="exception")
        raise
    return trial_dir


def command_line(args) -> str:
    """The command as typed (rebuilt from the parsed flags), for ``settings.json``."""
    parts = ["medseg", "train"] + ([args.method] if args.method else ["--config", args.config])
    parts += [p for item in args.overrides for p in ("--set", item)]
    for flag, value in (("--profile", args.profile), ("--labelled", args.labelled), ("--seed", args.seed),
                        ("--data-root", args.data_root), ("--results-dir", args.results_dir), ("--name", args.name),
                        ("--address", args.address), ("--gpus-per-trial", args.gpus_per_trial or None)):
        if value is not None:
            parts += [flag, str(value)]
    parts += [flag for flag, on in (("--in-process", args.in_process), ("--no-dashboard", args.no_dashboard)) if on]
    return " ".join(shlex.quote(p) for p in parts)


def run(args) -> int:
    """``medseg train``: train (or reuse) the trial; the exit status. The console (``analysis.console``) runs
    :func:`train` instead and then rebuilds the folder's tables and report."""
    return train(args)[0]


def train(args, after: Callable[[Path], None] | None = None) -> tuple[int, Path | None]:
    """Train (or reuse) the trial of ``args``: the exit status and the study folder (None when it stopped or failed).
    ``after(study_dir)`` runs when the trial has a result, while the study folder is still locked (the console's report:
    a second command could otherwise write the folder between the trial and its report)."""
    from medseg_platform.config import resolve_path
    from medseg_platform.results import trial_finished, trial_folder

    study, overrides = build_study(args)
    try:
        trial = study.trial_params()[0]  # validates the resolved config (a value the file or a --set gave)
    except ConfigError as exc:
        from medseg_platform.overrides import named_by_set, parse_set_options

        named = named_by_set(exc, parse_set_options(args.overrides))
        if named is not exc:  # a --set value the objective refuses names the --set (a known item: the study CLI did)
            raise named from None
        if args.config is None:
            raise
        source = f"--config {resolve_path(args.config, '--config')}" + (" with the --set values" if args.overrides else "")
        raise ConfigError(f"{source}: {exc}") from None
    settle_row(study, trial)
    finished_before = trial_finished(trial_folder(study.study_dir, trial["key"]))
    status: list[int] = []

    def finish(trial_dir: Path) -> None:  # under the study folder's lock, as the trial ran
        if not finished_before:  # the command that trained the folder's latest trial (a rerun that trained nothing keeps it)
            write_settings(args, study, overrides)
        status.append(_report_trial(trial_dir))
        if status[0] == 0 and after is not None:
            after(study.study_dir)

    if args.in_process:
        from medseg_platform.io import ctrl_c_recorded
        from medseg_platform.study.ray_runtime import sigterm_as_interrupt

        try:
            # a kill ends as Ctrl-C does (it exited 143 without a word: the README audit); either stops the training loop
            # at its next step even when its KeyboardInterrupt landed where Python ignores it
            with sigterm_as_interrupt(), ctrl_c_recorded():
                train_in_process(study, after=finish)
        except KeyboardInterrupt:
            print(f"trial {trial['key']}: stopped by a signal; rerun the same command to resume it (from its last "
                  "checkpoint, if it reached one)", file=sys.stderr)
            return 130, None
    else:
        def finish_run(run_) -> None:
            if run_.stopped:
                print(f"trial {run_.trial_keys[0]}: stopped by a signal; rerun the same command to resume it", file=sys.stderr)
                status.append(1)
            else:
                finish(trial_folder(run_.study_dir, run_.trial_keys[0]))

        study.run(after=finish_run)
    return status[0], (study.study_dir if status[0] == 0 else None)


def write_settings(args, study, overrides: list) -> None:
    """The command's ``settings.json`` in the study folder (what the report reads back that the trial files do not hold)."""
    from medseg_platform.io import working_folder, write_json_atomic
    from medseg_platform.results import SETTINGS_FILE

    write_json_atomic(study.study_dir / SETTINGS_FILE, {
        "profile": args.profile, "data_root": str(study.base.data.root), "command": command_line(args), "cwd": working_folder(),
        "smoke_test": args.profile == "smoke", "results_dir": str(study.results_dir), "address": args.address,
        "gpus_per_trial": study.gpus_per_trial, "cpus_per_trial": study.cpus_per_trial, "num_workers": 1, "max_concurrent": None,
        "overrides": overrides, "in_process": bool(args.in_process)})


def _report_trial(trial_dir: Path) -> int:
    """Print the trial's outcome (its best val and test Dice, or why it has no result); the exit status."""
    from medseg_platform.results import ERROR_FILE, CorruptResult, read_trial

    try:
        record = read_trial(trial_dir)
    except CorruptResult:
        record = None
    if record is None:
        try:
            reason = json.loads((trial_dir / ERROR_FILE).read_text(encoding="utf-8")).get("error", "no result")
        except (OSError, ValueError, AttributeError):
            reason = "no result"
        print(f"trial {trial_dir.name} did not finish: {reason} ({trial_dir})", file=sys.stderr)
        return 1
    r = record.result
    print(f"trial {trial_dir.name}: best val Dice {r['best_val_dice']:.4f} at step {r['best_step']}, test Dice "
          f"{r['test']['mean']['dice']:.4f}; results in {trial_dir}")
    return 0
