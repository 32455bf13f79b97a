"""Studies on Ray Tune: a smoke study in-process, validation before Ray, interrupt + resume of the script."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medseg_platform.errors import ConfigError, MedsegError
from medseg_platform.profiles import PROFILES
from medseg_platform.results import read_csv, scan_study
from medseg_platform.study import Study, Variant
from tests.conftest import reaped

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "studies" / "ablation_tailness.py"


def tiny_study(root: Path, results: Path, **kwargs) -> Study:
    base = PROFILES["smoke"].trial.replace(**{"data.root": str(root), "data.labelled_batch": 2, "data.unlabelled_batch": 2})
    variants = [Variant({"row": "Sup", "order": 0}, {"objective": "supervised"}),
                Variant({"row": "MT", "order": 1}, {"objective": "mean_teacher"})]
    return Study("tiny", base, results, variants=variants, grid={"data.labelled": ["1", "2"]}, seeds=[1], dashboard=False, **kwargs)


def test_study_runs_every_trial_once_and_rerun_skips_ray(tiny_root, tmp_path, ray_address, monkeypatch):
    from medseg_platform.study.runner import TUNE_ENVIRONMENT

    for name in (*TUNE_ENVIRONMENT, "RAY_AIR_NEW_OUTPUT"):
        monkeypatch.delenv(name, raising=False)
    study = tiny_study(tiny_root, tmp_path / "results")
    before = dict(os.environ)
    run = study.run()
    assert not {*TUNE_ENVIRONMENT, "RAY_AIR_NEW_OUTPUT"} & set(os.environ)  # the notebook probe: they stayed set
    assert dict(os.environ) == before  # nothing else either (Ray's own, when the study starts it: the API review)
    tune_copies = [p.name for p in (run.study_dir / "ray").rglob("*") if p.name.startswith(("progress.csv", "events.out.tfevents"))]
    assert tune_copies == []  # Tune's per-trial loggers are off: the study reads its own files
    records, problems = scan_study(run.study_dir)
    assert problems == []
    assert sorted(r.path.name for r in records) == sorted(run.trial_keys) and len(records) == 4
    assert {(r.result["config"]["objective"], r.result["config"]["data"]["labelled"]) for r in records} == {
        ("supervised", "1"), ("supervised", "2"), ("mean_teacher", "1"), ("mean_teacher", "2")}
    assert all(r.result["seed"] == 1 and r.result["labelled"]["patients"] for r in records)
    assert "tune_s" in run.timing and run.pending_at_start == 4

    before = {r.path.name: (r.path / "result.json").stat().st_mtime_ns for r in records}
    again = study.run()
    assert "tune_s" not in again.timing  # every trial finished: Ray is not even started
    assert again.pending_at_start == 0  # the study scripts say "nothing left to train" (it said "wall time 0.0 s")
    assert {k: (run.study_dir / "trials" / k / "result.json").stat().st_mtime_ns for k in before} == before

    # a result deleted by hand: the restored experiment thinks the trial is done, the study runs it again
    removed = sorted(before)[0]
    shutil.rmtree(run.study_dir / "trials" / removed)
    third = study.run()
    assert (third.study_dir / "trials" / removed / "result.json").is_file() and third.pending_at_start == 1
    unchanged = {k: v for k, v in before.items() if k != removed}
    assert {k: (run.study_dir / "trials" / k / "result.json").stat().st_mtime_ns for k in unchanged} == unchanged


def test_invalid_study_fails_before_ray(tiny_root, tmp_path):
    from ray import tune

    study = tiny_study(tiny_root, tmp_path / "results")
    study.variants = [Variant({"row": "x"}, {"objective": "nope"})]
    with pytest.raises(ConfigError, match="unknown; known objectives"):
        study.run()
    for bad, message in ((dict(name=".."), "letters, digits"), (dict(asha=True), "with a search space"),
                         (dict(search_space={"optim.lrr": tune.uniform(0.1, 0.2)}), r"unknown key\(s\) \['lrr'\]"),
                         # the HPO probe: these failed inside Ray, with its traceback, after the first validation
                         (dict(search_space={"optim.lr": tune.uniform(0.1, 0.2)}, metric="best_val_dise"),
                          "metric 'best_val_dise' / mode 'max': a metric every report of a trial carries \\('best_val_dice'\\)"),
                         # reported at validations only: Tune checks every result, the final one too (the review)
                         (dict(search_space={"optim.lr": tune.uniform(0.1, 0.2)}, metric="val_dice"), "metric 'val_dice'"),
                         (dict(search_space={"optim.lr": tune.uniform(0.1, 0.2)}, metric="test_dice"), "metric 'test_dice'"),
                         (dict(search_space={}), r"search_space \{\}: no Ray Tune domain to search"),
                         (dict(search_space={"objective_params.contrast_weight": 0.1}), "no Ray Tune domain to search"),
                         (dict(search_space={"optim.lr": tune.choice([])}), r"tune.choice\(\[\]\) has nothing to choose"),
                         # the Python API gets the checks the command line's argparse types make
                         (dict(max_concurrent=0), "max_concurrent 0: must be None or a whole number >= 1"),
                         # the notebook probe: 0 started a local Ray of no CPU that waited forever
                         (dict(num_cpus=0), r"num_cpus 0: must be None \(every core\) or a whole number >= 1"),
                         (dict(num_workers=1.5), "num_workers 1.5: must be a whole number >= 1"),
                         (dict(cpus_per_trial=0), "cpus_per_trial 0: must be a finite number > 0"),
                         (dict(cpus_per_trial=float("nan")), "cpus_per_trial nan: must be a finite number > 0"),
                         (dict(cpus_per_trial=float("inf")), "cpus_per_trial inf: must be a finite number > 0"),
                         (dict(gpus_per_trial=-1), "gpus_per_trial -1: must be a finite number >= 0"),
                         # two NCCL ranks on one GPU (the GPU-path audit): refused before Ray starts
                         (dict(num_workers=2, gpus_per_trial=0.5), "--num-workers 2 with --gpus-per-trial 0.5: Ray may pack fractional"),
                         # a worker asked for a negative CPU share, which crashed the raylet (the cluster review)
                         (dict(num_workers=2, cpus_per_trial=0.01), "--cpus-per-trial 0.01 with --num-workers 2: each worker of a "
                                                                    "multi-worker trial needs more than 0.01 CPUs"),
                         (dict(seeds=[1, 1]), r"seeds \[1, 1\]: whole numbers in \[0, 2\*\*32 - 1\], each once"),
                         (dict(seeds=[-2]), r"seeds \[-2\]: whole numbers in \[0, 2\*\*32 - 1\], each once"),
                         (dict(seeds=[2**32]), r"seeds \[4294967296\]: whole numbers in \[0, 2\*\*32 - 1\], each once"),
                         (dict(seeds=1), "seeds 1: give a list of at least one seed"),
                         (dict(variants=[]), r"variants \[\]: give a list of at least one Variant"),
                         (dict(variants=[{"row": "a"}]), r"variants\[0\] \{'row': 'a'\}: give Variant\(tags: dict"),
                         (dict(grid={"data.labelled": "12"}), r"grid\['data.labelled'\] '12': give a non-empty list"),
                         (dict(grid={"optim.lr": []}), r"grid\['optim.lr'\] \[\]: give a non-empty list"),
                         (dict(mode="maximize"), "metric 'best_val_dice' / mode 'maximize': a metric every report of a trial carries"),
                         # a Dice is maximised: 'min' had TPE and ASHA minimise it while best_config.json took the highest
                         (dict(search_space={"optim.lr": tune.uniform(0.1, 0.2)}, mode="min"),
                          "metric 'best_val_dice' / mode 'min': .* with mode 'max'"),
                         (dict(cpus_per_trial="1"), "cpus_per_trial '1': must be a finite number > 0"),
                         (dict(claims=[{"a": "Sup"}]), "claims\\[0\\]: claim needs a non-empty text 'b'"),
                         (dict(search_space={"optim.lr": tune.uniform(0.2, 0.1)}), r"search_space\['optim.lr'\]: empty range"),
                         (dict(search_space={"optim.momentum": tune.uniform(-0.5, 0.5)}),
                          r"search_space\['optim.momentum'\] at -0.5: optim.momentum -0.5: must be in"),
                         (dict(search_space={"optim.max_steps": tune.randint(5, 10)}, asha=True),
                          "asha: do not search optim.max_steps")):
        broken = tiny_study(tiny_root, tmp_path / "results")
        broken.variants = broken.variants[:1]
        broken.grid = {}
        for field, value in bad.items():
            setattr(broken, field, value)
        with pytest.raises(ConfigError, match=message):
            broken.run()
    # a study author's mistakes (a probe): one-line errors naming the rows, before anything runs
    sup, mt = Variant({"row": "Sup"}, {"objective": "supervised"}), Variant({"row": "MT"}, {"objective": "mean_teacher"})
    for variants, claims, message in (
            ([sup, Variant({"row": "Sup"}, {"objective": "mean_teacher"})], [],  # were averaged into one cell
             r"two rows are labelled 'Sup' but train different configurations \(they differ in objective\); give each row"),
            ([sup, Variant({"row": "Sup again"}, {"objective": "supervised"})], [],
             "rows 'Sup' and 'Sup again' resolve to the same configuration"),
            ([sup, mt], [{"a": "MT ", "b": "Sup", "column": "1", "paper": "p"}],  # was "not run" after training
             r"claims\[0\] \(MT  vs Sup\): study tiny has no row 'MT ' \(its rows: 'Sup', 'MT'"),
            ([sup, Variant({"row": "MT"}, {"objective": "mean_teacher", "objective_params": {"consistency_wieght": 0.2}})], [],
             r"row 'MT': .*unknown MeanTeacherConfig keys \['consistency_wieght'\] \(close: consistency_weight\)")):
        broken = tiny_study(tiny_root, tmp_path / "results", claims=claims)
        broken.variants = variants
        with pytest.raises(ConfigError, match=message):
            broken.run()
    assert not (tmp_path / "results").exists()  # nothing written, no Ray started
    # a second run of a study while one runs: two copies of a command trained the same trials in one folder at once
    from medseg_platform.io import LOCK_FILE, folder_lock

    running = tiny_study(tiny_root, tmp_path / "locked")
    with folder_lock(running.study_dir, "study tiny"):
        with pytest.raises(ConfigError, match=rf"{running.study_dir}: study tiny is running there already \(pid {os.getpid()} on "):
            running.run()
    # no trial, no study.json, and no preflight: it is refused before it reads the data (the security audit)
    assert sorted(p.name for p in running.study_dir.iterdir()) == [LOCK_FILE]
    shutil.rmtree(tmp_path / "locked")
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke-test", "--data-root", str(tmp_path / "missing"),
                           "--results-dir", str(tmp_path / "r")], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "does not exist" in proc.stderr and proc.stderr.strip().count("\n") == 0


def _wait_for_results(trials_dir: Path, count: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(trials_dir.glob("*/result.json"))) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"study exited early with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        time.sleep(0.2)
    raise AssertionError("no trial finished in time")


def test_interrupted_study_resumes_without_rerunning_or_duplicating(tmp_path, ray_address, phantom_cache):
    """Acceptance: interrupt after some trials finished, rerun, nothing re-run, nothing duplicated or lost."""
    results = tmp_path / "results"
    env = {**os.environ, "MEDSEG_CACHE": str(phantom_cache), "PYTHONUNBUFFERED": "1"}
    chosen = ["Supervised only", "Mean teacher", "MONA"]  # the other rows run in tests/test_studies.py
    cmd = [sys.executable, str(SCRIPT), "--smoke-test", "--seeds", "1", "2", "--max-concurrent", "1",
           "--rows", *chosen, "--results-dir", str(results), "--address", ray_address]
    trials_dir = results / "ablation_tailness-smoke" / "trials"
    started = time.monotonic()
    with reaped(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)) as proc:
        _wait_for_results(trials_dir, 1, proc, timeout=240)
        proc.send_signal(signal.SIGINT)  # Ctrl-C in the middle of the study
        proc.wait(timeout=120)
    finished_first = {p.parent.name: p.read_bytes() for p in trials_dir.glob("*/result.json")}
    assert 1 <= len(finished_first) < 2 * len(chosen)

    # the rerun asks for another --max-concurrent, which the restored Tune experiment cannot apply: it says so
    rerun = subprocess.run([a if a != "1" or cmd[i - 1] != "--max-concurrent" else "2" for i, a in enumerate(cmd)],
                           capture_output=True, text=True, env=env, timeout=400)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert time.monotonic() - started < 400
    assert "restoring Tune experiment" in rerun.stderr
    assert "the restored experiment keeps the limits it was started with (--max-concurrent 1)" in rerun.stderr
    assert len(list((results / "ablation_tailness-smoke" / "ray").glob("*.limits.json"))) == 1
    # finished trials were not run again: their result files are byte-identical
    assert {k: (trials_dir / k / "result.json").read_bytes() for k in finished_first} == finished_first
    records, problems = scan_study(results / "ablation_tailness-smoke")
    assert problems == [] and len(records) == 2 * len(chosen)  # 3 table rows x 1 label fraction x 2 seeds
    study = json.loads((results / "ablation_tailness-smoke" / "study.json").read_text())
    assert sorted(study["trials"]) == sorted(r.path.name for r in records)
    with open(results / "ablation_tailness-smoke" / "table.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    keys = [(r["row"], r["column"], r["class"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys)) == len(chosen) * 1 * 4 * 4  # rows x fractions x (3 classes + Avg) x metrics
    assert all(r["n_seeds"] == "2" for r in rows if r["metric"] == "dice")
    assert "table_dice.md" in rerun.stdout


def test_multi_worker_trial_runs_ddp_and_replicas_stay_in_sync(tiny_root, tmp_path, ray_address):
    """num_workers=2: a Ray Train TorchTrainer (gloo) launched from the Tune trial; gradients averaged."""
    study = tiny_study(tiny_root, tmp_path / "results", num_workers=2)
    study.variants = [Variant({"row": "Sup"}, {"objective": "supervised"})]
    study.grid = {"data.labelled": ["2"]}
    study.cpus_per_trial = 1.0
    run = study.run()
    records, problems = scan_study(run.study_dir)
    assert problems == [] and len(records) == 1
    result = records[0].result
    assert result["world_size"] == 2
    norms = result["first_step_grad_norm_per_rank"]
    assert len(norms) == 2 and norms[0] != pytest.approx(norms[1])  # each rank saw its own batch ...
    assert result["replica_param_max_diff"] == 0.0  # ... yet the replicas are identical after training
    assert len(records[0].per_case) == 2 * 3


def test_optuna_search_with_asha_samples_and_records_the_searched_values(tiny_root, tmp_path, ray_address):
    from ray import tune

    study = tiny_study(tiny_root, tmp_path / "results", search_space={"optim.lr": tune.loguniform(1e-3, 1e-1)},
                       num_samples=3, asha=True)
    study.variants = [Variant({"row": "Sup"}, {"objective": "supervised"})]
    study.grid = {}
    run = study.run()
    records, problems = scan_study(run.study_dir)
    assert problems == []
    assert 1 <= len(records) <= 3  # ASHA may stop some trials early
    lrs = [r.result["config"]["optim"]["lr"] for r in records]
    assert all(1e-3 <= lr <= 1e-1 for lr in lrs) and len(set(lrs)) == len(lrs)
    assert all(r.result["tags"]["search"]["optim.lr"] == r.result["config"]["optim"]["lr"] for r in records)


def test_a_larger_search_under_another_name_scores_the_samples_it_shares_with_a_finished_one(tiny_root, tmp_path, ray_address):
    """A search cannot grow in place, and one under --name proposes the same first samples (Optuna is seeded with the
    study's first seed): those are scored from the finished search's samples instead of trained again (here 1 of 2)."""
    from ray import tune

    def search(name: str, n: int) -> Study:
        study = tiny_study(tiny_root, tmp_path / "results", search_space={"optim.lr": tune.loguniform(1e-3, 1e-1)}, num_samples=n)
        study.name, study.grid, study.variants = name, {}, study.variants[:1]
        return study

    first = scan_study(search("small", 1).run().study_dir)[0]
    bigger, problems = scan_study(search("bigger", 2).run().study_dir)
    assert problems == [] and len(first) == 1 and len(bigger) == 2
    by_config = {json.dumps(r.result["config"], sort_keys=True): r for r in first}
    scored = [r for r in bigger if r.result.get("scored_from")]
    assert len(scored) == 1 and all(json.dumps(r.result["config"], sort_keys=True) in by_config for r in scored)
    for record in scored:
        source = by_config[json.dumps(record.result["config"], sort_keys=True)]
        assert record.result["scored_from"]["trial_key"] == source.path.name and record.result["scored_from"]["fields"] == {}
        assert record.result["scored_from"]["study"] == "small"
        assert (record.result["best_val_dice"], record.result["test"]) == (source.result["best_val_dice"], source.result["test"])
        assert (record.path / "per_case.csv").read_bytes() == (source.path / "per_case.csv").read_bytes()
    (trained,) = [r for r in bigger if not r.result.get("scored_from")]  # the second proposal: new, so trained
    assert json.loads((tmp_path / "results" / "bigger" / "last_run.json").read_text())["scored_from_finished"] == 1
    assert json.dumps(trained.result["config"], sort_keys=True) not in by_config
    # before scoring, the sample replays its source's validations to Tune, so ASHA meets it at every rung as it would
    # have met its training (one report at the end put it on the top rung only)
    from medseg_platform.study.trainable import score_sample_from_finished

    reports = []
    source = first[0]
    record = score_sample_from_finished(str(tmp_path / "results" / "bigger"), "again", source.result["config"], {},
                                        tmp_path / "results" / "bigger" / "trials" / "again", "cpu", report=reports.append)
    curve = read_csv(source.path / "val_curve.csv")
    best = [max(float(r["val_dice"]) for r in curve[: i + 1]) for i in range(len(curve))]
    assert [(r["evaluations"], r["step"], r["val_dice"], r["best_val_dice"]) for r in reports] == [
        (i + 1, int(row["step"]), float(row["val_dice"]), best[i]) for i, row in enumerate(curve)]
    # (its source is the bigger search's own copy of that sample: the study's own trials come first)
    assert record["scored_from"]["fields"] == {} and record["best_val_dice"] == source.result["best_val_dice"]


def test_a_relative_or_path_root_and_any_spelling_of_a_fraction_key_the_same_trials(tiny_root, tmp_path, monkeypatch):
    """The API review: a relative data.root passed the driver's checks and failed in every trial (Tune runs each in its
    own working folder), a Path failed the key's JSON with a TypeError, and labelled 1, "01" or a root with a trailing
    slash keyed the CLI's trials again."""
    plain = tiny_study(tiny_root, tmp_path / "r").trial_params()
    monkeypatch.chdir(tiny_root.parent)
    (tmp_path / "link").symlink_to(tiny_root)  # the CLI resolves roots: so does the API (the diff review)
    for root, fractions in ((tiny_root.name, ["1", "2"]), (tiny_root, [1, 2]), (f"{tiny_root}/", ["01", " 2"]),
                            (tmp_path / "link", ["1", "2"])):
        study = tiny_study(tiny_root, tmp_path / "r")
        study.base = study.base.replace(**{"data.root": root})
        study.grid = {"data.labelled": fractions}
        trials = study.trial_params()
        assert [t["key"] for t in trials] == [t["key"] for t in plain], root
        assert {t["config"]["data"]["root"] for t in trials} == {str(tiny_root)}
        assert {t["config"]["data"]["labelled"] for t in trials} == {"1", "2"}
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # roots that cannot be resolved: validation's one-line error
    for root in (tmp_path / "loop", "~nosuchuser_medseg/data"):
        study = tiny_study(tiny_root, tmp_path / "r")
        study.base = study.base.replace(**{"data.root": str(root)})
        with pytest.raises(MedsegError, match="dataset root"):
            study.trial_params()


