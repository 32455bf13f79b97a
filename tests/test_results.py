"""A finished trial's files read back: a per-case file that is cut short, edited or unreadable is a corrupt result
(listed as a problem, trained again by the study command), never a table's numbers; an error.json of any content
is one problem line."""

from __future__ import annotations

import json
from unittest import mock

import pytest

from medseg_platform.results import CorruptResult, read_trial, scan_study, trial_finished
from tests.analysis.fakes import write_fake_trial


@pytest.fixture
def trial(tmp_path, monkeypatch):
    """A finished trial written by the real writer; its per-case rows carry a count column after the metrics, as the
    engine's do (assd, n_pred, n_gt)."""
    import tests.analysis.fakes as fakes

    rows = fakes.per_case_rows
    monkeypatch.setattr(fakes, "per_case_rows", lambda *a, **k: [{**r, "n_gt": 100} for r in rows(*a, **k)])
    return write_fake_trial(tmp_path / "study", row="MONA", order=0, patients=1, seed=1,
                            dice=lambda case, cls: 0.5 + 0.01 * cls + 0.001 * int(case[7:10]), qualitative_shift=None)


def _edit(path, change):
    path.write_bytes(change(path.read_bytes()))


def _set_value(text: bytes, line: int, column: int, value: bytes) -> bytes:
    lines = text.split(b"\n")
    fields = lines[line].split(b",")
    fields[column] = value
    lines[line] = b",".join(fields)
    return b"\n".join(lines)


