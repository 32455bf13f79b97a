"""The single-process training loop: learning, exact resume, non-finite losses, result files."""

from pathlib import Path

import pytest
import torch

from medseg_platform.config import TrialConfig
from medseg_platform.engine import NonFiniteLossError, train_trial
from medseg_platform.results import read_trial, write_trial_results
from methods.supervised import SupervisedObjective


def small_cfg(root: Path, **overrides) -> TrialConfig:
    base = {"data.root": str(root), "data.patch_size": [32, 32], "data.labelled": "2", "data.labelled_batch": 2,
            "data.unlabelled_batch": 2, "model.channels": [4, 8, 16, 32, 64], "optim.max_steps": 8,
            "eval.val_every": 4, "eval.log_every": 2, "seed": 3}
    return TrialConfig.from_dict({**base, **overrides})


def quiet(_msg):
    pass


@pytest.mark.parametrize("objective", ["supervised", "mean_teacher"])
def test_trial_trains_validates_and_writes_results(tiny_root, tmp_path, objective):
    cfg = small_cfg(tiny_root, objective=objective)
    reports = []
    outcome = train_trial(cfg, tmp_path / "t", report=lambda m, c: reports.append((m, c)), log=quiet)
    assert [m["step"] for m, _ in reports] == [4, 8]
    assert all((c / "checkpoint.pt").is_file() for _, c in reports)
    assert outcome.best_step in (4, 8) and 0.0 <= outcome.best_val_dice <= 1.0
    assert [row["step"] for row in outcome.curves] == [2, 4, 6, 8]
    assert outcome.curves[-1]["loss"] < outcome.curves[0]["loss"]  # it learns something in 8 steps
    assert {r["case"] for r in outcome.test_rows} == {"patient006_frame01", "patient006_frame02"}
    assert len(outcome.test_rows) == 2 * 3
    record = write_trial_results(tmp_path / "t", config=cfg.to_dict(), tags={"row": objective}, outcome=outcome, seed=cfg.seed)
    back = read_trial(tmp_path / "t")
    assert len(back.per_case) == 6
    for key in ("best_step", "best_val_dice", "seed", "labelled", "trial_key", "status"):
        assert back.result[key] == record[key]
    assert back.result["test"]["mean"]["dice"] == pytest.approx(record["test"]["mean"]["dice"], nan_ok=True)
    assert TrialConfig.from_dict(back.result["config"]) == cfg
    assert back.result["labelled"]["patients"] == ["patient004", "patient001"]


def test_interrupted_trial_resumes_exactly(tiny_root, tmp_path):
    cfg = small_cfg(tiny_root, objective="mean_teacher")
    straight = train_trial(cfg, tmp_path / "straight", log=quiet)

    class Interrupt(Exception):
        pass

    def stop_at_first_report(metrics, _ckpt):
        raise Interrupt

    with pytest.raises(Interrupt):
        train_trial(cfg, tmp_path / "resumed", report=stop_at_first_report, log=quiet)
    resumed = train_trial(cfg, tmp_path / "resumed", log=quiet)
    assert resumed.resumed_from_step == 4
    assert [r["loss"] for r in resumed.curves] == pytest.approx([r["loss"] for r in straight.curves], rel=1e-5)
    assert resumed.best_val_dice == pytest.approx(straight.best_val_dice, rel=1e-6)
    assert [r["dice"] for r in resumed.test_rows] == pytest.approx([r["dice"] for r in straight.test_rows], rel=1e-6, nan_ok=True)


def test_non_finite_loss_names_step_and_term(tiny_root, tmp_path, monkeypatch):
    original = SupervisedObjective.loss

    def poisoned(self, batch, step, max_steps):
        out = original(self, batch, step, max_steps)
        if step >= 3:
            nan = torch.tensor(float("nan"))
            return type(out)(out.total * nan, {**out.terms, "ce": nan})
        return out

    monkeypatch.setattr(SupervisedObjective, "loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"step 3: loss is NaN/inf in term\(s\) ce"):
        train_trial(small_cfg(tiny_root), tmp_path / "nan", log=quiet)