def test_an_accumulating_folder_leaves_out_a_trial_of_an_earlier_key_revision(tmp_path, monkeypatch):
    """The extension review: after a KEY_REVISIONS bump, medseg train's folder listed the old trial beside its
    replacement, and the table counted seed 1 twice ("seeds 1,1")."""
    import medseg_platform.results as results_module
    from medseg_platform.study.spec import earlier_trials

    config = PROFILES["smoke"].trial.replace(objective="supervised").to_dict()
    old = results_module.trial_key(config)
    monkeypatch.setitem(results_module.KEY_REVISIONS, "supervised", 7)
    new = results_module.trial_key(config)
    for key in (old, new):
        results_module.write_trial_config(tmp_path / "trials" / key, config, {"row": "Sup"})
    (tmp_path / "trials" / "unreadable").mkdir()  # no config.json: kept, its result decides
    (tmp_path / "study.json").write_text(json.dumps({"trials": [old, new, "unreadable"], "seeds": [1]}))
    assert earlier_trials(tmp_path)["trials"] == [new, "unreadable"]


def test_a_set_of_an_axis_a_row_states_in_its_label_is_refused(tiny_root, tmp_path):
    """The extension review: docs/studies.md's template leaves its default row's value unwritten (tagged in its axes
    only); --rows that row and a --set of the axis trained another value under the stated one's label and plot point."""
    from medseg_platform.overrides import apply_overrides

    key = "objective_params.consistency_weight"
    study = tiny_study(tiny_root, tmp_path)
    study.variants = [Variant({"row": "MT, weight = 0.1", "axes": {key: 0.1}}, {"objective": "mean_teacher"}),
                      Variant({"row": "MT, weight = 0.5", "axes": {key: 0.5}},
                              {"objective": "mean_teacher", "objective_params": {"consistency_weight": 0.5}})]
    with pytest.raises(ConfigError, match=r"every row of study tiny sets it itself \(to 0.1, 0.5\)"):
        apply_overrides(study, {key: "0.25"})
    study.variants = study.variants[:1]  # what --rows leaves
    with pytest.raises(ConfigError, match=r"row 'MT, weight = 0.1' sets it itself \(to 0.1\)"):
        apply_overrides(study, {key: "0.25"})
    apply_overrides(study, {"optim.lr": "0.05"})  # another key: as before


