"""Synthetic finished studies written with the real result writer (no training, no Ray).

:func:`make_fake_study` writes ``trials/<key>/`` folders with :func:`write_trial_results` (config,
labelled, per-case metrics, curves, result.json), a ``qualitative.npz`` in the engine's layout, and
the study-level files the report reads (``study.json``, ``settings.json``, ``last_run.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from medseg_platform.engine import QualitativeSlices
from medseg_platform.data.layout import Volume
from medseg_platform.results import QUALITATIVE_FILE, trial_key, write_trial_error, write_trial_results

CASES = [f"patient{i:03d}_frame01" for i in range(8)]


@dataclass
class FakeLabelled:
    patients: int
    available: int = 70

    def to_dict(self) -> dict:
        return {"num_patients": self.patients, "available_patients": self.available,
                "percent_patients": round(100.0 * self.patients / self.available, 3),
                "patients": [f"p{i}" for i in range(self.patients)]}


@dataclass
class FakeOutcome:
    labelled: FakeLabelled
    test_rows: list
    best_step: int = 20
    best_val_dice: float = 0.5
    curves: list = field(default_factory=list)
    val_curve: list = field(default_factory=list)
    timing: dict = field(default_factory=lambda: {"total_s": 12.5})
    resumed_from_step: int = 0


def per_case_rows(dice: Callable[[str, int], float], cases=CASES) -> list[dict]:
    """Rows for every case and class 1..3 with Dice from ``dice(case, cls)`` (HD95 falls as Dice rises)."""
    rows = []
    for case in cases:
        for cls in (1, 2, 3):
            d = dice(case, cls)
            rows.append({"case": case, "class": cls, "dice": d, "jaccard": d / (2 - d), "hd95": 20.0 * (1 - d),
                         "asd": 5.0 * (1 - d)})
    return rows


def write_qualitative(trial_dir: Path, shift: int) -> None:
    """A qualitative.npz through the engine's writer: 3 cases, a square "heart" predicted ``shift`` px off."""
    keeper = QualitativeSlices(list(reversed(CASES)))
    for case in CASES:
        image = np.zeros((4, 40, 40), np.float32)
        label = np.zeros((4, 40, 40), np.uint8)
        image[:, 10:30, 10:30] = 0.8
        label[:, 12:28, 12:28] = 2
        label[:, 16:24, 16:24] = 3
        label[:, 12:28, 8:12] = 1
        keeper.keep(Volume(case, image, label, (5.0, 1.5, 1.5)), np.roll(label, shift, axis=2))
    keeper.save(trial_dir / QUALITATIVE_FILE)


def write_fake_trial(study_dir: Path, *, row: str, order: int, patients: int, seed: int,
                     dice: Callable[[str, int], float], axes: dict | None = None, search: dict | None = None,
                     best_val_dice: float = 0.5, max_steps: int = 40, pretrain: list | None = None,
                     qualitative_shift: int | None = 0, cases=CASES, val_curve: list | None = None) -> Path:
    """One finished trial with curves, val curve and (unless ``qualitative_shift`` is None) qualitative.npz.

    The default val curve plateaus (best at step 20, 0.005 lower at step 40: healthy, see analysis.health);
    ``val_curve`` replaces it with (step, val Dice) pairs.
    """
    config = {"objective": "mona", "data": {"labelled": str(patients), "root": "/data/phantom", "patch_size": [32, 32],
                                            "labelled_batch": 4, "unlabelled_batch": 4},
              "seed": seed, "optim": {"max_steps": max_steps}, "eval": {"val_every": 20, "empty_policy": "nan"}, "pretrain": pretrain or [],
              "objective_params": dict(search or {})}
    tags = {"row": row, "order": order, "variant": row.split(" (")[0], "axes": {"data.labelled": str(patients), **(axes or {})}}
    if search:
        tags["search"] = dict(search)
    trial_dir = study_dir / "trials" / trial_key({**config, "row": row})
    curves = [{"step": s, "lr": 0.01, "loss": 2.0 / (1 + s / 10) + 0.1 * order} for s in (10, 20, 30, 40)]
    points = val_curve if val_curve is not None else [(20, best_val_dice), (40, best_val_dice - 0.005)]
    val_curve = [{"step": step, "val_dice": value} for step, value in points]
    outcome = FakeOutcome(FakeLabelled(patients), per_case_rows(dice, cases), best_val_dice=best_val_dice, curves=curves,
                          val_curve=val_curve)
    write_trial_results(trial_dir, config=config, tags=tags, outcome=outcome, seed=seed)
    if qualitative_shift is not None:
        write_qualitative(trial_dir, qualitative_shift)
    return trial_dir


