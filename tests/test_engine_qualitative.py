"""The engine keeps a few test slices (qualitative.npz) for the overlay plots, in the documented layout."""

import numpy as np

from medseg_platform.data.layout import Volume
from medseg_platform.engine import QualitativeSlices, train_trial
from medseg_platform.results import QUALITATIVE_FILE
from tests.test_engine import quiet, small_cfg


def test_qualitative_slices_pick_the_middle_slice_of_the_first_cases_by_id(tmp_path):
    keeper = QualitativeSlices(["p9", "p2", "p5", "p1"])
    assert keeper.cases == ["p1", "p2", "p5"]
    for case, depth in (("p9", 3), ("p5", 5), ("p1", 4)):  # p2 is never evaluated: it is left out
        image = np.random.default_rng(0).random((depth, 6, 8), dtype=np.float32)
        label = np.arange(depth)[:, None, None].repeat(6, 1).repeat(8, 2).astype(np.uint8) % 4
        keeper.keep(Volume(case, image, label, (5.0, 1.25, 1.5) if case == "p1" else None), 3 - label)
    keeper.save(tmp_path / QUALITATIVE_FILE)
    with np.load(tmp_path / QUALITATIVE_FILE) as data:
        assert data["cases"].tolist() == ["p1", "p5"] and data["slices"].tolist() == [2, 2]
        assert data["spacing"].shape == (2, 2) and data["spacing"][0].tolist() == [1.25, 1.5]
        assert np.isnan(data["spacing"][1]).all()
        assert data["image_0"].dtype == np.float16 and data["image_0"].shape == (6, 8)
        assert data["label_1"].dtype == np.uint8 and (data["label_1"] == 2).all() and (data["prediction_1"] == 1).all()


def test_train_trial_writes_qualitative_npz(tiny_root, tmp_path):
    outcome = train_trial(small_cfg(tiny_root, **{"optim.max_steps": 2, "eval.val_every": 2}), tmp_path / "t", log=quiet)
    with np.load(tmp_path / "t" / QUALITATIVE_FILE) as data:
        cases = data["cases"].tolist()
        assert cases == sorted({r["case"] for r in outcome.test_rows})[:3]
        for i in range(len(cases)):
            assert data[f"image_{i}"].dtype == np.float16 and data[f"label_{i}"].dtype == np.uint8
            assert data[f"image_{i}"].shape == data[f"label_{i}"].shape == data[f"prediction_{i}"].shape
            assert data[f"prediction_{i}"].max() < 4