def test_the_rows_hint_finds_the_row_an_error_is_about_whatever_its_label(tiny_root, tmp_path):
    """The third diff review: the row was read back from the message, where its label is escaped (a quote, a
    backslash) and carries grid suffixes; "leave that row out with --rows" was then lost."""
    from analysis.study_cli import rows_refusing

    for label in ("O'Neil", "back\\slash", "x': y"):
        study = tiny_study(tiny_root, tmp_path)
        study.grid = {"data.labelled": ["1"], "optim.max_steps": [4]}
        study.variants = [*study.variants, Variant({"row": label, "order": 2},
                                                   {"objective": "mean_teacher", "data.unlabelled_batch": 0})]
        with pytest.raises(ConfigError) as info:
            study.trial_params()
        assert info.value.variant_index == 2 and rows_refusing(study, info.value) == [label], label
        assert len(study.variants) == 3  # the study itself is not changed
    refusing = Variant({"row": "MT", "order": 1}, {"objective": "mean_teacher", "data.unlabelled_batch": 0, "optim.lr": 0.02})
    study.variants = [study.variants[0], refusing, study.variants[2]]  # two of three: both named (the studies review)
    with pytest.raises(ConfigError) as info:
        study.trial_params()
    assert info.value.variant_index == 1 and rows_refusing(study, info.value) == ["MT", label]
    study.variants = [refusing, study.variants[2]]  # every row refuses it: no hint
    with pytest.raises(ConfigError) as info:
        study.trial_params()
    assert rows_refusing(study, info.value) == []


