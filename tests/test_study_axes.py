"""The tags the analysis relies on: ``variant`` and ``axes`` of every trial, and what study.json records."""

import pytest

from medseg_platform.errors import ConfigError
from medseg_platform.profiles import PROFILES
from medseg_platform.study import Study, Variant


def test_trial_tags_carry_variant_and_every_axis(tiny_root, tmp_path):
    base = PROFILES["smoke"].trial.replace(**{"data.root": str(tiny_root)})
    variants = [Variant({"row": "MONA (tau_t=0.01)", "axes": {"isd.tau_teacher": 0.01}}, {"objective": "supervised"}),
                Variant({"row": "MT"}, {"objective": "mean_teacher"})]
    study = Study("axes", base, tmp_path, variants=variants, seeds=[1],
                  grid={"data.labelled": ["1", "2"], "optim.lr": [0.01, 0.02]})
    trials = study.trial_params()
    assert len(trials) == 8
    first = trials[0]["tags"]
    assert first["variant"] == "MONA (tau_t=0.01)" and first["row"] == "MONA (tau_t=0.01) (optim.lr=0.01)"
    assert first["axes"] == {"isd.tau_teacher": 0.01, "data.labelled": "1", "optim.lr": 0.01}
    assert {(t["tags"]["variant"], t["tags"]["axes"]["data.labelled"], t["tags"]["axes"]["optim.lr"]) for t in trials[4:]} == {
        ("MT", "1", 0.01), ("MT", "1", 0.02), ("MT", "2", 0.01), ("MT", "2", 0.02)}
    described = study.description(trials)
    assert described["grid"] == {"data.labelled": ["1", "2"], "optim.lr": [0.01, 0.02]} and described["search"] is False
    assert described["variants"][0] == {"row": "MONA (tau_t=0.01)", "axes": {"isd.tau_teacher": 0.01}}
    assert described["trials"] == [t["key"] for t in trials]


def test_study_json_records_the_protocol_outside_the_spec_hash(tiny_root, tmp_path):
    base = PROFILES["smoke"].trial.replace(**{"data.root": str(tiny_root)})
    study = Study("protocol", base, tmp_path, variants=[Variant({"row": "Sup"}, {"objective": "supervised"})], seeds=[1])
    trials = study.trial_params()
    corrected = study.description(trials)
    study.protocol = "released"  # what --protocol released sets (the trial configs carry its keys; here they do not)
    released = study.description(study.trial_params())
    assert (corrected["protocol"], released["protocol"]) == ("corrected", "released")
    assert released["spec_hash"] == corrected["spec_hash"]  # the same trials: the same Tune experiment
    study.protocol = "published"
    with pytest.raises(ConfigError, match="study protocol 'published': use one of corrected, released"):
        study.trial_params()