DAMAGE = {
    # cut inside the last row, after its dice value: the other fields are missing
    "cut mid-row": (lambda t: t.rstrip(b"\n").rsplit(b",", 4)[0], "has no jaccard, hd95, asd, n_gt"),
    # the last row holds only the case id (it crashed the table once)
    "cut after the case": (lambda t: t.rstrip(b"\n").rsplit(b",", 6)[0], "has no class, dice"),
    "a row missing": (lambda t: b"\n".join(t.split(b"\n")[:2] + t.split(b"\n")[3:]), "lacks rows of class(es) 2"),
    "a row twice": (lambda t: t + t.split(b"\n")[1] + b"\n", "appears twice"),
    "class not a number": (lambda t: _set_value(t, 1, 1, b"LV"), "class 'LV' is not a label number"),
    "class nan": (lambda t: _set_value(t, 1, 1, b"nan"), "class nan is not a label number"),
    "a metric not a number": (lambda t: _set_value(t, 2, 4, b"far"), "hd95 'far' is not a number"),
    # a value changed (or its last digits cut) after the trial finished: the means beside it no longer agree
    "a value changed": (lambda t: _set_value(t, 3, 2, b"0.123"), "do not give the test means"),
    # the last row cut after its metrics: the extra columns (assd, n_pred, n_gt in a real file) are missing
    "cut in the extra columns": (lambda t: t.rstrip(b"\n").rsplit(b",", 1)[0], "has no n_gt"),
    "a field too many": (lambda t: _set_value(t, 1, 6, b"7,8"), "more fields than the header"),
    "not UTF-8": (lambda t: t + b"\xff\xfe\n", "unreadable"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_per_case_file_is_a_corrupt_result(trial, damage):
    change, message = DAMAGE[damage]
    assert read_trial(trial) is not None
    _edit(trial / "per_case.csv", change)
    with pytest.raises(CorruptResult, match="per_case.csv") as info:
        read_trial(trial)
    assert message in str(info.value)
    assert not trial_finished(trial)  # the study command trains it again
    records, problems = scan_study(trial.parent.parent)
    assert records == [] and len(problems) == 1 and problems[0].startswith("corrupt result: ")


def test_a_per_case_file_as_written_reads_back(trial):
    record = read_trial(trial)
    assert len(record.per_case) == 8 * 3 and trial_finished(trial) and len(record.result["per_case_sha256"]) == 64


def test_a_change_the_means_cannot_see_is_found_by_the_checksum(trial):
    """The count column is in no mean; a count cut short (1234 -> 12) was read as a finished trial before the checksum."""
    _edit(trial / "per_case.csv", lambda t: _set_value(t, 1, 6, b"10"))
    with pytest.raises(CorruptResult, match="its bytes differ from the file the trial wrote"):
        read_trial(trial)
    result = json.loads((trial / "result.json").read_text())
    del result["per_case_sha256"], result["val_curve_sha256"]  # a result written before the checksums: rows and means checked
    (trial / "result.json").write_text(json.dumps(result))
    assert read_trial(trial) is not None


WRONG_TYPES = {  # the report review: each crashed `medseg report` with a traceback that stopped every study after it
    "labelled.percent_patients": (lambda r: r["labelled"].update(percent_patients="abc"), "'labelled.percent_patients' is 'abc'"),
    "labelled.num_patients": (lambda r: r["labelled"].update(num_patients="one"), "'labelled.num_patients' is 'one'"),
    "timing as a list": (lambda r: r.update(timing=[1]), "'timing' is a list, not an object"),
    "a timing as text": (lambda r: r["timing"].update(total_s="abc"), "'timing.total_s' is 'abc', not a number of seconds"),
    "environment as text": (lambda r: r.update(environment="x"), "'environment' is a str, not an object"),
    "config as text": (lambda r: r.update(config="x"), "'config' is a str, not an object"),
    "tags as a list": (lambda r: r.update(tags=["a"]), "'tags' is a list, not an object"),
    "max_steps as text": (lambda r: r["config"].setdefault("optim", {}).update(max_steps="many"),
                          "'config.optim.max_steps' is 'many', not a whole number"),
    "seed null": (lambda r: r.update(seed=None), "'seed' is None, not a whole number"),
    # the results review: each still crashed the report (null is a value the report read with int()), or tabled a
    # trial under another seed than it trained with
    "max_steps null": (lambda r: r["config"].setdefault("optim", {}).update(max_steps=None),
                       "'config.optim.max_steps' is None, not a whole number"),
    "val_every null": (lambda r: r["config"].setdefault("eval", {}).update(val_every=None),
                       "'config.eval.val_every' is None, not a whole number"),
    "patients a number": (lambda r: r["labelled"].update(patients=5), "'labelled.patients' is 5, not a list of patient ids"),
    "seed edited": (lambda r: r.update(seed=7), "'seed' is 7 but 'config.seed' is 1 (one of them was edited)"),
}


@pytest.mark.parametrize("wrong", WRONG_TYPES)
def test_a_result_field_of_the_wrong_type_is_a_corrupt_result(trial, wrong):
    change, message = WRONG_TYPES[wrong]
    result = json.loads((trial / "result.json").read_text())
    result.setdefault("timing", {"total_s": 1.0})
    change(result)
    (trial / "result.json").write_text(json.dumps(result))
    with pytest.raises(CorruptResult, match="result.json: ") as info:
        read_trial(trial)
    assert message in str(info.value)
    records, problems = scan_study(trial.parent.parent)
    assert records == [] and len(problems) == 1 and problems[0].startswith("corrupt result: ")


def test_an_error_of_a_run_is_told_by_its_kind(tmp_path):
    """A stopped multi-worker study removes the infrastructure errors of its own run (its Train workers died with the
    stop: the fault review) and keeps application errors and other runs' errors."""
    from medseg_platform.results import errored_in_run

    folder = tmp_path / "trial"
    folder.mkdir()
    (folder / "error.json").write_text(json.dumps({"run": "r1", "kind": "infrastructure", "error": "ActorDiedError"}))
    assert errored_in_run(folder, "r1") and errored_in_run(folder, "r1", kind="infrastructure")
    assert not errored_in_run(folder, "r1", kind="application") and not errored_in_run(folder, "r2", kind="infrastructure")


@pytest.mark.parametrize("content", [b"[1]", b"\xff\xfe{", b"", b'"text"'])
def test_any_error_json_is_one_problem_line(tmp_path, content):
    folder = tmp_path / "study" / "trials" / "mona-l1-s1-x"
    folder.mkdir(parents=True)
    (folder / "error.json").write_bytes(content)
    assert scan_study(tmp_path / "study") == ([], ["errored trial mona-l1-s1-x: error.json unreadable"])
    (folder / "error.json").write_text(json.dumps({"error": "NaN at step 3"}), encoding="utf-8")
    assert scan_study(tmp_path / "study")[1] == ["errored trial mona-l1-s1-x: NaN at step 3"]


def test_finished_trials_take_the_studys_current_row_tags(trial):
    """Keys hash the config only: a renamed row kept its old label in the tables, and a seed added later made a second
    row of the same configuration (the temperature study's released row, renamed)."""
    from medseg_platform.results import retag_finished_trials, trial_folder

    study_dir, key = trial.parent.parent, trial.name
    old = json.loads((trial / "result.json").read_text())
    tags = {**old["tags"], "row": "MONA, released", "order": 3}
    assert retag_finished_trials(study_dir, [{"key": key, "tags": tags}, {"key": "never-ran", "tags": tags}]) == 1
    new = json.loads((trial / "result.json").read_text())
    assert new["tags"] == tags and {k: v for k, v in new.items() if k != "tags"} == {k: v for k, v in old.items() if k != "tags"}
    assert json.loads((trial / "config.json").read_text())["tags"] == tags
    assert read_trial(trial).result["tags"]["row"] == "MONA, released"  # still a valid finished trial
    assert retag_finished_trials(study_dir, [{"key": key, "tags": tags}]) == 0  # nothing to change: nothing written
    assert not trial_folder(study_dir, "never-ran").exists()


def test_a_key_revision_renames_only_its_objectives_trials():
    """``KEY_REVISIONS``: when the platform changes what an objective's trials train, their keys change (a results
    folder's earlier trials are not taken for this code's); other objectives keep the keys they always had."""
    import hashlib
    import json

    from medseg_platform.results import KEY_REVISIONS, trial_key

    def unrevised(config):
        digest = hashlib.sha256(json.dumps({"config": config}, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return f"{config['objective']}-l{config['data']['labelled']}-s{config['seed']}-{digest}"

    for objective in ("supervised", "mean_teacher", "mona", "arco", "action"):
        config = {"objective": objective, "seed": 1, "data": {"labelled": "1"}, "objective_params": {}}
        if objective in KEY_REVISIONS:
            assert trial_key(config) != unrevised(config)
        else:
            assert trial_key(config) == unrevised(config)
    assert {"mona", "arco", "action"} <= set(KEY_REVISIONS)


def test_an_amp_revision_renames_only_the_mixed_precision_trials_of_its_objectives():
    """``KEY_REVISIONS_UNDER_AMP``: MONA/ARCO's warp and ISD's logits, then every objective's Dice loss, are full
    precision under autocast since 2026-12-07; every --amp trial gets a new key, full-precision trials keep theirs."""
    from medseg_platform.results import KEY_REVISIONS_UNDER_AMP, trial_key

    def config(objective, amp):
        return {"objective": objective, "seed": 1, "data": {"labelled": "1"}, "optim": {"amp": amp}, "objective_params": {}}

    for objective in ("supervised", "mean_teacher", "mona", "arco", "action"):
        with mock.patch.dict(KEY_REVISIONS_UNDER_AMP, clear=True):
            before = {amp: trial_key(config(objective, amp)) for amp in ("off", "bf16", "fp16")}
        after = {amp: trial_key(config(objective, amp)) for amp in ("off", "bf16", "fp16")}
        assert after["off"] == before["off"]
        for amp in ("bf16", "fp16"):
            assert after[amp] != before[amp], (objective, amp)
    # a baseline fine-tuned from an ISD stage (a user's chain) trained from other weights too: keyed by the stage's
    # revision under --amp
    chained = {**config("supervised", "bf16"), "pretrain": [{"objective": "isd_pretrain", "max_steps": 4}]}
    off = {**chained, "optim": {"amp": "off"}}
    with mock.patch.dict(KEY_REVISIONS_UNDER_AMP, {"isd_pretrain": KEY_REVISIONS_UNDER_AMP["supervised"]}):
        before, off_before = trial_key(chained), trial_key(off)
    assert trial_key(chained) != before and trial_key(off) == off_before


def test_a_streams_revision_renames_only_trials_with_pretraining_or_several_workers():
    """``STREAMS_REVISION``: a pretraining stage's and another rank's random streams are their own since 2026-12-07
    (``seeding.stream_seed``); those trials get new keys, a single-worker trial without pretraining keeps its key."""
    from medseg_platform.results import STREAMS_REVISION, trial_key

    def config(objective, **more):
        return {"objective": objective, "seed": 1, "data": {"labelled": "1"}, "objective_params": {}, **more}

    def unrevised(config):
        with mock.patch("medseg_platform.results.STREAMS_REVISION", None):
            return trial_key(config)

    assert STREAMS_REVISION
    for objective in ("supervised", "mean_teacher", "mona"):
        for plain in (config(objective), config(objective, workers=1)):
            assert trial_key(plain) == unrevised(plain)
        for other in (config(objective, workers=2), config(objective, pretrain=[{"objective": "isd_pretrain"}])):
            assert trial_key(other) != unrevised(other)


def test_a_mix_revision_renames_only_the_trials_with_that_mix():
    """``KEY_REVISIONS_BY_MIX``: MONA/ARCO trials with the cutout strong view train otherwise since their entropy
    percentiles skip the ignored box; their keys change, those with CutMix (every default) keep theirs."""
    from medseg_platform.results import KEY_REVISIONS, KEY_REVISIONS_BY_MIX, trial_key

    def config(objective, mix):
        return {"objective": objective, "seed": 1, "data": {"labelled": "1", "strong_mix": mix}, "objective_params": {}}

    def with_revision(cfg, revision):
        with mock.patch.dict(KEY_REVISIONS_BY_MIX, clear=True), mock.patch.dict(KEY_REVISIONS, {cfg["objective"]: revision}):
            return trial_key(cfg)

    for objective in ("mona", "arco"):
        assert KEY_REVISIONS_BY_MIX[(objective, "cutout")] != KEY_REVISIONS[objective]
        cutout, cutmix = config(objective, "cutout"), config(objective, "cutmix")
        assert trial_key(cutmix) == with_revision(cutmix, KEY_REVISIONS[objective])  # unchanged
        assert trial_key(cutout) != with_revision(cutout, KEY_REVISIONS[objective])  # renamed
        assert trial_key(cutout) == with_revision(cutout, KEY_REVISIONS_BY_MIX[(objective, "cutout")])
    action = config("action", "cutout")
    assert trial_key(action) == with_revision(action, KEY_REVISIONS["action"])  # ACTION has no entropy masks


def test_a_result_copied_from_another_trial_an_edited_curve_or_an_unreadable_record_is_a_corrupt_result(trial):
    """The results review: a trial folder holding another trial's result was tabled under this folder's row (and a rerun
    retagged it); an edited or cut val_curve.csv moved the trial-health verdict unseen; an unreadable result.json
    stopped the study command with a traceback. Each is now a corrupt result: listed, and trained again."""
    import shutil

    other = trial.parent / "mona-l1-s1-0000000000"
    shutil.copytree(trial, other)
    with pytest.raises(CorruptResult, match=rf"the result of trial '{trial.name}', not of this folder's \(copied or moved here"):
        read_trial(other)
    shutil.rmtree(other)
    assert read_trial(trial) is not None
    curve = trial / "val_curve.csv"
    original = curve.read_bytes()
    _edit(curve, lambda t: t.replace(b",0.", b",0.9", 1))
    with pytest.raises(CorruptResult, match="val_curve.csv: its bytes differ from the file the trial wrote"):
        read_trial(trial)
    curve.write_bytes(original)
    result = json.loads((trial / "result.json").read_text())
    edited = {k: v for k, v in result.items() if k != "per_case_sha256"}
    (trial / "result.json").write_text(json.dumps(edited))
    with pytest.raises(CorruptResult, match="records a checksum of val_curve.csv but none of per_case.csv"):
        read_trial(trial)
    (trial / "result.json").write_text(json.dumps(result))
    real_read = type(trial).read_text

    def unreadable(path, *args, **kwargs):
        if path.name == "result.json":
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(path, *args, **kwargs)

    with mock.patch.object(type(trial), "read_text", unreadable):
        with pytest.raises(CorruptResult, match="result.json: unreadable \\(Permission denied\\)"):
            read_trial(trial)
        assert not trial_finished(trial)
        records, problems = scan_study(trial.parent.parent)
        assert records == [] and problems[0].startswith("corrupt result: ")


def test_a_generated_dataset_is_recorded_as_such_in_the_result(tiny_root, tmp_path):
    """The published-numbers review: a phantom of 100 patients has ACDC's 70 training patients and class names, and the
    report quoted the papers' numbers beside it. ``result.json`` records the manifest's generator."""
    from medseg_platform.io import write_json_atomic
    from medseg_platform.results import dataset_generator_record

    assert dataset_generator_record({"data": {"root": str(tiny_root)}}) == {}
    generated = tmp_path / "generated"
    generated.mkdir()
    write_json_atomic(generated / "manifest.json", {"source": {"generator": "phantom", "version": 1, "params": {}}})
    assert dataset_generator_record({"data": {"root": str(generated)}}) == {"data_generator": "phantom"}
    assert dataset_generator_record({"data": {"root": str(tmp_path / "gone")}}) == {}
    (generated / "manifest.json").write_text("[1]")  # a broken manifest: the trial names it, the record says nothing
    assert dataset_generator_record({"data": {"root": str(generated)}}) == {}