def test_the_environment_is_given_back_as_it_was(monkeypatch):
    """The API review: a Ray the study started and shut down left RAY_AUTH_MODE, RAY_CLIENT_MODE and PYTHONBREAKPOINT
    set (breakpoint() then no longer opened pdb)."""
    from medseg_platform.study.runner import restore_environment

    monkeypatch.setenv("MEDSEG_KEPT", "1")
    monkeypatch.setenv("MEDSEG_CHANGED", "before")
    monkeypatch.delenv("MEDSEG_ADDED", raising=False)
    before = dict(os.environ)
    os.environ["MEDSEG_ADDED"] = "x"
    os.environ["MEDSEG_CHANGED"] = "after"
    del os.environ["MEDSEG_KEPT"]
    restore_environment(before)
    assert dict(os.environ) == before


def test_start_order_starts_each_pretraining_stage_once_before_any_trial_waits_on_one():
    from medseg_platform.study.spec import start_order

    def trial(name, stage=None, seed=1):
        config = {"pretrain": [{"objective": "isd_pretrain", "max_steps": stage}] if stage else [], "model": {}, "data": {}, "seed": seed, "workers": 1}
        return {"key": name, "config": config}

    trials = [trial("sup"), trial("arco-t1", stage=10), trial("arco-t2", stage=10), trial("arco-t3", stage=10),
              trial("isd-a", stage=20), trial("arco-seed2", stage=10, seed=2), trial("isd-b", stage=30)]
    order = [t["key"] for t in start_order(trials)]
    # first of every stage (and the trial without pretraining) in study order, then the second ones, ...
    assert order == ["sup", "arco-t1", "isd-a", "arco-seed2", "isd-b", "arco-t2", "arco-t3"]
    assert sorted(order) == sorted(t["key"] for t in trials)


def test_a_restored_experiment_says_which_new_limits_it_cannot_apply(tmp_path, capsys):
    """Tuner.restore keeps --max-concurrent / --max-retries of the experiment's first run; a rerun with others said
    nothing and ran 2 trials at once under --max-concurrent 1."""
    from medseg_platform.study.runner import LIMITS_SUFFIX, note_kept_limits

    path = tmp_path / f"exp-abc{LIMITS_SUFFIX}"
    note_kept_limits(path, {"max_concurrent": 1, "max_retries": 2})  # an experiment from before the record: silent
    path.write_text(json.dumps({"max_concurrent": None, "max_retries": 2}), encoding="utf-8")
    note_kept_limits(path, {"max_concurrent": None, "max_retries": 2})  # the same limits: silent
    assert capsys.readouterr().err == ""
    note_kept_limits(path, {"max_concurrent": 1, "max_retries": 0})
    err = capsys.readouterr().err
    assert "keeps the limits it was started with (--max-concurrent unset, --max-retries 2)" in err
    assert f"delete the experiment's folder {tmp_path / 'exp-abc'} and rerun" in err
    note_kept_limits(path, {"max_concurrent": 1, "max_retries": 2}, search=True)  # a search's sampler lives there
    err = capsys.readouterr().err
    assert "(--max-concurrent unset)" in err and "delete" not in err