def case_offset(case: str) -> float:
    return 0.01 * int(case[7:10])


def make_fake_study(root: Path, name: str = "fake-quick", seeds=(1, 2)) -> Path:
    """Three methods x two label fractions x ``seeds`` x eight test cases, plus an errored and a corrupt trial.

    Dice: "MONA" best; "Mean teacher" 0.15 lower everywhere (significantly worse); "ARCO-SG" within
    +-0.01 of MONA alternating by case (not significantly different). More labels: +0.05.
    """
    study = root / name
    keys = []
    methods = [("MONA", 0.0), ("Mean teacher", -0.15), ("ARCO-SG", None)]
    for order, (row, delta) in enumerate(methods):
        for patients in (1, 3):
            for seed in seeds:
                def dice(case, cls, delta=delta, patients=patients, seed=seed):
                    base = 0.6 + 0.05 * (patients == 3) + 0.02 * seed + case_offset(case) + 0.01 * (cls - 2)
                    if delta is None:  # ARCO-SG: tiny differences of both signs
                        return base + (0.008 if int(case[7:10]) % 2 else -0.01)
                    return base + delta
                trial = write_fake_trial(study, row=row, order=order, patients=patients, seed=seed, dice=dice,
                                         pretrain=[{"max_steps": 10}] if row != "Mean teacher" else [],
                                         qualitative_shift=order)
                keys.append(trial.name)
    errored = study / "trials" / "action-l1-s1-0000000000"
    write_trial_error(errored, config={"objective": "action"}, tags={"row": "ACTION"}, seed=1,
                      error="non-finite loss at step 7 in term(s) anco")
    corrupt = study / "trials" / "arco-l1-s1-1111111111"
    corrupt.mkdir(parents=True)
    (corrupt / "result.json").write_text("{truncated", encoding="utf-8")
    keys += [errored.name, corrupt.name]
    (study / "study.json").write_text(json.dumps({"name": name, "trials": keys, "seeds": list(seeds), "search": False,
                                                  "grid": {"data.labelled": ["1", "3"]}}), encoding="utf-8")
    (study / "settings.json").write_text(json.dumps({"profile": "quick", "data_root": "/data/phantom",
                                                     "command": "python studies/fake.py --seeds 1 2"}), encoding="utf-8")
    (study / "last_run.json").write_text(json.dumps({"timing": {"total_s": 321.0}, "pending_at_start": 14}), encoding="utf-8")
    return study


def make_search_study(root: Path, n: int = 6) -> Path:
    """An Optuna-like search: ``n`` trials of one row and seed with sampled lr / weight / sampler values."""
    study = root / "search-quick"
    rng = np.random.default_rng(0)
    for i in range(n):
        sample = {"optim.lr": float(10 ** rng.uniform(-3, -1)), "objective_params.contrast_weight": float(rng.uniform(0, 1)),
                  "objective_params.sampler": ["uniform", "stratified"][i % 2]}
        value = 0.5 + 0.3 * sample["objective_params.contrast_weight"] + 0.01 * i
        write_fake_trial(study, row="MONA", order=0, patients=1, seed=1, dice=lambda case, cls, v=value: v,
                         search=sample, best_val_dice=value, qualitative_shift=None)
    (study / "study.json").write_text(json.dumps({"name": "search-quick", "trials": ["ignored"], "seeds": [1], "search": True,
                                                  "search_space": {k: "Float" for k in ("optim.lr",)}, "num_samples": n}),
                                      encoding="utf-8")
    return study
