"""Every study script in ``studies/`` passes ``--smoke-test`` (in-process, on the session's shared Ray),
plus the row-building rules the scripts rely on (:mod:`medseg_platform.variants`, no Ray)."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from medseg_platform.errors import ConfigError
from analysis.study_cli import run_study_main
from medseg_platform.profiles import PROFILES
from medseg_platform.recipes import FULL_SUPERVISION_LABEL, method_overrides
from medseg_platform.results import read_trial, trial_key
from medseg_platform.variants import VariantTable, with_objective_params, with_stage_params

STUDIES = Path(__file__).resolve().parents[1] / "studies"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"study_script_{name}", STUDIES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def smoke(tmp_path, ray_address, phantom_cache, monkeypatch):
    """Runs a script's smoke test in-process; returns (exit code, study dir, {trial key: record})."""
    monkeypatch.setenv("MEDSEG_CACHE", str(phantom_cache))
    results = tmp_path / "results"

    def run(name: str, *extra: str):
        module = load_script(name)
        argv = ["--smoke-test", "--results-dir", str(results), "--address", ray_address, "--no-dashboard", *extra]
        code = module.main(argv) if hasattr(module, "main") else run_study_main(module.__doc__, name, module.build, argv=argv)
        # a search and the loss ablation: one folder per method (their defaults: ARCO-SAG, ARCO-SG)
        study_dir = results / {"hparam_search": "hparam_search-arco_sag-smoke", "ablation_losses": "ablation_losses-arco_sg-smoke"}.get(name, f"{name}-smoke")
        keys = json.loads((study_dir / "study.json").read_text())["trials"]
        records = {key: read_trial(study_dir / "trials" / key) for key in keys}
        return code, study_dir, records, module

    return run