def test_multi_worker_trials_start_only_as_many_as_the_cluster_holds(tmp_path, monkeypatch, capsys):
    """Two trials of 2 one-CPU workers on 2 CPUs both started (their Tune functions reserve a token CPU), and their
    worker groups waited for each other forever; now Tune starts what fits, and a trial that never fits is an error."""
    import ray

    from medseg_platform.study.runner import check_local_resources, distributed_trials_that_fit, tune_config

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # a local Ray: this test process's session Ray is not checked
    study = tiny_study(tmp_path, tmp_path / "results", num_workers=2)
    study.cpus_per_trial = 1.0

    def cluster(*nodes):
        monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": node} for node in nodes]
                            + [{"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}])  # a dead node holds nothing

    cluster({"CPU": 2.0})
    assert distributed_trials_that_fit(study) == 1 and "multi-worker trials: 1 at once" in capsys.readouterr().err
    assert tune_config(study, "exp", 1).max_concurrent_trials == 1
    cluster({"CPU": 9.0})
    assert distributed_trials_that_fit(study) == 4
    study.max_concurrent = 3
    assert tune_config(study, "exp", 4).max_concurrent_trials == 3 and tune_config(study, "exp").max_concurrent_trials == 3
    study.gpus_per_trial = 0.5
    cluster({"CPU": 9.0, "GPU": 1.0})
    assert distributed_trials_that_fit(study) == 1  # 2 workers x 0.5 GPU
    cluster({"CPU": 1.0, "GPU": 1.0})
    with pytest.raises(ConfigError, match=r"--num-workers 2: a trial needs 2 CPUs \(2 workers x 1\) and 1 GPUs \(2 workers x "
                                          r"0.5\), the Ray cluster's nodes hold 1 such worker\(s\) \(its nodes: 1 CPUs, 1 GPUs\)"):
        distributed_trials_that_fit(study)
    study.gpus_per_trial, study.cpus_per_trial = 0.0, 1.5
    cluster({"CPU": 2.0}, {"CPU": 1.0})  # 3 CPUs in all, but a 1.5-CPU worker fits on one node only: it would wait forever
    with pytest.raises(ConfigError, match=r"nodes hold 1 such worker\(s\) \(its nodes: 2 CPUs; 1 CPUs\)"):
        distributed_trials_that_fit(study)
    study.cpus_per_trial = 2.0
    cluster({"CPU": 3.0}, {"CPU": 3.0}, {"CPU": 3.0})  # 9 CPUs would hold 2 trials of 4 CPUs; the nodes hold 3 workers
    assert distributed_trials_that_fit(study) == 1 and "the cluster's 9 CPUs on 3 node(s) at 4 CPUs per trial" in capsys.readouterr().err
    study.cpus_per_trial = 1.0
    cluster({"CPU": 1.0})
    capsys.readouterr()
    study.address = "10.0.0.1:6379"  # a cluster may grow (autoscaling): one trial at a time, with a warning
    assert distributed_trials_that_fit(study) == 1 and "warning: --num-workers 2: a trial needs 2 CPUs" in capsys.readouterr().err
    check_local_resources(study)  # joining a cluster: its size is not this machine's
    from medseg_platform.study import ray_runtime

    study.address = None  # a cluster this process joined itself (a notebook's ray.init(address=...)): refused before,
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # as a local Ray (Ray sets no RAY_ADDRESS there: the
    monkeypatch.setattr(ray_runtime, "ray_started_here", lambda: False)  # docs review)
    assert distributed_trials_that_fit(study) == 1 and "warning: --num-workers 2: a trial needs 2 CPUs" in capsys.readouterr().err
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # this test process's session Ray is not the one checked
    study.address, study.num_cpus = None, 1  # a local Ray of 1 CPU: refused before Ray starts
    with pytest.raises(ConfigError, match=r"--num-workers 2: a trial needs 2 CPUs \(2 workers x 1\), the local Ray has 1"):
        check_local_resources(study)
    study.num_cpus = 2
    check_local_resources(study)
    study.num_workers = 1
    capsys.readouterr()
    assert distributed_trials_that_fit(study) is None and capsys.readouterr().err == ""  # 1 CPU on a 1-CPU node
    study.gpus_per_trial = 1.0  # the cluster audit: a single-worker trial no node holds waited without a word of the study's
    cluster({"CPU": 2.0}, {"CPU": 4.0})
    assert distributed_trials_that_fit(study) is None
    assert ("warning: a trial needs 1 CPUs and 1 GPUs on one node, and no node of the Ray cluster holds that now (its nodes: "
            "2 CPUs, 0 GPUs; 4 CPUs, 0 GPUs); waiting for the cluster to grow") in capsys.readouterr().err


def test_a_single_worker_trial_larger_than_the_local_ray_is_refused_before_ray(tmp_path, monkeypatch):
    """--cpus-per-trial 4 (or the paper profile's 4 threads) on 2 CPUs: Tune waited forever for a trial it could not
    start, while the dry run promised one trial at a time."""
    from medseg_platform.study.runner import check_local_resources

    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # this test process's session Ray is not the one checked
    study = tiny_study(tmp_path, tmp_path / "results")
    study.cpus_per_trial, study.num_cpus = 4.0, 2
    with pytest.raises(ConfigError, match=r"--cpus-per-trial 4 \(given, or the profile.s default\): a trial needs 4 CPUs, the local Ray has 2; pass --cpus-per-trial 2"):
        check_local_resources(study)
    study.cpus_per_trial = 2.0
    check_local_resources(study)
    study.cpus_per_trial, study.address = 4.0, "10.0.0.1:6379"  # a cluster's nodes are not this machine
    check_local_resources(study)
    study.address = None
    from medseg_platform.study import ray_runtime, runner

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    for module in (ray_runtime, runner):  # a cluster this process joined (ray.init(address=...)): it may grow
        monkeypatch.setattr(module, "ray_started_here", lambda: False)
    check_local_resources(study)
    for module in (ray_runtime, runner):  # a Ray this process started (a notebook's ray.init(num_cpus=2)): it cannot grow,
        monkeypatch.setattr(module, "ray_started_here", lambda: True)  # and Tune waited forever (the cluster review)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    with pytest.raises(ConfigError, match=r"^the Ray this process started \(ray.init\) has 2 CPU\(s\), and a trial needs 4 "):
        check_local_resources(study)
    study.cpus_per_trial = 2.0
    check_local_resources(study)
    study.cpus_per_trial = 4.0
    # GPUs: a local study asking for more than the machine has waited forever for the cluster to grow (the cluster review)
    import torch

    from medseg_platform.study.ray_runtime import check_gpus_available

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # no Ray yet: this machine's GPUs
    for module in (ray_runtime, runner):
        monkeypatch.setattr(module, "ray_started_here", lambda: False)
    with pytest.raises(ConfigError, match=r"--gpus-per-trial 2: a trial needs 2 GPU\(s\), this machine has 1; ask for fewer"):
        check_gpus_available(None, 2.0, 1)
    with pytest.raises(ConfigError, match=r"--gpus-per-trial 1: a trial needs 2 GPU\(s\) \(2 workers x 1\), this machine has 1"):
        check_gpus_available(None, 1.0, 2)
    check_gpus_available(None, 1.0, 1)
    check_gpus_available("10.0.0.1:6379", 1.0, 2)  # a cluster's GPUs are Ray's to place
    # the Ray this process started has 2 CPUs and no GPU (above); one it joined was taken for this machine, and a
    # notebook's cluster's GPUs were refused as this machine's none (the review of known gaps)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    for module in (ray_runtime, runner):
        monkeypatch.setattr(module, "ray_started_here", lambda: True)
    with pytest.raises(ConfigError, match=r"a trial needs 1 GPU\(s\), the Ray this process started \(ray.init\) has 0; "):
        check_gpus_available(None, 1.0, 1)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "GPU": 2.0})
    check_gpus_available(None, 1.0, 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for module in (ray_runtime, runner):
        monkeypatch.setattr(module, "ray_started_here", lambda: False)
    check_gpus_available(None, 4.0, 2)


def test_a_run_shorter_than_its_validation_interval_is_a_warning(capsys):
    """The studies probe: 20 steps under the quick profile's val_every 25 validated once, at the end, while the report
    said 'model selected on val'."""
    from medseg_platform.study.runner import warn_single_validation

    trial = lambda steps, every: {"config": {"optim": {"max_steps": steps}, "eval": {"val_every": every}}}  # noqa: E731
    warn_single_validation([trial(20, 25), trial(250, 25)])
    assert capsys.readouterr().err == ("warning: 1 trial(s) train for 20 steps with eval.val_every 25: each validates once, "
                                       "at its last step, so the tested weights are the final ones and its validation curve "
                                       "has one point; pass e.g. --set eval.val_every=5 to validate during training\n")
    warn_single_validation([trial(26, 25), trial(6, 3)])  # two validations each: nothing to say
    assert capsys.readouterr().err == ""


def test_a_search_space_is_checked_at_every_combination_of_its_ends_every_time():
    """The diff review: the other keys sat at one random sample while a key's ends were checked, so a space whose keys
    constrain each other was refused before Ray on some runs and lost samples to config errors on the others."""
    from ray import tune

    from medseg_platform.study.spec import check_search_space_ends

    spatial = PROFILES["smoke"].trial.replace(**{"objective": "arco", "objective_params.sampler_grouping": "spatial"}).to_dict()
    grouping = {"objective_params.sampler_grouping": tune.choice(["spatial", "flat"]),
                "objective_params.sampler_allocation": tune.choice(["systematic", "largest_remainder"])}
    for _ in range(3):  # each key alone is valid on the spatial base; only the pair (flat, largest_remainder) is not
        with pytest.raises(ConfigError, match=r"^search_space at objective_params\.sampler_grouping='flat', "
                                              r"objective_params\.sampler_allocation='largest_remainder' \(values the search "
                                              r"can sample together\): objective 'arco': ArcoConfig\.sampler_allocation: "):
            check_search_space_ends({**grouping, "optim.lr": tune.loguniform(1e-3, 1e-1)}, spatial)
    contrast = {"objective_params.contrast_weight": tune.choice([0.0, 0.1]), "objective_params.negative_rank_low": tune.choice([2, 4])}
    without = PROFILES["smoke"].trial.replace(**{"objective": "arco", "objective_params.contrast_weight": 0.0}).to_dict()
    with pytest.raises(ConfigError, match=r"^search_space at .*contrast_weight=0\.1, .*negative_rank_low=4 \(values"):
        check_search_space_ends(contrast, without)
    check_search_space_ends({"objective_params.sampler_allocation": tune.choice(["systematic", "largest_remainder"]),
                             "optim.lr": tune.loguniform(1e-3, 1e-1)}, spatial)  # every corner valid: no error
    flat = PROFILES["smoke"].trial.replace(objective="arco").to_dict()  # the second diff review: the study's flat grouping
    check_search_space_ends({"objective_params.sampler_grouping": tune.choice(["spatial"]),  # is never sampled here
                             "objective_params.sampler_allocation": tune.choice(["systematic", "largest_remainder"]),
                             "objective_params.sampler": "stratified"}, flat)  # a str constant: its own value


def test_a_negative_window_no_class_reaches_is_a_warning_or_a_config_error(capsys):
    """The MONA docs review: on a 3-class dataset the released window [3, 20) takes no negatives (the study warns,
    naming the rows, and trains as released); a window set off the released one is refused before Ray starts."""
    from medseg_platform.study.runner import warn_unreachable_negatives

    smoke = PROFILES["smoke"].trial

    def trial(row: str, objective: str, classes: int, **params) -> dict:
        config = smoke.replace(**{"objective": objective, "data.num_classes": classes,
                                  **{f"objective_params.{k}": v for k, v in params.items()}})
        config.validate(check_data=False)
        return {"config": config.to_dict(), "tags": {"row": row}}

    warn_unreachable_negatives([trial("MONA", "mona", 3), trial("ARCO-SG", "arco", 3), trial("w/o", "arco", 3, contrast_weight=0.0),
                                trial("paper mask", "mona", 3, u2pl_negative_mask="paper"), trial("ACTION", "action", 3),
                                trial("window 2", "mona", 3, negative_rank_low=2)])
    assert capsys.readouterr().err == (
        "warning: 2 row(s) ('MONA', 'ARCO-SG') train with objective_params.negative_rank_low 3 with 3 classes: a class ranks "
        "at most 2 in the teacher's probabilities, so no unlabelled pixel can be a negative, and u2pl_negative_mask "
        "'as_coded' takes none from the labelled pixels: the memory banks never take a key, so L_contrast has no negative "
        "but a bank's initial zero key (docs/mona.md, 'Negative mask'); set negative_rank_low below 3 (e.g. 2), or "
        "u2pl_negative_mask 'paper'\n")
    warn_unreachable_negatives([trial("MONA", "mona", 4)])  # ACDC's 4 classes: the released window reaches class rank 3
    assert capsys.readouterr().err == ""
    with pytest.raises(ConfigError, match=r"^objective_params\.negative_rank_low 4 with 4 classes: "):
        trial("window 4", "arco", 4, negative_rank_low=4)


def test_more_threads_than_reserved_cpus_is_a_warning(tmp_path, capsys):
    """Following the error above (--cpus-per-trial 2) left the paper profile's 4 torch threads on 2 reserved CPUs."""
    from medseg_platform.study.runner import warn_oversubscribed_threads

    study = tiny_study(tmp_path, tmp_path / "results")
    trials = [{"config": {"threads": 4}}, {"config": {"threads": 1}}]
    study.cpus_per_trial = 2.0
    warn_oversubscribed_threads(study, trials)
    assert ("warning: the trials compute with 4 torch threads each but reserve 2 CPU(s) (--cpus-per-trial); trials "
            "sharing a node's cores slow each other down: pass --set threads=2 to match") in capsys.readouterr().err
    study.cpus_per_trial = 4.0
    warn_oversubscribed_threads(study, trials)
    assert capsys.readouterr().err == ""
    # half a CPU per one-thread trial: "--set threads=1 to match" changed nothing (the runner review)
    study.cpus_per_trial = 0.5
    warn_oversubscribed_threads(study, [{"config": {"threads": 1}}])
    err = capsys.readouterr().err
    assert "compute with 1 torch thread each but reserve 0.5 CPU(s)" in err and "pass --cpus-per-trial 1" in err
    assert "threads=" not in err


def test_more_gpus_than_a_one_worker_trial_uses_is_a_warning(tmp_path, capsys):
    from medseg_platform.study.runner import warn_idle_gpus

    study = tiny_study(tmp_path, tmp_path / "results")
    study.gpus_per_trial = 2.0
    warn_idle_gpus(study)
    assert "warning: --gpus-per-trial 2 reserves 2 GPUs per trial, but a trial of one worker trains on one of them" in capsys.readouterr().err
    study.num_workers = 2  # each worker reserves 2 and trains on one (the cluster audit: this said nothing)
    warn_idle_gpus(study)
    assert ("warning: --gpus-per-trial 2 with --num-workers 2 reserves 2 GPUs per worker, but each worker trains on one of "
            "them; use --gpus-per-trial 1 and --num-workers 4 to train on all of them") in capsys.readouterr().err
    study.gpus_per_trial = 1.5  # no worker count to suggest (the review: it suggested the user's own 2 workers)
    warn_idle_gpus(study)
    assert capsys.readouterr().err.strip().endswith("each worker trains on one of them; use --gpus-per-trial 1")
    study.num_workers, study.gpus_per_trial = 1, 1.0
    warn_idle_gpus(study)
    assert capsys.readouterr().err == ""


def test_a_search_folder_is_not_restarted_or_taken_over_silently(tiny_root, tmp_path):
    """Another --num-samples started a new search that trained its first samples again and reported only its own; a
    grid study's folder given to a search (or the reverse, through --name) was replaced."""
    from ray import tune

    from medseg_platform.io import write_json_atomic
    from medseg_platform.results import tune_storage
    from medseg_platform.study.runner import check_before_ray

    def search(n: int) -> Study:
        study = tiny_study(tiny_root, tmp_path / "results", search_space={"optim.lr": tune.loguniform(1e-3, 1e-1)}, num_samples=n)
        study.grid, study.variants = {}, study.variants[:1]
        return study

    first = search(6)
    trials = first.trial_params()
    write_json_atomic(first.study_dir / "study.json", first.description(trials))
    (tune_storage(first.study_dir) / f"{first.name}-{first.spec_hash(trials)}").mkdir(parents=True)
    check_before_ray(search(6), dry_run=True)  # the same search: resumed or rebuilt
    check_before_ray(search(8), dry_run=True)  # no sample ended (a search that crashed in Ray): nothing a new one hides
    history = first.study_dir / "search_history.csv"
    history.write_text("order,trial_id,trial_key,status\n1,t1,k1,stopped early\n")  # an ASHA stop leaves no result files
    with pytest.raises(ConfigError, match=r"holds a search with --num-samples 6 \(this run: 8\)"):
        check_before_ray(search(8), dry_run=True)
    history.unlink()
    ended = first.study_dir / "trials" / "sample-1"
    ended.mkdir(parents=True)
    (ended / "error.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"holds a search with --num-samples 6 \(this run: 8\); a search cannot be extended "
                                          r"or changed in place"):
        check_before_ray(search(8), dry_run=True)
    relabelled = search(6)  # the refusal names what differs (its list used to leave out the label fraction)
    relabelled.base = relabelled.base.replace(**{"data.labelled": "2"})
    with pytest.raises(ConfigError, match=r"holds a search with other settings: the searched configuration \(--method, "
                                          r"--labelled, --set values or the data root\); a search cannot"):
        check_before_ray(relabelled, dry_run=True)
    # --protocol and --seeds, which study.json records apart, are named (the search walkthrough: every flag was listed)
    from medseg_platform.protocol import RELEASED_EVALUATION

    released = search(6)
    released.protocol, released.base = "released", released.base.replace(**RELEASED_EVALUATION)
    with pytest.raises(ConfigError, match=r"holds a search with other settings: --protocol \(corrected before, released now\) \(perhaps also "):
        check_before_ray(released, dry_run=True)
    reseeded = search(6)
    reseeded.seeds = (2,)
    with pytest.raises(ConfigError, match=r"holds a search with other settings: --seeds \(1 before, 2 now\) \(perhaps also --method, "):
        check_before_ray(reseeded, dry_run=True)
    wider = search(6)
    wider.search_space = {"optim.lr": tune.loguniform(1e-4, 1e-1)}
    with pytest.raises(ConfigError, match=r"holds a search with other settings: the search space; a search cannot"):
        check_before_ray(wider, dry_run=True)
    with pytest.raises(ConfigError, match=r"holds an Optuna search \(study.json\); this study would replace its record"):
        check_before_ray(tiny_study(tiny_root, tmp_path / "results"), dry_run=True)
    grid = tiny_study(tiny_root, tmp_path / "grid")
    grid.name = first.name = "shared"
    write_json_atomic(grid.study_dir / "study.json", grid.description(grid.trial_params()))
    taker = search(6)
    taker.results_dir, taker.name = tmp_path / "grid", "shared"
    with pytest.raises(ConfigError, match=r"holds a grid study \(study.json\); this search would replace its record"):
        check_before_ray(taker, dry_run=True)
    # the same command after a key revision (STREAMS_REVISION, the diff review): "other settings: the searched
    # configuration", and "rerun with that search's settings", which were the settings given
    revised = search(6)
    revised.results_dir = tmp_path / "revised"
    info = {**revised.description(revised.trial_params()), "spec_hash": "0" * 16}
    write_json_atomic(revised.study_dir / "study.json", info)
    (tune_storage(revised.study_dir) / f"{revised.name}-{'0' * 16}").mkdir(parents=True)
    sample = revised.study_dir / "trials" / "supervised-l1-s1-0123456789-abcd1234"  # not this code's key of its config
    sample.mkdir(parents=True)
    write_json_atomic(sample / "config.json", {"config": revised.trial_params()[0]["config"], "tags": {}})
    (sample / "error.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"holds a search whose samples an earlier version of the platform trained: their "
                                          r"trial keys changed since .* Give --name a new folder name"):
        check_before_ray(revised, dry_run=True)


def test_two_label_fractions_that_select_the_same_patients_are_refused_before_ray(tiny_root, tmp_path):
    """The paper-path probe: on a small dataset '1' and '5%' both select 1 patient; both were trained and their copies
    averaged as two seeds of one column (``n_seeds`` 2, seeds "1,1")."""
    study = tiny_study(tiny_root, tmp_path / "results")
    study.grid = {"data.labelled": ["1", "5%"]}
    with pytest.raises(ConfigError, match=r"row 'Sup': label fractions '1' and '5%' select the same 1 of the 4 training patients"):
        study.trial_params()
    study.grid = {"data.labelled": ["1", "50%"]}  # 2 of 4: distinct
    assert len(study.trial_params()) == 4
    # two rows may: label_fractions' full-supervision row ('100%') beside its supervised row at every patient (the review)
    study.grid = {}
    study.variants = [Variant({"row": "Sup, all labels"}, {"objective": "supervised", "data.labelled": "100%"}),
                      Variant({"row": "Sup"}, {"objective": "supervised", "data.labelled": "4"})]
    assert len(study.trial_params()) == 2
    assert not (tmp_path / "results").exists()


def test_every_node_of_a_cluster_must_see_the_study_and_data_folders(tmp_path, ray_address):
    """The cluster audit: on a node without the shared filesystem a trial wrote its files to that node's disk, and Tune
    failed only at its first checkpoint, hours in at the paper size. One task per node compares the files' bytes."""
    from medseg_platform.errors import DataError
    from medseg_platform.study.ray_runtime import check_nodes_see

    held = tmp_path / ".lock"
    held.write_text("pid 1 on driver, since now\n")
    check_nodes_see({str(held): ("the study folder's lock file", held.read_bytes())})
    with pytest.raises(DataError, match=r"node .* of the Ray cluster: the study folder's lock file .*/\.lock holds other bytes "
                                        r"there \(another filesystem at the same path\); every node must reach"):
        check_nodes_see({str(held): ("the study folder's lock file", b"pid 2 on another driver\n")})
    with pytest.raises(DataError, match=r"the dataset's list .*/nowhere/train_slices.list cannot be read there \(No such file"):
        check_nodes_see({str(tmp_path / "nowhere" / "train_slices.list"): ("the dataset's list", b"")})
    # ... and write in the study folder (a node that mounts it read-only failed its trials once they started: the cluster
    # review); the session's Ray was started by this process: a study here checks no node (joins_cluster)
    from medseg_platform.study.ray_runtime import joins_cluster, ray_started_here

    check_nodes_see({str(held): ("the study folder's lock file", held.read_bytes())}, writable=(tmp_path,))
    assert not list(tmp_path.glob(".node-check-*"))
    with pytest.raises(DataError, match=r"the study folder .*/gone cannot be written there \(No such file or directory"):
        check_nodes_see({}, writable=(tmp_path / "gone",))
    assert ray_started_here() and not joins_cluster(None) and not joins_cluster("10.0.0.1:6379")


def test_a_multi_worker_trial_removes_the_train_runs_of_its_earlier_attempts(tmp_path):
    """The cluster audit: every attempt and rerun of a multi-worker trial left a Ray Train run with a full checkpoint
    copy under ray-train/; the engine resumes from the trial folder, never from them."""
    from medseg_platform.study.distributed import remove_earlier_train_runs

    storage = tmp_path / "ray-train"
    for name in ("mona-l1-s1-abc-0a1b2c3d", "mona-l1-s1-abc-ffffffff", "mona-l1-s1-abcd-0a1b2c3d", "mona-l1-s1-abc-0a1b2c3d-x",
                 "other-0a1b2c3d"):
        (storage / name / "checkpoint").mkdir(parents=True)
    remove_earlier_train_runs(storage, "mona-l1-s1-abc")
    assert sorted(p.name for p in storage.iterdir()) == ["mona-l1-s1-abc-0a1b2c3d-x", "mona-l1-s1-abcd-0a1b2c3d", "other-0a1b2c3d"]
    remove_earlier_train_runs(tmp_path / "none", "x")  # no storage yet: nothing to do



_RUN_AND_READ_SIGTERM = """
import signal, sys
from pathlib import Path
from medseg_platform.profiles import PROFILES
from medseg_platform.study import Study, Variant

def mine(signum, frame):
    pass

signal.signal(signal.SIGTERM, mine)
root, results = sys.argv[1], sys.argv[2]
base = PROFILES["smoke"].trial.replace(**{"data.root": root, "data.labelled_batch": 2, "data.unlabelled_batch": 2})
Study("sig", base, Path(results), variants=[Variant({"row": "Sup"}, {"objective": "supervised"})], grid={"data.labelled": ["1"]},
      seeds=[1], dashboard=False, num_cpus=1).run()
caught = int([l for l in open("/proc/self/status") if l.startswith("SigCgt:")][0].split()[1], 16)
print("handler", signal.getsignal(signal.SIGTERM) is mine, "caught", bool(caught >> (signal.SIGTERM - 1) & 1))
"""


def test_a_study_that_starts_its_own_ray_gives_back_the_callers_sigterm_handler(tiny_root, tmp_path):
    """The notebook probe: after Study.run() Python named the platform's SIGTERM handler while ray.shutdown had set the
    OS's action to the default, so the next kill ended the notebook at once."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", _RUN_AND_READ_SIGTERM, str(tiny_root), str(tmp_path / "r")], capture_output=True,
                          text=True, timeout=300, env=env, cwd=REPO)
    assert proc.stdout.strip().splitlines()[-1] == "handler True caught True", (proc.stdout[-500:], proc.stderr[-1500:])


def test_a_trial_tune_ended_as_errored_without_an_error_file_gets_one_of_this_run(tmp_path):
    """A worker killed on its last retry writes no error.json: after a restored run, the runner took such a trial for one
    lost earlier and started it again in a new experiment with retries of its own, beyond --max-retries (the runner
    review). The driver now writes the error of this run from Tune's result; a trial with its own error file keeps it."""
    from types import SimpleNamespace

    from medseg_platform.results import ERROR_FILE, errored_in_run, trial_folder, write_trial_error
    from medseg_platform.study.runner import record_lost_workers

    trials = {key: {"key": key, "config": {"objective": "supervised", "seed": 1}, "tags": {"row": "S"}} for key in ("a", "b", "c")}
    write_trial_error(trial_folder(tmp_path, "b"), config={}, tags={}, seed=1, error="MedsegError: NaN", kind="application", run="r1")
    results = [SimpleNamespace(config={"trial": {"key": "a"}}, error=RuntimeError("The actor died unexpectedly\nmore")),
               SimpleNamespace(config={"trial": {"key": "b"}}, error=RuntimeError("wrapped")),
               SimpleNamespace(config={"trial": {"key": "c"}}, error=None)]
    record_lost_workers(results, trials, tmp_path, "r1")
    written = json.loads((trial_folder(tmp_path, "a") / ERROR_FILE).read_text())
    assert written["error"] == "RuntimeError: The actor died unexpectedly" and written["kind"] == "infrastructure"
    assert errored_in_run(trial_folder(tmp_path, "a"), "r1") and written["tags"] == {"row": "S"}
    assert json.loads((trial_folder(tmp_path, "b") / ERROR_FILE).read_text())["error"] == "MedsegError: NaN"  # its own
    assert not (trial_folder(tmp_path, "c") / ERROR_FILE).exists()
    record_lost_workers(None, trials, tmp_path, "r2")  # a stop raised as KeyboardInterrupt: no ResultGrid


def test_a_pretraining_cache_that_is_a_file_is_refused_before_anything_runs(tiny_root, tmp_path):
    """The cache review: every trial with pretraining stages failed with a traceback there, each retried twice by Ray
    as a crashed worker; a study without stages does not read the cache and is not refused."""
    from medseg_platform.profiles import PROFILES
    from medseg_platform.recipes import method_overrides
    from medseg_platform.study.runner import check_before_ray

    results = tmp_path / "results"
    results.mkdir()
    (results / "pretrain-cache").write_text("")
    check_before_ray(tiny_study(tiny_root, results), dry_run=True)
    smoke = PROFILES["smoke"]
    base = smoke.trial.replace(**{"data.root": str(tiny_root)})
    study = Study("staged", base, results, variants=[Variant({"row": "MONA"}, method_overrides("mona", smoke))], seeds=[1],
                  dashboard=False)
    for dry_run in (True, False):
        with pytest.raises(ConfigError, match=r"the pretraining cache \(pretrain-cache under --results-dir\) .*pretrain-cache: "
                                              r"is a file, not a folder"):
            check_before_ray(study, dry_run=dry_run)
