"""Tests of the synthetic cardiac MRI phantom (``medseg_platform.data.phantom``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from analysis import console as cli
from medseg_platform.data import phantom
from medseg_platform.data.layout import AcdcLayout, case_of_slice
from medseg_platform.errors import ConfigError

TINY = dict(patients=5, size=48, seed=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, float]:
    """A tiny phantom (5 patients, 48 px) and the CPU seconds this process spent generating it (not wall time: its 60
    files are each fsync'ed, and a busy disk's waits are not the generator's cost; the flaky-test review)."""
    out = tmp_path_factory.mktemp("phantom") / "tiny"
    start = time.process_time()
    phantom.generate_phantom(out, **TINY)
    return out, time.process_time() - start


@pytest.fixture(scope="module")
def volumes(tiny):
    data = AcdcLayout(tiny[0])
    cases = sorted(data.train_cases + data.val_cases + data.test_cases)
    return {case: data.read_volume(case) for case in cases}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ params, splits
def test_split_counts_are_70_10_20_with_at_least_one_each():
    assert phantom.split_counts(3) == (1, 1, 1)
    assert phantom.split_counts(5) == (3, 1, 1)
    assert phantom.split_counts(20) == (14, 2, 4)
    assert phantom.split_counts(100) == (70, 10, 20)


def test_split_partitions_patients_deterministically():
    a = phantom.split_patients(20, seed=7)
    assert a == phantom.split_patients(20, seed=7)
    assert sorted(a["train"] + a["val"] + a["test"]) == list(range(20))
    assert [len(a[k]) for k in ("train", "val", "test")] == [14, 2, 4]
    assert a != phantom.split_patients(20, seed=8)


@pytest.mark.parametrize("kwargs", [dict(patients=2), dict(size=31), dict(seed=-1), dict(patients=1000), dict(size=64.0)])
def test_bad_params_raise_one_line_config_error(tmp_path, kwargs):
    params = {**TINY, **kwargs}
    with pytest.raises(ConfigError) as info:
        phantom.generate_phantom(tmp_path / "x", **params)
    assert "\n" not in str(info.value) and next(iter(kwargs)) in str(info.value)
    assert not (tmp_path / "x").exists()


def test_cache_key_depends_on_every_param_and_version(monkeypatch):
    keys = {phantom.PhantomParams(5, 48, 3).key(), phantom.PhantomParams(6, 48, 3).key(),
            phantom.PhantomParams(5, 64, 3).key(), phantom.PhantomParams(5, 48, 4).key()}
    assert len(keys) == 4
    base = phantom.PhantomParams(5, 48, 3).key()
    monkeypatch.setattr(phantom, "PHANTOM_VERSION", phantom.PHANTOM_VERSION + 1)
    assert phantom.PhantomParams(5, 48, 3).key() != base


# ---------------------------------------------------------------------------- generation, files
def test_a_cached_phantom_folder_name_is_checked_against_what_it_holds(tiny, tmp_path):
    """The engine review: a config from another machine names that machine's phantom-<key>; the missing-root hint said
    to write one with 'medseg data phantom --out', which wrote the default phantom under that name, and training ran
    on it silently."""
    import shutil

    from medseg_platform.errors import DataError

    other_key = phantom.PhantomParams(6, 40, 0).key()
    missing = tmp_path / f"phantom-{other_key}"
    with pytest.raises(DataError, match="it is named as a cached embedded phantom .* leave data.root out") as info:
        AcdcLayout(missing)
    assert "\n" not in str(info.value)
    shutil.copytree(tiny[0], missing)  # the tiny phantom (5 patients, 48 px, seed 3) under another phantom's name
    with pytest.raises(DataError, match=rf"holds the phantom with patients=5, size=48, seed=3 .*whose cache folder is "
                                        rf"phantom-{phantom.PhantomParams(**TINY).key()}, not phantom-{other_key}"):
        AcdcLayout(missing)
    own = tmp_path / f"phantom-{phantom.PhantomParams(**TINY).key()}"
    missing.rename(own)
    assert len(AcdcLayout(own).train_patients) == 3  # under its own name: read as before


def test_tiny_phantom_is_fast(tiny):
    assert tiny[1] < 4.0, f"5 patients at 48 px took {tiny[1]:.2f} s of CPU time"


def test_generation_is_byte_identical(tiny, tmp_path):
    again = phantom.generate_phantom(tmp_path / "again", **TINY)
    first, second = _files(tiny[0]), _files(again)
    assert first.keys() == second.keys() and len(first) > 20
    assert all(first[name] == second[name] for name in first)


def test_patient_does_not_depend_on_number_of_patients():
    small = phantom.make_patient(phantom.PhantomParams(3, 40, 11), 2)
    large = phantom.make_patient(phantom.PhantomParams(9, 40, 11), 2)
    for frame in ("ED", "ES"):
        np.testing.assert_array_equal(small[frame][0], large[frame][0])
        np.testing.assert_array_equal(small[frame][1], large[frame][1])
    other = phantom.make_patient(phantom.PhantomParams(3, 40, 11), 1)
    assert other["ED"][0].shape != small["ED"][0].shape or not np.array_equal(other["ED"][0], small["ED"][0])


def test_layout_lists_cases_and_manifest(tiny):
    data = AcdcLayout(tiny[0])
    n_train, n_val, n_test = phantom.split_counts(TINY["patients"])
    assert len(data.train_patients) == n_train and len(data.val_cases) == 2 * n_val and len(data.test_cases) == 2 * n_test
    # training slices: patients ascending, frame01 before frame02, slices 0..D-1
    assert data.train_patients == sorted(data.train_patients)
    assert all(c.endswith(("_frame01", "_frame02")) for c in data.train_cases)
    expected = []
    for case in data.train_cases:
        depth = data.read_volume(case).image.shape[0]
        assert 6 <= depth <= 10
        expected += [f"{case}_slice_{k}" for k in range(depth)]
    assert data.train_slices == expected
    image, label = data.read_slice(data.train_slices[0])
    assert image.dtype == np.float32 and label.dtype == np.uint8 and image.ndim == 2
    # every patient is in exactly one split; val/test cases have no slice files
    patients = {c.split("_")[0] for c in data.val_cases + data.test_cases} | set(data.train_patients)
    assert patients == {f"patient{i:03d}" for i in range(1, TINY["patients"] + 1)}
    assert not list((tiny[0] / "data" / "slices").glob(f"{data.test_cases[0]}_slice_*.h5"))
    manifest = json.loads((tiny[0] / "manifest.json").read_text())
    assert manifest["source"] == {"generator": "phantom", "version": phantom.PHANTOM_VERSION, "params": TINY}
    facts = manifest["cases"]["patient001_frame02"]
    assert facts["patient"] == "patient001" and facts["frame"] == "ES" and len(facts["spacing"]) == 3


def test_volumes_are_normalised_with_spacing(volumes):
    shapes = set()
    for vol in volumes.values():
        assert vol.image.dtype == np.float32 and vol.label.dtype == np.uint8
        assert vol.image.min() == 0.0 and vol.image.max() == 1.0
        assert set(np.unique(vol.label)) <= {0, 1, 2, 3}
        thickness, dy, dx = vol.spacing
        assert 5.0 <= thickness <= 10.0 and dy == dx
        assert 1.2 * 128 / 48 <= dx <= 1.8 * 128 / 48
        shapes.add(vol.image.shape[1:])
    assert len(shapes) > 1 and any(h != w for h, w in shapes)  # sizes vary, some non-square


def test_class_fractions_are_acdc_like(volumes):
    counts = sum(np.bincount(v.label.ravel(), minlength=4) for v in volumes.values())
    frac = counts / counts.sum()
    assert 0.88 <= frac[0] <= 0.96, frac
    assert frac[1] < frac[2] and frac[1] < frac[3], f"RV should be the rarest class: {frac}"
    assert all(0.005 < f < 0.08 for f in frac[1:]), frac
    for case, vol in volumes.items():
        assert set(np.unique(vol.label)) == {0, 1, 2, 3}, case


def test_rv_fades_out_toward_apex_and_heart_shrinks(volumes):
    for case, vol in volumes.items():
        rv = (vol.label == 1).sum(axis=(1, 2))
        heart = (vol.label >= 2).sum(axis=(1, 2))
        assert rv[0] > 0 and rv[-1] == 0, f"{case}: RV per slice {rv}"
        assert heart[-1] < heart[0], f"{case}: LV+Myo per slice {heart}"


def test_es_cavity_smaller_and_wall_thicker_than_ed(volumes):
    for case, ed in volumes.items():
        if not case.endswith("_frame01"):
            continue
        es = volumes[case.replace("_frame01", "_frame02")]
        assert ed.image.shape == es.image.shape
        lv_ed, lv_es = (ed.label == 3).sum(), (es.label == 3).sum()
        assert lv_es < 0.75 * lv_ed, case
        wall_ratio = lambda v: (v.label == 2).sum() / (v.label >= 2).sum()  # noqa: E731
        assert wall_ratio(es) > wall_ratio(ed), case


def test_bright_background_defeats_thresholding(volumes):
    """Some background tissue is as bright as the blood pools: a cavity threshold is not a segmentation."""
    shares = []
    for vol in volumes.values():
        cavity = np.isin(vol.label, (1, 3))
        bright = vol.image >= np.percentile(vol.image[cavity], 25)
        shares.append((bright & ~cavity).sum() / bright.sum())
    assert np.median(shares) > 0.3, shares


# ------------------------------------------------------------------------------------- caching
def test_ensure_phantom_caches_and_reuses(tmp_path, monkeypatch):
    path = phantom.ensure_phantom(tmp_path, patients=3, size=40, seed=5)
    assert path == tmp_path.absolute() / f"phantom-{phantom.PhantomParams(3, 40, 5).key()}"
    assert AcdcLayout(path).test_cases
    stamp = (path / "manifest.json").stat().st_mtime_ns

    def no_work(*args, **kwargs):
        raise AssertionError("ensure_phantom regenerated a complete phantom")

    monkeypatch.setattr(phantom, "_write_all", no_work)
    assert phantom.ensure_phantom(tmp_path, patients=3, size=40, seed=5) == path
    assert (path / "manifest.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_killed_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    real = phantom._write_all

    def dies_halfway(root, params, progress):
        (root / "train_slices.list").write_text("partial\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(phantom, "_write_all", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        phantom.ensure_phantom(tmp_path, patients=3, size=40, seed=5)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(phantom, "_write_all", real)
    path = phantom.ensure_phantom(tmp_path, patients=3, size=40, seed=5)
    assert phantom.holds_phantom(path, phantom.PhantomParams(3, 40, 5))


def test_a_dead_writers_staging_folder_is_removed_by_the_next_generation(tmp_path):
    """A SIGKILLed generation leaves its hidden staging folder; the next one on this host removes it when its process
    is gone, and leaves a live writer's folder (and other hosts') alone."""
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    host = socket.gethostname()
    stale = tmp_path / f".ph.tmp-{host}-{dead}-0000abcd"
    live = tmp_path / f".ph.tmp-{host}-1-0000abcd"  # pid 1 is alive
    other_host = tmp_path / f".ph.tmp-elsewhere.example-{dead}-0000abcd"
    for folder in (stale, live, other_host):
        (folder / "data").mkdir(parents=True)
    phantom.generate_phantom(tmp_path / "ph", patients=3, size=40, seed=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other_host.name, "ph"])


# ----------------------------------------------------------------------------------------- CLI
@pytest.fixture
def medseg():
    """The real ``medseg`` entry point, run in-process."""
    return cli.main


def test_cli_writes_then_recognises_the_same_phantom(medseg, tmp_path, capsys):
    out = tmp_path / "ph"
    out.mkdir()  # an existing empty folder is fine
    args = ["data", "phantom", "--out", str(out), "--patients", "3", "--size", "40", "--seed", "2"]
    assert medseg(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("phantom: patient ") == 3 and "wrote phantom" in printed
    assert phantom.holds_phantom(out, phantom.PhantomParams(3, 40, 2))
    assert len(AcdcLayout(out).train_patients) == 1
    before = _files(out)
    assert medseg(args + ["--quiet"]) == 0
    assert "already holds" in capsys.readouterr().out
    assert _files(out) == before
    assert medseg(["data", "phantom", "--out", str(out), "--patients", "4", "--size", "40", "--seed", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "another phantom" in err and "\n" not in err


@pytest.mark.parametrize("extra", [["--patients", "2"], ["--size", "8"], ["--seed", "-3"]])
def test_cli_bad_params_exit_2(medseg, tmp_path, capsys, extra):
    assert medseg(["data", "phantom", "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: phantom:") and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_cli_refuses_non_empty_foreign_folder(medseg, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert medseg(["data", "phantom", "--out", str(tmp_path), "--patients", "3", "--size", "40"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_cli_checks_an_existing_copy_and_the_out_folder(medseg, tmp_path, capsys):
    """A changed or missing file used to pass as "already holds the phantom"; an --out under a file or an empty one
    ended in a traceback or wrote into the current folder."""
    out = tmp_path / "ph"
    args = ["data", "phantom", "--out", str(out), "--patients", "3", "--size", "40", "--seed", "2", "--quiet"]
    assert medseg(args) == 0
    capsys.readouterr()
    volume = out / "data" / "patient001_frame01.h5"
    volume.write_bytes(volume.read_bytes()[:-10] + b"0123456789")
    assert medseg(args) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {out}: holds the phantom with patients=3, size=40, seed=2, but data/patient001_frame01.h5 differ(s) from "
        "its manifest's checksums; delete the folder and rerun to write it again")
    volume.unlink()
    assert medseg(args) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {out}: holds an incomplete copy of the phantom with patients=3, size=40, seed=2 (files its manifest lists "
        "are missing); delete the folder and rerun")
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert medseg(["data", "phantom", "--out", str(afile / "sub"), "--patients", "3", "--size", "40"]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out {afile / 'sub'}: is inside {afile}, a file, not a folder; give a folder"
    assert medseg(["data", "phantom", "--out", "", "--patients", "3", "--size", "40"]) == 2
    assert capsys.readouterr().err.strip() == "error: --out '': give the folder to write the phantom into"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "ph"]


def test_sigterm_removes_the_half_written_phantom(tmp_path):
    """``medseg data`` turns SIGTERM into a clean exit (143) that removes its hidden staging folder."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "ph"
    proc = subprocess.Popen([sys.executable, "-m", "analysis", "data", "phantom", "--out", str(out), "--patients", "40",
                             "--size", "128"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".ph.tmp-*/data/*.h5")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the phantom was written before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "terminated"
    assert list(tmp_path.iterdir()) == []


def test_cli_help_ends_with_example(medseg, capsys):
    with pytest.raises(SystemExit):
        medseg(["data", "phantom", "--help"])
    assert capsys.readouterr().out.rstrip().splitlines()[-1].strip().startswith("medseg data phantom --out")


def test_slice_ids_belong_to_training_cases(tiny):
    data = AcdcLayout(tiny[0])
    assert {case_of_slice(s) for s in data.train_slices} == set(data.train_cases)
    assert not set(data.train_cases) & set(data.val_cases + data.test_cases)


def test_the_cache_folder_from_the_environment_and_its_errors_name_it(tmp_path, monkeypatch):
    """An empty MEDSEG_CACHE put the phantom into the current folder, and a bad cache folder's error named --out, a
    flag studies do not have (a probe of user environments)."""
    from medseg_platform.study_flags import default_cache_root

    monkeypatch.setenv("MEDSEG_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_root() == (tmp_path / "home" / ".cache" / "medseg-platform").resolve()
    monkeypatch.setenv("MEDSEG_CACHE", str(tmp_path / "cache"))
    assert default_cache_root() == (tmp_path / "cache").resolve()
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match=r"^the phantom's cache folder \(\$MEDSEG_CACHE, default ~/.cache/medseg-platform\) .*a_file"):
        phantom.ensure_phantom(tmp_path / "a_file", patients=4, size=32)
