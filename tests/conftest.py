"""Shared fixtures: tiny datasets written with the layout writers, the session's phantom cache and its Ray instance."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

from medseg_platform.data import layout


def make_tiny_dataset(root: Path, train_patients=("patient004", "patient001", "patient003", "patient002"),
                      val_patients=("patient005",), test_patients=("patient006",),
                      depth: int = 3, shape=(12, 10), seed: int = 0) -> Path:
    """A dataset root with two frames per patient; label = intensity bins so values are predictable.

    Shapes: volumes (depth, *shape); every class 0..3 present in every slice.
    """
    rng = np.random.default_rng(seed)
    train_slices: list[str] = []
    for patients, with_slices in ((train_patients, True), (val_patients, False), (test_patients, False)):
        for patient in patients:
            for frame in ("frame01", "frame02"):
                label = rng.integers(0, 4, size=(depth, *shape)).astype(np.uint8)
                image = (label / 4.0 + rng.uniform(0, 0.2, size=label.shape)).astype(np.float32)
                image = (image - image.min()) / (image.max() - image.min())
                ids = layout.write_case(root, f"{patient}_{frame}", image, label, spacing=(5.0, 1.5, 1.25), with_slices=with_slices)
                train_slices += ids
    val = [f"{p}_{f}" for p in val_patients for f in ("frame01", "frame02")]
    test = [f"{p}_{f}" for p in test_patients for f in ("frame01", "frame02")]
    layout.write_lists(root, train_slices, val, test)
    return root


@contextlib.contextmanager
def reaped(proc):
    """The block's subprocess ``proc``, killed and waited for if it still runs when the block ends (a failed assertion or
    a timeout leaves no process behind)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def poison_supervised_loss(monkeypatch, from_step: int) -> None:
    """Make the supervised objective's loss NaN (its total and its ``ce`` term) from step ``from_step`` on: a trial that
    must end with a non-finite-loss error."""
    import torch

    from methods.supervised import SupervisedObjective

    original = SupervisedObjective.loss

    def poisoned(self, batch, step, max_steps):
        out = original(self, batch, step, max_steps)
        if step >= from_step:
            nan = torch.tensor(float("nan"))
            return type(out)(out.total * nan, {**out.terms, "ce": nan})
        return out

    monkeypatch.setattr(SupervisedObjective, "loss", poisoned)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine thread contention
    made them ~10x slower; the whole suite runs torch single-threaded (the engine sets its own count)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    return make_tiny_dataset(tmp_path / "tiny")


@pytest.fixture(scope="session")
def phantom_cache(tmp_path_factory) -> Path:
    """A per-session cache for the embedded dataset (never the user's ~/.cache)."""
    return tmp_path_factory.mktemp("medseg-cache")


@pytest.fixture
def phantom_env(phantom_cache, monkeypatch):
    """The session's phantom cache as $MEDSEG_CACHE; returns the smoke phantom's root as the study scripts resolve it."""
    import argparse

    from medseg_platform.profiles import PROFILES
    from medseg_platform.study_flags import resolve_data_root

    monkeypatch.setenv("MEDSEG_CACHE", str(phantom_cache))
    return str(resolve_data_root(argparse.Namespace(data_root=None), PROFILES["smoke"]))


@pytest.fixture(scope="session")
def ray_address(phantom_cache):
    """One Ray instance for the whole test session (2 CPUs, no dashboard); yields its GCS address. Under README's
    ``-n 2`` each pytest-xdist worker is a session of its own and starts one at its first test that needs Ray
    (benchmarks/RESULTS.md, "The test suite in two workers").

    Studies run in-process find it through ``ray.is_initialized()``; subprocess drivers join it with
    ``--address``. Shut down and its temp folder removed at the end: we stop only what we started.
    """
    import os
    import shutil
    import tempfile

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
        # token auth (Ray 2.60's default) with a token of our own: the suite never writes ~/.ray/auth_token;
        # subprocess drivers that join with --address inherit the variable
        import secrets

        token_file = Path(temp_dir) / "auth_token"
        token_file.write_text(secrets.token_hex(32))
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    context = ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, object_store_memory=256 << 20,
                       log_to_driver=False, configure_logging=False)
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()
        if os.environ.get("RAY_AUTH_TOKEN_PATH", "").startswith(temp_dir):
            del os.environ["RAY_AUTH_TOKEN_PATH"]
        shutil.rmtree(temp_dir, ignore_errors=True)