def table_rows(study_dir: Path) -> dict[str, set[str]]:
    """table.csv as {row label: set of column labels}; also checks the Markdown table exists."""
    assert (study_dir / "table_dice.md").is_file() and (study_dir / "table_dice.tex").is_file()
    with open(study_dir / "table.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, set[str]] = {}
    for row in rows:
        out.setdefault(row["row"], set()).add(row["column"])
    return out


def test_tailness_smoke(smoke):
    code, study_dir, records, _ = smoke("ablation_tailness")
    assert code == 0 and len(records) == 8 and all(records.values())
    rows = table_rows(study_dir)
    assert {"Supervised only", "ARCO-SAG", "MONA/ARCO w/o L_contrast", "ACTION w/o L_anco"} <= set(rows) and len(rows) == 8


def test_temperature_smoke(smoke):
    code, study_dir, records, module = smoke("ablation_temperature")
    assert code == 0 and all(records.values())
    rows = table_rows(study_dir)
    pixel = {f"{method}, τ = {tau:g}" for method in ("ARCO-SG", "ACTION") for tau in module.PIXEL_TEMPERATURE["smoke"]
             if (method, tau) != ("ARCO-SG", 0.5)}
    released_row = "ARCO-SG, released: τ = 0.5, ISD τ_t = 0.1, τ_s = 0.1"  # every axis's released value: one row
    assert pixel <= set(rows) and released_row in rows
    # one-factor-at-a-time: the released ISD value is the shared released row, the others get their own row
    isd = {f"ARCO-SG, ISD τ_t = {t:g}" for t in module.ISD_TAU_TEACHER["smoke"] if t != 0.1} | \
          {f"ARCO-SG, ISD τ_s = {t:g}" for t in module.ISD_TAU_STUDENT["smoke"] if t != 0.1}
    assert isd <= set(rows) and len(rows) == len(pixel) + len(isd) + 1 == len(records)
    by_row = {r.result["tags"]["row"]: r.result for r in records.values()}
    assert by_row["ACTION, τ = 0.1"]["config"]["objective_params"]["temperature"] == 0.1
    assert by_row["ARCO-SG, ISD τ_t = 0.01"]["config"]["pretrain"][0]["objective_params"]["tau_teacher"] == 0.01
    assert by_row["ARCO-SG, ISD τ_s = 0.07"]["config"]["pretrain"][0]["objective_params"]["tau_student"] == 0.07
    released = by_row[released_row]["tags"]["axes"]
    assert released["objective_params.temperature"] == 0.5 and released["isd.tau_teacher"] == released["isd.tau_student"] == 0.1


def test_sampling_smoke(smoke):
    code, study_dir, records, module = smoke("ablation_sampling")
    assert code == 0 and all(records.values())
    rows = table_rows(study_dir)
    groups, sizes = module.GROUPS["smoke"], module.SIZE_SCALES["smoke"]
    assert len(rows) == len(records) == len(sizes) * (1 + 2 * len(groups))  # NS once per size, not per group count
    configs = [r.result["config"]["objective_params"] for r in records.values()]
    uniform = [c for c in configs if c["sampler"] == "uniform"]
    assert len(uniform) == len(sizes) and len({c["num_anchors"] for c in uniform}) == len(sizes)
    for sampler in ("stratified", "stratified_antithetic"):
        assert {(c["sampler_groups"], c["num_anchors"]) for c in configs if c["sampler"] == sampler} == {
            (g, round(PROFILES["smoke"].methods.anchors * s)) for g in groups for s in sizes}
    for record in records.values():
        axes, params = record.result["tags"]["axes"], record.result["config"]["objective_params"]
        assert axes["objective_params.num_anchors"] == params["num_anchors"]
        assert axes.get("objective_params.sampler_groups") == params.get("sampler_groups")
        expected = f"{params['sampler_groups']} groups" if params["sampler"] != "uniform" else None
        assert (expected in record.result["tags"]["row"]) if expected else ("groups" not in record.result["tags"]["row"])


def test_losses_smoke(smoke):
    """ARCO Table 3's rows: each leaves out exactly its term, in fine-tuning or in the pretraining stage."""
    code, study_dir, records, module = smoke("ablation_losses")
    assert code == 0 and all(records.values())
    rows = table_rows(study_dir)
    by_row = {r.result["tags"]["row"]: r.result["config"] for r in records.values()}
    assert set(rows) == set(by_row) and len(by_row) == len(records) == 7
    full = by_row["ARCO-SG"]
    weights = ("contrast_weight", "unsup_weight", "eqv_weight", "nn_weight")

    def changed(config):  # (fine-tuning weights at 0, stage weights at 0); the full row does not set them
        params, stage = config["objective_params"], config["pretrain"][0]["objective_params"]
        return ({w for w in weights if params.get(w) == 0.0}, {w for w in ("global_weight", "local_weight") if stage.get(w) == 0.0})

    assert changed(full) == (set(), set()) and full["objective_params"]["sampler"] == "stratified"
    assert changed(by_row["ARCO-SG w/o L_unsup"]) == ({"unsup_weight"}, set())
    assert changed(by_row["ARCO-SG w/o L_eqv"]) == ({"eqv_weight"}, set())
    assert changed(by_row["ARCO-SG w/o L_global_inst"]) == (set(), {"global_weight"})
    assert changed(by_row["ARCO-SG w/o L_local_inst"]) == (set(), {"local_weight"})
    assert changed(by_row[module.SUP_ONLY_LABEL]) == (set(weights), set())
    assert by_row["Supervised only"]["objective"] == "supervised" and not by_row["Supervised only"]["pretrain"]
    # the terms at 0 were not computed: they are missing from the logged curves
    logged = {r.result["tags"]["row"]: set((study_dir / "trials" / key / "curves.csv").read_text().splitlines()[0].split(","))
              for key, r in records.items()}
    assert {"unsup", "contrast", "eqv", "nn"} <= logged["ARCO-SG"]
    assert "unsup" not in logged["ARCO-SG w/o L_unsup"] and "eqv" not in logged["ARCO-SG w/o L_eqv"]
    assert not {"unsup", "contrast", "eqv", "nn"} & logged[module.SUP_ONLY_LABEL] and "sup" in logged[module.SUP_ONLY_LABEL]
    # the rows that keep the released stage share one pretraining config; the two stage ablations have their own
    stages = {json.dumps(c["pretrain"], sort_keys=True) for row, c in by_row.items() if c["pretrain"]}
    assert len(stages) == 3
    assert {(c["a"], c["b"]) for c in module.claims()} == {
        ("ARCO-SG", f"ARCO-SG w/o {term}") for term in ("L_unsup", "L_global_inst", "L_local_inst")}


def test_loss_ablation_of_arco_sag_has_its_own_rows_folder_and_claims(tmp_path):
    import argparse

    module = load_script("ablation_losses")
    profile = PROFILES["quick"]
    base = profile.trial.replace(**{"data.root": "/nonexistent"})
    studies = {m: module.build(argparse.Namespace(results_dir=str(tmp_path), method=m), profile, base) for m in module.METHODS}
    sag = studies["arco_sag"]
    assert sag.name == "ablation_losses-arco_sag" and studies["arco_sg"].name == "ablation_losses-arco_sg"
    rows = [v.tags["row"] for v in sag.variants]
    assert rows[:2] == ["ARCO-SAG", "ARCO-SAG w/o L_unsup"] and module.SUP_ONLY_LABEL in rows and "Supervised only" in rows
    assert {v.overrides["objective_params"]["sampler"] for v in sag.variants
            if v.overrides.get("objective") == "arco" and v.tags["row"] != module.SUP_ONLY_LABEL} == {"stratified_antithetic"}
    assert {(c["a"], c["b"]) for c in sag.claims} == {("ARCO-SAG", f"ARCO-SAG w/o {t}") for t in module.PUBLISHED_TERMS}
    # the L_sup-only row trains no sampler: the same configuration for both, so the second run reuses the first's trials
    sup_only = {m: next(v.overrides for v in s.variants if v.tags["row"] == module.SUP_ONLY_LABEL) for m, s in studies.items()}
    assert sup_only["arco_sg"] == sup_only["arco_sag"]
    assert module.parser().parse_args(["--method", "arco_sag"]).method == "arco_sag"
    with pytest.raises(SystemExit):
        module.parser().parse_args(["--method", "mona"])


def test_label_fractions_smoke(smoke):
    code, study_dir, records, module = smoke("label_fractions")
    assert code == 0 and all(records.values())
    rows = table_rows(study_dir)
    assert len(rows) == 1 + 6 and FULL_SUPERVISION_LABEL in rows
    full = [r for r in records.values() if r.result["tags"]["row"] == FULL_SUPERVISION_LABEL]
    assert len(full) == 1 and full[0].result["labelled"]["percent_patients"] == 100.0
    full_column = rows.pop(FULL_SUPERVISION_LABEL)
    assert len(full_column) == 1  # the full-supervision column holds only that row
    assert all(columns.isdisjoint(full_column) and len(columns) == len(module.FRACTIONS["smoke"]) for columns in rows.values())


def test_hparam_search_smoke(smoke, capsys):
    code, study_dir, _, module = smoke("hparam_search", "--num-samples", "3")
    out = capsys.readouterr().out
    assert code == 0 and "best configuration" in out
    assert "Configuration for experiment" not in out and "tensorboard --logdir" not in out  # Tune's box: the study's own lines
    with open(study_dir / "search_history.csv", newline="") as fh:
        history = list(csv.DictReader(fh))
    space = module.search_space("arco_sag")
    assert [int(h["order"]) for h in history] == [1, 2, 3]
    assert {h["status"] for h in history} <= {"completed", "stopped early"} and any(h["status"] == "completed" for h in history)
    for h in history:
        for key, domain in space.items():
            assert domain.lower <= float(h[key]) <= domain.upper
        record = read_trial(study_dir / "trials" / h["trial_key"])
        assert (record is not None) == (h["status"] == "completed")
        if record is not None:  # the history's values are the ones the trial trained with
            assert all(record.result["config"]["objective_params"][k.split(".")[1]] == pytest.approx(float(h[k])) for k in space)
    best = json.loads((study_dir / "best_config.json").read_text())
    folder = study_dir / "trials" / best["trial_key"]
    assert f"its trial folder (weights, per-case results): {folder}\n" in out  # the probe had to guess it
    assert f"predict with it: medseg predict --trial {folder} --out PREDICTIONS (its own test split; " in out
    assert (f"train it with another seed: medseg train --config {study_dir / 'best_config.json'} --seed 2 --results-dir "
            f"{study_dir.parent} (its own seed gives the trial above, which medseg train reuses; another seed trains its "
            "own pretraining stages first and keeps them in this results folder's cache)\n") in out  # "train it again" only reused that trial; run from
    # elsewhere without --results-dir it trained the trial and its pretraining stage again (the search walkthrough)
    assert "search: 3 of 3 samples proposed (" in out
    completed = [h for h in history if h["status"] == "completed"]
    assert best["best_val_dice"] == pytest.approx(max(float(h["best_val_dice"]) for h in completed), abs=1e-6)
    assert best["search"] == {k: best["config"]["objective_params"][k.split(".")[1]] for k in space}
    statuses = ", ".join(f"{n} {status}" for status in ("completed", "stopped early")
                         if (n := sum(h["status"] == status for h in history)))
    report = (study_dir / "report.md").read_text()
    assert f"ASHA early stopping): {statuses} (search_history.csv)" in report  # ASHA's stops were in the history only
    assert "(3 sample(s) not yet ended at its start)" in report  # it said "1 trial(s) to run" (the configuration's key)
    # a dry run of the finished search trains nothing (it used to plan the whole search again); another sample count is
    # refused instead of starting a new search that trains the same first samples again
    code, _, _, _ = smoke("hparam_search", "--num-samples", "3", "--dry-run")
    out = capsys.readouterr().out
    assert code == 0 and "Search: 3 samples of one configuration, all of them already ended" in out and " 0.0 cost units" in out
    code, _, _, _ = smoke("hparam_search", "--num-samples", "4")
    assert code == 2 and "holds a search with --num-samples 3 (this run: 4)" in capsys.readouterr().err


def test_every_study_script_has_a_smoke_test():
    """This module's docstring promises a --smoke-test run of every script in studies/: a new script needs its own."""
    source = Path(__file__).read_text(encoding="utf-8")
    untested = sorted(p.stem for p in STUDIES.glob("*.py") if f'smoke("{p.stem}"' not in source)
    assert not untested, f"studies/{untested[0]}.py has no smoke run here: add a test that calls smoke(\"{untested[0]}\")"


def test_hparam_search_flags(capsys):
    module = load_script("hparam_search")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--method" in out
    assert "``" not in out and ":class:`" not in out and "Study(asha=True)" in out  # the docstring's markup, as plain words
    assert set(module.search_space("action")) >= {"objective_params.anco_weight", "objective_params.hard_query_threshold"}
    with pytest.raises(ConfigError, match="no search space"):
        module.search_space("supervised")


def test_variant_table_merges_the_same_configuration_and_keeps_axes():
    profile = PROFILES["smoke"]
    base = profile.trial.replace(**{"data.root": "/nonexistent"})
    released = method_overrides("arco_sg", profile)
    table = VariantTable(base)
    assert table.add("τ = 0.5", with_objective_params(released, temperature=0.5), variant="ARCO-SG", axes={"t": 0.5}) == "τ = 0.5"
    # the released ISD value written out explicitly: the same configuration, merged, axes united
    assert table.add("τ_s = 0.1", with_stage_params(released, 0, tau_student=0.1), variant="ARCO-SG", axes={"tau_s": 0.1}) == "τ = 0.5"
    table.add("τ_s = 0.07", with_stage_params(released, 0, tau_student=0.07), variant="ARCO-SG", axes={"tau_s": 0.07})
    variants = table.variants()
    assert [v.tags["row"] for v in variants] == ["τ = 0.5", "τ_s = 0.07"] and [v.tags["order"] for v in variants] == [0, 1]
    assert variants[0].tags["axes"] == {"t": 0.5, "tau_s": 0.1} and variants[0].tags["variant"] == "ARCO-SG"
    assert released["pretrain"][0]["objective_params"].get("tau_student") is None  # the helpers copy, never mutate
    with pytest.raises(ConfigError, match="same configuration"):
        table.add("clash", released, axes={"t": 1.0})
    with pytest.raises(ConfigError, match="row 'bad'"):
        table.add("bad", with_objective_params(released, temperature=-1.0))


def test_an_axis_named_after_a_config_key_must_hold_the_row_s_value():
    """The extension review: axes={"objective_params.l2_weight": weight * 1000} and a misspelt axis key were plotted
    silently (rows at x = 0.1 that trained 0.0001); labels outside the configuration's sections stay free."""
    profile = PROFILES["smoke"]
    base = profile.trial.replace(**{"data.root": "/nonexistent"})
    mona = method_overrides("mona", profile)
    table = VariantTable(base)
    table.add("τ = 0.2", with_objective_params(mona, temperature=0.2), axes={"objective_params.temperature": 0.2,
                                                                            "isd.tau_teacher": 1, "data.labelled": base.data.labelled})
    with pytest.raises(ConfigError, match=r"row 'τ = 0.3': axis objective_params.temperature = 300.0, but the row trains "
                                          r"objective_params.temperature = 0.3; an axis records"):
        table.add("τ = 0.3", with_objective_params(mona, temperature=0.3), axes={"objective_params.temperature": 300.0})
    with pytest.raises(ConfigError, match=r"axis 'objective_params.temperatur' names no key of the row's configuration "
                                          r"\(objective_params has .*temperature"):
        table.add("τ = 0.3", with_objective_params(mona, temperature=0.3), axes={"objective_params.temperatur": 0.3})
    with pytest.raises(ConfigError, match=r"axis 'optim.lr.x' names no key"):
        table.add("τ = 0.3", with_objective_params(mona, temperature=0.3), axes={"optim.lr.x": 0.3})
    with pytest.raises(ConfigError, match=r"axis objective_params.copy_bn_update = 1, but the row trains"):
        table.add("bn", mona, axes={"objective_params.copy_bn_update": 1})  # 1 is not True
    table.add("patch", {**mona, "data.patch_size": (32, 32)}, axes={"data.patch_size": [32, 32]})  # a tuple as a list


def test_a_whole_number_for_a_real_parameter_is_the_same_row_and_key_as_its_float():
    """A study author wrote unsup_weight 1 where the sweep's other value was 1.0: the rows merged, but the kept row's
    overrides (so its trial key) depended on the spelling, and a sweep written with 1 retrained what 1.0 had trained."""
    profile = PROFILES["smoke"]
    base = profile.trial.replace(**{"data.root": "/nonexistent"})
    mona = method_overrides("mona", profile)
    keys = []
    for weight in (1, 1.0):
        table = VariantTable(base)
        table.add("MONA, w = 1", with_objective_params(mona, unsup_weight=weight, num_anchors=2), axes={"w": weight})
        (variant,) = table.variants()
        params = variant.overrides["objective_params"]
        assert params["unsup_weight"] == 1.0 and isinstance(params["unsup_weight"], float)
        assert isinstance(params["num_anchors"], int)  # an integer parameter keeps its integer
        keys.append(trial_key(base.replace(**variant.overrides).to_dict()))
    assert keys[0] == keys[1]


QUICK_TRIALS = {"ablation_temperature": 12, "ablation_sampling": 14, "ablation_losses": 7, "label_fractions": 19, "hparam_search": 1}


@pytest.mark.parametrize("profile", ["quick", "paper"])
@pytest.mark.parametrize("name", sorted(QUICK_TRIALS))
def test_quick_and_paper_studies_resolve_to_valid_configs(name, profile):
    """The profiles differ only in numbers: every trial config of the bigger profiles validates (no data needed)."""
    import argparse
    import itertools

    module = load_script(name)
    p = PROFILES[profile]
    args = argparse.Namespace(results_dir="unused", seeds=None, method="arco_sag", num_samples=None)
    study = module.build(args, p, p.trial.replace(**{"data.root": "/nonexistent"}))
    configs = []
    for variant in study.variants:
        for values in itertools.product(*study.grid.values()):
            cfg = study.base.replace(**{**variant.overrides, **dict(zip(study.grid, values))})
            cfg.validate(check_data=False)
            configs.append(json.dumps(cfg.to_dict(), sort_keys=True))
    assert len(set(configs)) == len(configs)
    if profile == "quick":
        assert len(configs) == QUICK_TRIALS[name]  # the counts the docstrings' cost estimates are based on
    if study.search_space is not None:
        assert args.seeds == [p.seeds[0]] and study.num_samples == module.NUM_SAMPLES[profile]


@pytest.mark.parametrize("steps", [None, 250, 260])
def test_label_fractions_schedules_follow_the_step_count_it_trains(steps):
    """Quick trains 750 steps unless --set optim.max_steps gives a count, also the profile's own 250: mean teacher's
    ramp-up then follows that count (with 250 it once stayed at 750, so the consistency weight never ramped up)."""
    import argparse

    from medseg_platform.profiles import QUICK_FRACTION_STEPS, profile_with_overrides

    module = load_script("label_fractions")
    sets = [] if steps is None else [f"optim.max_steps={steps}"]
    profile = profile_with_overrides(PROFILES["quick"], {"optim.max_steps": str(steps)} if steps else {})
    args = argparse.Namespace(results_dir="unused", seeds=None, overrides=sets)
    study = module.build(args, profile, profile.trial.replace(**{"data.root": "/nonexistent"}))
    expected = steps or QUICK_FRACTION_STEPS
    assert study.base.optim.max_steps == expected
    teacher = [v for v in study.variants if v.tags["row"] == "Mean teacher"]
    assert teacher and all(v.overrides["objective_params"]["rampup_steps"] == expected for v in teacher)


def test_search_history_statuses_and_order_from_tune_trials(tmp_path):
    """Stopped (ASHA), errored and unfinished samples keep their place, values and last metrics; the best
    is chosen among completed samples only (none here)."""
    from types import SimpleNamespace

    from analysis.search import best_sample, history_csv, missing_results, samples_from_trials
    from medseg_platform.config import TrialConfig
    from medseg_platform.results import search_trial_key, write_trial_error

    base = PROFILES["smoke"].trial.replace(objective="supervised").to_dict()

    def fake(index, lr, status, **last):
        return SimpleNamespace(trial_id=f"id{index}", experiment_tag=f"{index}_optim.lr={lr}", status=status,
                               config={"trial": {"config": base, "tags": {}}, "search": {"optim.lr": lr}}, last_result=last)

    errored = TrialConfig.from_dict({**base, "optim.lr": 0.3}).to_dict()
    write_trial_error(tmp_path / "trials" / search_trial_key(errored, "id3"), config=errored, tags={}, seed=1, error="loss is NaN at step 3")
    trials = [fake(3, 0.3, "ERROR", step=3), fake(1, 0.1, "TERMINATED", step=3, best_val_dice=0.25, done=True),  # Tune sets done
              fake(2, 0.2, "RUNNING"),  # on an ASHA stop; the final report (after the result files) has test_dice
              fake(4, 0.4, "TERMINATED", step=6, best_val_dice=0.5, test_dice=0.4, done=True),  # then its result.json was lost
              # an application error whose error.json a full disk refused: trainable.end_errored's report alone says so
              fake(5, 0.5, "TERMINATED", step=2, best_val_dice=float("nan"), test_dice=float("nan"), done=True,
                   errored=True, error="step 2: loss is NaN/inf in term(s) ce")]
    samples = samples_from_trials(tmp_path, trials)
    assert [(s.order, s.values["optim.lr"], s.status) for s in samples] == [
        (1, 0.1, "stopped early"), (2, 0.2, "unfinished"), (3, 0.3, "errored"), (4, 0.4, "result missing"), (5, 0.5, "errored")]
    assert samples[4].error == "step 2: loss is NaN/inf in term(s) ce" and samples[4].last_step == 2
    assert missing_results(samples) == [f"search sample 4 ({samples[3].key}) finished but its result.json is missing or "
                                        "unreadable: it is left out of the tables and the best configuration; restore the "
                                        "trial folder, or run the search again under a new --name"]
    samples = samples[:3]
    assert samples[0].best_val_dice == 0.25 and samples[0].last_step == 3 and samples[0].test_dice is None
    assert samples[2].error == "loss is NaN at step 3" and samples[2].key == search_trial_key(errored, "id3")
    assert best_sample(samples) is None
    lines = history_csv(samples).splitlines()
    assert lines[0] == "order,trial_id,trial_key,status,optim.lr,last_step,best_val_dice,test_dice,error" and len(lines) == 4
    assert lines[1].startswith("1,id1,") and ",stopped early,0.1,3,0.250000,," in lines[1]


class _Payload:
    """A pickle that writes a file when loaded (what a planted results folder could carry)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_tune_experiment_is_read_without_unpickling_anything(tmp_path):
    """The security audit: Ray's ExperimentAnalysis unpickles fields of experiment_state-*.json, so `medseg report` of a
    copied search folder ran a payload planted there; the history reads only plain JSON fields."""
    import pickle

    from medseg_platform.errors import MedsegError
    from medseg_platform.study.experiment_state import tune_trial_states

    planted = tmp_path / "payload-ran"
    hexed = pickle.dumps(_Payload(str(planted))).hex()
    state = {"trial_id": "ab12", "experiment_tag": "2_x=1", "status": "TERMINATED", "config": {"search": {"x": 1}},
             "results": hexed, "storage": {"_type": "CLOUDPICKLE_FALLBACK", "value": hexed}}
    runtime = {"last_result": {"step": 4, "best_val_dice": 0.5}, "error_filename": None,
               "checkpoint_manager": {"_type": "CLOUDPICKLE_FALLBACK", "value": hexed}}
    experiment = tmp_path / "exp"
    experiment.mkdir()
    (experiment / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": [["{}", "{}"]]}))
    (experiment / "experiment_state-2026-01-02_00-00-00.json").write_text(  # the newest is read
        json.dumps({"trial_data": [[json.dumps(state), json.dumps(runtime)]]}))
    (trial,) = tune_trial_states(experiment)
    assert (trial.trial_id, trial.experiment_tag, trial.status, trial.config, trial.last_result, trial.error_file) == (
        "ab12", "2_x=1", "TERMINATED", {"search": {"x": 1}}, {"step": 4, "best_val_dice": 0.5}, "")
    assert not planted.exists()
    with pytest.raises(MedsegError, match="no experiment_state"):
        tune_trial_states(tmp_path)


def test_a_tune_folder_stopped_before_its_first_state_is_not_restored(tmp_path):
    """The fault review: a driver killed between Tune's tuner.pkl and its first experiment_state-*.json left a folder
    that Tuner.can_restore accepted; every rerun of a search then failed on the missing state, and a grid got a phantom
    errored trial on each resume. The runner starts such an experiment again (checked by hand with a SIGKILL at
    tuner.pkl: the rerun logged "holds no saved state" and finished its samples)."""
    from medseg_platform.study.experiment_state import experiment_restorable

    experiment = tmp_path / "exp"
    experiment.mkdir()
    (experiment / "tuner.pkl").write_bytes(b"pickled")
    assert not experiment_restorable(experiment)
    (experiment / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    assert experiment_restorable(experiment)
    (experiment / "tuner.pkl").unlink()
    assert not experiment_restorable(experiment)
